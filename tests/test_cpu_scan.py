"""The compiled CPU scan (longseq.kernels.cpu_scan): awkward sizes, several tiles and channel
blocks, gradients, threads, fork, a read-only cache location, inf/NaN like the reference."""
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import threading

import numba
import pytest
import torch

from longseq.kernels import cpu_scan, selective_scan, selective_scan_ref
from test_selective_scan import ALL, GRAD_NAMES, make_inputs, recurrence64, rel

# (batch, dim, dstate, seqlen, groups): length 1, odd dims, batch 1, dstate 1, grouped
SIZES = [(1, 1, 1, 1, None), (1, 3, 5, 1, None), (3, 7, 3, 9, None), (1, 9, 16, 70, 3), (2, 6, 1, 33, 6),
         (2, 10, 4, 65, 2)]


def scan_cpu(kw, **extra):
    return cpu_scan.selective_scan_cpu(**kw, return_last_state=True, **extra)


@pytest.mark.parametrize("batch,dim,dstate,seqlen,groups", SIZES)
@pytest.mark.parametrize("checkpoint", [64, 4])
@pytest.mark.parametrize("options", [(), ALL])
def test_forward_matches_float64_recurrence(monkeypatch, batch, dim, dstate, seqlen, groups, checkpoint, options):
    monkeypatch.setattr(cpu_scan, "CHECKPOINT", checkpoint)
    kw = make_inputs(batch, dim, dstate, seqlen, groups, options, seed=0)
    y_true, h_true = recurrence64(**kw)
    y, h = scan_cpu(kw)
    assert y.dtype == torch.float32 and h.dtype == torch.float32 and h.shape == (batch, dim, dstate)
    assert rel(y, y_true) < 1e-6 and rel(h, h_true) < 1e-6
    k64 = make_inputs(batch, dim, dstate, seqlen, groups, options, dtype=torch.float64, seed=0)
    y64, h64 = scan_cpu(k64)
    y_true, h_true = recurrence64(**k64)
    assert y64.dtype == torch.float64 and rel(y64, y_true) < 1e-13 and rel(h64, h_true) < 1e-13


def gradcheck_cpu(kw, **extra):
    names = [n for n in GRAD_NAMES if kw[n] is not None]
    base = {k: v for k, v in kw.items() if k not in names}

    def f(*tensors):
        return cpu_scan.selective_scan_cpu(**dict(zip(names, tensors), **base), return_last_state=True, **extra)

    inputs = tuple(kw[n].detach().clone().requires_grad_(True) for n in names)
    return torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("batch,dim,dstate,seqlen,groups", SIZES)
def test_gradcheck_float64_several_tiles(monkeypatch, batch, dim, dstate, seqlen, groups):
    # checkpoint 4: the backward recomputes several tiles from their saved states
    monkeypatch.setattr(cpu_scan, "CHECKPOINT", 4)
    kw = make_inputs(batch, dim, dstate, min(seqlen, 13), groups, ALL, dtype=torch.float64, seed=1)
    assert gradcheck_cpu(kw)


@pytest.mark.parametrize("softplus", [False, True])
def test_gradcheck_without_optional_inputs(softplus):
    kw = make_inputs(2, 3, 2, 6, None, ("softplus",) if softplus else (), dtype=torch.float64, seed=2)
    assert gradcheck_cpu(kw)


@pytest.mark.parametrize("blocks", [2, 3, 5])
def test_channel_blocks_give_the_same_result(monkeypatch, blocks):
    # Channels split into blocks (one task each; B and C gradients summed over the blocks).
    kw = make_inputs(2, 10, 4, 70, 2, ALL, dtype=torch.float64, seed=3)
    names = [n for n in GRAD_NAMES if kw[n] is not None]

    def run():
        leaves = {n: kw[n].detach().clone().requires_grad_(True) for n in names}
        y, h = scan_cpu({**kw, **leaves})
        (y.square().sum() + h.sum()).backward()
        return y, h, {n: leaves[n].grad for n in names}

    y1, h1, g1 = run()
    monkeypatch.setattr(cpu_scan, "_blocks", lambda *a: blocks)
    monkeypatch.setattr(cpu_scan, "_backward_blocks", lambda *a: blocks)
    y2, h2, g2 = run()
    assert torch.equal(y1, y2) and torch.equal(h1, h2)
    for n in names:
        assert rel(g2[n], g1[n]) < 1e-13, n
    monkeypatch.setattr(cpu_scan, "CHECKPOINT", 16)
    assert gradcheck_cpu(make_inputs(1, 5, 2, 40, None, ALL, dtype=torch.float64, seed=4))


def test_gradients_float32_match_reference_and_only_requested_ones():
    kw = make_inputs(2, 16, 8, 300, 4, ALL, seed=5)
    leaves = {n: kw[n].detach().clone().requires_grad_(True) for n in ("u", "B")}
    y = selective_scan(**{**kw, **leaves})
    y.square().sum().backward()
    ref = {n: kw[n].detach().clone().requires_grad_(True) for n in ("u", "B")}
    selective_scan_ref(**{**kw, **ref}).square().sum().backward()
    for n in ("u", "B"):
        assert leaves[n].grad.dtype == torch.float32 and rel(leaves[n].grad, ref[n].grad) < 1e-5, n


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_gradients_come_back_in_the_input_dtype(dtype):
    kw = make_inputs(1, 4, 3, 20, None, ALL, dtype=dtype, seed=6)
    names = [n for n in GRAD_NAMES if kw[n] is not None]
    leaves = {n: kw[n].detach().clone().requires_grad_(True) for n in names}
    y, h = selective_scan(**{**kw, **leaves}, return_last_state=True)
    assert y.dtype == dtype and h.dtype == torch.float32
    (y.float().sum() + h.sum()).backward()
    for n in names:
        assert leaves[n].grad.dtype == leaves[n].dtype and torch.isfinite(leaves[n].grad).all(), n


def test_nan_and_inf_propagate_like_the_reference():
    kw = make_inputs(1, 3, 4, 12, None, ("softplus", "D"), dtype=torch.float64, seed=7)
    kw["u"][0, 0, 5] = float("nan")
    kw["delta"][0, 1, 3] = float("inf")
    kw["A"][2, 1] = float("nan")
    y, h = scan_cpu(kw)
    y_ref, h_ref = selective_scan_ref(**kw, return_last_state=True)
    assert torch.equal(torch.isnan(y), torch.isnan(y_ref)) and torch.equal(torch.isnan(h), torch.isnan(h_ref))
    finite = torch.isfinite(y_ref)
    assert torch.equal(torch.isfinite(y), finite) and rel(y[finite], y_ref[finite]) < 1e-13


def test_extreme_decays_and_growth():
    kw = make_inputs(1, 4, 3, 50, None, ("softplus", "delta_bias"), dtype=torch.float64, seed=8)
    kw["delta"] = kw["delta"] + 30.0  # delta * A down to -1e3: exp underflows to 0
    kw["A"] = kw["A"] * 40
    y, h = scan_cpu(kw)
    y_ref, h_ref = selective_scan_ref(**kw, return_last_state=True)
    assert rel(y, y_ref) < 1e-13 and rel(h, h_ref) < 1e-13
    kw["A"] = kw["A"].abs() / 40  # growth: the state overflows to inf where the reference's does
    y, _ = scan_cpu(kw)
    y_ref = selective_scan_ref(**kw)
    assert torch.equal(torch.isinf(y), torch.isinf(y_ref)) and torch.isinf(y_ref).any()


def test_uses_torch_thread_count(one_torch_thread):
    kw = make_inputs(2, 8, 4, 100, None, ALL, seed=9)
    y1 = selective_scan(**kw)
    assert numba.get_num_threads() == 1
    torch.set_num_threads(2)
    y2 = selective_scan(**kw)
    assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
    assert torch.equal(y1, y2)


def test_concurrent_calls_from_python_threads():
    kw = make_inputs(2, 16, 8, 500, None, ALL, seed=10)
    expected = selective_scan(**kw)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(selective_scan(**kw))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 15
    assert all(torch.equal(r, expected) for r in results)


def _scan_in_child(queue):
    kw = make_inputs(1, 4, 3, 30, None, ALL, seed=11)
    queue.put(selective_scan(**kw).tolist())


@pytest.mark.skipif(sys.platform != "linux" or "NUMBA_THREADING_LAYER" in os.environ,
                    reason="fork start method on Linux with the threading layer longseq chooses")
def test_forked_child_can_scan_after_the_parent_did():
    # DataLoader workers are forked on Linux; GNU OpenMP (numba's "omp" layer) dies in the child.
    kw = make_inputs(1, 4, 3, 30, None, ALL, seed=11)
    expected = selective_scan(**kw)
    assert numba.threading_layer() != "omp"
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=_scan_in_child, args=(queue,))
    p.start()
    out = queue.get(timeout=60)
    p.join(timeout=60)
    assert p.exitcode == 0 and torch.equal(torch.tensor(out), expected)


def test_no_writable_cache_location_does_not_fail(tmp_path):
    # A read-only install with no writable cache directory: numba's cache=True would raise at
    # import ("no locator available"); the kernels are compiled in memory instead. Simulated with
    # a copy of the module whose __pycache__ and user cache directory cannot be created (a file
    # is in the way, which stops root too).
    pkg = tmp_path / "ro_kernels"
    pkg.mkdir()
    src = os.path.dirname(cpu_scan.__file__)
    for name in ("cpu_scan.py", "checks.py"):
        shutil.copy(os.path.join(src, name), pkg / name)
    (pkg / "__init__.py").write_text("")
    (pkg / "__pycache__").write_text("not a directory")
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    code = (
        "import numba, pytest, torch\n"
        "from ro_kernels import cpu_scan\n"
        "with pytest.raises(RuntimeError, match='cannot cache'):\n"
        "    numba.njit(cache=True)(cpu_scan._threads)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "u, dt = (torch.randn(1, 2, 7, generator=g) for _ in range(2))\n"
        "B, C = (torch.randn(1, 5, 7, generator=g) for _ in range(2))\n"
        "A = -torch.rand(2, 5, generator=g)\n"
        "y = cpu_scan.selective_scan_cpu(u, dt.abs(), A, B, C)\n"
        "from longseq.kernels import selective_scan_ref\n"
        "assert (y - selective_scan_ref(u, dt.abs(), A, B, C)).abs().max() < 1e-5\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(PYTHONPATH=str(tmp_path), PYTHONDONTWRITEBYTECODE="1",
               XDG_CACHE_HOME=str(blocker / "cache"), HOME=str(blocker / "home"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
