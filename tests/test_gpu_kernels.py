"""GPU checks of the fused Triton kernels (run on the device: `pytest -m gpu tests/test_gpu_kernels.py`).

fp32 within 1e-4 relative (norm-wise) of the float64 reference, bf16 within 1e-2; outputs written
over memory poisoned with NaN; seqlen 2^20 at batch 1 against the chunked reference; 64-bit
offsets past 2^31 elements; a MambaLM training step on GPU against the CPU path.
"""
import os

import pytest
import torch

from longseq.kernels import reference as R

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiled kernels only")]

DEV = "cuda"
# fp32 within 1e-4 relative of the float64 reference, bf16 within 1e-2
DTYPES = pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"])


def T():
    from longseq.kernels import triton_ops
    return triton_ops


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def poison_allocator(nbytes=2 << 30):
    """Fill a large block with NaN and return it to PyTorch's cache: the next torch.empty calls
    (our kernels' outputs) reuse it, so an element a kernel fails to write stays NaN."""
    torch.empty(nbytes // 4, device=DEV, dtype=torch.float32).fill_(float("nan"))
    torch.cuda.synchronize()


def scan_inputs(batch, dim, seqlen, dstate, groups, dtype, gen):
    r = lambda *s: torch.randn(*s, generator=gen, device=DEV)
    bc = (batch, groups, dstate, seqlen) if groups else (batch, dstate, seqlen)
    t = dict(u=r(batch, dim, seqlen), delta=r(batch, dim, seqlen) * 0.5 - 1.0, B=r(*bc), C=r(*bc),
             z=r(batch, dim, seqlen))
    t = {k: v.to(dtype) for k, v in t.items()}
    t.update(A=-(torch.rand(dim, dstate, generator=gen, device=DEV) * 8 + 0.5), D=r(dim),
             delta_bias=r(dim) * 0.3, initial_state=r(batch, dim, dstate))
    return t


ARGS = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


def call(fn, t, last=True):
    return fn(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"], delta_bias=t["delta_bias"],
              delta_softplus=True, return_last_state=last, initial_state=t["initial_state"])


@DTYPES
@pytest.mark.parametrize("batch,dim,seqlen,dstate,groups", [
    (2, 1, 1, 16, None), (2, 5, 17, 5, None), (2, 40, 300, 16, 4), (2, 64, 2049, 16, None),
    (1, 96, 4100, 16, 2),
    # above dstate 16 the tuned lists are scaled down (_for_dstate): fewer channels, more warps
    (2, 40, 300, 32, 4), (2, 24, 1000, 64, None), (1, 8, 700, 128, 2), (2, 5, 300, 256, None)])
def test_scan_fwd_bwd_vs_float64(dtype, tol, batch, dim, seqlen, dstate, groups):
    fwd_bwd_vs_float64(dtype, tol, batch, dim, seqlen, dstate, groups)


@DTYPES
@pytest.mark.parametrize("dstate", [64, 256])
def test_scan_larger_dstate_in_sequence_groups_vs_float64(monkeypatch, dtype, tol, dstate):
    """The chunk-parallel launches (3 sequence groups forward and backward) at dstate above 16."""
    monkeypatch.setenv("LONGSEQ_SCAN_GROUPS", "3")
    monkeypatch.setenv("LONGSEQ_SCAN_BWD_GROUPS", "3")
    fwd_bwd_vs_float64(dtype, tol, 1, 24, 1000, dstate, None)


def fwd_bwd_vs_float64(dtype, tol, batch, dim, seqlen, dstate, groups):
    """Outputs and every gradient against the float64 reference, outputs over NaN-poisoned memory."""
    gen = torch.Generator(device=DEV).manual_seed(seqlen + dim)
    t = scan_inputs(batch, dim, seqlen, dstate, groups, dtype, gen)
    xs = {k: v.clone().requires_grad_() for k, v in t.items()}
    xr = {k: v.double().requires_grad_() for k, v in t.items()}
    poison_allocator()
    y, last = call(T().selective_scan, xs)
    yr, lr = call(R.selective_scan_ref, xr)
    assert y.dtype == dtype and last.dtype == torch.float32
    assert torch.isfinite(y).all() and torch.isfinite(last).all()
    # the reference rounds y to the input dtype too: compare before that rounding where possible
    assert rel(y, yr) < tol and rel(last, lr) < tol
    gy = torch.randn(y.shape, generator=gen, device=DEV).to(dtype)
    gl = torch.randn(last.shape, generator=gen, device=DEV)
    poison_allocator()
    ((y.float() * gy.float()).sum() + (last * gl).sum()).backward()
    ((yr * gy.double()).sum() + (lr * gl.double()).sum()).backward()
    for k in ARGS:
        g = xs[k].grad
        assert g is not None and g.shape == t[k].shape and g.dtype == t[k].dtype, k
        assert torch.isfinite(g).all(), f"{k}: unwritten (NaN) or non-finite gradient"
        assert rel(g, xr[k].grad) < tol, (k, rel(g, xr[k].grad))


@pytest.mark.parametrize("workers", ["4", "1"], ids=["thread-pool", "one-by-one"])
def test_tuner_compiles_its_candidates_before_timing_them(monkeypatch, tmp_path, workers):
    """With the tuner on and nothing compiled yet, every candidate's scan kernels are compiled in the
    tuner's thread pool (Triton's AsyncCompileMode) before any is timed, or one by one with
    LONGSEQ_COMPILE_WORKERS=1; the tuned scan then matches float64, outputs and gradients. A later
    process (the tuner's memory cleared) takes the winners from the disk cache and times nothing."""
    import threading

    import triton.compiler
    from longseq.kernels import triton_launch, triton_scan, triton_tune
    monkeypatch.setenv("LONGSEQ_AUTOTUNE", "1")
    monkeypatch.setenv("LONGSEQ_CACHE", str(tmp_path))
    monkeypatch.delenv("LONGSEQ_TUNE_CACHE", raising=False)
    monkeypatch.setattr(triton_tune, "_DISK", {})
    monkeypatch.setenv("LONGSEQ_COMPILE_WORKERS", workers)
    threads = []
    compile_ = triton.compiler.compile

    def counted(*a, **kw):
        threads.append(threading.current_thread().name)
        return compile_(*a, **kw)
    # fresh per-device caches: nothing compiled yet, and their first use takes triton.compiler.compile,
    # patched below, as the kernel's compile function (both restored afterwards)
    for k in (triton_scan.scan_fwd_t4_kernel, triton_scan.scan_bwd_t4_kernel, triton_scan.scan_bwd_t4_summary_kernel):
        monkeypatch.setattr(k, "compile", getattr(k, "compile", None), raising=False)
        monkeypatch.setattr(k, "device_caches", type(k.device_caches)(k.create_binder))
    monkeypatch.setattr(triton.compiler, "compile", counted)
    monkeypatch.setattr(triton_launch, "_COMPILED", {})
    monkeypatch.setattr(triton_tune, "_CACHE", {})
    trials = len(triton_tune.TRIALS)
    fwd_bwd_vs_float64(torch.bfloat16, 1e-2, 2, 40, 300, 16, None)
    timed = [t for t in triton_tune.TRIALS[trials:] if t[3] is not None]
    assert len(timed) >= 6 and threads          # forward and backward lists timed; kernels compiled here
    pooled = [t for t in threads if t.startswith("longseq-compile")]
    assert pooled == (threads if workers != "1" else [])
    picked = dict(triton_tune._CACHE)
    files = list((tmp_path / "tune").iterdir())
    assert len(files) == 1 and torch.cuda.get_device_name().replace(" ", "_") in files[0].name
    monkeypatch.setattr(triton_tune, "_CACHE", {})
    monkeypatch.setattr(triton_tune, "_DISK", {})
    trials = len(triton_tune.TRIALS)
    fwd_bwd_vs_float64(torch.bfloat16, 1e-2, 2, 40, 300, 16, None)
    assert len(triton_tune.TRIALS) == trials and triton_tune._CACHE == picked


def test_scan_deterministic_mode_is_bitwise_repeatable(monkeypatch):
    monkeypatch.setenv("LONGSEQ_DETERMINISTIC", "1")
    gen = torch.Generator(device=DEV).manual_seed(0)
    t = scan_inputs(2, 256, 1000, 16, None, torch.float32, gen)
    outs = []
    for _ in range(2):
        xs = {k: v.clone().requires_grad_() for k, v in t.items()}
        y = call(T().selective_scan, xs, last=False)
        y.square().sum().backward()
        outs.append([xs[k].grad for k in ("B", "C", "A", "u")])
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def _fwd_bwd_outputs(t):
    xs = {k: v.clone().requires_grad_() for k, v in t.items()}
    y, last = call(T().selective_scan, xs)
    (y.float().square().sum() + last.sum()).backward()
    return [y, last] + [xs[k].grad for k in ARGS]


def test_direct_launches_are_taken_and_match_tritons_own(monkeypatch):
    """After a key's first call, the scan's kernels launch without JITFunction.run (triton_launch.py),
    with the same kernels and arguments: results bitwise equal to LONGSEQ_TRITON_LAUNCH=triton (in
    deterministic mode: otherwise dB and dC are summed by atomics, in no fixed order)."""
    from triton.runtime.jit import JITFunction
    from longseq.kernels import triton_launch
    if not triton_launch._SUPPORTED:
        pytest.skip(f"no direct launches on Triton {__import__('triton').__version__}")
    monkeypatch.delenv("LONGSEQ_TRITON_LAUNCH", raising=False)
    monkeypatch.setenv("LONGSEQ_DETERMINISTIC", "1")
    monkeypatch.setenv("LONGSEQ_SCAN_GROUPS", "2")        # every kernel: both passes forward and backward
    monkeypatch.setenv("LONGSEQ_SCAN_BWD_GROUPS", "2")
    gen = torch.Generator(device=DEV).manual_seed(5)
    t = scan_inputs(2, 40, 2100, 16, 4, torch.bfloat16, gen)
    _fwd_bwd_outputs(t)                                   # compiles; the keys are cached
    calls = []
    original = JITFunction.run
    monkeypatch.setattr(JITFunction, "run", lambda self, *a, **k: calls.append(self) or original(self, *a, **k))
    direct = _fwd_bwd_outputs(t)
    assert calls == [], f"{len(calls)} launches went through JITFunction.run"
    monkeypatch.setenv("LONGSEQ_TRITON_LAUNCH", "triton")
    plain = _fwd_bwd_outputs(t)
    assert len(calls) == 4                                # forward: 2 passes, backward: summary + main
    for a, b in zip(direct, plain):
        assert torch.equal(a, b)


def test_direct_launch_compiles_again_for_a_misaligned_tensor():
    """A kernel compiled for 16-byte aligned pointers must not be reused for a tensor that starts 4
    bytes off (the launch key holds each tensor's alignment): aligned first, then misaligned views."""
    dtype, tol = torch.float32, 1e-4
    gen = torch.Generator(device=DEV).manual_seed(6)
    for offset in (0, 1):
        t = scan_inputs(2, 40, 300, 16, None, dtype, gen)
        for k in ("u", "delta", "B", "C", "z"):
            v = t[k]
            flat = torch.empty(v.numel() + 1, device=DEV, dtype=dtype)
            view = flat[offset:offset + v.numel()].view(v.shape)
            view.copy_(v)
            t[k] = view
        assert (t["u"].data_ptr() % 16 == 0) == (offset == 0)
        with torch.no_grad():
            y, last = call(T().selective_scan, t)
            yr, lr = call(R.selective_scan_ref, {k: v.double() for k, v in t.items()})
        assert rel(y, yr) < tol and rel(last, lr) < tol, offset


def test_scan_seqlen_2_20_batch1_vs_chunked_reference():
    L = 1 << 20
    gen = torch.Generator(device=DEV).manual_seed(1)
    t = scan_inputs(1, 8, L, 16, None, torch.float32, gen)
    xs = {k: v.clone().requires_grad_() for k, v in t.items()}
    xr = {k: v.clone().requires_grad_() for k, v in t.items()}
    y, last = call(T().selective_scan, xs)
    yr, lr = call(R.selective_scan_chunked, xr)
    assert rel(y, yr) < 1e-4 and rel(last, lr) < 1e-4
    gy = torch.randn(y.shape, generator=gen, device=DEV)
    (y * gy).sum().backward()
    (yr * gy).sum().backward()
    for k in ARGS:
        assert rel(xs[k].grad, xr[k].grad) < 1e-4, (k, rel(xs[k].grad, xr[k].grad))


def test_scan_64bit_offsets_past_2_31_elements():
    # batch*dim*seqlen = 2^31 + 2^21: the last channels start past 2^31 elements
    L = 1 << 20
    dim = 2050
    gen = torch.Generator(device=DEV).manual_seed(2)
    u = torch.randn(1, dim, L, device=DEV, dtype=torch.bfloat16, generator=gen)
    delta = (torch.rand(1, dim, L, device=DEV, generator=gen) * 0.1).to(torch.bfloat16)
    B = torch.randn(1, 16, L, device=DEV, generator=gen).to(torch.bfloat16)
    C = torch.randn(1, 16, L, device=DEV, generator=gen).to(torch.bfloat16)
    A = -torch.rand(dim, 16, device=DEV, generator=gen) - 0.1
    with torch.no_grad():
        y, last = T().selective_scan(u, delta, A, B, C, return_last_state=True)
        for sl in (slice(0, 2), slice(dim - 2, dim)):
            yr, lr = R.selective_scan_chunked(u[:, sl], delta[:, sl], A[sl], B, C, return_last_state=True)
            assert rel(y[:, sl], yr) < 1e-2 and rel(last[:, sl], lr) < 1e-4


def test_causal_conv1d_64bit_offsets_past_2_31_elements():
    # batch*dim*seqlen = 2^31 + 2^21 as for the scan: the last channels' rows start past 2^31 elements;
    # forward and backward (dx, and dw, dbias summed over the chunks) checked on those channels
    L, dim, W = 1 << 20, 2050, 4
    gen = torch.Generator(device=DEV).manual_seed(3)
    x = torch.randn(1, dim, L, device=DEV, dtype=torch.bfloat16, generator=gen)
    w = torch.randn(dim, W, device=DEV, generator=gen) / 2
    b = torch.randn(dim, device=DEV, generator=gen)
    dy = torch.randn(1, dim, L, device=DEV, dtype=torch.bfloat16, generator=gen)
    xg, wg, bg = x.requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
    y = T().causal_conv1d(xg, wg, bg, "silu")
    y.backward(dy)
    for sl in (slice(0, 2), slice(dim - 2, dim)):
        xs, ws, bs = (t.detach()[..., sl, :] if t.dim() == 3 else t.detach()[sl] for t in (x, w, b))
        xr, wr, br = (t.double().requires_grad_() for t in (xs, ws, bs))
        yr = R.causal_conv1d_ref(xr, wr, br, "silu")
        yr.backward(dy[:, sl].double())
        assert rel(y[:, sl], yr) < 1e-2 and rel(xg.grad[:, sl], xr.grad) < 1e-2
        assert rel(wg.grad[sl], wr.grad) < 1e-3 and rel(bg.grad[sl], br.grad) < 1e-3


def _fwd_cfgs():
    from longseq.kernels import triton_scan_op as op
    return [(op.cfg_text(c), False) for c in op.FWD_CFGS] + [(op.cfg_text(c), True) for c in op.FWD_TRAIN_CFGS]


@DTYPES
@pytest.mark.parametrize("cfg,train", _fwd_cfgs(), ids=lambda v: str(v))
def test_scan_every_forward_candidate_vs_float64(monkeypatch, cfg, train, dtype, tol):
    """Each forward configuration the tuner may pick, inference and training (fp32 and bf16, float64
    reference, NaN-poisoned outputs); the chunk-parallel ones (5 fields) split into 3 sequence groups.
    The training forward's saved states and pre-gate output are checked through the gradients."""
    gen = torch.Generator(device=DEV).manual_seed(6)
    t = scan_inputs(2, 64, 1000, 16, None, dtype, gen)
    gy = torch.randn(t["u"].shape, generator=gen, device=DEV).to(dtype)
    _check_forward_cfg(monkeypatch, cfg, train, t, gy, _float64_reference(t, gy, train), tol)


@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
def test_scan_every_forward_candidate_at_dstate_64_vs_float64(monkeypatch, train):
    """dstate 64 offers the tuner the scaled lists and the dstate-16 ones (_candidates): each, fp32,
    against float64 (the chunk-parallel ones in 3 sequence groups); with the gradients when training."""
    from longseq.kernels import triton_scan_op as op
    cfgs = op._candidates(40, 1, op.FWD_TRAIN_CFGS if train else op.FWD_CFGS, "fwd_train" if train else "fwd", 64)
    gen = torch.Generator(device=DEV).manual_seed(9)
    t = scan_inputs(2, 40, 300, 64, None, torch.float32, gen)
    gy = torch.randn(t["u"].shape, generator=gen, device=DEV)
    ref = _float64_reference(t, gy, train)
    for c in cfgs:
        _check_forward_cfg(monkeypatch, op.cfg_text(c), train, t, gy, ref, 1e-4, poison_bytes=1 << 28)


def _float64_reference(t, gy, train):
    """(y, last state, gradients of sum(y * gy) or None) of the float64 reference on inputs t."""
    xr = {k: v.double().requires_grad_(train) for k, v in t.items()}
    with torch.set_grad_enabled(train):
        yr, lr = call(R.selective_scan_ref, xr)
    if not train:
        return yr, lr, None
    (yr * gy.double()).sum().backward()
    return yr, lr, {k: xr[k].grad for k in ARGS}


def _check_forward_cfg(monkeypatch, cfg, train, t, gy, ref, tol, poison_bytes=2 << 30):
    """The forward with configuration cfg alone (3 sequence groups if it is chunk-parallel, NaN-poisoned
    outputs) on inputs t against ref (_float64_reference): y, the last state and, training, the
    gradients of sum(y * gy), which pass through the saved states and the pre-gate output."""
    monkeypatch.setenv("LONGSEQ_SCAN_FWD_TRAIN_CFGS" if train else "LONGSEQ_SCAN_FWD_CFGS", cfg)
    if cfg.count(":") == 4:
        monkeypatch.setenv("LONGSEQ_SCAN_GROUPS", "3")
    else:
        monkeypatch.delenv("LONGSEQ_SCAN_GROUPS", raising=False)
    yr, lr, grads = ref
    xs = {k: v.clone().requires_grad_(train) for k, v in t.items()}
    poison_allocator(poison_bytes)
    with torch.set_grad_enabled(train):
        y, last = call(T().selective_scan, xs)
    assert torch.isfinite(y).all() and torch.isfinite(last).all(), cfg
    assert rel(y, yr) < tol and rel(last, lr) < tol, (cfg, rel(y, yr), rel(last, lr))
    if train:
        (y * gy).sum().backward()
        for k in ARGS:
            assert rel(xs[k].grad, grads[k]) < tol, (cfg, k, rel(xs[k].grad, grads[k]))


def _bwd_cfgs():
    from longseq.kernels import triton_scan_op as op
    return [op.cfg_text(c) for c in op.BWD_CFGS]


def _grads_vs_float64(t, dtype, tol, gen):
    """Every gradient of sum(y * gy) + sum(last * gl) (random gy, gl) from the scan on inputs t, with its
    outputs' memory NaN-poisoned first, against the float64 reference's."""
    xs = {k: v.clone().requires_grad_() for k, v in t.items()}
    xr = {k: v.double().requires_grad_() for k, v in t.items()}
    y, last = call(T().selective_scan, xs)
    yr, lr = call(R.selective_scan_ref, xr)
    gy = torch.randn(y.shape, generator=gen, device=DEV).to(dtype)
    gl = torch.randn(last.shape, generator=gen, device=DEV)
    poison_allocator()
    ((y * gy).sum() + (last * gl).sum()).backward()
    ((yr * gy.double()).sum() + (lr * gl.double()).sum()).backward()
    for k in ARGS:
        assert torch.isfinite(xs[k].grad).all(), k
        assert rel(xs[k].grad, xr[k].grad) < tol, (k, rel(xs[k].grad, xr[k].grad))


@DTYPES
@pytest.mark.parametrize("groups", [None, 2], ids=["plain", "grouped"])
@pytest.mark.parametrize("cfg", _bwd_cfgs())
def test_scan_every_backward_candidate_vs_float64(monkeypatch, cfg, groups, dtype, tol):
    """Each backward configuration the tuner may pick (fp32 and bf16, float64 reference, NaN-poisoned
    outputs); the chunk-parallel ones (5 fields, v6) split into 3 sequence groups (1000 steps:
    11 + 11 + 10 windows)."""
    monkeypatch.setenv("LONGSEQ_SCAN_BWD_CFGS", cfg)
    if cfg.count(":") == 4:
        monkeypatch.setenv("LONGSEQ_SCAN_BWD_GROUPS", "3")
    gen = torch.Generator(device=DEV).manual_seed(5)
    t = scan_inputs(2, 64, 1000, 16, groups, dtype, gen)
    _grads_vs_float64(t, dtype, tol, gen)


@DTYPES
@pytest.mark.parametrize("cfg,batch,dim,seqlen,dstate,groups,det", [
    ("t4:8:8:1", 2, 64, 1000, 16, None, "0"),      # the tuner's pick at batch 8: the exchange must be taken
    ("t4:16:4:1", 2, 40, 300, 16, 4, "0"),         # a partial channel block, grouped B/C
    ("t4:16:4:1", 2, 40, 300, 8, None, "0"),       # dstate 8: 16 channel lanes
    ("t4:16:4:1", 1, 48, 1000, 13, None, "1"),     # padded states, deterministic
    ("t4:8:8:1", 3, 24, 1, 16, None, "0"),         # one step (other integer specialisations)
    ("t4:8:8:1:32", 1, 64, 3000, 16, 2, "0")],     # chunk-parallel, 3 sequence groups
    ids=["8x8", "16x4-partial-grouped", "16x4-dstate8", "16x4-states13-det", "8x8-L1", "8x8-groups3"])
def test_backward_reduce_scatter_gpu(monkeypatch, cfg, batch, dim, seqlen, dstate, groups, det, dtype, tol):
    """One-warp backwards sum dB and dC by a reduce-scatter over the channel lanes (PTX shuffles on the
    layout that the launcher checks in each compiled kernel, else tl.sum): every gradient against
    float64, NaN-poisoned outputs; the first case must have taken the exchange."""
    from longseq.kernels import triton_launch
    monkeypatch.setenv("LONGSEQ_SCAN_BWD_CFGS", cfg)
    monkeypatch.setenv("LONGSEQ_DETERMINISTIC", det)
    if cfg.count(":") == 4:
        monkeypatch.setenv("LONGSEQ_SCAN_BWD_GROUPS", "3")
    triton_launch._COMPILED.clear()
    gen = torch.Generator(device=DEV).manual_seed(seqlen + dim)
    t = scan_inputs(batch, dim, seqlen, dstate, groups, dtype, gen)
    _grads_vs_float64(t, dtype, tol, gen)
    taken = [v[0] is not triton_launch.CHECK_FAILED for k, v in triton_launch._COMPILED.items() if ("BDL", 8) in k[2]]
    if cfg == "t4:8:8:1":
        assert taken == [True] or seqlen == 1, taken


def test_scan_backward_64bit_offsets_past_2_31_elements():
    # batch*dim*seqlen = 2^31 + 2^21: the backward's per-channel gradients of the first and last channels
    L = 1 << 20
    dim = 2050
    gen = torch.Generator(device=DEV).manual_seed(3)
    u = torch.randn(1, dim, L, device=DEV, dtype=torch.bfloat16, generator=gen).requires_grad_()
    delta = (torch.rand(1, dim, L, device=DEV, generator=gen) * 0.1).to(torch.bfloat16).requires_grad_()
    B = torch.randn(1, 16, L, device=DEV, generator=gen).to(torch.bfloat16)
    C = torch.randn(1, 16, L, device=DEV, generator=gen).to(torch.bfloat16)
    A = (-torch.rand(dim, 16, device=DEV, generator=gen) - 0.1).requires_grad_()
    y = T().selective_scan(u, delta, A, B, C)
    gy = torch.randn(1, 4, L, device=DEV, generator=gen).to(torch.bfloat16)
    dy = torch.zeros_like(y)
    dy[:, :2], dy[:, -2:] = gy[:, :2], gy[:, 2:]
    y.backward(dy)
    del y, dy
    for i, sl in enumerate((slice(0, 2), slice(dim - 2, dim))):
        us = u.detach()[:, sl].float().requires_grad_()
        ds = delta.detach()[:, sl].float().requires_grad_()
        As = A.detach()[sl].clone().requires_grad_()
        yr = R.selective_scan_chunked(us, ds, As, B.float(), C.float())
        yr.backward(gy[:, 2 * i:2 * i + 2].float())
        assert rel(u.grad[:, sl], us.grad) < 1e-2 and rel(delta.grad[:, sl], ds.grad) < 1e-2
        assert rel(A.grad[sl], As.grad) < 1e-2


@DTYPES
@pytest.mark.parametrize("with_init", [False, True])
@pytest.mark.parametrize("L", [1000, 5003])   # 5003: three backward chunks (2048 bf16 steps), the last partial
def test_causal_conv1d_gpu(dtype, tol, with_init, L):
    gen = torch.Generator(device=DEV).manual_seed(5)
    b, d, W = 2, 96, 4
    ts = [torch.randn(b, d, L, device=DEV, generator=gen).to(dtype), torch.randn(d, W, device=DEV, generator=gen),
          torch.randn(d, device=DEV, generator=gen), torch.randn(b, d, W - 1, device=DEV, generator=gen).to(dtype)]
    for readers in (1, 2):   # 2: the output twice (the mixer's x-projection and scan), gradients added in the kernel
        x = [v.clone().requires_grad_() for v in ts]
        xr = [v.double().requires_grad_() for v in ts]
        poison_allocator()
        y, *y2, f = T().causal_conv1d(x[0], x[1], x[2], "silu", x[3] if with_init else None, True, readers=readers)
        yr, fr = R.causal_conv1d_ref(xr[0], xr[1], xr[2], "silu", xr[3] if with_init else None, True)
        assert rel(y, yr) < tol
        gy = torch.randn(y.shape, device=DEV, generator=gen).to(dtype)
        gys = [gy] if readers == 1 else [gy, torch.randn(y.shape, device=DEV, generator=gen).to(dtype)]
        sum((t.float() * g.float()).sum() for t, g in zip([y, *y2], gys)).backward()
        (yr * sum(g.double() for g in gys)).sum().backward()
        for a, r in zip(x[:3] + (x[3:] if with_init else []), xr[:3] + (xr[3:] if with_init else [])):
            assert torch.isfinite(a.grad).all() and rel(a.grad, r.grad) < tol


@pytest.mark.parametrize("grouped", [False, True])
def test_selective_state_update_gpu(grouped):
    gen = torch.Generator(device=DEV).manual_seed(6)
    b, d, n, g = 4, 192, 16, 4
    r = lambda *s: torch.randn(*s, device=DEV, generator=gen)
    st = r(b, d, n)
    B = r(b, g, n) if grouped else r(b, n)
    C = r(*B.shape)
    args = (r(b, d), r(b, d), -torch.rand(d, n, device=DEV, generator=gen) * 4, B, C, r(d), r(b, d), r(d), True)
    s1, s2 = st.clone(), st.double()
    y = T().selective_state_update(s1, *args)
    yr = R.selective_state_update_ref(s2, *[a.double() if torch.is_tensor(a) else a for a in args])
    assert rel(y, yr) < 1e-4 and rel(s1, s2) < 1e-4


@DTYPES
def test_rms_norm_gpu(dtype, tol):
    gen = torch.Generator(device=DEV).manual_seed(7)
    shape = (4, 333, 768)
    ts = [torch.randn(shape, device=DEV, generator=gen).to(dtype), torch.randn(768, device=DEV, generator=gen),
          torch.randn(shape, device=DEV, generator=gen)]
    x = [v.clone().requires_grad_() for v in ts]
    xr = [v.double().requires_grad_() for v in ts]
    poison_allocator()
    y, s = T().rms_norm(x[0], x[1], x[2], 1e-5, True, True)
    yr, sr = R.rms_norm_ref(xr[0], xr[1], xr[2], 1e-5, True, True)
    assert rel(y, yr) < tol and rel(s, sr) < 1e-6
    gy, gs = torch.randn_like(y), torch.randn_like(s)
    ((y.float() * gy.float()).sum() + (s * gs).sum()).backward()
    ((yr * gy.double()).sum() + (sr * gs.double()).sum()).backward()
    for a, r in zip(x, xr):
        assert torch.isfinite(a.grad).all() and rel(a.grad, r.grad) < tol


def test_mamba_lm_training_step_gpu_matches_cpu():
    mamba = pytest.importorskip("longseq.heads")
    from longseq.mamba import MambaConfig
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=64, n_layer=2, vocab_size=12)
    cpu = mamba.MambaLM(cfg)
    gpu = mamba.MambaLM(cfg).to(DEV)
    gpu.load_state_dict(cpu.state_dict())
    ids = torch.randint(0, 12, (2, 700))
    losses, grads = [], []
    for model, dev in ((cpu, "cpu"), (gpu, DEV)):
        x = ids.to(dev)
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1))
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None})
    assert abs(losses[0] - losses[1]) / abs(losses[0]) < 1e-5, losses
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert rel(grads[1][n], grads[0][n]) < 1e-3, (n, rel(grads[1][n], grads[0][n]))


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-autocast"])
def test_compiled_training_step_on_cuda(dtype, mode):
    """torch.compile (inductor; fullgraph, so a graph break fails) of a MambaLM training step: the
    kernels enter as custom operators (longseq.kernels.custom_ops) and the loss and gradients are
    eager's. mode="reduce-overhead" also replays the forward and backward as CUDA graphs: the third
    call is a replay, and it is the one compared."""
    from longseq.heads import MambaLM
    from longseq.mamba import MambaConfig
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=64, n_layer=2, vocab_size=12)).to(DEV)
    ids = torch.randint(0, 12, (2, 700), device=DEV)

    def run(fn):
        model.zero_grad()
        torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            logits = fn(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 12).float(), ids[:, 1:].reshape(-1))
        loss.backward()
        return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    eager_loss, eager_grads = run(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, mode=mode)
    for _ in range(3 if mode == "reduce-overhead" else 1):
        compiled_loss, compiled_grads = run(compiled)
    tol = 1e-3 if dtype == torch.float32 else 3e-2
    assert abs(compiled_loss - eager_loss) / abs(eager_loss) < tol / 10, (compiled_loss, eager_loss)
    for n in eager_grads:
        assert rel(compiled_grads[n], eager_grads[n]) < tol, (n, rel(compiled_grads[n], eager_grads[n]))
