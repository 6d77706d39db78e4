"""NextBaseTask: a causal Mamba language model over DNA (next-base prediction)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics import SumMetric

from ..heads import MambaLM
from ..tokenizers import NucleotideTokenizer
from .base import LongseqTask, tokenizer_spec

__all__ = ["NextBaseTask", "lm_loss", "window_bits"]

LN2 = math.log(2.0)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy over the scored positions (labels != -100).

    Returns (mean loss in nats, summed loss in nats, number of scored positions, number correct),
    computed in float32 whatever the logits' dtype (bf16 logits would round the loss).
    """
    flat, target = logits.float().flatten(0, -2), labels.flatten()
    total = F.cross_entropy(flat, target, ignore_index=-100, reduction="sum")
    scored = target != -100
    count = scored.sum()
    correct = ((flat.argmax(-1) == target) & scored).sum()
    return total / count.clamp(min=1), total, count, correct


def window_bits(model, batch: dict, key: str) -> dict:
    """Mean bits per scored token of each window: ``{key: (B,)}``, plus ``window_id`` when the
    batch has it (what the language-model tasks' ``predict`` returns)."""
    logits = model(batch["input_ids"]).float()
    labels = batch["labels"]
    nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    out = {key: nll.sum(1) / (labels != -100).sum(1).clamp(min=1) / LN2}
    if "window_id" in batch:
        out["window_id"] = batch["window_id"]
    return out


class NextBaseTask(LongseqTask):
    """Train a ``MambaLM`` to predict each next base of a genome (HyenaDNA / Caduceus pre-training).

    Batches: ``{"input_ids": (B, L), "labels": (B, L)}`` with labels already shifted by one and
    -100 where the target is N (not scored), as ``GenomeDataModule`` serves them.

    Logs ``{train,val,test}/loss`` (nats), ``.../bits_per_base`` (loss / ln 2; 2.0 = a uniform
    guess over A C G T) and ``.../accuracy`` (argmax = target). Validation and test metrics are
    sums over the whole epoch (every scored base weighs the same), synchronised across ranks.
    The best checkpoint tracks ``val/bits_per_base``.

    Args: see ``LongseqTask`` (model size, optimiser, schedule).
    """

    task_name = "next_base"
    monitor = "val/bits_per_base"
    monitor_mode = "min"

    def __init__(self, d_model: int = 128, n_layer: int = 4, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 model_overrides: dict | None = None, lr: float = 1e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 100, min_lr_ratio: float = 0.1,
                 decay_steps: int | None = None, compile_mode: str | None = None):
        super().__init__(d_model, n_layer, d_state, d_conv, expand, model_overrides, lr, weight_decay, betas,
                         warmup_steps, min_lr_ratio, decay_steps, compile_mode)
        self.save_hyperparameters()
        tokenizer = NucleotideTokenizer()
        self.metadata["tokenizer"] = tokenizer_spec(tokenizer)
        self.model = MambaLM(self.model_config(tokenizer.vocab_size))
        self._sums = torch.nn.ModuleDict({k: SumMetric() for k in ("nats", "count", "correct")})

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        tok = getattr(dm, "tokenizer", None)
        if tok is not None and tok.vocab_size != self.model.config.vocab_size:
            raise ValueError(f"NextBaseTask: the data module's tokenizer ({type(tok).__name__}) has vocab_size "
                             f"{tok.vocab_size}, the model {self.model.config.vocab_size}")

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, L) -> next-base logits (B, L, vocab_size)."""
        return self.model(input_ids)

    def training_step(self, batch, batch_idx):
        loss, _, count, correct = lm_loss(self.model(batch["input_ids"]), batch["labels"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/bits_per_base", loss / LN2)
        self.log("train/accuracy", correct.float() / count.clamp(min=1))
        return loss

    def _eval_step(self, batch):
        _, total, count, correct = lm_loss(self.model(batch["input_ids"]), batch["labels"])
        self._sums["nats"].update(total)
        self._sums["count"].update(count.float())
        self._sums["correct"].update(correct.float())

    def _eval_end(self, split: str):
        # SumMetric.compute() already sums over ranks, so the logged values are global.
        nats, count, correct = (self._sums[k].compute() for k in ("nats", "count", "correct"))
        for m in self._sums.values():
            m.reset()
        if count == 0:
            return
        loss = nats / count
        self.log(f"{split}/loss", loss)
        self.log(f"{split}/bits_per_base", loss / LN2, prog_bar=True)
        self.log(f"{split}/accuracy", correct / count)
        self.log(f"{split}/bases", count)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_validation_epoch_end(self):
        self._eval_end("val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_test_epoch_end(self):
        self._eval_end("test")

    def predict_step(self, batch, batch_idx):
        """Per-window bits per base: ``{"bits_per_base": (B,)}`` (+ ``window_id`` when present)."""
        return window_bits(self.model, batch, "bits_per_base")
