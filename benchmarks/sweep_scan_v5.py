"""One device call for the v5 backward (docs/kernel_notes.md): time backward configurations of the
t4 / cm kernels (the backward alone, from one training forward's saved states) at several shapes,
check each against the first configuration's gradients, print registers and spills. Writes JSON
lines to $OUT/sweep_v5.jsonl (or ./sweep_v5.jsonl).

    python benchmarks/sweep_scan_v5.py
"""
import json
import os
import sys
import time

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from longseq.kernels import triton_scan_op as op  # noqa: E402
from longseq.kernels import triton_tune  # noqa: E402

OUT = os.environ.get("OUT", ".")
N = 16
FORCED = {}


def forced_pick(name, key, candidates, run, t):
    return FORCED.get(name) or candidates[0]


triton_tune.pick = forced_pick


def make(b, d, L, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)
    t = dict(u=r(b, d, L).to(dtype), delta=(r(b, d, L) * 0.5 - 2.0).to(dtype), z=r(b, d, L).to(dtype),
             B=r(b, N, L).to(dtype), C=r(b, N, L).to(dtype), dy=r(b, d, L).to(dtype))
    t.update(A=-torch.arange(1, N + 1, device="cuda", dtype=torch.float32).repeat(d, 1) * (1 + 0.01 * r(d, 1)).abs(),
             D=r(d), bias=r(d) * 0.1)
    return t


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def main():
    log = open(os.path.join(OUT, "sweep_v5.jsonl"), "a")
    print(torch.cuda.get_device_name(), flush=True)
    t4 = ["t4:16:8:2", "t4:8:8:1", "t4:32:8:4", "t4:16:4:2"]   # cm rows: measured before the cm backward was removed
    plans = [
        ("bfloat16", (8, 1536, 2048), ["cm:4:64:4"] + t4),
        ("float32", (8, 1536, 2048), ["cm:4:64:4"] + t4),
        ("bfloat16", (1, 1536, 262144), ["cm:2:64:4", "t4:8:8:1", "t4:4:8:1"]),
    ]
    rows = []
    for dt, (b, d, L), cfgs in plans:
        dtype = getattr(torch, dt)
        t = make(b, d, L, dtype)
        FORCED["scan_fwd"] = None
        _, _, states = op._fwd(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["bias"], True, None, True)
        ref = None
        for c in cfgs:
            f = c.split(":")
            cfg = (f[0],) + tuple(int(x) for x in f[1:])
            FORCED["scan_bwd"] = cfg

            def bwd():
                return op._bwd(t["dy"], None, t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["bias"],
                               True, states, [True] * 9)
            try:
                t0 = time.time()
                g = bwd()
                torch.cuda.synchronize()
                comp = time.time() - t0
                if ref is None:
                    ref = g
                err = max(rel(x, y) for x, y in zip(g, ref) if x is not None)
                ms = do_bench(bwd, warmup=3, rep=60 if b * L < 1 << 18 else 300, return_mode="median")
                k = op.COMPILED["scan_bwd"]
                row = dict(dtype=dt, b=b, d=d, L=L, cfg=c, bwd_ms=round(ms, 4), ns_tok_ch=round(ms * 1e6 / (b * d * L), 5),
                           rel_vs_first=err, regs=k.n_regs, spills=k.n_spills, shared=k.metadata.shared,
                           compile_s=round(comp, 1))
            except Exception as e:  # noqa: BLE001
                row = dict(dtype=dt, b=b, d=d, L=L, cfg=c, error=repr(e)[:200])
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(json.dumps(row), flush=True)
        del t, ref, states
        torch.cuda.empty_cache()
    print("\n dtype    b      L  cfg          bwd_ms  ns/tok.ch  regs spill smem  err")
    for r in rows:
        if "error" in r:
            print(f"{r['dtype']:>8} {r['b']} {r['L']:>7} {r['cfg']:12} ERROR {r['error'][:60]}")
        else:
            print(f"{r['dtype']:>8} {r['b']} {r['L']:>7} {r['cfg']:12} {r['bwd_ms']:8.3f} {r['ns_tok_ch']:9.5f} "
                  f"{r['regs']:4} {r['spills']:4} {r['shared']:5} {r['rel_vs_first']:.1e}")


if __name__ == "__main__":
    main()
