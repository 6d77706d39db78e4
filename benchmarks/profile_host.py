"""Where the time of one selective_scan training step goes outside our kernels: the host (Python and
launches) and the small PyTorch ops around the kernels.

    python3 benchmarks/profile_host.py [--dtype bfloat16] [--shape 8x1536x2048] [--out host.json]

Prints (and writes as JSON): the host time per call at a tiny shape (GPU idle) for the forward, the
training forward and forward + backward, with cProfile's top functions for forward + backward; then,
at the given shape, the GPU time of every kernel of a forward + backward (torch.profiler), against the
wall time per step with the host running ahead, so that gaps (a host-bound step) show.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from longseq.kernels import triton_ops  # noqa: E402

DEV = "cuda"


def inputs(b, d, L, dtype, grad):
    g = torch.Generator(device=DEV).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=DEV, generator=g)  # noqa: E731
    t = dict(u=r(b, d, L).to(dtype), delta=(r(b, d, L) * 0.5).to(dtype), A=-(torch.rand(d, 16, device=DEV) + 0.1),
             B=r(b, 16, L).to(dtype), C=r(b, 16, L).to(dtype), D=r(d), z=r(b, d, L).to(dtype), bias=r(d) * 0.3)
    if grad:
        for k in t:
            t[k].requires_grad_()
    return t, r(b, d, L).to(dtype)


def step(t, dy, mode):
    y = triton_ops.selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["bias"],
                                  delta_softplus=True)
    if mode == "fwd+bwd":
        for v in t.values():
            v.grad = None
        y.backward(dy)


def host_us(t, dy, mode, calls=200):
    for _ in range(20):
        step(t, dy, mode)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        step(t, dy, mode)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def host_split(t, dy, steps=200):
    """Microseconds per tiny fwd+bwd step spent in: the whole step, the forward's and the backward's
    launch functions (_fwd, _bwd), and Triton's JITFunction.run (argument binding, specialisation, the
    launch) inside them; timed by wrapping those functions with perf_counter."""
    from triton.runtime.jit import JITFunction
    from longseq.kernels import triton_scan_op as op
    acc = dict(step=0.0, fwd=0.0, bwd=0.0, triton_run=0.0)
    orig = dict(fwd=op._fwd, bwd=op._bwd, run=JITFunction.run)

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[name] += time.perf_counter() - t0
        return wrapper
    op._fwd, op._bwd = timed("fwd", orig["fwd"]), timed("bwd", orig["bwd"])
    JITFunction.run = timed("triton_run", orig["run"])
    try:
        for i in range(steps + 20):
            if i == 20:
                torch.cuda.synchronize()
                acc.update(step=0.0, fwd=0.0, bwd=0.0, triton_run=0.0)
            t0 = time.perf_counter()
            step(t, dy, "fwd+bwd")
            acc["step"] += time.perf_counter() - t0
        torch.cuda.synchronize()
    finally:
        op._fwd, op._bwd, JITFunction.run = orig["fwd"], orig["bwd"], orig["run"]
    return {k: v / steps * 1e6 for k, v in acc.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--shape", default="8x1536x2048")
    ap.add_argument("--out", default="host-profile.json")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
               triton=__import__("triton").__version__, dtype=args.dtype, shape=args.shape)

    # host time per call at a tiny shape: the GPU finishes each kernel long before the next launch
    for mode in ("fwd", "train fwd", "fwd+bwd"):
        t, dy = inputs(1, 64, 64, dtype, grad=mode != "fwd")
        with torch.set_grad_enabled(mode != "fwd"):
            res[f"host_us_{mode}"] = host_us(t, dy, mode)
        print(f"host time per call, tiny shape, {mode}: {res[f'host_us_{mode}']:.0f} us", flush=True)
    # the same tiny step with wall-clock timers around its parts (no profiler distortion)
    t, dy = inputs(1, 64, 64, dtype, grad=True)
    res["host_us_split"] = split = host_split(t, dy)
    print("host time split, tiny fwd+bwd (us per step):", {k: round(v, 1) for k, v in split.items()}, flush=True)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(200):
        step(t, dy, "fwd+bwd")
    torch.cuda.synchronize()
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
    res["cprofile_fwd_bwd_tottime"] = s.getvalue()
    print(s.getvalue(), flush=True)

    # the given shape: GPU time per kernel against wall time per step
    b, d, L = (int(x) for x in args.shape.split("x"))
    t, dy = inputs(b, d, L, dtype, grad=True)
    for _ in range(10):
        step(t, dy, "fwd+bwd")
    torch.cuda.synchronize()
    n = 20
    t0 = time.perf_counter()
    for _ in range(n):
        step(t, dy, "fwd+bwd")
    host_done = time.perf_counter()
    torch.cuda.synchronize()
    res["wall_ms_per_step"] = (time.perf_counter() - t0) / n * 1e3
    res["host_ms_per_step"] = (host_done - t0) / n * 1e3
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        for _ in range(n):
            step(t, dy, "fwd+bwd")
        torch.cuda.synchronize()
    ka = p.key_averages()
    rows = sorted(((e.key, e.count / n, e.device_time_total / n / 1e3) for e in ka if e.device_time_total > 0),
                  key=lambda r: -r[2])
    res["gpu_ms_per_step_by_kernel"] = [dict(name=k[:90], calls=c, ms=ms) for k, c, ms in rows[:25]]
    print(f"\n{args.shape} {args.dtype} fwd+bwd: wall {res['wall_ms_per_step']:.3f} ms/step, host issues a step in "
          f"{res['host_ms_per_step']:.3f} ms", flush=True)
    print(f"{'GPU ms/step':>11}  {'calls':>5}  kernel")
    for k, c, ms in rows[:25]:
        print(f"{ms:11.4f}  {c:5.1f}  {k[:90]}")
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
