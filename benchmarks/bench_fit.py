"""Time per optimiser step of a whole Lightning fit through the longseq CLI, eager against
``--model.init_args.compile_mode`` (e.g. reduce-overhead: CUDA graphs), in one process.

    python3 benchmarks/bench_fit.py --config configs/dna_nextbase_demo.yaml --modes null,reduce-overhead

Each mode runs the config's fit (its warmup stages, validation, checkpoints, logging: everything
``longseq fit`` does) under a callback that times each training batch from its start to its end
(CUDA synchronised) and records the batch's shape. The first ``--skip`` batches of each shape are
compilation and tuning and are left out of the median. The fit writes to a temporary directory.
Prints a table (median ms per step per window length, the fit's wall time, the losses) and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import lightning.pytorch as pl
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from longseq.cli import run_cli  # noqa: E402


class StepTimes(pl.Callback):
    """Wall time of each training batch, by input shape."""

    def __init__(self):
        self.times = defaultdict(list)
        self._t0 = 0.0

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync()
        self.times[tuple(batch["input_ids"].shape)].append(time.perf_counter() - self._t0)


def fit(config: str, mode: str, extra: list[str], skip: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cli = run_cli(["--config", config, "--trainer.default_root_dir", tmp, "--trainer.enable_progress_bar",
                       "false", "--model.init_args.compile_mode", mode, *extra], run=False)
        probe = StepTimes()
        cli.trainer.callbacks.append(probe)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        wall = time.perf_counter() - t0
        metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
        memory = ({"peak_allocated_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
                   "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2 ** 30}
                  if torch.cuda.is_available() else {})
        del cli
    shapes = {f"{b}x{L}": dict(steps=len(ts), median_ms=1e3 * statistics.median(ts[skip:] or ts))
              for (b, L), ts in probe.times.items()}
    return dict(mode=mode, fit_wall_s=wall, steps=sum(len(t) for t in probe.times.values()), shapes=shapes,
                metrics=metrics, **memory)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "dna_nextbase_demo.yaml"))
    p.add_argument("--modes", default="null,reduce-overhead", help="compile modes, comma separated (null = eager)")
    p.add_argument("--skip", type=int, default=5, help="batches of each shape left out (compiling, tuning)")
    p.add_argument("--out", default=None)
    p.add_argument("extra", nargs="*", help="further CLI arguments for every fit (after --)")
    args = p.parse_args(argv)
    runs = [fit(args.config, mode, args.extra, args.skip) for mode in args.modes.split(",")]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    print(f"{device}; {Path(args.config).name}")
    for r in runs:
        per_shape = ", ".join(f"{s}: {v['median_ms']:.2f} ms ({v['steps']} steps)" for s, v in r["shapes"].items())
        loss = r["metrics"].get("val/bits_per_base", r["metrics"].get("val/loss", float("nan")))
        mem = f"; peak {r['peak_allocated_gib']:.1f} GiB ({r['peak_reserved_gib']:.1f} reserved)" if "peak_allocated_gib" in r else ""
        print(f"  {r['mode']:<16} fit {r['fit_wall_s']:6.1f} s, {r['steps']} steps; {per_shape}; last val {loss:.4f}{mem}")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(
            device=device, torch=torch.__version__, lightning=pl.__version__, config=args.config, extra=args.extra,
            date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), runs=runs), indent=1))


if __name__ == "__main__":
    main()
