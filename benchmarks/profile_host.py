"""Where the time of one selective_scan training step goes outside our kernels: the host (Python and
launches) and the small PyTorch ops around the kernels.

    python3 benchmarks/profile_host.py [--dtype bfloat16] [--shape 8x1536x2048] [--out host.json]

Prints (and writes as JSON): the host time per call at a tiny shape (GPU idle) for the forward, the
training forward and forward + backward, each with our direct kernel launches (triton_launch.py) and
with Triton's own (LONGSEQ_TRITON_LAUNCH=triton), interleaved; the floor that PyTorch alone sets (an
autograd Function with the same inputs whose kernels are single torch.empty_like calls); a small
MambaBackbone training step (the demo's size) both ways; cProfile's top functions for forward +
backward; then, at the given shape, the GPU time of every kernel of a forward + backward
(torch.profiler), against the wall time per step with the host running ahead, so that gaps (a
host-bound step) show.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
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


def host_us(t, dy, mode, calls=200, step_fn=step):
    for _ in range(20):
        step_fn(t, dy, mode)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        step_fn(t, dy, mode)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


class _FloorFn(torch.autograd.Function):
    """What PyTorch alone costs per call: the scan's autograd Function shape (8 tensor inputs, one
    output) with each kernel replaced by torch.empty_like."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias):
        ctx.save_for_backward(u, delta, A, B, C, D, z, bias)
        return torch.empty_like(u)

    @staticmethod
    def backward(ctx, dy):
        return tuple(torch.empty_like(x) for x in ctx.saved_tensors)


def floor_step(t, dy, mode):
    y = _FloorFn.apply(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["bias"])
    if mode == "fwd+bwd":
        for v in t.values():
            v.grad = None
        y.backward(dy)


def with_launch(launch, fn, *args):
    """fn(*args) with LONGSEQ_TRITON_LAUNCH=launch ("direct": our launches, "triton": Triton's own)."""
    old = os.environ.get("LONGSEQ_TRITON_LAUNCH")
    os.environ["LONGSEQ_TRITON_LAUNCH"] = launch
    try:
        return fn(*args)
    finally:
        if old is None:
            del os.environ["LONGSEQ_TRITON_LAUNCH"]
        else:
            os.environ["LONGSEQ_TRITON_LAUNCH"] = old


def model_step_ms(model, ids, steps=50):
    """Wall ms per training step (forward, loss, backward) of a small model; synchronised at the end
    only, so at this size the host's time is what shows."""
    def one():
        for p in model.parameters():
            p.grad = None
        model(ids).float().square().mean().backward()
    for _ in range(5):
        one()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3


def cprofile_top(fn, rows=25) -> str:
    """cProfile's top functions by own time over fn() (which ends with a synchronize)."""
    prof = cProfile.Profile()
    prof.enable()
    fn()
    torch.cuda.synchronize()
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(rows)
    return s.getvalue()


def host_split(t, dy, steps=200):
    """Microseconds per tiny fwd+bwd step spent in: the whole step, the forward's and the backward's
    launch functions (_fwd, _bwd), the kernel launches inside them (triton_launch.launch) and, of
    those, Triton's JITFunction.run (argument binding, specialisation, the launch; with our direct
    launches only on a key's first call), the direct launches' cache key (args_key) and Triton's
    launcher (the compiled kernel's run: argument conversion and the driver call, in both paths);
    timed by wrapping those functions with perf_counter."""
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction
    from longseq.kernels import triton_launch as TL
    from longseq.kernels import triton_scan_op as op
    launcher_cls = driver.active.launcher_cls
    names = ("step", "fwd", "bwd", "launch", "triton_run", "args_key", "launcher")
    acc = dict.fromkeys(names, 0.0)
    orig = dict(fwd=op._fwd, bwd=op._bwd, launch=op.launch, run=JITFunction.run, args_key=TL._args_key,
                launcher=launcher_cls.__call__)

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[name] += time.perf_counter() - t0
        return wrapper
    op._fwd, op._bwd, op.launch = timed("fwd", orig["fwd"]), timed("bwd", orig["bwd"]), timed("launch", orig["launch"])
    JITFunction.run = timed("triton_run", orig["run"])
    TL._args_key = timed("args_key", orig["args_key"])
    launcher_cls.__call__ = timed("launcher", orig["launcher"])
    try:
        for i in range(steps + 20):
            if i == 20:
                torch.cuda.synchronize()
                acc.update(dict.fromkeys(names, 0.0))
            t0 = time.perf_counter()
            step(t, dy, "fwd+bwd")
            acc["step"] += time.perf_counter() - t0
        torch.cuda.synchronize()
    finally:
        op._fwd, op._bwd, op.launch, JITFunction.run = orig["fwd"], orig["bwd"], orig["launch"], orig["run"]
        TL._args_key, launcher_cls.__call__ = orig["args_key"], orig["launcher"]
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

    # host time per call at a tiny shape: the GPU finishes each kernel long before the next launch;
    # our direct launches and Triton's own, interleaved 5 times (medians), so that host drift cancels
    for mode in ("fwd", "train fwd", "fwd+bwd"):
        t, dy = inputs(1, 64, 64, dtype, grad=mode != "fwd")
        with torch.set_grad_enabled(mode != "fwd"):
            runs = {"direct": [], "triton": []}
            for _ in range(5):
                for launch in runs:
                    runs[launch].append(with_launch(launch, host_us, t, dy, mode))
            floor = statistics.median(host_us(t, dy, mode, step_fn=floor_step) for _ in range(3))
        for launch, v in runs.items():
            res[f"host_us_{mode}_{launch}"] = statistics.median(v)
        res[f"host_us_{mode}_floor"] = floor
        print(f"host time per call, tiny shape, {mode}: {res[f'host_us_{mode}_direct']:.0f} us with our launches, "
              f"{res[f'host_us_{mode}_triton']:.0f} us with Triton's, {floor:.0f} us for PyTorch alone "
              f"(an autograd Function with torch.empty_like for kernels)", flush=True)
    # a small model's training step, host-bound: the demo's size (d_model 64, 2 layers, 16 x 256)
    from longseq.mamba import MambaBackbone, MambaConfig
    model = MambaBackbone(MambaConfig(d_model=64, n_layer=2, vocab_size=16)).to(DEV)
    ids = torch.randint(0, 4, (16, 256), device=DEV)
    runs = {"direct": [], "triton": []}
    for _ in range(3):
        for launch in runs:
            runs[launch].append(with_launch(launch, model_step_ms, model, ids))
    for launch, v in runs.items():
        res[f"model_step_ms_{launch}"] = statistics.median(v)
    print(f"MambaBackbone d_model 64, 2 layers, 16 x 256, fp32 training step: {res['model_step_ms_direct']:.3f} ms "
          f"with our launches, {res['model_step_ms_triton']:.3f} ms with Triton's", flush=True)
    res["cprofile_model_step_tottime"] = text = cprofile_top(lambda: model_step_ms(model, ids, steps=20))
    print(text, flush=True)
    # the same tiny step with wall-clock timers around its parts (no profiler distortion)
    t, dy = inputs(1, 64, 64, dtype, grad=True)
    for launch in ("direct", "triton"):
        res[f"host_us_split_{launch}"] = split = with_launch(launch, host_split, t, dy)
        print(f"host time split, tiny fwd+bwd, {launch} launches (us per step):",
              {k: round(v, 1) for k, v in split.items()}, flush=True)
    res["cprofile_fwd_bwd_tottime"] = text = cprofile_top(lambda: [step(t, dy, "fwd+bwd") for _ in range(200)])
    print(text, flush=True)

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
