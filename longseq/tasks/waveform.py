"""WaveformGenerationTask: an autoregressive model of raw audio, one quantised sample at a time."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torchmetrics import SumMetric

from .._atomic import atomic_path
from ..heads import MambaLM
from ..tokenizers import MuLawTokenizer
from .base import LongseqTask, tokenizer_spec
from .next_base import lm_loss, window_bits

__all__ = ["WaveformGenerationTask", "write_wav"]

LN2 = math.log(2.0)


def write_wav(path, wave: torch.Tensor, sample_rate: int) -> Path:
    """Write a float waveform in [-1, 1] as 16-bit PCM WAV, through a temporary file."""
    import soundfile as sf

    path = Path(path)
    with atomic_path(path) as tmp:
        sf.write(tmp, wave.detach().float().clamp(-1, 1).cpu().numpy(), sample_rate, subtype="PCM_16", format="WAV")
    return path


class WaveformGenerationTask(LongseqTask):
    """Train a ``MambaLM`` over quantised waveform samples (SaShiMi / WaveNet style).

    Batches: ``{"input_ids": (B, L), "labels": (B, L)}`` (labels shifted by one, -100 = padding)
    as ``WaveformDataModule`` serves them. The vocabulary is the quantiser's ``2**bits`` levels
    plus a pad id; the quantiser settings and the sample rate are taken from the data module and
    saved in the checkpoint.

    Logs ``{train,val,test}/loss`` (nats) and ``.../bits_per_sample`` (8.0 = a uniform guess over
    256 levels). At the end of each validation (rank 0, not the sanity check) it writes
    ``gen_clips`` clips of ``gen_seconds`` each to ``<log_dir>/samples/``, continuing
    ``gen_prompt`` samples of the first validation windows through the recurrent step.

    Args:
        bits: quantiser bits (must match the data module's tokenizer).
        sample_rate: used when no data module gives one.
        gen_clips, gen_seconds, gen_prompt, gen_temperature: the validation-end clips (0 clips = off).
        Others: see ``LongseqTask``.
    """

    task_name = "waveform"
    monitor = "val/bits_per_sample"
    monitor_mode = "min"

    def __init__(self, bits: int = 8, sample_rate: int = 16000, gen_clips: int = 2, gen_seconds: float = 0.5,
                 gen_prompt: int = 1600, gen_temperature: float = 1.0,
                 d_model: int = 64, n_layer: int = 4, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 model_overrides: dict | None = None, lr: float = 2e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 100, min_lr_ratio: float = 0.1,
                 decay_steps: int | None = None, compile_mode: str | None = None):
        super().__init__(d_model, n_layer, d_state, d_conv, expand, model_overrides, lr, weight_decay, betas,
                         warmup_steps, min_lr_ratio, decay_steps, compile_mode)
        if gen_clips < 0 or gen_seconds <= 0 or gen_prompt < 1:
            raise ValueError("WaveformGenerationTask: gen_clips must be >= 0, gen_seconds > 0 and gen_prompt >= 1; "
                             f"got {gen_clips}, {gen_seconds}, {gen_prompt}")
        self.save_hyperparameters()
        tokenizer = MuLawTokenizer(bits=bits)
        self.tokenizer = tokenizer
        self.metadata.update(tokenizer=tokenizer_spec(tokenizer), sample_rate=int(sample_rate))
        self.model = MambaLM(self.model_config(tokenizer.vocab_size))
        self._sums = torch.nn.ModuleDict({k: SumMetric() for k in ("nats", "count")})
        self._prompt: torch.Tensor | None = None
        self.last_clips: list[Path] = []

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        tok = getattr(dm, "tokenizer", None)
        if tok is not None:
            if not isinstance(tok, MuLawTokenizer) or tok.vocab_size != self.model.config.vocab_size:
                raise ValueError(f"WaveformGenerationTask: the data module's tokenizer {tokenizer_spec(tok)} does not "
                                 f"fit the model (bits={self.hparams.bits}, vocab_size "
                                 f"{self.model.config.vocab_size}); set model.bits to the data's bits")
            self.tokenizer = tok
            self.metadata["tokenizer"] = tokenizer_spec(tok)
        rate = getattr(dm, "sample_rate", None)
        if rate is not None:
            self.metadata["sample_rate"] = int(rate)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        spec = self.metadata.get("tokenizer") or {}
        if spec.get("type") == "MuLawTokenizer":
            self.tokenizer = MuLawTokenizer(**spec.get("kwargs", {}))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, L) -> next-sample logits (B, L, vocab_size)."""
        return self.model(input_ids)

    def training_step(self, batch, batch_idx):
        loss, *_ = lm_loss(self.model(batch["input_ids"]), batch["labels"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/bits_per_sample", loss / LN2)
        return loss

    def _eval_step(self, batch):
        _, total, count, _ = lm_loss(self.model(batch["input_ids"]), batch["labels"])
        self._sums["nats"].update(total)
        self._sums["count"].update(count.float())

    def _eval_end(self, split: str):
        nats, count = self._sums["nats"].compute(), self._sums["count"].compute()   # summed over ranks
        for m in self._sums.values():
            m.reset()
        if count > 0:
            self.log(f"{split}/loss", nats / count)
            self.log(f"{split}/bits_per_sample", nats / count / LN2, prog_bar=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)
        if batch_idx == 0 and self._prompt is None:
            # fixed prompts (the first validation windows) so clips of successive epochs compare
            self._prompt = batch["input_ids"][: self.hparams.gen_clips, : self.hparams.gen_prompt].detach().cpu()

    def on_validation_epoch_end(self):
        self._eval_end("val")
        if self.trainer.sanity_checking or not self.trainer.is_global_zero or not self.hparams.gen_clips:
            return
        if self._prompt is not None and len(self._prompt):
            folder = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "samples"
            self.last_clips = self.write_clips(folder, self._prompt,
                                               prefix=f"epoch={self.current_epoch}_step={self.global_step}")

    @torch.no_grad()
    def write_clips(self, folder, prompt: torch.Tensor, prefix: str = "clip") -> list[Path]:
        """Continue each row of ``prompt`` (ids) by ``gen_seconds`` and write prompt + continuation as WAV."""
        from ..generation import generate

        rate = int(self.metadata["sample_rate"])
        n = max(1, round(self.hparams.gen_seconds * rate))
        prompt = prompt.to(self.device)
        self._begin_step()   # the prompt's forward may replay a compiled model's CUDA graph
        new = generate(self.model, prompt, n, temperature=self.hparams.gen_temperature, seed=0,
                       allowed_tokens=range(self.tokenizer.levels), progress=False)
        waves = self.tokenizer.decode(torch.cat([prompt, new], dim=1).cpu())
        return [write_wav(Path(folder) / f"{prefix}_clip{i}.wav", w, rate) for i, w in enumerate(waves)]

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_test_epoch_end(self):
        self._eval_end("test")

    def predict_step(self, batch, batch_idx):
        """Per-window bits per sample: ``{"bits_per_sample": (B,)}`` (+ ``window_id`` when present)."""
        return window_bits(self.model, batch, "bits_per_sample")
