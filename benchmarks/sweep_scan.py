"""Time the forward scan kernel's configurations (block sizes, warps, group counts) at one shape; print the table and the best.

    python benchmarks/sweep_scan.py [--dtype bf16] [--batch 8 --dim 1536 --seqlen 8192]

Prints one line per configuration ("t4", BD, BL, num_warps[, programs per SM]: ms, GB/s, registers, spills) and,
last, ``BEST=<cfgs>``: the fastest few, in the format of LONGSEQ_SCAN_FWD_CFGS.
"""
import argparse
import os
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from longseq.kernels import triton_scan_op  # noqa: E402
from longseq.kernels import triton_tune  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--dtype", default="bf16")
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--dim", type=int, default=1536)
ap.add_argument("--seqlen", type=int, default=8192)
ap.add_argument("--train", action="store_true", help="save chunk states (BL fixed to the training chunk)")
ap.add_argument("--top", type=int, default=6)
a = ap.parse_args()
dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
b, d, L, n = a.batch, a.dim, a.seqlen, 16
g = torch.Generator(device="cuda").manual_seed(0)
r = lambda *s: torch.randn(*s, device="cuda", generator=g)
u, delta, z = r(b, d, L).to(dtype), (r(b, d, L) * 0.5 - 2).to(dtype), r(b, d, L).to(dtype)
B, C = r(b, n, L).to(dtype), r(b, n, L).to(dtype)
A = -torch.rand(d, n, device="cuda") * 16
D, bias = r(d), r(d) * 0.1
es = torch.finfo(dtype).bits // 8
nbytes = (4 * b * d * L + 2 * b * n * L) * es
results = []
orig_pick = triton_tune.pick


def sweep_pick(name, key, candidates, run, t):
    if name != "scan_fwd":
        return orig_pick(name, key, candidates, run, t)
    for cfg in candidates:
        try:
            ms = do_bench(lambda: run(cfg), warmup=5, rep=40, return_mode="median")
        except Exception as e:  # noqa: BLE001
            print(f"{cfg}: failed {type(e).__name__}", flush=True)
            continue
        k = triton_scan_op.COMPILED.get("scan_fwd_train" if a.train else "scan_fwd")
        results.append((ms, cfg, getattr(k, "n_regs", None), getattr(k, "n_spills", None)))
        print(f"{cfg}: {ms:.3f} ms  {nbytes / ms / 1e6:.0f} GB/s  regs {results[-1][2]} spills {results[-1][3]}", flush=True)
    return min(results)[1]


triton_tune.pick = sweep_pick
os.environ.pop("LONGSEQ_SCAN_FWD_CFGS", None)
if a.train:
    triton_scan_op._fwd(u, delta, A, B, C, D, z, bias, True, None, True)
else:
    with torch.no_grad():
        triton_scan_op._fwd(u, delta, A, B, C, D, z, bias, True, None, False)
results.sort()
print("BEST=" + ",".join(":".join(str(x) for x in c) for _, c, _, _ in results[: a.top]))
