"""What a researcher types in a notebook: ``longseq.load(path)`` and the pipelines it returns.

``load`` reads a Lightning checkpoint written by ``longseq.tasks`` or a ``save_pretrained``
directory and returns the pipeline for its task, with tokenizer, class names and sample rate:

- ``DNAPipeline`` (next-base LM): ``score``, ``embed``, ``generate``;
- ``ClassifierPipeline`` (species): ``classify`` (sequences or a FASTA path), ``embed``;
- ``AudioPipeline`` (next-sample LM): ``generate`` (-> ``Audio``), ``score``, ``save``.

Inputs longer than ``chunk_size`` are processed piece by piece with the recurrent state carried
across pieces, which gives the same numbers as one pass (memory stays bounded by the chunk).
"""
from __future__ import annotations

import gzip
import math
import os
import pathlib
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ._atomic import atomic_path
from . import generation
from .heads import _ARCHITECTURES, MambaClassifier, MambaLM, load_pretrained
from .mamba import MambaConfig
from .tokenizers import ByteTokenizer, MuLawTokenizer, NucleotideTokenizer

__all__ = ["load", "Pipeline", "DNAPipeline", "ClassifierPipeline", "AudioPipeline", "Audio", "ScoreResult",
           "Predictions", "read_fasta", "iter_fasta", "build_tokenizer"]

DEFAULT_CHUNK = 1 << 16  # tokens per piece when reading long inputs; the result does not depend on it
FASTA_GROUP = 4096       # FASTA records read and classified at a time (memory stays bounded)
_TOKENIZERS = {"nucleotidetokenizer": NucleotideTokenizer, "nucleotide": NucleotideTokenizer, "dna": NucleotideTokenizer,
               "bytetokenizer": ByteTokenizer, "byte": ByteTokenizer,
               "mulawtokenizer": MuLawTokenizer, "mu-law": MuLawTokenizer, "mulaw": MuLawTokenizer,
               "mu_law": MuLawTokenizer}
_TASKS = ("next_base", "species", "waveform")
_SAFE_GLOBALS = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]


# ----------------------------------------------------------------------------------------- loading

def build_tokenizer(spec, where: str = "metadata"):
    """A tokenizer from checkpoint metadata ``{"type": name, "kwargs": {...}}`` (or a bare name)."""
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"{where}: 'tokenizer' must be {{'type': ..., 'kwargs': {{...}}}}; got {spec!r}")
    cls = _TOKENIZERS.get(str(spec["type"]).lower())
    if cls is None:
        raise ValueError(f"{where}: unknown tokenizer type {spec['type']!r}; known: "
                         "NucleotideTokenizer, ByteTokenizer, MuLawTokenizer")
    try:
        return cls(**(spec.get("kwargs") or {}))
    except TypeError as e:
        raise ValueError(f"{where}: cannot build {cls.__name__} from kwargs {spec.get('kwargs')!r} ({e})") from None


def _read_checkpoint(path: Path):
    """(model, metadata) from a Lightning checkpoint holding ``checkpoint["longseq"]``."""
    try:
        # weights_only: never run code from a file. Paths (data module hyper-parameters given
        # as pathlib objects) are plain data and allowed.
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            ckpt = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        first = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else type(e).__name__)
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({first}). longseq.load takes a "
                         "Lightning .ckpt written by longseq's tasks or a save_pretrained directory") from None
    if not isinstance(ckpt, dict) or "longseq" not in ckpt:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not a longseq checkpoint (no 'longseq' entry; found {keys}). "
                         "Was it written by a longseq task (longseq fit)?")
    info = ckpt["longseq"]
    where = f"{path} ['longseq']"
    try:
        arch, cfg, head = info["architecture"], info["config"], info.get("head") or {}
        metadata = info.get("metadata") or {}
    except (KeyError, TypeError) as e:
        raise ValueError(f"{where}: missing entry {e}; expected architecture, config, head, metadata") from None
    if arch not in _ARCHITECTURES:
        raise ValueError(f"{where}: unknown architecture {arch!r}; known: {sorted(_ARCHITECTURES)}")
    try:
        model = _ARCHITECTURES[arch](MambaConfig.from_dict(cfg), **head)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: cannot build {arch} from config {cfg!r} and head {head!r} ({e})") from None
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: has no 'state_dict' with the model weights")
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    if not weights:
        raise ValueError(f"{path}: 'state_dict' holds no weights under the prefix 'model.' "
                         f"(found e.g. {sorted(state)[:5]})")
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shape mismatches: the config does not describe these weights
        lines = [ln.strip() for ln in str(e).splitlines() if "mismatch" in ln]
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise ValueError(f"{path}: weights do not fit the {arch} its config describes: "
                         f"{lines[0] if lines else e}{more}") from None
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match {arch}: missing {sorted(missing)}, "
                         f"unexpected {sorted(unexpected)}")
    return model, metadata


def load(path, device=None, dtype: torch.dtype | None = None) -> "Pipeline":
    """Load a trained model and return its pipeline.

    path: a Lightning checkpoint (``.ckpt``, written by ``longseq fit``) or a directory written by
    ``save_pretrained`` / ``export_pretrained``. device: where to run (default CPU; e.g. "cuda").
    dtype: cast the weights (e.g. ``torch.bfloat16`` on GPU); the recurrent state stays float32.

    Returns a ``DNAPipeline``, ``ClassifierPipeline`` or ``AudioPipeline``, chosen by the task the
    model was trained for (recorded in its metadata).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or model directory")
    if path.is_dir():
        model, metadata = load_pretrained(path)
    else:
        model, metadata = _read_checkpoint(path)
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: metadata must be a dict; got {type(metadata).__name__}")
    model = model.to(device=device or "cpu", dtype=dtype).eval()
    task = metadata.get("task")
    if task is None:  # older or hand-made models: infer the task from the model and its tokenizer
        spec = metadata.get("tokenizer")
        tok = str((spec.get("type") if isinstance(spec, dict) else spec) or "").lower()
        task = "species" if isinstance(model, MambaClassifier) else ("waveform" if "law" in tok else "next_base")
    if task not in _TASKS:
        raise ValueError(f"{path}: metadata 'task' is {task!r}; known tasks: {list(_TASKS)}")
    pipeline_cls = {"next_base": DNAPipeline, "species": ClassifierPipeline, "waveform": AudioPipeline}[task]
    expected = MambaClassifier if task == "species" else MambaLM
    if not isinstance(model, expected):
        raise ValueError(f"{path}: task {task!r} needs a {expected.__name__}, but the file holds a "
                         f"{type(model).__name__}")
    return pipeline_cls(model, metadata, source=str(path))


# ------------------------------------------------------------------------------------- utilities

def iter_fasta(path) -> Iterator[tuple[str, str]]:
    """Stream (record id, sequence) pairs from a FASTA file, plain or gzip (read with Bio.SeqIO).

    Errors name the file (and the record): a missing file, unreadable text, an empty record,
    or no record at all.
    """
    from Bio import SeqIO

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FASTA file not found")
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    count = 0
    try:
        with (gzip.open if gz else open)(path, "rt") as handle:
            for rec in SeqIO.parse(handle, "fasta"):
                if len(rec.seq) == 0:
                    raise ValueError(f"{path}: record {rec.id!r} has an empty sequence")
                count += 1
                yield rec.id, str(rec.seq)
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise ValueError(f"{path}: cannot be read as FASTA ({e})") from None
    except ValueError as e:
        raise ValueError(str(e) if str(e).startswith(str(path)) else f"{path}: cannot be read as FASTA ({e})") from None
    if count == 0:
        raise ValueError(f"{path}: no FASTA records found (a FASTA file starts with a '>' header line)")


def read_fasta(path) -> list[tuple[str, str]]:
    """All (record id, sequence) pairs of a FASTA file, plain or gzip (see ``iter_fasta``)."""
    return list(iter_fasta(path))


def _looks_like_path(x) -> bool:
    if isinstance(x, Path):
        return True
    if not isinstance(x, str):
        return False
    # no DNA sequence contains '/' or '.', so such a string is a file name (reported if missing)
    return os.path.isfile(x) or "/" in x or "." in x


def _atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the file into place, so a crash leaves nothing half-written."""
    path = Path(path)
    with atomic_path(path) as tmp:
        write(str(tmp))
    return path


@dataclass
class ScoreResult:
    """Per-position log-likelihoods (natural log) of one sequence under a language model.

    ``log_likelihood[i] = log p(x_i | x_<i)``; position 0 (no context) and unscored targets
    (N bases) are NaN. ``bits_per_token`` = mean of ``-log_likelihood / ln 2`` over scored positions.
    """

    log_likelihood: torch.Tensor
    bits_per_token: float
    n_scored: int

    @property
    def bits_per_base(self) -> float:
        return self.bits_per_token

    @property
    def bits_per_sample(self) -> float:
        return self.bits_per_token


@dataclass
class Predictions:
    """Class probabilities for named inputs: ``probs`` (n, classes), rows in input order."""

    names: list[str]
    class_names: list[str]
    probs: torch.Tensor

    @property
    def labels(self) -> list[str]:
        """The most probable class name of each input."""
        return [self.class_names[i] for i in self.probs.argmax(1).tolist()]

    def to_tsv(self, path=None) -> str:
        """A TSV table (name, predicted, one probability column per class); written to ``path`` if given."""
        lines = ["\t".join(["name", "predicted", *self.class_names])]
        for name, label, row in zip(self.names, self.labels, self.probs.tolist()):
            lines.append("\t".join([name, label, *(f"{p:.6g}" for p in row)]))
        text = "\n".join(lines) + "\n"
        if path is not None:
            _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))
        return text


class Audio(NamedTuple):
    """A waveform (float32 in [-1, 1]; (samples,) or (batch, samples)) and its sample rate in Hz."""

    waveform: torch.Tensor
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.waveform.shape[-1] / self.sample_rate

    def save(self, path, subtype: str | None = None) -> Path:
        """Write WAV/FLAC/OGG (by the file's suffix) with soundfile; a batch is written one file per row
        as ``name_0.wav``, ``name_1.wav``... Returns the (first) path written."""
        import soundfile as sf

        path = Path(path)
        fmt = path.suffix.lstrip(".").upper()
        if fmt not in sf.available_formats():
            raise ValueError(f"{path}: unknown audio format {path.suffix!r}; use .wav, .flac or .ogg")
        wave = self.waveform.detach().float().cpu().numpy()
        rows = [wave] if wave.ndim == 1 else list(wave)
        paths = [path] if len(rows) == 1 else [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(len(rows))]
        for p, row in zip(paths, rows):
            _atomic_write(p, lambda tmp, row=row: sf.write(tmp, np.clip(row, -1, 1), self.sample_rate,
                                                          format=fmt, subtype=subtype))
        return paths[0]


# ------------------------------------------------------------------------------------- pipelines

class Pipeline:
    """A loaded model with its tokenizer and metadata; subclasses add the task's methods."""

    def __init__(self, model, metadata: dict | None = None, tokenizer=None, source: str = "<model>"):
        self.model = model.eval()
        self.metadata = dict(metadata or {})
        self.source = source
        spec = self.metadata.get("tokenizer", self._default_tokenizer)
        self.tokenizer = tokenizer or build_tokenizer(spec, f"{source}: metadata")

    _default_tokenizer = "NucleotideTokenizer"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def save_pretrained(self, directory) -> Path:
        """Write the model and its metadata as ``config.json`` + ``model.safetensors`` (no pickle):
        e.g. to turn a Lightning checkpoint into a portable directory that ``load`` reads."""
        return self.model.save_pretrained(directory, self.metadata)

    def to(self, device=None, dtype=None) -> "Pipeline":
        """Move (and optionally cast) the model; returns self."""
        self.model.to(device=device, dtype=dtype)
        return self

    def __repr__(self) -> str:
        c = self.model.config
        return (f"{type(self).__name__}({type(self.model).__name__} d_model={c.d_model} n_layer={c.n_layer}, "
                f"tokenizer={type(self.tokenizer).__name__}, device={self.device}, source={self.source!r})")

    # -- shared: hidden states of long inputs piece by piece ---------------------------------
    @torch.no_grad()
    def _pooled_hidden(self, ids: torch.Tensor, lengths: torch.Tensor, pooling: str, chunk_size: int) -> torch.Tensor:
        """Pooled final hidden states (batch, d_model) of right-padded ``ids`` (batch, L).

        A causal model reads ``chunk_size`` tokens at a time, carrying its state; padding sits
        after each row's end, so it never influences the kept positions. Mean pooling sums over
        pieces; last pooling takes each row's final real position.
        """
        backbone = self.model.backbone
        ids, lengths = ids.to(self.device), lengths.to(self.device)
        batch, L = ids.shape
        if backbone.config.bidirectional:
            hidden = backbone(ids)
            if pooling == "mean":
                mask = (torch.arange(L, device=ids.device)[None] < lengths[:, None]).to(hidden.dtype)
                return (hidden * mask[..., None]).sum(1).float() / lengths[:, None].float()
            return hidden[torch.arange(batch, device=ids.device), lengths - 1].float()
        cache = backbone.allocate_inference_cache(batch, device=self.device)
        total = torch.zeros(batch, backbone.config.d_model, device=self.device)
        last = torch.zeros_like(total)
        for start in range(0, L, chunk_size):
            h = backbone(ids[:, start:start + chunk_size], cache).float()
            pos = torch.arange(start, start + h.shape[1], device=ids.device)
            total += (h * (pos[None] < lengths[:, None])[..., None]).sum(1)
            idx = lengths - 1 - start
            rows = ((idx >= 0) & (idx < h.shape[1])).nonzero().flatten()
            last[rows] = h[rows, idx[rows]]
        return total / lengths[:, None].float() if pooling == "mean" else last

    def _encode_many(self, seqs: Sequence, labels: Sequence[str] | None = None) -> list[torch.Tensor]:
        """Tokenize each input; errors name the input (``labels[i]``, default "sequence i")."""
        out = []
        for i, s in enumerate(seqs):
            label = labels[i] if labels is not None else f"sequence {i}"
            try:
                ids = self.tokenizer.encode(s)
            except (ValueError, TypeError) as e:
                raise ValueError(f"{label}: {e}") from None
            if ids.numel() == 0:
                raise ValueError(f"{label} is empty")
            out.append(ids)
        return out


def _pad(ids_list: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(x) for x in ids_list])
    out = torch.full((len(ids_list), int(lengths.max())), pad_id, dtype=torch.long)
    for i, x in enumerate(ids_list):
        out[i, : len(x)] = x
    return out, lengths


class _LMPipeline(Pipeline):
    """Shared by the DNA and audio language models: chunked scoring."""

    @torch.no_grad()
    def _score_ids(self, ids: torch.Tensor, chunk_size: int, unscored: Sequence[int] = (), progress=None) -> ScoreResult:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
        ids = ids.to(self.device)
        L = ids.numel()
        ll = torch.full((L,), float("nan"), dtype=torch.float64)
        cache = self.model.allocate_inference_cache(1, device=self.device)
        n_chunks = math.ceil(L / chunk_size)
        show = progress if progress is not None else n_chunks > 8
        # logits at position t predict token t+1: the last logit of a piece scores the next piece's first token
        for start in tqdm(range(0, L - 1, chunk_size), desc="scoring", unit="chunk", leave=False, disable=not show):
            piece = ids[start:start + chunk_size]
            logits = self.model(piece[None], cache)[0].float()
            targets = ids[start + 1:start + 1 + len(piece)]
            logp = torch.log_softmax(logits[: len(targets)], -1).gather(1, targets[:, None])[:, 0]
            ll[start + 1:start + 1 + len(targets)] = logp.double().cpu()
        for tok in unscored:
            ll[(ids == tok).cpu() & ~torch.isnan(ll)] = float("nan")
        scored = ~torch.isnan(ll)
        n = int(scored.sum())
        bits = float(-ll[scored].mean() / math.log(2)) if n else float("nan")
        return ScoreResult(ll.float(), bits, n)


class DNAPipeline(_LMPipeline):
    """A next-base DNA language model: ``score``, ``embed`` and ``generate``."""

    BASES = (0, 1, 2, 3)  # A C G T ids of NucleotideTokenizer

    def score(self, seq, chunk_size: int = DEFAULT_CHUNK, progress: bool | None = None):
        """Per-position log-likelihoods and bits per base of ``seq`` (a DNA string, or a list of them).

        N positions are not scored (as in training). Sequences longer than ``chunk_size`` are read
        in pieces with the state carried across; the result equals a single pass.
        """
        if isinstance(seq, (list, tuple)):
            return [self.score(s, chunk_size, progress) for s in seq]
        (ids,) = self._encode_many([seq])
        unscored = (self.tokenizer.n_id,) if isinstance(self.tokenizer, NucleotideTokenizer) else ()
        return self._score_ids(ids, chunk_size, unscored, progress)

    def embed(self, seqs, pooling: str = "mean", chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
        """Pooled final hidden states: (d_model,) for one sequence, (n, d_model) for a list."""
        return _embed(self, seqs, pooling, chunk_size)

    def generate(self, prompt=None, n: int = 1000, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, num_samples: int = 1, allow_n: bool = False,
                 progress: bool | None = None, compile: bool = False):
        """Continue ``prompt`` by ``n`` bases sampled from the model.

        prompt: a DNA string, a list of them (one continuation each), or None (the first base is
        then drawn uniformly, as the model has no context). Returns the new bases only: a string,
        or a list when ``prompt`` is a list or ``num_samples > 1``. ``temperature=0`` is greedy.
        Only A C G T are generated (and N with ``allow_n=True``). Same seed, same output.
        compile: run the decoding step through torch.compile (see ``longseq.generation.generate``).
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n (bases to generate) must be a positive integer; got {n!r}")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer; got {num_samples!r}")
        allowed = self.BASES + ((self.tokenizer.n_id,) if allow_n else ())
        many = isinstance(prompt, (list, tuple))
        prompts = list(prompt) if many else [prompt]
        g = torch.Generator(device=self.device)
        g.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
        ids_list, skip_first = [], prompt is None
        if prompt is None:
            first = torch.randint(0, 4, (num_samples,), generator=torch.Generator().manual_seed(g.initial_seed()))
            ids_list = [first[i:i + 1] for i in range(num_samples)]
        else:
            if many and not prompts:
                raise ValueError("prompt is an empty list")
            labels = [f"prompt {i}" for i in range(len(prompts))]
            ids_list = [x for x in self._encode_many(prompts, labels) for _ in range(num_samples)]
        padded, lengths = _pad(ids_list, self.tokenizer.pad_id)
        n_new = n - 1 if skip_first else n
        if n_new > 0:
            new = generation.generate(self.model, padded, n_new, prompt_lengths=lengths, temperature=temperature,
                                      top_k=top_k, top_p=top_p, generator=g, allowed_tokens=allowed,
                                      progress=progress, compile=compile).cpu()
        else:
            new = torch.zeros(len(ids_list), 0, dtype=torch.long)
        if skip_first:
            new = torch.cat([padded[:, :1], new], 1)
        out = [self.tokenizer.decode(row) for row in new]
        return out if (many or num_samples > 1) else out[0]


class ClassifierPipeline(Pipeline):
    """A sequence classifier (species): ``classify`` and ``embed``."""

    def __init__(self, model, metadata=None, tokenizer=None, source="<model>"):
        super().__init__(model, metadata, tokenizer, source)
        names = self.metadata.get("class_names")
        if names is None:
            names = [f"class_{i}" for i in range(model.num_classes)]
        if len(names) != model.num_classes:
            raise ValueError(f"{source}: metadata lists {len(names)} class names but the model has "
                             f"{model.num_classes} classes")
        self.class_names = [str(x) for x in names]

    @torch.no_grad()
    def _probs(self, ids_list: list[torch.Tensor], batch_size: int, chunk_size: int, progress) -> torch.Tensor:
        """Class probabilities (n, classes) for encoded sequences, in input order."""
        model, pad_id = self.model, self.tokenizer.pad_id
        bidir = model.config.bidirectional
        if bidir:
            # No recurrent state to carry: a long sequence is cut into windows of chunk_size whose
            # probabilities are averaged (weighted by window length); padding would leak into the
            # reverse direction, so only windows of equal length share a batch.
            pieces = [(i, x[s:s + chunk_size]) for i, x in enumerate(ids_list) for s in range(0, len(x), chunk_size)]
        else:
            pieces = list(enumerate(ids_list))
        order = sorted(range(len(pieces)), key=lambda j: len(pieces[j][1]))
        batches, cur = [], []
        for j in order:
            if cur and (len(cur) == batch_size or (bidir and len(pieces[cur[0]][1]) != len(pieces[j][1]))):
                batches.append(cur)
                cur = []
            cur.append(j)
        batches.append(cur)
        sums = torch.zeros(len(ids_list), model.num_classes, dtype=torch.float64)
        weights = torch.zeros(len(ids_list), dtype=torch.float64)
        show = progress if progress is not None else len(batches) > 4
        for b in tqdm(batches, desc="classifying", unit="batch", leave=False, disable=not show):
            ids, lengths = _pad([pieces[j][1] for j in b], pad_id)
            pooled = self._pooled_hidden(ids, lengths, model.pooling, chunk_size)
            probs = model.head(pooled.to(model.head.weight.dtype)).float().softmax(-1).double().cpu()
            for row, j in enumerate(b):
                seq_index, w = pieces[j][0], float(lengths[row])
                sums[seq_index] += w * probs[row]
                weights[seq_index] += w
        return (sums / weights[:, None]).float()

    def classify(self, seqs, batch_size: int = 32, chunk_size: int = DEFAULT_CHUNK, rc_average: bool = False,
                 progress: bool | None = None) -> Predictions:
        """Class probabilities for DNA sequences.

        seqs: a FASTA path (plain or gzip), one sequence string, or a list of strings.
        Sequences are batched (sorted by length; padding never reaches a causal model's kept
        positions); longer than ``chunk_size`` ones are read in pieces with carried state.
        rc_average: average with the reverse complement's probabilities (strand-symmetric).
        Returns ``Predictions`` (names, class_names, probs (n, classes)); FASTA record ids name the rows.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
        if _looks_like_path(seqs):
            # A read file can be large: stream it, FASTA_GROUP records at a time.
            names, parts, group = [], [], []
            for record in iter_fasta(seqs):
                group.append(record)
                if len(group) == FASTA_GROUP:
                    parts.append(self._classify_records(group, f"{seqs}: record", batch_size, chunk_size,
                                                        rc_average, progress))
                    names += [n for n, _ in group]
                    group = []
            if group:
                parts.append(self._classify_records(group, f"{seqs}: record", batch_size, chunk_size, rc_average,
                                                    progress))
                names += [n for n, _ in group]
            return Predictions(names, list(self.class_names), torch.cat(parts))
        seq_list = [seqs] if isinstance(seqs, (str, bytes)) else list(seqs)
        if not seq_list:
            raise ValueError("classify needs at least one sequence")
        names = [f"seq{i}" for i in range(len(seq_list))]
        probs = self._classify_records(list(zip(names, seq_list)), None, batch_size, chunk_size, rc_average, progress)
        return Predictions(names, list(self.class_names), probs)

    def _classify_records(self, records, where, batch_size, chunk_size, rc_average, progress) -> torch.Tensor:
        labels = [f"{where} {name!r}" for name, _ in records] if where else None
        ids_list = self._encode_many([s for _, s in records], labels)
        probs = self._probs(ids_list, batch_size, chunk_size, progress)
        if rc_average:
            rc = [self.tokenizer.reverse_complement(x) for x in ids_list]
            probs = (probs + self._probs(rc, batch_size, chunk_size, progress)) / 2
        return probs

    def embed(self, seqs, pooling: str | None = None, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
        """Pooled backbone hidden states (the classifier's input features); pooling defaults to the model's."""
        return _embed(self, seqs, pooling or self.model.pooling, chunk_size)


def _embed(pipe: Pipeline, seqs, pooling: str, chunk_size: int) -> torch.Tensor:
    if pooling not in ("mean", "last"):
        raise ValueError(f"pooling must be 'mean' or 'last'; got {pooling!r}")
    single = isinstance(seqs, (str, bytes))
    ids_list = pipe._encode_many([seqs] if single else list(seqs))
    out = torch.cat([pipe._pooled_hidden(*_pad([x], pipe.tokenizer.pad_id), pooling, chunk_size).cpu()
                     for x in ids_list])
    return out[0] if single else out


class AudioPipeline(_LMPipeline):
    """A next-sample waveform model (mu-law or linear ids): ``generate``, ``score``, ``save``."""

    _default_tokenizer = "MuLawTokenizer"

    def __init__(self, model, metadata=None, tokenizer=None, source="<model>"):
        super().__init__(model, metadata, tokenizer, source)
        if not isinstance(self.tokenizer, MuLawTokenizer):
            raise ValueError(f"{source}: an audio model needs a MuLawTokenizer; metadata names "
                             f"{type(self.tokenizer).__name__}")
        rate = self.metadata.get("sample_rate", 16000)
        if not isinstance(rate, int) or rate <= 0:
            raise ValueError(f"{source}: metadata sample_rate must be a positive integer; got {rate!r}")
        self.sample_rate = rate

    def load_audio(self, wav) -> torch.Tensor:
        """A mono float32 waveform at the model's rate from a path (WAV/FLAC/OGG; mixed to mono,
        resampled with soxr when needed) or from an array/tensor already at that rate."""
        if isinstance(wav, (str, Path)):
            import soundfile as sf

            from .datamodules._audio_io import probe

            info = probe(wav)
            data, rate = sf.read(str(wav), dtype="float32", always_2d=True)
            x = data.mean(1)
            if rate != self.sample_rate:
                import soxr
                x = soxr.resample(x, rate, self.sample_rate).astype(np.float32)
            if not np.isfinite(x).all():
                raise ValueError(f"{info.path}: contains NaN or infinite samples")
            return torch.from_numpy(np.ascontiguousarray(x))
        x = torch.as_tensor(wav, dtype=torch.float32)
        if x.dim() != 1 or x.numel() == 0:
            raise ValueError(f"a waveform must be a non-empty 1-D array of samples; got shape {tuple(x.shape)}")
        return x

    def generate(self, seconds: float | None = None, prompt_wav=None, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, num_samples: int = 1, n_samples: int | None = None,
                 callback: Callable[[torch.Tensor], None] | None = None, progress: bool | None = None,
                 compile: bool = False) -> Audio:
        """Generate ``seconds`` of audio (or ``n_samples`` samples) after ``prompt_wav``.

        prompt_wav: a path or a waveform at the model's rate; None starts from silence. The prompt
        is not repeated in the output. num_samples > 1 returns a batch (num_samples, samples).
        callback(chunk) receives each new stretch of waveform (batch, k) as it is made (streaming).
        Returns ``Audio(waveform, sample_rate)``; ``.save("out.wav")`` writes it.
        compile: run the decoding step through torch.compile (see ``longseq.generation.generate``).
        The default engine already generates faster than real time at batch 1 on an H100 (demo
        model); compiling does not make that faster (docs/benchmarks/generate.md).
        """
        if n_samples is None:
            if seconds is None or not (isinstance(seconds, (int, float)) and seconds > 0):
                raise ValueError(f"seconds must be a positive number (or give n_samples); got {seconds!r}")
            n_samples = max(1, round(seconds * self.sample_rate))
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer; got {num_samples!r}")
        if prompt_wav is None:
            prompt = self.tokenizer.encode(torch.zeros(1))  # one silent sample: the model needs a token to start from
        else:
            prompt = self.tokenizer.encode(self.load_audio(prompt_wav))
        ids = prompt[None].repeat(num_samples, 1)
        stream = None
        if callback is not None:
            stream = lambda toks: callback(self.tokenizer.decode(toks.cpu()))  # noqa: E731
        new = generation.generate(self.model, ids, n_samples, temperature=temperature, top_k=top_k, top_p=top_p,
                                  seed=seed, allowed_tokens=range(self.tokenizer.levels), callback=stream,
                                  progress=progress if progress is not None else n_samples >= 4 * self.sample_rate,
                                  compile=compile)
        wave = self.tokenizer.decode(new.cpu())
        return Audio(wave[0] if num_samples == 1 else wave, self.sample_rate)

    def score(self, wav, chunk_size: int = DEFAULT_CHUNK, progress: bool | None = None) -> ScoreResult:
        """Per-sample log-likelihoods and bits per sample of a waveform (path or array at the model's rate)."""
        return self._score_ids(self.tokenizer.encode(self.load_audio(wav)), chunk_size, (), progress)

    def save(self, audio, path, subtype: str | None = None) -> Path:
        """Write ``audio`` (an ``Audio`` or a waveform at the model's rate) to WAV/FLAC/OGG."""
        if not isinstance(audio, Audio):
            audio = Audio(torch.as_tensor(audio, dtype=torch.float32), self.sample_rate)
        return audio.save(path, subtype)
