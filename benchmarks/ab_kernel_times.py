"""A/B of the scan's per-kernel times: a baseline copy of the package against the working tree, interleaved.

    mkdir -p .ab/head && git archive HEAD longseq benchmarks | tar -x -C .ab/head
    python benchmarks/ab_kernel_times.py --baseline .ab/head --rounds 2 \\
        --case "bfloat16 8 2048 bwd t4:16:4:1" --case "float32 1 262144 bwd t4:8:8:1:32"

Each case is "dtype batch seqlen phase config": ``kernel_times.py`` runs that phase with that configuration
(LONGSEQ_SCAN_BWD_CFGS, _FWD_CFGS or _FWD_TRAIN_CFGS) once per variant and round, baseline and current in
turn, each in a fresh process of its own copy of the benchmarks. Prints, per case, the median over the
rounds of each variant's total kernel time and the ratio current / baseline; writes the rows to
$OUT/ab_kernel_times.json (or ./ab_kernel_times.json).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KNOB = {"bwd": "LONGSEQ_SCAN_BWD_CFGS", "fwd": "LONGSEQ_SCAN_FWD_CFGS", "fwd_train": "LONGSEQ_SCAN_FWD_TRAIN_CFGS"}


def run_case(root: Path, dtype: str, batch: str, seqlen: str, phase: str, cfg: str, reps: int) -> float:
    """Total median kernel time (ms) of one phase, from a fresh kernel_times.py process in `root`."""
    with tempfile.TemporaryDirectory() as out:
        # the variant's root first; the rest of PYTHONPATH stays (e.g. another Triton, benchmarks/device_kernels.sh)
        path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, OUT=out, PYTHONPATH=path, **{KNOB[phase]: cfg})
        subprocess.run([sys.executable, str(root / "benchmarks" / "kernel_times.py"), "--dtype", dtype,
                        "--batch", batch, "--seqlen", seqlen, "--phases", phase, "--reps", str(reps)],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        row = json.loads((Path(out) / "kernel_times.jsonl").read_text().splitlines()[-1])
    return sum(row["kernels_ms"].values())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", required=True, help="a directory holding the baseline's longseq/ and benchmarks/")
    p.add_argument("--case", action="append", required=True, help='"dtype batch seqlen phase config"')
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    a = p.parse_args(argv)
    variants = {"baseline": Path(a.baseline).resolve(), "current": ROOT}
    times = {(c, v): [] for c in a.case for v in variants}
    for _ in range(a.rounds):
        for case in a.case:
            for name, root in variants.items():
                times[case, name].append(run_case(root, *case.split(), a.reps))
                print(f"  {case} {name}: {times[case, name][-1]:.4f} ms", file=sys.stderr, flush=True)
    rows = []
    print(f"{'case':44} {'baseline ms':>12} {'current ms':>11} {'ratio':>7}")
    for case in a.case:
        base, cur = (statistics.median(times[case, v]) for v in variants)
        rows.append(dict(case=case, baseline_ms=base, current_ms=cur, ratio=cur / base,
                         rounds={v: times[case, v] for v in variants}))
        print(f"{case:44} {base:12.4f} {cur:11.4f} {cur / base:7.3f}")
    import torch
    import triton
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                baseline=str(a.baseline), rows=rows)
    Path(os.environ.get("OUT", "."), "ab_kernel_times.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
