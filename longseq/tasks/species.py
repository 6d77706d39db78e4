"""SpeciesClassificationTask: which species does a DNA window come from?"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassConfusionMatrix

from .._atomic import save_figure
from ..heads import MambaClassifier
from ..mamba import MambaConfig
from ..tokenizers import NucleotideTokenizer
from .base import LongseqTask, read_backbone, tokenizer_spec

__all__ = ["SpeciesClassificationTask", "scores_from_confusion", "plot_confusion"]


def scores_from_confusion(cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(accuracy, macro F1) from a confusion matrix (rows = true class, columns = predicted).

    Macro F1 averages 2TP / (2TP + FP + FN) over the classes that occur (true or predicted), as
    scikit-learn does with ``zero_division=0`` restricted to present labels.
    """
    cm = cm.double()
    tp = cm.diagonal()
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    present = (cm.sum(0) + cm.sum(1)) > 0
    f1 = (2 * tp / (2 * tp + fp + fn).clamp(min=1))[present]
    return tp.sum() / cm.sum().clamp(min=1), f1.mean() if len(f1) else torch.zeros((), dtype=cm.dtype)


def plot_confusion(cm: torch.Tensor, class_names: list[str], path, title: str = "") -> Path:
    """Write a confusion-matrix heat map (row-normalised, with counts) as PNG, atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = cm.detach().cpu().double()
    norm = cm / cm.sum(1, keepdim=True).clamp(min=1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * n, 1.0 + 0.6 * n))
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    short = [c.replace("_", " ") for c in class_names]
    ax.set_xticks(range(n), short, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), short, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


class SpeciesClassificationTask(LongseqTask):
    """Train a ``MambaClassifier`` to name the species of a DNA window.

    Batches: ``{"input_ids": (B, L), "label": (B,)}`` as ``SpeciesDataModule`` serves them. The
    class count and names come from the data module (``num_classes``, ``class_names``) unless
    ``num_classes`` is given (then it must agree); class names are saved in the checkpoint.

    Logs ``{train,val,test}/loss`` and ``.../accuracy``; val/test also ``.../macro_f1`` (over the
    whole epoch, synchronised across ranks). At the end of each validation a confusion matrix is
    written as PNG to ``<log_dir>/confusion/val_epoch=E_step=S.png`` (and ``confusion_matrix.png``,
    the latest). The best checkpoint tracks ``val/accuracy``.

    Args:
        num_classes: number of species (default: from the data module).
        pooling: ``"last"`` (the final position; natural for a causal model) or ``"mean"``.
        bidirectional: run the mixer forwards and backwards over the window
            (``MambaConfig.bidirectional``).
        init_backbone: start from the backbone of a trained model (a longseq ``.ckpt``, e.g. a
            ``NextBaseTask`` pre-trained on a genome, or a ``save_pretrained`` directory); the
            backbone's size then comes from that model and d_model / n_layer / ... are ignored.
        Others: see ``LongseqTask``.
    """

    task_name = "species"
    monitor = "val/accuracy"
    monitor_mode = "max"

    def __init__(self, num_classes: int | None = None, pooling: str = "last", bidirectional: bool = False,
                 init_backbone: str | None = None,
                 d_model: int = 128, n_layer: int = 4, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 model_overrides: dict | None = None, lr: float = 1e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 100, min_lr_ratio: float = 0.1,
                 decay_steps: int | None = None, compile_mode: str | None = None):
        super().__init__(d_model, n_layer, d_state, d_conv, expand, model_overrides, lr, weight_decay, betas,
                         warmup_steps, min_lr_ratio, decay_steps, compile_mode)
        if pooling not in ("last", "mean"):
            raise ValueError(f"SpeciesClassificationTask: pooling must be 'last' or 'mean'; got {pooling!r}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 2):
            raise ValueError(f"SpeciesClassificationTask: num_classes must be an integer >= 2; got {num_classes!r}")
        self.save_hyperparameters()
        self.metadata["tokenizer"] = tokenizer_spec(NucleotideTokenizer())
        self._cm: MulticlassConfusionMatrix | None = None
        if num_classes is not None:
            self.build_model(num_classes)

    def build_model(self, num_classes: int) -> None:
        vocab = NucleotideTokenizer().vocab_size
        if self.hparams.init_backbone:
            source, state = read_backbone(self.hparams.init_backbone)
            if source.get("vocab_size") != vocab:
                raise ValueError(f"SpeciesClassificationTask: init_backbone {self.hparams.init_backbone} has "
                                 f"vocab_size {source.get('vocab_size')}, not a DNA model ({vocab})")
            if bool(source.get("bidirectional")) != bool(self.hparams.bidirectional):
                raise ValueError(f"SpeciesClassificationTask: init_backbone {self.hparams.init_backbone} has "
                                 f"bidirectional={source.get('bidirectional')}; set bidirectional to match")
            self.model = MambaClassifier(MambaConfig.from_dict(source), num_classes, pooling=self.hparams.pooling)
            self.model.backbone.load_state_dict(state)
        else:
            config = self.model_config(vocab, bidirectional=bool(self.hparams.bidirectional))
            self.model = MambaClassifier(config, num_classes, pooling=self.hparams.pooling)
        self._cm = MulticlassConfusionMatrix(num_classes)

    @property
    def num_classes(self) -> int | None:
        return None if self.model is None else self.model.num_classes

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        names = list(getattr(dm, "class_names", None) or [])
        n = getattr(dm, "num_classes", None) or (len(names) or None)
        if self.model is None:
            if n is None:
                raise ValueError("SpeciesClassificationTask: num_classes is not set and the data module "
                                 f"({type(dm).__name__}) has no num_classes / class_names")
            self.build_model(int(n))
        elif n is not None and n != self.model.num_classes:
            raise ValueError(f"SpeciesClassificationTask: the model has {self.model.num_classes} classes but the data "
                             f"module {type(dm).__name__} has {n} ({names})")
        if names:
            saved = self.metadata.get("class_names")
            if saved and list(saved) != names:
                raise ValueError(f"SpeciesClassificationTask: the checkpoint's classes {saved} differ from the "
                                 f"data module's {names}; labels would not match")
            self.metadata["class_names"] = names
        elif "class_names" not in self.metadata:
            self.metadata["class_names"] = [f"class_{i}" for i in range(self.model.num_classes)]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if self._cm is None:
            self._cm = MulticlassConfusionMatrix(self.model.num_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, L) -> class logits (B, num_classes)."""
        return self.model(input_ids)

    def training_step(self, batch, batch_idx):
        logits = self.model(batch["input_ids"]).float()
        loss = F.cross_entropy(logits, batch["label"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/accuracy", (logits.argmax(-1) == batch["label"]).float().mean())
        return loss

    def _eval_step(self, batch, split: str):
        logits = self.model(batch["input_ids"]).float()
        # per-window mean loss; Lightning weights the epoch mean by batch size
        self.log(f"{split}/loss", F.cross_entropy(logits, batch["label"]), batch_size=len(logits), sync_dist=True)
        self._cm.to(logits.device).update(logits.argmax(-1), batch["label"])

    def _eval_end(self, split: str):
        cm = self._cm.compute()   # summed over ranks
        self._cm.reset()
        if cm.sum() == 0:
            return None
        accuracy, macro_f1 = scores_from_confusion(cm)
        self.log(f"{split}/accuracy", accuracy.float(), prog_bar=True)
        self.log(f"{split}/macro_f1", macro_f1.float())
        return cm

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        cm = self._eval_end("val")
        if cm is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "confusion"
        title = f"validation, epoch {self.current_epoch}, step {self.global_step}"
        path = plot_confusion(cm, self.metadata["class_names"], folder /
                              f"val_epoch={self.current_epoch}_step={self.global_step}.png", title)
        plot_confusion(cm, self.metadata["class_names"], folder / "confusion_matrix.png", title)
        self.last_confusion_png = path

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        cm = self._eval_end("test")
        if cm is not None and self.trainer.is_global_zero:
            folder = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "confusion"
            plot_confusion(cm, self.metadata["class_names"], folder / "test_confusion_matrix.png", "test")

    def predict_step(self, batch, batch_idx):
        """Class probabilities: ``{"probs": (B, num_classes)}`` (+ ``window_id``, ``label`` when present)."""
        out = {"probs": self.model(batch["input_ids"]).float().softmax(-1)}
        for key in ("window_id", "label"):
            if key in batch:
                out[key] = batch[key]
        return out
