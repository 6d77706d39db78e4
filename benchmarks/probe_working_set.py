"""Why is the fp32 forward slower per token at batch 1 and 1M than at 256K (docs/kernel_notes.md,
Open questions)? Two candidate causes predict different things:

- the distance between a program's rows (4 MB at fp32 1M, 1 MB at 256K): dim 384 at 1M is slow;
- the bytes the whole grid streams at once (address translation reach): dim 384 at 1M is as fast
  as dim 1536 at 256K (same bytes, same group length), and dim 1536 at 1M run as four launches of
  384 channels each is fast too.

Every case runs one forward configuration with the sequence groups forced to the same length
(8192 steps), so each program does the same work; --case DIM:SEQLEN:LAUNCHES:PAD picks the cases
(PAD > 0: every (..., seqlen) buffer in rows of seqlen + PAD, off the power-of-two stride), --bwd
times the backward instead. Prints a table, writes $OUT/probe_working_set.json. Results and their
reading: docs/benchmarks/probe-working-set-h100.txt, docs/kernel_notes.md v15.

    python benchmarks/probe_working_set.py [--cfgs t4:16:8:1,t4p2:32:16:4] [--dtype float32]
        [--case 384:1048576:1:64 ...] [--bwd t4:16:4:1:32]
"""
import argparse
import json
import os
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from longseq.kernels import triton_scan_op as op  # noqa: E402
from longseq.kernels import triton_tune  # noqa: E402
from common import scan_inputs  # noqa: E402

GROUP_STEPS = 8192
FORCED = {}
triton_tune.pick = lambda name, key, candidates, run, t: FORCED[name]


class PaddedTorch:
    """Stands in for torch inside triton_scan_op so that the (..., seqlen) buffers it allocates
    (y, the pre-gate output, du, ddelta, dz, the dB/dC sums) get rows of seqlen + pad as well."""
    pad = seqlen = 0

    def __getattr__(self, name):
        return getattr(torch, name)

    def empty(self, shape, **kw):
        if self.pad and len(shape) >= 3 and shape[-1] == self.seqlen:
            return torch.empty(tuple(shape[:-1]) + (shape[-1] + self.pad,), **kw)[..., :shape[-1]]
        return torch.empty(shape, **kw)

    def empty_like(self, x, **kw):
        return self.empty(x.shape, device=x.device, dtype=kw.get("dtype", x.dtype))


op.torch = PADDED = PaddedTorch()

# (dim, seqlen, launches, pad): launches > 1 runs the channels as that many separate launches; pad > 0
# stores each row of u, delta, z in a row of seqlen + pad (rows further apart; y stays contiguous)
CASES = [(1536, 1 << 18, 1, 0), (384, 1 << 20, 1, 0), (6144, 1 << 18, 1, 0), (1536, 1 << 20, 1, 0),
         (1536, 1 << 20, 4, 0)]


def backward(t, states, ypre):
    op._bwd(t["dy"], None, t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["bias"], True, states,
            [True] * 9, ypre)


def forward(t, launches):
    d = t["u"].shape[1]
    step = d // launches
    for s in range(0, d, step):
        c = slice(s, s + step)
        op._fwd(t["u"][:, c], t["delta"][:, c], t["A"][c], t["B"], t["C"], t["D"][c], t["z"][:, c], t["bias"][c],
                True, None, False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cfgs", default="t4:16:8:1,t4p2:32:16:4")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--bwd", metavar="CFG", help="time the backward with this configuration (and the training "
                    "forward with --cfgs' first) instead of the forward")
    ap.add_argument("--case", action="append", default=[], metavar="DIM:SEQLEN:LAUNCHES:PAD",
                    help="instead of the default cases (repeatable)")
    args = ap.parse_args()
    cases = [tuple(int(x) for x in c.split(":")) for c in args.case] or CASES
    dtype = getattr(torch, args.dtype)
    rows = []
    print(torch.cuda.get_device_name(), flush=True)
    for d, L, launches, pad in cases:
        t = scan_inputs(1, d, L, dtype, pad=pad)
        PADDED.pad, PADDED.seqlen = pad, L
        os.environ["LONGSEQ_SCAN_GROUPS"] = str(max(1, L // GROUP_STEPS))
        for cfg in ([args.bwd] if args.bwd else args.cfgs.split(",")):
            FORCED["scan_fwd"] = op.parse_cfg(args.cfgs.split(",")[0] if args.bwd else cfg)
            if args.bwd:
                FORCED["scan_bwd"] = op.parse_cfg(cfg)
                _, _, states, ypre = op._fwd(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["bias"],
                                             True, None, True)
                call = lambda: backward(t, states, ypre)  # noqa: E731
            else:
                call = lambda: forward(t, launches)  # noqa: E731
            call()
            torch.cuda.synchronize()
            ms = do_bench(call, warmup=3, rep=400, return_mode="median")
            gb = d * L * t["u"].element_size() / 1e9
            row = dict(cfg=cfg, kind="bwd" if args.bwd else "fwd", dtype=args.dtype, dim=d, seqlen=L,
                       launches=launches, pad=pad, groups=L // GROUP_STEPS,
                       tensor_GB=round(gb, 2), row_bytes=t["u"].stride(1) * t["u"].element_size(), ms=round(ms, 3),
                       ns_per_token_channel=round(ms * 1e6 / (d * L), 5))
            rows.append(row)
            print(json.dumps(row), flush=True)
        del t, call
        states = ypre = None
        torch.cuda.empty_cache()
    os.environ.pop("LONGSEQ_SCAN_GROUPS", None)
    print("\ncfg              dim    seqlen launches  GB/tensor  row_bytes      ms  ns/(token*channel)")
    for r in rows:
        print(f"{r['cfg']:16} {r['dim']:5} {r['seqlen']:9} {r['launches']:8} {r['tensor_GB']:10} {r['row_bytes']:10} "
              f"{r['ms']:8.3f} {r['ns_per_token_channel']:.5f}")
    with open(os.path.join(os.environ.get("OUT", "."), "probe_working_set.json"), "w") as fh:
        json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), fh, indent=1)


if __name__ == "__main__":
    main()
