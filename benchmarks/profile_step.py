"""Where the GPU time of one MambaLM training step goes, kernel by kernel, at a real model size.

    python3 benchmarks/profile_step.py --d-model 256 --n-layer 8 --lengths 16,20 --out step.json

The step is bench_train.py's (real E. coli windows, bf16 autocast, cross-entropy, backward, gradient
clipping, fused AdamW; batch 1). After the warm-up steps (the tuner's trials) it profiles ``--steps``
steps with torch.profiler and sums the device time of every kernel into categories: the scan (our
forward, backward and summary passes), the conv and RMSNorm kernels, matrix multiplies (cuBLAS /
CUTLASS), the optimiser, and everything else (PyTorch's elementwise ops, casts, reductions, copies),
with the top kernels of each. Against that, the wall time of a step (the batch already on the GPU,
as in bench_train.py): where the kernels' sum is well below it, the GPU waits on the host. Prints a table per length and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import GENOME, make_model, random_windows, read_genome, train_step  # noqa: E402

# first match wins; a kernel that matches none is "other"
CATEGORIES = [
    ("scan", re.compile(r"scan_(fwd|bwd)")),
    ("conv", re.compile(r"conv_(fwd|bwd)_kernel")),
    ("rmsnorm", re.compile(r"rms_(fwd|bwd)_kernel")),
    ("matmul", re.compile(r"gemm|cutlass|nvjet|xmma|cublas|sm90_|splitK|Kernel2", re.I)),
    ("optimizer", re.compile(r"multi_tensor|adam|fused_adamw|_foreach", re.I)),
]


def category(name: str) -> str:
    for cat, pattern in CATEGORIES:
        if pattern.search(name):
            return cat
    return "other"


def profile_length(L: int, args, genome) -> dict:
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = make_model("mamba", args, L, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    gen = torch.Generator().manual_seed(L)
    amp = torch.autocast("cuda", dtype=torch.bfloat16)
    # the batches prepared before timing, as bench_train.py times its steps (the CPU slicing costs
    # milliseconds that a DataLoader hides)
    wins = [random_windows(genome, L, args.batch, gen, device) for _ in range(args.warmup + 2 * args.steps)]
    for win in wins[:args.warmup]:
        train_step(model, model, opt, win, amp)
    torch.cuda.synchronize()
    walls = []
    for win in wins[args.warmup:args.warmup + args.steps]:
        t0 = time.perf_counter()
        train_step(model, model, opt, win, amp)
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for win in wins[args.warmup + args.steps:]:
            train_step(model, model, opt, win, amp)
        torch.cuda.synchronize()
    per_kernel = defaultdict(lambda: [0.0, 0])        # name -> [device µs over the profiled steps, calls]
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA and ev.device_time > 0:
            per_kernel[ev.name][0] += ev.device_time
            per_kernel[ev.name][1] += 1
    cats = defaultdict(float)
    for name, (us, _) in per_kernel.items():
        cats[category(name)] += us
    steps = args.steps
    wall_ms = statistics.median(walls) * 1e3
    kernel_ms = sum(cats.values()) / 1e3 / steps
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:args.top]
    row = dict(seq_len=L, batch=args.batch, d_model=args.d_model, n_layer=args.n_layer, wall_ms=wall_ms,
               kernels_ms=kernel_ms, tokens_per_s=args.batch * L / (wall_ms / 1e3),
               categories_ms={c: v / 1e3 / steps for c, v in sorted(cats.items(), key=lambda kv: -kv[1])},
               top_kernels=[dict(name=n[:160], category=category(n), ms=us / 1e3 / steps, calls=c // steps)
                            for n, (us, c) in top])
    del model, opt
    torch.cuda.empty_cache()
    return row


def print_row(row):
    print(f"\n== d_model {row['d_model']}, {row['n_layer']} layers, batch {row['batch']}, L {row['seq_len']}: "
          f"step {row['wall_ms']:.2f} ms wall, kernels {row['kernels_ms']:.2f} ms "
          f"({row['tokens_per_s'] / 1e6:.3f} M tokens/s)")
    for cat, ms in row["categories_ms"].items():
        print(f"  {cat:<10} {ms:9.3f} ms  {100 * ms / row['kernels_ms']:5.1f}% of kernel time")
    print("  top kernels:")
    for k in row["top_kernels"]:
        print(f"    {k['ms']:8.3f} ms  x{k['calls']:<4} [{k['category']}] {k['name'][:110]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=8)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--lengths", default="16,20", help="log2 of the sequence lengths")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    genome = read_genome(GENOME)
    rows = []
    for e in args.lengths.split(","):
        row = profile_length(2 ** int(e), args, genome)
        print_row(row)
        rows.append(row)
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                python=platform.python_version(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))


if __name__ == "__main__":
    main()
