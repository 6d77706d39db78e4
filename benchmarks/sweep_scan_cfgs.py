"""One device call's configuration sweep for the selective scan (docs/kernel_notes.md v4-v6): time
forward (inference or training) or backward configurations at several shapes, check each against
the plan's first configuration, print registers, spills and shared memory. Writes JSON lines to
$OUT/sweep_cfgs.jsonl (or ./sweep_cfgs.jsonl). Replaces sweep_scan_v4.py (forward),
sweep_scan_v5.py (backward) and sweep_scan.py (the tuner's forward candidates: ``=tuner``).

    python benchmarks/sweep_scan_cfgs.py [--only fwd|train|bwd] [--quick] [--plan main|v10] [--sweep SPEC ...]
    python benchmarks/sweep_scan_cfgs.py --sweep fwd:bfloat16:8x1536x8192=tuner   # every built-in candidate

A configuration is "variant:BD:BL:warps[:per_sm]" as in LONGSEQ_SCAN_*_CFGS; the optional 5th
field is the chunk-parallel target (programs per SM) at batch 1. The backward is timed alone, from
one training forward's saved states.
"""
import argparse
import json
import os
import sys
import time

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from longseq.kernels import triton_scan_op as op  # noqa: E402
from longseq.kernels import triton_tune  # noqa: E402
from common import scan_inputs  # noqa: E402

OUT = os.environ.get("OUT", ".")
FORCED = {}


def forced_pick(name, key, candidates, run, t):
    return FORCED.get(name) or candidates[0]


triton_tune.pick = forced_pick

# (kind, dtype, (batch, dim, seqlen), configurations); the first configuration is the reference
# v10: two channels per thread (BD twice the lanes x warps: B and C broadcast through shared memory
# once for both, the L1/shared pipe being the busiest unit in Nsight Compute)
TWO = ["t4:16:8:1", "t4:32:8:2", "t4:64:8:4", "t4:32:8:1"]
PLANS_V10 = [
    ("fwd", "bfloat16", (8, 1536, 2048), ["t4:32:16:4"] + TWO),
    ("fwd", "bfloat16", (8, 1536, 8192), ["t4:32:16:4"] + TWO),
    ("train", "bfloat16", (8, 1536, 2048), ["t4:32:16:4"] + TWO),
    ("fwd", "float32", (8, 1536, 2048), ["t4:16:16:2"] + TWO),
    ("train", "float32", (8, 1536, 2048), ["t4:32:8:4"] + TWO),
    ("fwd", "bfloat16", (1, 1536, 262144), ["t4:32:16:4:8", "t4:64:8:4:4", "t4:64:8:4:8", "t4:32:8:2:8",
                                            "t4:32:8:2:16", "t4:16:8:1:16", "t4:16:8:1:24"]),
    ("train", "bfloat16", (1, 1536, 262144), ["t4:32:16:4:4", "t4:64:8:4:4", "t4:32:8:2:8", "t4:16:8:1:16"]),
    ("fwd", "float32", (1, 1536, 262144), ["t4:32:8:4:16", "t4:64:8:4:4", "t4:64:8:4:8", "t4:32:8:2:8",
                                           "t4:32:8:2:16", "t4:16:8:1:16"]),
    ("bwd", "bfloat16", (8, 1536, 2048), ["t4:8:8:1", "t4:16:4:1", "t4:8:4:1"]),
    ("bwd", "float32", (8, 1536, 2048), ["t4:4:8:1", "t4:8:8:1", "t4:16:4:1", "t4:8:4:1"]),
]
PLANS = [
    ("fwd", "bfloat16", (8, 1536, 2048), ["t4:8:16:1", "t4:32:16:4", "t4:16:16:2", "t4:32:8:4"]),
    ("train", "bfloat16", (8, 1536, 2048), ["t4:16:16:2", "t4:32:16:4", "t4:32:8:4"]),
    ("fwd", "bfloat16", (1, 1536, 262144), ["t4:32:16:4", "t4:32:16:4:4", "t4:32:16:4:8", "t4:32:8:4:8"]),
    ("fwd", "float32", (1, 1536, 262144), ["t4:32:8:4", "t4:32:8:4:4", "t4:32:8:4:8", "t4:32:16:4:8"]),
    ("bwd", "bfloat16", (8, 1536, 2048), ["t4:4:8:1", "t4:8:8:1", "t4:16:8:2", "t4:4:4:1"]),
    ("bwd", "float32", (8, 1536, 2048), ["t4:4:8:1", "t4:8:8:1", "t4:16:8:2"]),
    ("bwd", "bfloat16", (1, 1536, 262144), ["t4:4:8:1", "t4:4:8:1:16", "t4:4:8:1:32", "t4:4:8:1:48"]),
    ("bwd", "float32", (1, 1536, 262144), ["t4:4:8:1", "t4:4:8:1:32", "t4:4:8:1:48"]),
]


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["fwd", "train", "bwd"])
    ap.add_argument("--quick", action="store_true", help="batch-8 plans only")
    ap.add_argument("--plan", choices=["main", "v10"], default="main", help="v10: two channels per thread")
    ap.add_argument("--sweep", action="append", default=[], metavar="KIND:DTYPE:BxDxL=CFG,CFG,...",
                    help="an ad-hoc plan instead of --plan (repeatable), e.g. "
                         "train:bfloat16:1x1536x262144=t4:32:16:4:4,t4:32:16:4:8; =tuner times the "
                         "tuner's own candidates for that shape")
    args = ap.parse_args()
    plans = PLANS_V10 if args.plan == "v10" else PLANS
    if args.sweep:
        plans = []
        for spec in args.sweep:
            head, cfgs = spec.split("=", 1)
            kind, dt, shape = head.split(":")
            plans.append((kind, dt, tuple(int(x) for x in shape.split("x")), cfgs.split(",")))
    log = open(os.path.join(OUT, "sweep_cfgs.jsonl"), "a")
    print(torch.cuda.get_device_name(), flush=True)
    rows = []
    for kind, dt, (b, d, L), cfgs in plans:
        if (args.only and kind != args.only) or (args.quick and b == 1):
            continue
        t = scan_inputs(b, d, L, getattr(torch, dt))
        states = ypre = None
        if kind == "bwd":
            FORCED["scan_fwd"] = None
            _, _, states, ypre = op._fwd(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["bias"], True,
                                   None, True)
        if cfgs == ["tuner"]:   # the tuner's own candidates for this shape
            dev, NP = t["u"].device, 16
            cands = (op._bwd_candidates(b, d, states.shape[2], 1, dev, NP) if kind == "bwd" else
                     op._fwd_candidates(b, d, L, 1, dev, kind == "train", NP))
            cfgs = [op.cfg_text(c) for c in cands]
        ref = None
        for c in cfgs:
            if kind == "bwd":
                FORCED["scan_bwd"] = op.parse_cfg(c)
                name = "scan_bwd"

                def call():
                    return op._bwd(t["dy"], None, t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                                   t["bias"], True, states, [True] * 9, ypre)
            else:
                FORCED["scan_fwd"] = op.parse_cfg(c)
                name = "scan_fwd" + ("_train" if kind == "train" else "")

                def call():
                    return op._fwd(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["bias"], True,
                                   None, kind == "train")[:2]
            try:
                t0 = time.time()
                out = call()
                torch.cuda.synchronize()
                comp = time.time() - t0
                if ref is None:
                    ref = out
                err = max(rel(x, y) for x, y in zip(out, ref) if x is not None)
                ms = do_bench(call, warmup=3, rep=60 if b * L < 1 << 18 else 300, return_mode="median")
                k = op.COMPILED[name]
                row = dict(kind=kind, dtype=dt, b=b, d=d, L=L, cfg=c, ms=round(ms, 4),
                           ns_tok_ch=round(ms * 1e6 / (b * d * L), 5), rel_vs_first=err, regs=k.n_regs,
                           spills=k.n_spills, shared=k.metadata.shared, compile_s=round(comp, 1))
            except Exception as e:  # noqa: BLE001
                row = dict(kind=kind, dtype=dt, b=b, d=d, L=L, cfg=c, error=repr(e)[:200])
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(json.dumps(row), flush=True)
        del t, ref, states
        torch.cuda.empty_cache()
    print("\n kind   dtype    b      L  cfg            ms     ns/tok.ch  regs spill smem  err")
    for r in rows:
        if "error" in r:
            print(f"{r['kind']:5} {r['dtype']:>8} {r['b']} {r['L']:>7} {r['cfg']:14} ERROR {r['error'][:60]}")
        else:
            print(f"{r['kind']:5} {r['dtype']:>8} {r['b']} {r['L']:>7} {r['cfg']:14} {r['ms']:8.3f} {r['ns_tok_ch']:9.5f} "
                  f"{r['regs']:4} {r['spills']:4} {r['shared']:5} {r['rel_vs_first']:.1e}")


if __name__ == "__main__":
    main()
