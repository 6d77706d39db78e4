"""Kill a training run mid-epoch (SIGKILL, no clean-up), resume from its last checkpoint: the
resumed run's losses equal an uninterrupted run's, step for step."""
import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from longseq.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
DNA = ROOT / "configs" / "dna_nextbase_demo.yaml"


class KillAtStep(Callback):
    """Hard-kill the process when ``trainer.global_step`` reaches ``step`` (as a crash or a
    pre-empted job would: no checkpoint, no flush)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _args(root: Path, callbacks: str) -> list[str]:
    # one epoch is 12 batches; the run stops at step 10, the kill comes at step 7, the last
    # checkpoint before it is at step 4: everything happens mid-epoch
    return ["fit", "--config", str(DNA), "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.log_every_n_steps", "1", "--trainer.max_steps", "10", "--trainer.limit_val_batches", "0",
            "--model.init_args.d_model", "16", "--model.init_args.n_layer", "2", "--model.init_args.warmup_steps", "2",
            "--data.init_args.samples_per_epoch", "48", "--trainer.callbacks", callbacks]


def _losses(root: Path) -> dict[int, float]:
    out = {}
    for path in sorted(root.glob("csv/version_*/metrics.csv")):
        with open(path) as f:
            out.update({int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")})
    return out


def test_killed_run_resumes_with_identical_losses(tmp_path):
    warmup = ('{"class_path": "longseq.datamodules.SequenceLengthWarmup", "init_args": {"stages": '
              '[{"seq_len": 64, "batch_size": 4, "epochs": 1}]}}')
    ckpt_dir = tmp_path / "killed" / "checkpoints"
    last = f'{{"class_path": "longseq.tasks.LastCheckpoint", "init_args": {{"dirpath": "{ckpt_dir}", "every_n_train_steps": 4}}}}'

    run_cli(_args(tmp_path / "straight", f"[{warmup}]"))
    straight = _losses(tmp_path / "straight")
    assert sorted(straight) == list(range(10))

    kill = '{"class_path": "test_resume.KillAtStep", "init_args": {"step": 7}}'
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "longseq.cli", *_args(tmp_path / "killed", f"[{warmup}, {last}, {kill}]")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (ckpt_dir / "last.ckpt").is_file()

    run_cli(_args(tmp_path / "resumed", f"[{warmup}, {last.replace(str(ckpt_dir), str(tmp_path / 'resumed'))}]")
            + ["--ckpt_path", str(ckpt_dir / "last.ckpt")])
    resumed = _losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(4, 10))          # continues after the checkpoint at step 4
    assert [resumed[s] for s in range(4, 10)] == [straight[s] for s in range(4, 10)]
