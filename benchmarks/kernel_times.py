"""Per-kernel times of one selective-scan training step (CUDA only), with the SM clock seen meanwhile.

    python benchmarks/kernel_times.py --batch 1 --seqlen 262144 1048576 --dtype bfloat16 [--reps 5] [--phases bwd]

Runs the inference forward, the training forward and the backward ``--reps`` times each under
torch.profiler and prints the median time of every kernel launch (the chunk-parallel summary
passes separately from the main passes), in ns per token, next to the SM clock and power that
nvidia-smi reported during the runs. Configurations are the tuner's H100 choices (as in
benchmarks/profile_scan.py) unless $LONGSEQ_SCAN_*_CFGS say otherwise. Writes JSON lines to
$OUT/kernel_times.jsonl (or ./kernel_times.jsonl).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ["LONGSEQ_AUTOTUNE"] = "0"
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.profile_scan import CHOSEN  # noqa: E402
from common import scan_inputs  # noqa: E402
from longseq.kernels import triton_scan_op as op  # noqa: E402


class ClockLog:
    """nvidia-smi sampling the SM clock and power every 100 ms in the background."""

    def __enter__(self):
        self.p = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu",
                                   "--format=csv,noheader,nounits", "-lms", "100"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc):
        self.p.terminate()
        out, _ = self.p.communicate()
        rows = [r.split(", ") for r in out.strip().splitlines() if r.count(",") == 3]
        self.mhz = [float(r[1]) for r in rows if r[1].strip().replace(".", "").isdigit()]
        self.watts = [float(r[2]) for r in rows if r[2].strip().replace(".", "").isdigit()]


def phases(t):
    """(phase name, callable) of one training step's scan work."""
    args = (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["bias"], True, None)
    _, _, states, ypre = op._fwd(*args, True)
    return [("fwd", lambda: op._fwd(*args, False)),
            ("fwd_train", lambda: op._fwd(*args, True)),
            ("bwd", lambda: op._bwd(t["dy"], None, t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                                    t["bias"], True, states, [True] * 9, ypre))]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dim", type=int, default=1536)
    p.add_argument("--seqlen", type=int, nargs="+", default=[262144])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--phases", nargs="+", default=["fwd", "fwd_train", "bwd"], choices=["fwd", "fwd_train", "bwd"],
                   help="which of the step's phases to time (default: all three)")
    a = p.parse_args(argv)
    for k, (b8, b1) in CHOSEN.items():
        os.environ.setdefault(k, b1 if a.batch == 1 else b8)
    cfgs = {k: os.environ[k] for k in CHOSEN}
    if os.environ.get("LONGSEQ_SCAN_BWD_SUMMARY"):
        cfgs["LONGSEQ_SCAN_BWD_SUMMARY"] = os.environ["LONGSEQ_SCAN_BWD_SUMMARY"]
    log = open(os.path.join(os.environ.get("OUT", "."), "kernel_times.jsonl"), "a")
    print(torch.cuda.get_device_name(), cfgs)
    for L in a.seqlen:
        t = scan_inputs(a.batch, a.dim, L, getattr(torch, a.dtype))
        tokens = a.batch * L
        for name, fn in phases(t):
            if name not in a.phases:
                continue
            fn()
            torch.cuda.synchronize()
            with ClockLog() as clk, torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                t0 = time.time()
                for _ in range(a.reps):
                    fn()
                torch.cuda.synchronize()
                wall = (time.time() - t0) / a.reps
            launches = {}
            for e in prof.events():
                if e.device_type == torch.autograd.DeviceType.CUDA:
                    launches.setdefault(e.name, []).append((e.time_range.start, e.device_time_total / 1e3))
            kernels = {}
            for k, v in launches.items():
                # a kernel launched twice per call (the forward's summary pass, then its main pass)
                # is reported per position in the call: name[0], name[1]
                v.sort()
                each = len(v) // a.reps
                if each == 0:
                    continue
                for i in range(each):
                    kernels[k if each == 1 else f"{k}[{i}]"] = statistics.median(d for _, d in v[i::each])
            row = dict(dtype=a.dtype, batch=a.batch, seqlen=L, phase=name, wall_ms=round(wall * 1e3, 3),
                       kernels_ms={k[:44]: round(v, 4) for k, v in kernels.items()},
                       ns_per_token={k[:44]: round(v * 1e6 / tokens, 2) for k, v in kernels.items()},
                       sm_mhz_median=statistics.median(clk.mhz) if clk.mhz else None,
                       sm_mhz_min=min(clk.mhz) if clk.mhz else None,
                       watts_median=statistics.median(clk.watts) if clk.watts else None, cfgs=cfgs)
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(f"{a.dtype:8} b={a.batch} L={L:>8} {name:9} wall {row['wall_ms']:9.3f} ms  "
                  f"clock {row['sm_mhz_median']} (min {row['sm_mhz_min']}) MHz  {row['watts_median']} W")
            for k, v in sorted(kernels.items(), key=lambda kv: -kv[1]):
                print(f"    {k[:44]:44} {v:9.3f} ms  {v * 1e6 / tokens:8.2f} ns/token")
        del t
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
