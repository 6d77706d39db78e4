"""One device call for the v4 forward (docs/kernel_notes.md): time forward configurations of the
t4 / tm kernels at several shapes, check each against the tm kernel's output, print registers,
spills and shared memory. Writes JSON lines to $OUT/sweep_v4.jsonl (or ./sweep_v4.jsonl).

    python benchmarks/sweep_scan_v4.py [--quick]
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
             B=r(b, N, L).to(dtype), C=r(b, N, L).to(dtype))
    t.update(A=-torch.arange(1, N + 1, device="cuda", dtype=torch.float32).repeat(d, 1) * (1 + 0.01 * r(d, 1)).abs(),
             D=r(d), bias=r(d) * 0.1)
    return t


def fwd(t, cfg, train):
    FORCED["scan_fwd"] = cfg
    return op._fwd(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["bias"], True, None, train)


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def main():
    quick = "--quick" in sys.argv
    log = open(os.path.join(OUT, "sweep_v4.jsonl"), "a")
    print(torch.cuda.get_device_name(), flush=True)
    plans = {
        "bfloat16": [
            ((8, 1536, 2048), ["tm:8:32:4", "t4:32:8:4", "t4:32:16:4", "t4:32:4:4", "t4:16:16:2", "t4:16:8:2",
                               "t4:32:8:2", "t4:64:8:4", "t4:8:16:1", "t4:16:8:4"], False),
            ((8, 1536, 2048), ["tm:8:32:4", "t4:32:8:4", "t4:32:16:4", "t4:16:16:2", "t4:32:8:2", "t4:32:32:4"], True),
            ((8, 1536, 8192), ["tm:8:32:4", "t4:32:8:4", "t4:32:16:4", "t4:16:16:2"], False),
            ((1, 1536, 262144), ["tm:4:64:4", "t4:8:16:1", "t4:16:16:2", "t4:32:8:4", "t4:8:8:1"], False)],
        "float32": [
            ((8, 1536, 2048), ["tm:8:32:4", "t4:32:8:4", "t4:32:16:4", "t4:16:16:2", "t4:32:8:2", "t4:64:8:4"], False),
            ((8, 1536, 2048), ["tm:8:32:4", "t4:32:8:4", "t4:16:16:2", "t4:32:8:2"], True),
            ((1, 1536, 262144), ["tm:4:64:4", "t4:8:16:1", "t4:16:16:2"], False)],
    }
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for (b, d, L), cfgs, train in plans[str(dtype)[6:]]:
            t = make(b, d, L, dtype)
            ref = None
            for c in cfgs:
                f = c.split(":")
                cfg = (f[0],) + tuple(int(x) for x in f[1:])
                try:
                    t0 = time.time()
                    y, last, _ = fwd(t, cfg, train)
                    torch.cuda.synchronize()
                    comp = time.time() - t0
                    if ref is None:
                        ref = (y, last)
                    err = max(rel(y, ref[0]), rel(last, ref[1]))
                    ms = do_bench(lambda: fwd(t, cfg, train), warmup=10, rep=60 if b * L < 1 << 18 else 200,
                                  return_mode="median")
                    k = op.COMPILED["scan_fwd" + ("_train" if train else "")]
                    row = dict(dtype=str(dtype)[6:], b=b, d=d, L=L, train=train, cfg=c, ms=round(ms, 4),
                               ns_tok_ch=round(ms * 1e6 / (b * d * L), 5), rel_vs_first=err,
                               regs=k.n_regs, spills=k.n_spills, shared=k.metadata.shared, compile_s=round(comp, 1))
                except Exception as e:  # noqa: BLE001
                    row = dict(dtype=str(dtype)[6:], b=b, d=d, L=L, train=train, cfg=c, error=repr(e)[:200])
                rows.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
                print(json.dumps(row), flush=True)
            del t, ref
            torch.cuda.empty_cache()
    print("\n dtype    b      L  train cfg          ms     ns/tok.ch  regs spill smem  err")
    for r in rows:
        if "error" in r:
            print(f"{r['dtype']:>8} {r['b']} {r['L']:>7} {r['train']!s:5} {r['cfg']:12} ERROR {r['error'][:60]}")
        else:
            print(f"{r['dtype']:>8} {r['b']} {r['L']:>7} {r['train']!s:5} {r['cfg']:12} {r['ms']:8.3f} {r['ns_tok_ch']:9.5f} "
                  f"{r['regs']:4} {r['spills']:4} {r['shared']:5} {r['rel_vs_first']:.1e}")


if __name__ == "__main__":
    main()
