"""Models with heads: ``MambaLM`` (next token / next sample) and ``MambaClassifier``.

Both save to a directory as ``config.json`` + ``model.safetensors`` and load back without
unpickling anything (safetensors holds raw tensors; the config is plain JSON).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_model, save_model

from .mamba import InferenceCache, MambaBackbone, MambaConfig

__all__ = ["MambaLM", "MambaClassifier", "load_pretrained"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class _Pretrained(nn.Module):
    """save_pretrained / from_pretrained shared by the model classes."""

    def _head_config(self) -> dict:
        return {}

    def save_pretrained(self, directory, metadata: dict | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed).

        ``metadata`` (JSON-serialisable: tokenizer name, class names, sample rate...) is stored in
        config.json under "metadata". Files are written to a temporary directory first and moved
        into place, so a crash never leaves a half-written model behind.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"architecture": type(self).__name__, "config": self.config.to_dict(),
                   "head": self._head_config(), "metadata": metadata or {}}
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-save-", dir=directory))
        try:
            (tmp / CONFIG_NAME).write_text(json.dumps(payload, indent=2, sort_keys=True))
            save_model(self, str(tmp / WEIGHTS_NAME))
            for name in (WEIGHTS_NAME, CONFIG_NAME):
                os.replace(tmp / name, directory / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return directory

    @classmethod
    def from_pretrained(cls, directory, device=None, dtype=None):
        """Load a model saved with ``save_pretrained`` (no pickle is ever read)."""
        model, _ = load_pretrained(directory, device=device, dtype=dtype, expected=cls)
        return model


class MambaLM(_Pretrained):
    """Backbone + LM head (tied to the embedding by default): input_ids -> next-token logits.

    Logits cover ``config.vocab_size`` entries (the padded rows of the embedding are not scored).
    """

    def __init__(self, config: MambaConfig):
        super().__init__()
        if config.bidirectional:
            raise ValueError("MambaLM predicts the next token and must be causal: bidirectional=False")
        self.config = config
        self.backbone = MambaBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def forward(self, input_ids: torch.Tensor, cache: InferenceCache | None = None) -> torch.Tensor:
        """input_ids (batch, L) -> logits (batch, L, vocab_size). See MambaBackbone.forward for ``cache``."""
        return self.lm_head(self.backbone(input_ids, cache))[..., : self.config.vocab_size]

    def allocate_inference_cache(self, batch: int, device=None, dtype=None) -> InferenceCache:
        """Zero recurrent state for ``batch`` sequences; fill it with ``forward(prompt, cache)``."""
        return self.backbone.allocate_inference_cache(batch, device, dtype)

    def step(self, token: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """Logits (batch, vocab_size) for the token after ``token`` (batch,); advances ``cache``."""
        return self.lm_head(self.backbone.step(token, cache))[..., : self.config.vocab_size]


class MambaClassifier(_Pretrained):
    """Backbone + linear head over pooled hidden states: input_ids -> class logits (batch, num_classes).

    ``pooling="last"`` takes the final position (natural for a causal model), ``"mean"`` averages
    over positions (optionally only where ``attention_mask`` is 1).
    """

    def __init__(self, config: MambaConfig, num_classes: int, pooling: str = "last"):
        super().__init__()
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean'; got {pooling!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}")
        self.config, self.num_classes, self.pooling = config, num_classes, pooling
        self.backbone = MambaBackbone(config)
        self.head = nn.Linear(config.d_model, num_classes)
        nn.init.zeros_(self.head.bias)

    def _head_config(self) -> dict:
        return {"num_classes": self.num_classes, "pooling": self.pooling}

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, L, d_model) -> (batch, d_model) by the configured pooling."""
        if self.pooling == "mean":
            if attention_mask is None:
                return hidden.mean(1)
            m = attention_mask.to(hidden.dtype).unsqueeze(-1)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        if attention_mask is None:
            return hidden[:, -1]
        last = attention_mask.long().sum(1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.pool(self.backbone(input_ids), attention_mask))


_ARCHITECTURES = {"MambaLM": MambaLM, "MambaClassifier": MambaClassifier}


def load_pretrained(directory, device=None, dtype=None, expected=None):
    """Load (model, metadata) from a ``save_pretrained`` directory; errors name the file at fault."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: expected a directory written by save_pretrained")
    try:
        payload = json.loads(config_path.read_text())
        arch = payload["architecture"]
        config = MambaConfig.from_dict(payload["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{config_path}: not a longseq model config ({e})") from None
    if arch not in _ARCHITECTURES:
        raise ValueError(f"{config_path}: unknown architecture {arch!r}; known: {sorted(_ARCHITECTURES)}")
    cls = _ARCHITECTURES[arch]
    if expected is not None and not issubclass(cls, expected):
        raise ValueError(f"{config_path} holds a {arch}, not a {expected.__name__}")
    model = cls(config, **payload.get("head", {}))
    missing, unexpected = load_model(model, str(weights_path), strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights_path} does not match {arch}: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model, payload.get("metadata", {})
