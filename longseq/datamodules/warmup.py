"""Sequence-length warmup: train on short windows first, then longer ones.

Protocol with the data module: it has ``set_stage(seq_len, batch_size)`` and serves that window
length and batch size from the next ``train_dataloader()`` / ``val_dataloader()`` it builds
(validation follows the stage, so it is run at the length being trained and fits the same memory;
``test``/``predict`` after ``fit`` use the stage of the last epoch trained). The Trainer must rebuild the loaders every
epoch: ``Trainer(reload_dataloaders_every_n_epochs=1)``.

When the stage is set (Lightning 2.x builds the train loader at the start of an epoch *before*
``on_train_epoch_start`` runs, so that hook is too late):

- ``setup("fit")``: the stage of ``trainer.current_epoch`` (epoch 0 on a fresh run);
- ``on_load_checkpoint``: the stage of the checkpoint's epoch, so that a run resumed mid-epoch
  continues that epoch at its length (the first train loader is built right after restoring);
- ``on_train_start``: the stage of the epoch that is about to run (a checkpoint written at the end
  of epoch e resumes at e + 1; Lightning then rebuilds the loader because the epoch changed);
- ``on_train_epoch_end``: the stage of the next epoch, before its loader is built.

So the stage is always a function of the epoch, and resuming lands in the right stage.
"""
from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch.callbacks import Callback


class SequenceLengthWarmup(Callback):
    """Serve short windows first and longer ones later (HyenaDNA-style sequence-length warmup).

    Args:
        stages: list of ``{"seq_len": int, "batch_size": int, "epochs": int}``, run in order.
            After the last stage's epochs are spent, training stays in the last stage. Keep
            ``seq_len * batch_size`` about constant so every stage fits the same memory.

    Example::

        warmup = SequenceLengthWarmup([
            {"seq_len": 1024, "batch_size": 256, "epochs": 2},
            {"seq_len": 65536, "batch_size": 4, "epochs": 2},
            {"seq_len": 262144, "batch_size": 1, "epochs": 6},
        ])
        trainer = Trainer(callbacks=[warmup], reload_dataloaders_every_n_epochs=1)
    """

    def __init__(self, stages: list[dict[str, int]]):
        if not isinstance(stages, (list, tuple)) or not stages:
            raise ValueError("SequenceLengthWarmup: stages must be a non-empty list of "
                             "{'seq_len', 'batch_size', 'epochs'} dicts")
        self.stages = []
        for i, stage in enumerate(stages):
            if not isinstance(stage, dict) or set(stage) != {"seq_len", "batch_size", "epochs"}:
                raise ValueError(f"SequenceLengthWarmup: stages[{i}] must have exactly the keys "
                                 f"seq_len, batch_size, epochs; got {stage!r}")
            for key, value in stage.items():
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"SequenceLengthWarmup: stages[{i}][{key!r}] must be a positive "
                                     f"integer, got {value!r}")
            self.stages.append(dict(stage))
        self.current_stage: dict[str, int] | None = None

    def stage_for_epoch(self, epoch: int) -> dict[str, int]:
        """The stage that epoch ``epoch`` (0-based) trains in."""
        end = 0
        for stage in self.stages:
            end += stage["epochs"]
            if epoch < end:
                return stage
        return self.stages[-1]

    def _apply(self, trainer, epoch: int) -> None:
        stage = self.stage_for_epoch(epoch)
        if stage is not self.current_stage:
            trainer.datamodule.set_stage(seq_len=stage["seq_len"], batch_size=stage["batch_size"])
            self.current_stage = stage

    # --- Lightning hooks -------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError(
                "SequenceLengthWarmup needs the data loaders rebuilt every epoch: create the Trainer "
                "with reload_dataloaders_every_n_epochs=1 (it is "
                f"{trainer.reload_dataloaders_every_n_epochs})")
        datamodule = trainer.datamodule
        if datamodule is None or not callable(getattr(datamodule, "set_stage", None)):
            raise ValueError(
                "SequenceLengthWarmup needs a LightningDataModule with a set_stage(seq_len, batch_size) "
                f"method passed to trainer.fit(datamodule=...); got {type(datamodule).__name__}")
        self.current_stage = None
        self._apply(trainer, trainer.current_epoch)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if trainer.datamodule is not None and "epoch" in checkpoint:
            self._apply(trainer, int(checkpoint["epoch"]))

    def on_train_start(self, trainer, pl_module) -> None:
        self._apply(trainer, trainer.current_epoch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._apply(trainer, trainer.current_epoch + 1)

    def on_fit_end(self, trainer, pl_module) -> None:
        # test/predict after fit run at the length of the last epoch trained
        self._apply(trainer, max(trainer.current_epoch - 1, 0))

    def state_dict(self) -> dict[str, Any]:
        return {"stages": [dict(s) for s in self.stages]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("stages")
        if saved is not None and saved != self.stages:
            warnings.warn(f"SequenceLengthWarmup: the checkpoint was trained with stages {saved}; "
                          f"resuming with the stages given now, {self.stages}, by epoch number",
                          stacklevel=2)
