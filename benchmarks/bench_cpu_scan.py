"""CPU selective scan: the compiled fast path (numba, the CPU default) against the plain float64
loop (selective_scan_ref), with the chunked pure-PyTorch path (used for non-CPU devices) for
comparison.

    python benchmarks/bench_cpu_scan.py [--batch 2 --dim 256 --dstate 16 --seqlen 4096] [--out FILE]

Prints a table and writes JSON (machine, load average, versions, shapes, median times of the
forward, and of forward + backward for the compiled and chunked paths, speed-ups, first-call
compile times with an empty and with a filled numba cache). Also times the nucleotide tokenizer on 10 Mb, since it feeds every DNA
pipeline. Timings on a machine that is busy with other work are meaningless: the load average
is printed and stored, run it when the machine is idle.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, median_time, write_json  # noqa: E402

from longseq.kernels import selective_scan, selective_scan_chunked, selective_scan_ref  # noqa: E402
from longseq.tokenizers import NucleotideTokenizer  # noqa: E402


def inputs(batch, dim, dstate, seqlen, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    return dict(u=r(batch, dim, seqlen), delta=r(batch, dim, seqlen) * 0.5 - 2.0,
                A=-torch.arange(1, dstate + 1.0).repeat(dim, 1), B=r(batch, dstate, seqlen),
                C=r(batch, dstate, seqlen), D=r(dim), z=r(batch, dim, seqlen), delta_bias=r(dim) * 0.1,
                delta_softplus=True)


def train_step(fn, kw):
    """Forward + backward of a scalar loss through fn (every tensor input gets a gradient)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in kw.items() if torch.is_tensor(v)}

    def step():
        y = fn(**{**kw, **leaves})
        y.square().mean().backward()
    return step


# Run in a fresh interpreter: the first forward and forward + backward, numba compiling (or
# loading from the cache directory it is given).
_FIRST_CALL = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from longseq.kernels import selective_scan
sys.path.insert(0, {bench_dir!r})
from bench_cpu_scan import inputs
kw = inputs(1, 8, 16, 256)
t1 = time.perf_counter()
selective_scan(**kw)
t2 = time.perf_counter()
leaves = {{k: v.requires_grad_(True) for k, v in kw.items() if torch.is_tensor(v)}}
selective_scan(**kw).sum().backward()
t3 = time.perf_counter()
print(json.dumps(dict(import_s=t1 - t0, first_forward_s=t2 - t1, first_backward_s=t3 - t2)))
"""


def first_call_times() -> dict:
    code = _FIRST_CALL.format(bench_dir=str(Path(__file__).resolve().parent))
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for name in ("empty_cache", "filled_cache"):
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            out[name] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--dstate", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-train", action="store_true", help="skip the forward + backward timings")
    p.add_argument("--out", default=f"docs/benchmarks/cpu_scan-{dt.date.today().isoformat()}.json")
    a = p.parse_args(argv)
    load_before = os.getloadavg()
    kw = inputs(a.batch, a.dim, a.dstate, a.seqlen)
    fwd, train = {}, {}
    with torch.no_grad():
        fwd["plain_loop"], _ = median_time(lambda: selective_scan_ref(**kw), repeats=max(1, a.repeats // 2), warmup=0)
        fwd["compiled"], _ = median_time(lambda: selective_scan(**kw), repeats=a.repeats)
        fwd["chunked"], _ = median_time(lambda: selective_scan_chunked(**kw), repeats=max(1, a.repeats // 2))
        # accuracy on float64 inputs (a 512-step prefix: the loop is slow)
        k64 = {k: (v.double()[..., :512] if torch.is_tensor(v) and v.dim() == 3 else v) for k, v in kw.items()}
        k64.update(A=kw["A"].double(), D=kw["D"].double(), delta_bias=kw["delta_bias"].double())
        y_ref = selective_scan_ref(**k64)
        rel_err = {name: ((f(**k64) - y_ref).norm() / y_ref.norm()).item()
                   for name, f in (("compiled", selective_scan), ("chunked", selective_scan_chunked))}
    if not a.no_train:
        train["compiled"], _ = median_time(train_step(selective_scan, kw), repeats=max(1, a.repeats // 2))
        train["chunked"], _ = median_time(train_step(selective_scan_chunked, kw), repeats=max(1, a.repeats // 4))
        # (no plain-loop row: its autograd graph indexes a (batch, dim, dstate, seqlen) tensor
        # per step, so its backward costs O(seqlen^2): 10 s at seqlen 512)
    load_after = os.getloadavg()
    first = first_call_times()
    seq = ("ACGTNacgtn" * 1_000_000).encode()
    tok = NucleotideTokenizer()
    t_tok, _ = median_time(lambda: tok.encode(seq), repeats=a.repeats)

    shape = dict(batch=a.batch, dim=a.dim, dstate=a.dstate, seqlen=a.seqlen)
    ntok = a.batch * a.seqlen
    print(f"selective scan on CPU, {shape}, {torch.get_num_threads()} threads; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"{'implementation':48s} {'fwd s':>8s} {'ktok/s':>8s} {'fwd+bwd s':>10s}")
    names = {"plain_loop": "plain loop (selective_scan_ref, float64)",
             "compiled": "compiled (selective_scan on CPU: numba)",
             "chunked": "chunked PyTorch (selective_scan_chunked)"}
    for k, name in names.items():
        tr = f"{train[k]:10.3f}" if k in train else f"{'-':>10s}"
        print(f"{name:48s} {fwd[k]:8.4f} {ntok / fwd[k] / 1e3:8.1f} {tr}")
    speedup = fwd["plain_loop"] / fwd["compiled"]
    print(f"speed-up of the compiled path over the loop: {speedup:.1f}x forward"
          + (f"; over the chunked path: {train['chunked'] / train['compiled']:.1f}x forward + backward" if train else ""))
    print(f"relative error vs the loop (float64 inputs): compiled {rel_err['compiled']:.1e}, "
          f"chunked {rel_err['chunked']:.1e}")
    for k, v in first.items():
        print(f"first call, {k.replace('_', ' ')}: import {v['import_s']:.2f} s, forward {v['first_forward_s']:.2f} s, "
              f"backward {v['first_backward_s']:.2f} s")
    print(f"NucleotideTokenizer.encode, 10 Mb: {t_tok * 1e3:.1f} ms")
    import numba
    out = write_json(a.out, {
        "benchmark": "cpu_scan", "machine": machine_info(), "numba": numba.__version__,
        "numba_threading_layer": numba.threading_layer(),
        "loadavg_before": load_before, "loadavg_after": load_after, "shape": shape,
        "median_s": fwd, "train_median_s": train, "speedup": speedup,
        "train_speedup_over_chunked": (train["chunked"] / train["compiled"]) if train else None,
        "relative_error": rel_err, "first_call": first, "tokenizer_encode_10Mb_s": t_tok,
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
