"""Exact mid-epoch resume for data modules whose train loader is a deterministic stream.

Lightning restores model, optimiser, schedule and loop counters from a checkpoint, but it can only
put the *data* back where it was if the train loader has ``state_dict`` / ``load_state_dict``.
The longseq data modules draw an epoch's training windows from a generator seeded by (seed,
epoch, shard), so the stream of an epoch is reproducible: skipping the batches already trained
on puts it exactly where the killed run stopped. ``ResumableTrainLoader`` adds that to any data
module by wrapping what its ``train_dataloader()`` returns.
"""
from __future__ import annotations

import os
import warnings

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

__all__ = ["ResumableTrainLoader", "SkippingLoader", "LastCheckpoint"]


class SkippingLoader:
    """Wraps a train loader; its state is (epoch, batches trained); after ``load_state_dict`` the
    next iteration skips the batches that were already trained on in that epoch."""

    def __init__(self, loader, trainer):
        self.loader, self.trainer, self._skip = loader, trainer, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):          # dataset, batch_size, num_workers... of the wrapped loader
        if name in ("loader", "trainer", "_skip"):
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self):
        # a generator: the skip count is read at the first next(), so a state loaded after
        # iter() was called (but before the first batch) still applies
        skip, self._skip = self._skip, 0
        iterator = iter(self.loader)
        for _ in range(skip):
            next(iterator)
        yield from iterator

    def state_dict(self) -> dict:
        # batches whose training step has run in this epoch (saved from on_train_batch_end or
        # on_validation_end, both after the step); the restarted loop continues with the next one
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": int(self.trainer.current_epoch), "batches": int(progress.processed)}

    def load_state_dict(self, state: dict) -> None:
        epoch, batches = int(state.get("epoch", -1)), int(state.get("batches", 0))
        try:
            length = len(self.loader)
        except TypeError:
            length = None
        if epoch == self.trainer.current_epoch and batches > 0 and (length is None or batches < length):
            self._skip = batches


class ResumableTrainLoader(Callback):
    """Make ``trainer.datamodule``'s train loader resumable mid-epoch (see module docstring).

    The ``longseq`` CLI adds it to every run. Resuming from a checkpoint saved mid-epoch then
    continues with exactly the batches the interrupted run would have seen next, so its losses
    equal an uninterrupted run's (on the same hardware and settings). The data module must serve
    the same stream for the same epoch (longseq's do: windows are seeded by seed, epoch, shard).
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        if dm is None:
            warnings.warn("ResumableTrainLoader: no data module (loaders passed to fit directly); "
                          "mid-epoch resume will restart the epoch's data stream", stacklevel=2)
            return
        build = dm.train_dataloader
        if getattr(build, "_longseq_resumable", False):
            return

        def train_dataloader():
            loader = build()
            return loader if hasattr(loader, "state_dict") else SkippingLoader(loader, trainer)

        train_dataloader._longseq_resumable = True
        dm.train_dataloader = train_dataloader


class LastCheckpoint(ModelCheckpoint):
    """``<dirpath>/last.ckpt``: always the latest weights (``--ckpt_path last`` resumes from it).

    Lightning's ``save_last=True`` only refreshes last.ckpt when a top-k checkpoint was written
    (in Lightning 2.6), so with a monitored metric that did not improve "last" falls behind. This
    callback writes last.ckpt after every validation (or epoch end without validation) and once
    more when training stops (e.g. at ``max_steps`` mid-epoch) if the weights changed since.
    """

    def __init__(self, dirpath, every_n_train_steps: int | None = None):
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1,
                         every_n_train_steps=every_n_train_steps, enable_version_counter=False)

    def on_train_end(self, trainer, pl_module) -> None:
        # _last_global_step_saved: Lightning's own record of the step last written by this callback
        if trainer.fast_dev_run or self._last_global_step_saved == trainer.global_step:
            return
        trainer.save_checkpoint(os.path.join(self.dirpath, "last" + self.FILE_EXTENSION))
        self._last_global_step_saved = trainer.global_step
