"""Waveform loader throughput and memory (DESIGN §5, issue 6).

Measures, for one loader process (what one dataloader worker does: read, mix, quantise, batch):
samples/s at seq_len 2^14, 2^17, 2^20 from 16-bit WAV and FLAC (random train windows, one
torch thread as in a worker), plus the float path (peak-normalised windows, which cannot use the
16-bit lookup table); and the peak RSS of a fresh process streaming 10 vs 1000 windows.

Data: a 16-minute real recording made by concatenating the bundled Bach prelude 8 times
(written to a temporary folder as WAV and FLAC, 16 kHz mono 16-bit).

    python benchmarks/bench_audio_loader.py [--out docs/benchmarks/audio_loader.json] [--repeats 5]

Prints a table and writes JSON (device, versions, sizes, median and all times).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from longseq.datamodules import WaveformDataModule
from longseq.datamodules.audio import bundled_audio

SEQ_LENS = (2**14, 2**17, 2**20)
TOKENS_PER_BATCH = 2**20


def make_recording(folder: Path, copies: int = 8) -> dict[str, Path]:
    x, sr = sf.read(str(bundled_audio()["piano"]), dtype="int16")
    paths = {"wav": folder / "bach_x8.wav", "flac": folder / "bach_x8.flac"}
    for p in paths.values():
        with sf.SoundFile(str(p), "w", sr, 1, subtype="PCM_16") as f:
            for _ in range(copies):
                f.write(x)
    return paths


def throughput(path: Path, seq_len: int, repeats: int, windows: int, normalize=None) -> dict:
    batch = max(1, TOKENS_PER_BATCH // seq_len)
    dm = WaveformDataModule(str(path), seq_len=seq_len, batch_size=batch, split_by="time",
                            splits=(1.0, 0.0, 0.0), windows_per_epoch=windows, normalize=normalize)
    loader = dm.train_dataloader()
    next(iter(loader))  # warm: open the file, build the token table
    times, samples = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        samples = sum(b["input_ids"].numel() for b in loader)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"seq_len": seq_len, "batch_size": batch, "windows": windows, "samples": samples,
            "median_s": med, "times_s": times, "samples_per_s": samples / med}


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024


def rss_child(path: str, seq_len: int, windows: int) -> None:
    """Run in a fresh process: stream `windows` windows; print the RSS before the first window
    and the peak RSS while streaming (Linux: the peak is reset after the imports through
    /proc/self/clear_refs, so it measures the streaming, not importing torch)."""
    torch.set_num_threads(1)
    dm = WaveformDataModule(path, seq_len=seq_len, batch_size=1, split_by="time", splits=(1.0, 0.0, 0.0),
                            windows_per_epoch=windows)
    loader = dm.train_dataloader()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_mb("VmRSS")
    n = sum(1 for _ in loader)
    print(json.dumps({"windows": n, "rss_before_mb": before, "peak_rss_mb": _status_mb("VmHWM")}))


def device() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{model}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f} at start"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/benchmarks/audio_loader.json")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--samples", type=int, default=2**24, help="samples per timed pass")
    ap.add_argument("--rss-child", nargs=3, metavar=("PATH", "SEQ_LEN", "WINDOWS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]), int(args.rss_child[2]))
        return
    torch.set_num_threads(1)  # as in a dataloader worker
    dev = device()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_recording(Path(tmp))
        frames = sf.info(str(paths["wav"])).frames
        cases = [("wav", None), ("flac", None), ("wav", "peak")]
        for fmt, norm in cases:
            for L in SEQ_LENS:
                r = throughput(paths[fmt], L, args.repeats, max(1, args.samples // L), norm)
                r.update(format=fmt, path="float (peak-normalised)" if norm else "int16 table")
                rows.append(r)
                print(f"{fmt:5s} {r['path']:24s} seq_len 2^{L.bit_length() - 1:<2d} batch {r['batch_size']:3d}: "
                      f"{r['samples_per_s'] / 1e6:8.1f} M samples/s (median of {args.repeats})", flush=True)
        rss = {}
        for n in (10, 1000):
            out = subprocess.run([sys.executable, __file__, "--rss-child", str(paths["wav"]), str(2**17), str(n)],
                                 capture_output=True, text=True, check=True)
            rss[n] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"peak RSS streaming {n:4d} windows of 2^17 from WAV: {rss[n]['peak_rss_mb']:.1f} MB "
                  f"(RSS before the first window {rss[n]['rss_before_mb']:.1f} MB)")
    result = {
        "benchmark": "audio_loader", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": dev, "torch_threads": 1, "load_average_end": os.getloadavg()[0],
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "soundfile": sf.__version__, "libsndfile": sf.__libsndfile_version__,
                     "soxr": soxr.__version__, "longseq_commit": _git_commit()},
        "data": {"source": "bundled bwv846.flac x 8", "frames": frames, "sample_rate": 16000,
                 "formats": "WAV and FLAC, mono PCM_16"},
        "tokens_per_batch": TOKENS_PER_BATCH, "quantization": "mu-law 8 bit", "repeats": args.repeats,
        "throughput": rows,
        "peak_rss_mb": {str(n): rss[n] for n in rss},
        "target": ">= 20 M samples/s per worker from WAV at 2^20",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
