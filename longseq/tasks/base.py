"""What every longseq task shares: the model at ``self.model``, the optimiser and schedule, and
the checkpoint payload that ``longseq.load`` reads.

- AdamW with no weight decay on ``A_log``, ``D``, norm weights and biases (as ``mamba_ssm``
  trains: decaying A_log or D pulls the SSM towards forgetting everything / skipping the scan).
- Learning rate: linear warmup from 0 over ``warmup_steps``, then cosine decay to
  ``min_lr_ratio * lr`` at the last optimiser step (``trainer.estimated_stepping_batches``,
  or ``decay_steps`` when given), stepped every optimiser step.
- Gradient clipping and bf16-mixed precision are Trainer settings; the ``longseq`` CLI defaults
  them to ``gradient_clip_val=1.0`` and ``bf16-mixed`` on a GPU that supports it.
- ``on_save_checkpoint`` stores ``checkpoint["longseq"] = {"architecture", "config", "head",
  "metadata"}``: the same payload as ``save_pretrained``'s config.json, so a ``.ckpt`` loads with
  ``longseq.load`` without this package's LightningModules. The weights are ``state_dict``'s
  ``model.*`` entries.
"""
from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn as nn

from ..heads import _ARCHITECTURES
from ..mamba import MambaConfig

__all__ = ["LongseqTask", "param_groups", "warmup_cosine", "tokenizer_spec", "read_backbone"]

# torch.compile's modes (compile_mode); those that record CUDA graphs need each step marked
_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_GRAPHED_MODES = ("reduce-overhead", "max-autotune")

# MambaConfig fields a task takes directly; everything else goes through ``model_overrides``.
_MODEL_ARGS = ("d_model", "n_layer", "d_state", "d_conv", "expand")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: decay on weight matrices and embeddings; none on biases, norms,
    ``A_log`` and ``D``. Tied parameters appear once."""
    decay, no_decay, seen = [], [], set()
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            is_norm = isinstance(module, norm_types) or "norm" in type(module).__name__.lower()
            if name.endswith("bias") or name in ("A_log", "D") or is_norm or p.dim() < 2:
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def warmup_cosine(warmup_steps: int, total_steps, min_lr_ratio: float):
    """LambdaLR factor: linear 0 -> 1 over ``warmup_steps``, cosine 1 -> ``min_lr_ratio`` after.

    ``total_steps`` may be a zero-argument callable, evaluated at the first step past warmup
    (step 0 never needs it): the task passes ``trainer.estimated_stepping_batches`` this way,
    because asking for it inside ``configure_optimizers`` builds the train loader before a
    checkpoint is restored, and a loader built then cannot resume mid-epoch.
    """
    warmup_steps = max(0, int(warmup_steps))
    resolved: list[int] = []

    def total() -> int:
        if not resolved:
            value = total_steps() if callable(total_steps) else total_steps
            if not math.isfinite(value):
                raise ValueError("cannot tell how many optimiser steps the run has (no max_steps or max_epochs, "
                                 "or an endless train loader); set the task's decay_steps")
            resolved.append(max(1, int(value)))
        return resolved[0]

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if step == warmup_steps:
            return 1.0
        span = max(1, total() - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def tokenizer_spec(tokenizer) -> dict:
    """``{"type": class name, "kwargs": {...}}`` that rebuilds ``tokenizer`` (checkpoint metadata)."""
    name = type(tokenizer).__name__
    if name == "MuLawTokenizer":
        kwargs = {"bits": int(tokenizer.bits), "mu": float(tokenizer.mu), "quantization": str(tokenizer.quantization)}
    elif name == "NucleotideTokenizer":
        kwargs = {"strict": bool(getattr(tokenizer, "strict", True))}
    else:
        kwargs = {}
    return {"type": name, "kwargs": kwargs}


def read_backbone(path) -> tuple[dict, dict]:
    """(MambaConfig dict, backbone state_dict) of a trained model, to start another task from it.

    ``path``: a ``.ckpt`` written by a longseq task or a ``save_pretrained`` directory.
    """
    from pathlib import Path

    from ..heads import load_pretrained

    path = Path(path).expanduser()
    if path.is_dir():
        model, _ = load_pretrained(path)
        config, state = model.config.to_dict(), model.state_dict()
    elif path.is_file():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or "longseq" not in ckpt:
            raise ValueError(f"{path}: not a checkpoint written by a longseq task (no 'longseq' entry)")
        config = ckpt["longseq"]["config"]
        state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    else:
        raise FileNotFoundError(f"{path}: no such checkpoint or save_pretrained directory")
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if not backbone:
        raise ValueError(f"{path}: holds no backbone weights")
    return config, backbone


class LongseqTask(pl.LightningModule):
    """Base LightningModule of the longseq tasks (not used on its own).

    Subclasses set ``task_name``, ``monitor`` / ``monitor_mode`` (what the best checkpoint
    tracks), build ``self.model`` in ``build_model()`` and fill ``self.metadata``.

    Args (shared by every task):
        d_model, n_layer, d_state, d_conv, expand: the Mamba backbone (``MambaConfig``).
        model_overrides: further ``MambaConfig`` fields (e.g. ``{"rms_norm": false}``); unknown
            names raise an error that lists the known ones.
        lr: peak learning rate. weight_decay: AdamW decay (matrices and embeddings only).
        betas: AdamW betas. warmup_steps: linear warmup length in optimiser steps.
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio``.
        decay_steps: optimiser steps the cosine spans (default: the whole run,
            ``trainer.estimated_stepping_batches``).
        compile_mode: None (eager) or a ``torch.compile`` mode for the model's forward and backward:
            ``"reduce-overhead"`` replays them as CUDA graphs, which makes small models' steps
            several times faster on a GPU, where Python and PyTorch take longer to issue a step
            than the GPU takes to run it (docs/kernels.md); ``"default"``, ``"max-autotune"``,
            ``"max-autotune-no-cudagraphs"``. Each new input shape compiles once (seconds to a
            minute), so keep the shapes few. Not with ``strategy=fsdp``.
    """

    task_name = "base"
    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(self, d_model: int = 128, n_layer: int = 4, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 model_overrides: dict[str, Any] | None = None, lr: float = 1e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 100, min_lr_ratio: float = 0.1,
                 decay_steps: int | None = None, compile_mode: str | None = None):
        super().__init__()
        if lr <= 0:
            raise ValueError(f"{type(self).__name__}: lr must be > 0; got {lr}")
        if not 0 <= min_lr_ratio <= 1:
            raise ValueError(f"{type(self).__name__}: min_lr_ratio must be in [0, 1]; got {min_lr_ratio}")
        if warmup_steps < 0:
            raise ValueError(f"{type(self).__name__}: warmup_steps must be >= 0; got {warmup_steps}")
        if compile_mode is not None and compile_mode not in _COMPILE_MODES:
            raise ValueError(f"{type(self).__name__}: compile_mode must be null (eager) or one of "
                             f"{list(_COMPILE_MODES)}; got {compile_mode!r}")
        self.model: nn.Module | None = None
        self.metadata: dict[str, Any] = {"task": self.task_name}

    # --- the model ---------------------------------------------------------------------------
    def model_config(self, vocab_size: int, **fixed) -> MambaConfig:
        """The ``MambaConfig`` from this task's hyper-parameters (errors name the bad field)."""
        hp = self.hparams
        values = {k: hp[k] for k in _MODEL_ARGS}
        overrides = dict(hp.get("model_overrides") or {})
        clash = sorted(set(overrides) & (set(_MODEL_ARGS) | {"vocab_size"} | set(fixed)))
        if clash:
            raise ValueError(f"{type(self).__name__}: model_overrides may not set {clash}; "
                             f"{'set them as task arguments' if set(clash) & set(_MODEL_ARGS) else 'the task fixes them'}")
        try:
            return MambaConfig.from_dict({**values, **overrides, **fixed, "vocab_size": vocab_size})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{type(self).__name__}: bad model settings: {e}") from None

    def build_model(self) -> None:
        raise NotImplementedError

    # --- torch.compile (compile_mode) -----------------------------------------------------------
    def configure_model(self) -> None:
        # Lightning calls this after setup() (where some tasks build the model) in every
        # fit/validate/test/predict; Module.compile keeps the parameter names, so checkpoints
        # are the same with and without compiling.
        mode = self.hparams.get("compile_mode")
        if mode and self.model is not None and not getattr(self, "_compiled", False):
            from lightning.pytorch.strategies import FSDPStrategy

            if self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy):
                raise ValueError(f"{type(self).__name__}: compile_mode is not supported with strategy=fsdp; "
                                 "set compile_mode: null")
            self.model.compile(mode=mode)
            self._compiled = True

    def _begin_step(self) -> None:
        # CUDA-graph outputs are overwritten by the next replay; marking each step tells the
        # graphs that the previous step's outputs are no longer in use.
        if self.hparams.get("compile_mode") in _GRAPHED_MODES:
            torch.compiler.cudagraph_mark_step_begin()

    def on_train_batch_start(self, batch, batch_idx):
        self._begin_step()

    def on_validation_batch_start(self, batch, batch_idx, dataloader_idx=0):
        self._begin_step()

    def on_test_batch_start(self, batch, batch_idx, dataloader_idx=0):
        self._begin_step()

    def on_predict_batch_start(self, batch, batch_idx, dataloader_idx=0):
        self._begin_step()

    def checkpoint_payload(self) -> dict:
        """``{"architecture", "config", "head", "metadata"}``, as in ``save_pretrained``'s config.json."""
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__}: the model is not built yet (it is built in setup())")
        return {"architecture": type(self.model).__name__, "config": self.model.config.to_dict(),
                "head": self.model._head_config(), "metadata": dict(self.metadata)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["longseq"] = self.checkpoint_payload()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Metadata (class names, sample rate, tokenizer) travel with the checkpoint; a model not
        # built yet (e.g. a classifier whose class count comes from the data) is built from it.
        info = checkpoint.get("longseq")
        if not isinstance(info, dict):
            raise ValueError("this checkpoint has no 'longseq' entry: it was not written by a longseq task")
        self.metadata = {**self.metadata, **(info.get("metadata") or {})}
        if self.model is None:
            arch = _ARCHITECTURES[info["architecture"]]
            self.model = arch(MambaConfig.from_dict(info["config"]), **(info.get("head") or {}))

    def export_pretrained(self, directory) -> Any:
        """Write the model as ``save_pretrained`` does (config.json + model.safetensors), with this
        task's metadata (task, tokenizer, class names / sample rate)."""
        return self.model.save_pretrained(directory, metadata=dict(self.metadata))

    # --- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(param_groups(self.model, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas))
        trainer = self.trainer
        total = hp.decay_steps or (lambda: trainer.estimated_stepping_batches)   # read lazily: see warmup_cosine
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(hp.warmup_steps, total, hp.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # Lightning's FSDP precision plugin refuses clipping by norm (the norm of sharded
        # gradients needs the FSDP module, which the plugin does not see). FSDP's own
        # clip_grad_norm_ computes the global norm across shards, so the CLI's default
        # gradient_clip_val works unchanged under strategy=fsdp.
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = self.trainer.model
        if (gradient_clip_val and gradient_clip_algorithm in (None, "norm")
                and isinstance(wrapped, FullyShardedDataParallel)):
            wrapped.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
