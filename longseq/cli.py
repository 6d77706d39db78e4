"""The ``longseq`` console script.

    longseq fit      --config configs/dna_nextbase_demo.yaml [--trainer.max_steps 100 ...]
    longseq validate --config configs/dna_nextbase_demo.yaml --ckpt_path runs/dna/checkpoints/last.ckpt
    longseq test | predict  (as validate)
    longseq generate CKPT [--n 1000 | --seconds 4] -o out      (longseq.cli_infer)
    longseq classify CKPT reads.fa                               (longseq.cli_infer)

fit/validate/test/predict are Lightning's ``LightningCLI``: ``--model``/``--data`` take a class
(``NextBaseTask``, ``GenomeDataModule``...) and its arguments; unknown keys, in a YAML file or on
the command line, stop the run with an error naming the key. ``longseq fit --help`` and
``longseq fit --model NextBaseTask --help`` list every option.

Defaults added here (each can be overridden in the config):

- ``trainer.precision``: ``bf16-mixed`` on a CUDA GPU that supports bf16, else ``32-true``;
- ``trainer.gradient_clip_val``: 1.0;
- loggers: CSV (``<default_root_dir>/csv/version_N/metrics.csv``, also where confusion matrices
  and generated clips go) and TensorBoard (``<default_root_dir>/tensorboard``) when the config
  sets none;
- checkpoints: ``<default_root_dir>/checkpoints/last.ckpt`` and ``best-...ckpt`` (by the task's
  validation metric) when the config has no ``ModelCheckpoint``; ``--ckpt_path last`` resumes;
- ``ResumableTrainLoader`` (exact mid-epoch resume) and ``LearningRateMonitor``.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

# Imported so that short class names (--model NextBaseTask, --data GenomeDataModule) resolve.
from . import tasks  # noqa: F401
from .datamodules import GenomeDataModule, SpeciesDataModule, WaveformDataModule  # noqa: F401
from .datamodules.warmup import SequenceLengthWarmup  # noqa: F401
from .tasks import LastCheckpoint, LongseqTask, ResumableTrainLoader

__all__ = ["main", "LongseqCLI", "default_precision"]

USAGE = """usage: longseq {fit,validate,test,predict} --config CONFIG.yaml [--section.key value ...]
       longseq generate CKPT [options]      (longseq generate --help)
       longseq classify CKPT reads.fa [options]   (longseq classify --help)

Train and evaluate with fit/validate/test/predict (Lightning CLI; `longseq fit --help`).
Configs for the bundled data: configs/dna_nextbase_demo.yaml, configs/species_demo.yaml,
configs/audio_demo.yaml. See docs/training.md and docs/configs.md.
"""


def default_precision() -> str:
    """bf16 mixed precision on a GPU that has it, full fp32 elsewhere (CPU bf16 is slow)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


class LongseqCLI(LightningCLI):
    """LightningCLI with longseq's defaults for loggers, checkpoints and resuming (module docstring)."""

    def instantiate_trainer(self, **kwargs):
        config = self._get(self.config_init, "trainer", default={})
        root = Path(config.get("default_root_dir") or "runs/default")
        callbacks = list(config.get("callbacks") or [])
        extra = []
        if config.get("enable_checkpointing", True) is not False and not any(
                isinstance(c, ModelCheckpoint) for c in callbacks):
            model = self.model
            extra.append(ModelCheckpoint(dirpath=root / "checkpoints", filename="best-{epoch}-{step}",
                                         monitor=getattr(model, "monitor", None),
                                         mode=getattr(model, "monitor_mode", "min"), save_top_k=1))
            extra.append(LastCheckpoint(root / "checkpoints"))
        if not any(isinstance(c, ResumableTrainLoader) for c in callbacks):
            extra.append(ResumableTrainLoader())
        logger = config.get("logger", True)
        if logger is True or logger is None:
            logger = [CSVLogger(root, name="csv"), TensorBoardLogger(root, name="tensorboard")]
            kwargs.setdefault("logger", logger)
        if logger and not any(isinstance(c, LearningRateMonitor) for c in callbacks):
            extra.append(LearningRateMonitor(logging_interval="step"))
        kwargs["callbacks"] = callbacks + extra + list(kwargs.get("callbacks") or [])
        return super().instantiate_trainer(**kwargs)


def run_cli(args: list[str] | None, run: bool = True) -> LongseqCLI:
    """Build (and by default run) the Lightning CLI on ``args`` (without the program name;
    None = ``sys.argv[1:]``)."""
    with warnings.catch_warnings():
        # LightningCLI warns when args are given while sys.argv holds other words (the demo, tests)
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return _make_cli(args, run)


def _make_cli(args, run):
    return LongseqCLI(
        LongseqTask, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        trainer_defaults={"precision": default_precision(), "gradient_clip_val": 1.0,
                          "default_root_dir": "runs/default"},
        save_config_kwargs={"overwrite": True}, args=args, run=run, auto_configure_optimizers=False,
        parser_kwargs={"description": "longseq: train Mamba models on long DNA and raw audio "
                                      "(also: longseq generate / longseq classify)"})


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``longseq`` console script."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        if not argv:
            sys.exit(2)
        return
    if argv[0] in ("generate", "classify"):
        from . import cli_infer
        fn = cli_infer.main_generate if argv[0] == "generate" else cli_infer.main_classify
        sys.exit(fn(argv[1:]) or 0)
    run_cli(None if from_command_line else argv)


if __name__ == "__main__":
    main()
