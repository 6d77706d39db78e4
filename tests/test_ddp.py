"""The same config under DDP on CPU: 2 processes (gloo) train; validation metrics are summed
across ranks, so the DDP run's val bits per base equals a single process validating the same
checkpoint on the same windows."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DNA = ROOT / "configs" / "dna_nextbase_demo.yaml"


def _val(path: Path) -> list[tuple[float, float]]:
    with open(path) as f:
        return [(float(r["val/bits_per_base"]), float(r["val/bases"])) for r in csv.DictReader(f)
                if r.get("val/bits_per_base")]


def test_ddp_two_cpu_processes_train_and_sum_metrics_across_ranks(tmp_path):
    root = tmp_path / "ddp"
    common = ["--config", str(DNA), "--trainer.default_root_dir", str(root),
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--model.init_args.d_model", "16", "--model.init_args.n_layer", "1",
              "--trainer.callbacks", '[{"class_path": "longseq.datamodules.SequenceLengthWarmup", "init_args": '
              '{"stages": [{"seq_len": 64, "batch_size": 4, "epochs": 1}]}}]',
              "--data.init_args.max_eval_windows", "10"]        # 10 windows: 5 per rank
    fit = subprocess.run([sys.executable, "-m", "longseq.cli", "fit", *common, "--trainer.accelerator", "cpu",
                          "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_steps", "3",
                          "--trainer.limit_train_batches", "3", "--trainer.max_epochs", "1"],
                         capture_output=True, text=True, timeout=400)
    assert fit.returncode == 0, fit.stderr[-4000:]
    assert "world_size: 2" in fit.stderr or "distributed_backend=gloo" in fit.stderr
    ddp_val = _val(root / "csv" / "version_0" / "metrics.csv")
    assert len(ddp_val) == 1 and ddp_val[0][1] == 10 * 64          # every window once, over both ranks
    ckpt = root / "checkpoints" / "last.ckpt"
    one = subprocess.run([sys.executable, "-m", "longseq.cli", "validate", *common, "--trainer.devices", "1",
                          "--ckpt_path", str(ckpt)], capture_output=True, text=True, timeout=400)
    assert one.returncode == 0, one.stderr[-4000:]
    single = _val(root / "csv" / "version_1" / "metrics.csv")
    assert single[0][1] == ddp_val[0][1]
    assert single[0][0] == pytest.approx(ddp_val[0][0], rel=1e-6)
