"""Run each selective-scan kernel of one training step once, for Nsight Compute (CUDA only).

    ncu --clock-control none -k regex:scan_ --section SpeedOfLight --section WarpStateStats \
        python benchmarks/profile_scan.py --batch 8 --seqlen 2048 --dtype bfloat16

The configurations are the ones the tuner chose on the H100 (docs/benchmarks/scan.md) unless
$LONGSEQ_SCAN_*_CFGS say otherwise; autotuning is off, so ncu sees exactly one launch of each kernel:
the inference forward, the training forward (with the chunk-parallel pass 1 where the shape makes
one) and the backward (with its summary pass where it has one).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["LONGSEQ_AUTOTUNE"] = "0"
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from longseq.kernels import triton_scan_op as op  # noqa: E402
from common import scan_inputs  # noqa: E402

# the H100 tuner's bf16 choices (scan-h100-v11.json; the backward's from scan-h100-v25.json): (batch 8,
# batch 1 at long lengths); the
# Nsight Compute reports in docs/benchmarks/ncu-h100-v8-*.txt were taken with v8's choices
# (t4:32:16:4 / t4:32:16:4:8, t4:32:16:4 / t4:32:16:4:4, t4:8:8:1 / t4:4:8:1:32)
CHOSEN = {"LONGSEQ_SCAN_FWD_CFGS": ("t4:16:16:2", "t4:16:8:1:32"),
          "LONGSEQ_SCAN_FWD_TRAIN_CFGS": ("t4:8:16:1", "t4:8:16:1:48"),
          "LONGSEQ_SCAN_BWD_CFGS": ("t4:8:8:1", "t4:8:8:1:32")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dim", type=int, default=1536)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    a = p.parse_args(argv)
    for k, (b8, b1) in CHOSEN.items():
        os.environ.setdefault(k, b1 if a.batch == 1 else b8)
    t = scan_inputs(a.batch, a.dim, a.seqlen, getattr(torch, a.dtype))
    u, z, dy, delta, B, C, A, D, bias = (t[k] for k in ("u", "z", "dy", "delta", "B", "C", "A", "D", "bias"))
    op._fwd(u, delta, A, B, C, D, z, bias, True, None, False)
    _, _, states, ypre = op._fwd(u, delta, A, B, C, D, z, bias, True, None, True)
    op._bwd(dy, None, u, delta, A, B, C, D, z, bias, True, states, [True] * 9, ypre)
    torch.cuda.synchronize()
    print({k: os.environ[k] for k in CHOSEN})


if __name__ == "__main__":
    main()
