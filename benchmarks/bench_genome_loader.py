"""Genome loader throughput and memory: windows/s and Mb/s by seq_len and worker count, peak RSS.

    python benchmarks/bench_genome_loader.py                      # bundled E. coli, writes JSON
    python benchmarks/bench_genome_loader.py --fasta GRCh38.fa.gz --out my.json

Throughput is timed from the first batch on (worker start-up excluded), median of --repeats runs;
Mb/s counts input bases delivered (B x L per batch). "per worker" divides by max(1, workers).
The FASTA is read through the page cache (a warm file), so this is the loader's CPU cost, not
the disk's. Peak RSS is measured in a fresh process per point (ru_maxrss), drawing N windows
with num_workers=0: it must not grow with N.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from longseq.datamodules import GenomeDataModule
from longseq.datamodules.genome import bundled_genome

ROOT = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def batch_size_for(seq_len: int) -> int:
    return max(1, 2 ** 17 // seq_len)        # ~128k tokens per batch, 1 window at 2^17 and above


def throughput(fasta, seq_len, workers, mb, repeats):
    bs = batch_size_for(seq_len)
    samples = max(4 * bs, math.ceil(mb * 1e6 * max(1, workers) / seq_len))
    samples = math.ceil(samples / (bs * max(1, workers))) * bs * max(1, workers) + bs * max(1, workers)
    times, windows = [], 0
    for r in range(repeats):
        dm = GenomeDataModule(fasta, seq_len=seq_len, batch_size=bs, samples_per_epoch=samples,
                              num_workers=workers, seed=r)
        it = iter(dm.train_dataloader())
        next(it)                                          # worker start-up and first batch excluded
        t0, n = time.perf_counter(), 0
        for batch in it:
            n += batch["input_ids"].shape[0]
        times.append(time.perf_counter() - t0)
        windows = n
        del it
    sec = statistics.median(times)
    return {"seq_len": seq_len, "workers": workers, "batch_size": bs, "windows": windows,
            "seconds_median": sec, "seconds_all": times, "windows_per_s": windows / sec,
            "mb_per_s": windows * seq_len / sec / 1e6,
            "mb_per_s_per_worker": windows * seq_len / sec / 1e6 / max(1, workers)}


def rss_child(fasta, seq_len, n):
    dm = GenomeDataModule(fasta, seq_len=seq_len, batch_size=1, samples_per_epoch=n, num_workers=0)
    count = sum(b["input_ids"].shape[0] for b in dm.train_dataloader())
    assert count == n, count
    print(json.dumps({"seq_len": seq_len, "windows": n,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak_rss(fasta, seq_len, n):
    out = subprocess.run([sys.executable, __file__, "--fasta", str(fasta), "--rss-child", str(seq_len), str(n)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fasta", default=str(bundled_genome()))
    p.add_argument("--log2-seq-lens", type=int, nargs="+", default=[10, 16, 20])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--mb", type=float, default=64, help="megabases timed per worker per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rss-windows", type=int, nargs="+", default=[10, 1000])
    p.add_argument("--rss-log2-seq-lens", type=int, nargs="+", default=[16, 20])
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "genome_loader.json"))
    p.add_argument("--rss-child", type=int, nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        return rss_child(args.fasta, *args.rss_child)

    GenomeDataModule(args.fasta).prepare_data()          # decompress / index outside the timings
    load_before = os.getloadavg()
    rows = []
    print(f"{'seq_len':>9} {'workers':>7} {'batch':>5} {'windows/s':>10} {'Mb/s':>8} {'Mb/s/worker':>11}")
    for k in args.log2_seq_lens:
        for w in args.workers:
            r = throughput(args.fasta, 2 ** k, w, args.mb, args.repeats)
            rows.append(r)
            print(f"{'2^%d' % k:>9} {w:>7} {r['batch_size']:>5} {r['windows_per_s']:>10.1f} "
                  f"{r['mb_per_s']:>8.1f} {r['mb_per_s_per_worker']:>11.1f}", flush=True)
    rss = []
    print(f"\n{'seq_len':>9} {'windows':>8} {'peak RSS MB':>12}")
    for k in args.rss_log2_seq_lens:
        for n in args.rss_windows:
            r = peak_rss(args.fasta, 2 ** k, n)
            rss.append(r)
            print(f"{'2^%d' % k:>9} {n:>8} {r['peak_rss_mb']:>12.1f}", flush=True)

    import lightning
    import pyfaidx
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    result = {
        "benchmark": "genome_loader", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                   "torch_threads": torch.get_num_threads(),
                   # other work on the machine skews the numbers: 1-min load average before and after
                   "loadavg_1min_before_after": [load_before[0], os.getloadavg()[0]]},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "pyfaidx": pyfaidx.__version__, "lightning": lightning.__version__, "commit": commit},
        "fasta": str(args.fasta), "mb_per_worker_per_run": args.mb, "repeats": args.repeats,
        "throughput": rows, "peak_rss": rss,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{args.out}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
