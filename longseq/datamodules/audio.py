"""Waveform windows for next-sample prediction: ``WaveformDataModule`` (DESIGN §5).

Files (a folder, a glob, a manifest or a list) are split by file, read in windows of
``seq_len + 1`` samples (mono, at ``sample_rate``), quantised to tokens (8-bit mu-law by default)
and served as ``{"input_ids": (B, L), "labels": (B, L), "window_id": (B,)}`` with labels the
inputs shifted by one and ``-100`` where there is nothing to score (padding).

- train: random windows (a file drawn in proportion to its length, then a uniform start), or
  ``train_windows="tiled"``; each (rank, worker) shard draws its own, seeded by
  ``shard_seed(seed, epoch, shard)``.
- val/test: the files tiled from frame 0 with stride ``seq_len`` (each sample scored once),
  split without overlap between shards.

The module never writes next to the user's data; files at another rate are resampled once into
the cache directory (``cache_dir``, default ``$LONGSEQ_CACHE/audio`` or ``~/.cache/longseq/audio``).
"""
from __future__ import annotations

import glob
import itertools
import math
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from ..tokenizers import MuLawTokenizer
from ._audio_io import (AUDIO_EXTENSIONS, AudioFileError, AudioInfo, WindowReader,
                        default_cache_dir, ensure_resampled, probe)
from .sharding import rank_and_world, shard_context, shard_seed, split_range

__all__ = ["WaveformDataModule", "WaveformWindows", "AudioFileError", "bundled_audio",
           "resolve_audio_files", "split_files"]

SPLITS = ("train", "val", "test")
_MANIFEST_EXTENSIONS = (".txt", ".lst", ".tsv", ".csv")


def bundled_audio() -> dict[str, Path]:
    """Paths of the real audio shipped in the wheel (provenance: ``longseq/assets/README.md``).

    ``piano``: Bach BWV 846 (119 s, 16 kHz mono FLAC); ``digits``: folder of SC09-style spoken
    digits ``<digit>/<speaker>_<digit>.flac`` (10 speakers x 10 digits, 1 s, 16 kHz);
    ``digits_speakers``: its ``speakers.tsv``.
    """
    root = Path(str(resources.files("longseq") / "assets" / "audio"))
    return {"piano": root / "piano_16k" / "bwv846.flac",
            "digits": root / "digits_tts",
            "digits_speakers": root / "digits_tts" / "speakers.tsv"}


# --------------------------------------------------------------------------------------------
# Which files, and which split each belongs to
# --------------------------------------------------------------------------------------------
def _read_list(path: Path) -> list[Path]:
    """A manifest / list file: first column of each non-blank, non-# line; relative to its folder."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name = re.split(r"[\t,]", line, maxsplit=1)[0].strip()
            if lineno == 1 and name.lower() in ("path", "file", "filename", "audio"):
                continue  # a header row
            p = Path(name).expanduser()
            p = p if p.is_absolute() else path.parent / p
            if not p.is_file():
                raise FileNotFoundError(f"{path}:{lineno}: listed audio file {name!r} not found "
                                        f"(looked for {p})")
            out.append(p)
    return out


def resolve_audio_files(files) -> list[Path]:
    """Expand ``files`` into a sorted, de-duplicated list of audio file paths.

    ``files`` is a folder (searched recursively for *.wav, *.flac, *.ogg, any case), a glob
    pattern, a manifest (.txt/.lst/.tsv/.csv: one path per line, first column, relative to the
    manifest's folder), one audio file, or a list of any of these.
    """
    if isinstance(files, (str, os.PathLike)):
        items = [files]
    elif isinstance(files, Sequence):
        items = list(files)
    else:
        raise TypeError(f"files must be a path, glob, manifest or list of them; got {type(files).__name__}")
    found: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            hits = [q for q in p.rglob("*") if q.suffix.lower() in AUDIO_EXTENSIONS and q.is_file()]
            if not hits:
                raise FileNotFoundError(f"{p}: no audio files (*.wav, *.flac, *.ogg) in this folder")
            found += hits
        elif p.is_file():
            found += _read_list(p) if p.suffix.lower() in _MANIFEST_EXTENSIONS else [p]
        elif glob.has_magic(str(item)):
            hits = [Path(q) for q in glob.glob(str(p), recursive=True) if os.path.isfile(q)]
            if not hits:
                raise FileNotFoundError(f"no files match the pattern {str(item)!r}")
            found += hits
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    unique = {os.path.abspath(q): q for q in found}
    return [Path(k) for k in sorted(unique)]


def _ratio_counts(n: int, ratios: Sequence[float]) -> list[int]:
    """Split n items by ratios: val/test get round(n*r) (at least 1 when r > 0), train the rest."""
    counts = [0, 0, 0]
    for i in (1, 2):
        if ratios[i] > 0:
            counts[i] = max(1, round(n * ratios[i]))
    counts[0] = n - counts[1] - counts[2]
    if counts[0] < 1:
        raise ValueError(f"splits={tuple(ratios)}: {n} unit(s) to split is too few to give every "
                         "non-zero split at least one")
    return counts


def _check_ratios(splits) -> list[float]:
    try:
        ratios = [float(r) for r in splits]
    except (TypeError, ValueError):
        ratios = []
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6 or ratios[0] <= 0:
        raise ValueError(f"splits must be three non-negative ratios (train > 0) summing to 1, or a "
                         f"mapping of file lists; got {splits!r}")
    return ratios


def split_files(paths: Sequence[Path], splits=(0.88, 0.06, 0.06), split_group: str | None = None,
                split_seed: int | None = None, root: Path | None = None) -> dict[str, list[Path]]:
    """Assign each file to exactly one of train/val/test.

    ``splits`` is either three ratios (train, val, test), applied in order to the sorted files
    (as SaShiMi splits YouTubeMix 0.88/0.06/0.06) or, with ``split_group`` (a regex whose first
    group, searched in the file name, names the unit: e.g. the speaker), to the sorted groups, so
    a group never spans two splits; ``split_seed`` shuffles the units first. Or a mapping
    ``{"val": ..., "test": ..., ["train": ...]}`` whose values are lists of paths or a list file
    (one path per line, as SC09's ``validation_list.txt``); paths are relative to the list file's
    folder, or to ``root`` for in-line lists. Files not listed go to train unless "train" is given;
    listed files that exist but are not among ``paths`` are ignored (Speech Commands' lists name
    every word, SC09 uses ten); a listed file that does not exist is an error.
    """
    paths = list(paths)
    if isinstance(splits, Mapping):
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"splits: unknown split name(s) {sorted(unknown)}; use train, val, test")
        index = {os.path.abspath(p): p for p in paths}
        out: dict[str, list[Path]] = {s: [] for s in SPLITS}
        owner: dict[str, str] = {}
        for name in SPLITS:
            spec = splits.get(name)
            if spec is None:
                continue
            if isinstance(spec, (str, os.PathLike)):
                listed = _read_list(Path(spec).expanduser())
            else:
                base = root or Path.cwd()
                listed = [Path(q).expanduser() if Path(q).expanduser().is_absolute() else base / q
                          for q in spec]
            for q in listed:
                key = os.path.abspath(q)
                if key not in index:
                    if os.path.isfile(q):
                        continue  # a real file outside `files` (e.g. Speech Commands' lists name all 35 words)
                    raise ValueError(f"splits[{name!r}] lists {q}, which does not exist")
                if key in owner and owner[key] != name:
                    raise ValueError(f"{q} is listed in both splits[{owner[key]!r}] and splits[{name!r}]")
                if key not in owner:
                    owner[key] = name
                    out[name].append(index[key])
        if "train" not in splits:
            out["train"] = [p for p in paths if os.path.abspath(p) not in owner]
        return {s: sorted(v) for s, v in out.items()}

    ratios = _check_ratios(splits)
    if split_group is None:
        units = {str(p): [p] for p in sorted(paths)}
    else:
        pattern = re.compile(split_group)
        units = {}
        for p in sorted(paths):
            m = pattern.search(p.name)
            if m is None or not m.groups():
                raise ValueError(f"split_group={split_group!r} does not match (with a group) the "
                                 f"file name {p.name!r} of {p}")
            units.setdefault(m.group(1), []).append(p)
    keys = sorted(units)
    if split_seed is not None:
        np.random.default_rng(split_seed).shuffle(keys)
    counts = _ratio_counts(len(keys), ratios)
    bounds = np.cumsum([0] + counts)
    return {s: sorted(p for k in keys[bounds[i]:bounds[i + 1]] for p in units[k])
            for i, s in enumerate(SPLITS)}


# --------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One file as the loader reads it: ``read_path`` is the file itself or its resampled copy."""
    path: str
    read_path: str
    frames: int          # at the target rate (of the segment, with split_by="time")
    channel: int | None  # None: mean of channels (cached copies are already mono)
    offset: int = 0      # first frame of the segment (split_by="time")
    int16_mono: bool = False  # mono 16-bit PCM read as is: tokens come from a lookup table


class WaveformWindows(IterableDataset):
    """Batches of token windows from a list of ``Source`` files (used by ``WaveformDataModule``).

    Iterating yields whole batches (so ``len()`` is this rank's exact batch count); each
    (rank, worker) shard produces its own share. A window reads ``seq_len + 1`` samples:
    ``input_ids = ids[:-1]``, ``labels = ids[1:]``. Files shorter than that are padded with
    ``pad_id`` (labels ``-100``) or dropped (``short="drop"``); so is the tail tile of a file.
    """

    def __init__(self, sources: Sequence[Source], seq_len: int, batch_size: int, tokenizer,
                 mode: str = "random", windows_per_epoch: int | None = None, short: str = "pad",
                 normalize: str | None = None, seed: int = 0, epoch: int = 0, num_workers: int = 0,
                 return_positions: bool = False):
        if mode not in ("random", "tiled"):
            raise ValueError(f"mode must be 'random' or 'tiled'; got {mode!r}")
        if short not in ("pad", "drop"):
            raise ValueError(f"short must be 'pad' or 'drop'; got {short!r}")
        if normalize not in (None, "peak"):
            raise ValueError(f"normalize must be None or 'peak'; got {normalize!r}")
        self.seq_len, self.batch_size = int(seq_len), int(batch_size)
        self.tokenizer, self.mode, self.short, self.normalize = tokenizer, mode, short, normalize
        self.seed, self.epoch, self.num_workers = seed, epoch, num_workers
        self.return_positions = return_positions
        self.rank_world = rank_and_world()  # for spawned workers, which do not inherit the process group
        need = self.seq_len + 1
        # all sources stay (file_index keeps meaning the split's file list); dropped ones get no windows
        self.sources = list(sources)
        usable = [short == "pad" or s.frames >= need for s in self.sources]
        if not any(usable):
            raise ValueError(f"no file has the {need} samples a window of seq_len={seq_len} needs "
                             f"(short='drop'); use short='pad' or a shorter seq_len")
        self.reader = WindowReader()
        if mode == "tiled":
            # tile k of a file reads [k*L, k*L + L + 1): every sample but the first is a label once
            per_file = [max(1, math.ceil((s.frames - 1) / self.seq_len)) if short == "pad"
                        else (s.frames - 1) // self.seq_len for s in self.sources]
            self._tile_file = np.repeat(np.arange(len(self.sources)), per_file)
            first = np.cumsum([0] + per_file[:-1])
            self._tile_start = (np.arange(len(self._tile_file)) - np.repeat(first, per_file)) * self.seq_len
            self.num_windows = len(self._tile_file)
        else:
            frames = np.array([s.frames for s in self.sources], dtype=np.int64)
            starts = np.maximum(frames - self.seq_len, 1) * np.array(usable)  # valid start frames
            self._cum = np.cumsum(starts)
            total = int((frames * np.array(usable)).sum())
            self.num_windows = int(windows_per_epoch or max(1, total // self.seq_len))

    # which windows (file index, start frame, window id) this shard owns
    def _windows(self, shard_id: int, num_shards: int) -> Iterator[tuple[int, int, int]]:
        ids = split_range(self.num_windows, shard_id, num_shards)
        if self.mode == "tiled":
            for i in ids:
                yield int(self._tile_file[i]), int(self._tile_start[i]), i
            return
        rng = np.random.default_rng(shard_seed(self.seed, self.epoch, shard_id))
        # one uniform draw over all valid (file, start) pairs: files weighted by their length
        flat = rng.integers(0, int(self._cum[-1]), size=len(ids))
        files = np.searchsorted(self._cum, flat, side="right")
        starts = flat - np.concatenate([[0], self._cum[:-1]])[files]
        for i, f, s in zip(ids, files, starts):
            yield int(f), int(s), i

    def read_window(self, file_index: int, start: int) -> np.ndarray:
        """The float32 samples of a window (up to ``seq_len + 1``; fewer at a file's end).

        ``start`` counts from the start of the source (its segment, with ``split_by="time"``)."""
        src = self.sources[file_index]
        n = min(self.seq_len + 1, src.frames - start)
        x = self.reader.read(src.read_path, src.offset + start, n, src.channel)
        if self.normalize == "peak":
            peak = float(np.abs(x).max())
            if peak > 0:
                x = x / peak
        return x

    def _int16_table(self) -> np.ndarray:
        # tokens of every 16-bit sample value, made by the tokenizer itself from the exact floats
        # soundfile would return (v / 32768): identical ids, one gather per window.
        if getattr(self, "_table", None) is None:
            values = torch.arange(-32768, 32768, dtype=torch.float32) / 32768
            self._table = self.tokenizer.encode(values).numpy()
        return self._table

    def _example(self, file_index: int, start: int, out_ids: torch.Tensor, out_labels: torch.Tensor):
        src = self.sources[file_index]
        if src.int16_mono and self.normalize is None:
            n = min(self.seq_len + 1, src.frames - start)
            raw = self.reader.read_int16(src.read_path, src.offset + start, n)
            ids = torch.from_numpy(self._int16_table()[raw.view(np.uint16) ^ 0x8000])
        else:
            ids = self.tokenizer.encode(torch.from_numpy(self.read_window(file_index, start)))
        n, L = len(ids), self.seq_len
        m = min(n, L)
        out_ids[:m] = ids[:m]
        out_ids[m:] = self.tokenizer.pad_id
        out_labels[:n - 1] = ids[1:]
        out_labels[n - 1:] = -100

    def _batch_count(self, shard_id: int, num_shards: int) -> int:
        return math.ceil(len(split_range(self.num_windows, shard_id, num_shards)) / self.batch_size)

    def __len__(self) -> int:
        """Batches this rank will yield over all its workers."""
        rank, world = rank_and_world()
        w = max(1, self.num_workers)
        return sum(self._batch_count(rank * w + k, world * w) for k in range(w))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        shard_id, num_shards = shard_context()
        windows = self._windows(shard_id, num_shards)
        L, B = self.seq_len, self.batch_size
        while chunk := list(itertools.islice(windows, B)):
            ids = torch.empty(len(chunk), L, dtype=torch.long)
            labels = torch.empty(len(chunk), L, dtype=torch.long)
            for row, (f, s, _) in enumerate(chunk):
                self._example(f, s, ids[row], labels[row])
            batch = {"input_ids": ids, "labels": labels,
                     "window_id": torch.tensor([w for _, _, w in chunk], dtype=torch.long)}
            if self.return_positions:
                batch["file_index"] = torch.tensor([f for f, _, _ in chunk], dtype=torch.long)
                batch["start"] = torch.tensor([s for _, s, _ in chunk], dtype=torch.long)
            yield batch


class _EpochLoader(DataLoader):
    """A DataLoader that moves its dataset to the next epoch each time it is iterated again,
    so a loader reused across epochs (no reload) draws fresh random windows every epoch."""

    def __iter__(self):
        if getattr(self, "_iterated", False):
            self.dataset.epoch += 1
        self._iterated = True
        return super().__iter__()


# --------------------------------------------------------------------------------------------
# The DataModule
# --------------------------------------------------------------------------------------------
class WaveformDataModule(pl.LightningDataModule):
    """Windows of raw waveform, tokenised, for next-sample prediction (SaShiMi / WaveNet style).

    Args:
        files: a folder (searched recursively for .wav/.flac/.ogg), a glob, a manifest
            (.txt/.lst/.tsv/.csv, one path per line), one file, or a list of these.
        sample_rate: rate the model sees; files at another rate are resampled with soxr (once,
            into ``cache_dir``), unless ``resample=False``, which makes a mismatch an error.
        seq_len: tokens per window (each window reads ``seq_len + 1`` samples).
        batch_size: windows per batch.
        quantization: ``"mu-law"`` (default) or ``"linear"``, with ``bits`` and ``mu``
            (``MuLawTokenizer``); vocabulary ``2**bits`` levels + a pad id.
        normalize: ``"peak"`` divides each window by its peak magnitude before encoding (as
            SaShiMi does per clip); ``None`` keeps the file's levels.
        splits: ratios (train, val, test) over sorted files (or ``split_group`` units), or a
            mapping of file lists / list files (SC09's validation/testing lists); see ``split_files``.
        split_group: regex on the file name whose first group is the unit that may not span
            splits (e.g. ``r"^(.*)_[a-z]+\\."`` for ``<speaker>_<digit>.flac``).
        split_seed: shuffle files/units before the ratio split (default: sorted order).
        split_by: ``"file"`` (default) or ``"time"``: every file is cut by the ratios into a
            train segment, then val, then test (for one long recording); windows never cross
            a cut.
        short: ``"pad"`` (masked padding) or ``"drop"`` for files shorter than ``seq_len + 1``
            samples and for the tail tile of a val/test file.
        train_windows: ``"random"`` (default) or ``"tiled"``.
        windows_per_epoch: random train windows per epoch over all ranks and workers
            (default: total train samples // seq_len).
        channel: ``None`` mixes channels to mono by their mean; an int takes that channel.
        resample_quality: soxr quality ("HQ" default, "VHQ", "MQ", "LQ", "QQ").
        max_resample_ratio: refuse files whose rate differs from ``sample_rate`` by more than
            this factor either way (a wrong header or a wrong ``sample_rate``, not audio to keep).
        cache_dir: where resampled copies go (default ``$LONGSEQ_CACHE/audio`` or
            ``~/.cache/longseq/audio``). Nothing is ever written next to the data.
        num_workers, pin_memory: passed to the DataLoaders. seed: base seed of random windows.
        return_positions: add ``file_index`` (index into ``sources[split]``, which follows
            ``files[split]`` with ``split_by="file"``) and ``start`` (frame in that source) (B,).

    Attributes: ``tokenizer``, ``sample_rate``, ``files`` ({split: [paths]}) after ``setup()``.
    Implements ``set_stage(seq_len, batch_size)`` for ``SequenceLengthWarmup``.
    """

    def __init__(self, files, sample_rate: int = 16000, seq_len: int = 16384, batch_size: int = 8,
                 quantization: str = "mu-law", bits: int = 8, mu: float = 255.0,
                 normalize: str | None = None, splits: Any = (0.88, 0.06, 0.06),
                 split_group: str | None = None, split_seed: int | None = None,
                 split_by: str = "file", short: str = "pad",
                 train_windows: str = "random", windows_per_epoch: int | None = None,
                 channel: int | None = None, resample: bool = True, resample_quality: str = "HQ",
                 max_resample_ratio: float = 16.0, cache_dir: str | None = None,
                 num_workers: int = 0, pin_memory: bool = False, seed: int = 0,
                 return_positions: bool = False):
        super().__init__()
        for name, value in (("sample_rate", sample_rate), ("seq_len", seq_len), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if short not in ("pad", "drop"):
            raise ValueError(f"short must be 'pad' or 'drop'; got {short!r}")
        if normalize not in (None, "peak"):
            raise ValueError(f"normalize must be None or 'peak'; got {normalize!r}")
        if split_by not in ("file", "time"):
            raise ValueError(f"split_by must be 'file' or 'time'; got {split_by!r}")
        if split_by == "time" and (isinstance(splits, Mapping) or split_group is not None):
            raise ValueError("split_by='time' takes three ratios as splits and no split_group")
        if train_windows not in ("random", "tiled"):
            raise ValueError(f"train_windows must be 'random' or 'tiled'; got {train_windows!r}")
        if resample_quality not in ("QQ", "LQ", "MQ", "HQ", "VHQ"):
            raise ValueError(f"resample_quality must be one of QQ LQ MQ HQ VHQ; got {resample_quality!r}")
        self.files_arg = files
        self.sample_rate, self.seq_len, self.batch_size = sample_rate, seq_len, batch_size
        self.tokenizer = MuLawTokenizer(bits=bits, mu=mu, quantization=quantization)
        self.normalize, self.splits, self.split_group, self.split_seed = normalize, splits, split_group, split_seed
        self.split_by = split_by
        self.short, self.train_windows, self.windows_per_epoch = short, train_windows, windows_per_epoch
        self.channel, self.resample, self.resample_quality = channel, resample, resample_quality
        self.max_resample_ratio = float(max_resample_ratio)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.num_workers, self.pin_memory, self.seed = num_workers, pin_memory, seed
        self.return_positions = return_positions
        self.files: dict[str, list[Path]] | None = None
        self.sources: dict[str, list[Source]] | None = None
        self._loads = 0

    # -- stages (SequenceLengthWarmup) ---------------------------------------------------------
    def set_stage(self, seq_len: int, batch_size: int) -> None:
        """Serve windows of ``seq_len`` in batches of ``batch_size`` from the next dataloader."""
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"set_stage: seq_len and batch_size must be positive; got {seq_len}, {batch_size}")
        self.seq_len, self.batch_size = int(seq_len), int(batch_size)

    # -- files ---------------------------------------------------------------------------------
    def _source(self, info: AudioInfo) -> Source:
        if self.channel is not None and not -info.channels <= self.channel < info.channels:
            raise AudioFileError(f"{info.path}: has {info.channels} channel(s); channel={self.channel} "
                                 "does not exist")
        if info.samplerate == self.sample_rate:
            int16_mono = info.channels == 1 and info.subtype == "PCM_16" and self.channel in (None, 0, -1)
            return Source(info.path, info.path, info.frames, self.channel, int16_mono=int16_mono)
        if not self.resample:
            raise AudioFileError(f"{info.path}: sample rate {info.samplerate} Hz differs from "
                                 f"sample_rate={self.sample_rate} and resample=False")
        ratio = max(info.samplerate / self.sample_rate, self.sample_rate / info.samplerate)
        if ratio > self.max_resample_ratio:
            raise AudioFileError(
                f"{info.path}: sample rate {info.samplerate} Hz cannot be resampled to "
                f"{self.sample_rate} Hz: the ratio {ratio:.4g} exceeds max_resample_ratio="
                f"{self.max_resample_ratio:g} (a wrong header or a wrong sample_rate?)")
        cached = ensure_resampled(info, self.sample_rate, self.channel, self.resample_quality, self.cache_dir)
        frames = probe(cached).frames
        return Source(info.path, str(cached), frames, None)

    def prepare_data(self) -> None:
        """Probe every file and resample those at another rate into the cache (rank 0 of a node)."""
        self._build()

    def setup(self, stage: str | None = None) -> None:
        """Find, check and split the files (idempotent; cached resamples are reused)."""
        if self.sources is None:
            self._build()

    def _build(self) -> None:
        from tqdm.auto import tqdm

        paths = resolve_audio_files(self.files_arg)
        root = Path(self.files_arg) if isinstance(self.files_arg, (str, os.PathLike)) and Path(self.files_arg).is_dir() else None
        if self.split_by == "time":
            _check_ratios(self.splits)
            files = {name: list(paths) for name in SPLITS}
        else:
            files = split_files(paths, self.splits, self.split_group, self.split_seed, root)
        sources: dict[str, list[Source]] = {name: [] for name in SPLITS}
        owner = {p: name for name in SPLITS for p in files[name]}
        for p in tqdm(paths, desc="audio files", unit="file", disable=len(paths) < 200):
            if self.split_by == "file" and p not in owner:
                continue  # not in any split (an explicit "train" list left it out)
            src = self._source(probe(p))
            if self.split_by == "file":
                sources[owner[p]].append(src)
                continue
            cuts = np.round(np.cumsum([0.0] + [float(r) for r in self.splits]) * src.frames).astype(int)
            for i, name in enumerate(SPLITS):
                if cuts[i + 1] > cuts[i]:
                    sources[name].append(Source(src.path, src.read_path, int(cuts[i + 1] - cuts[i]),
                                                src.channel, int(cuts[i]), src.int16_mono))
        self.files, self.sources = files, sources

    # -- loaders -------------------------------------------------------------------------------
    def _loader(self, split: str, mode: str, epoch: int = 0) -> DataLoader:
        self.setup()
        if not self.sources[split]:
            raise ValueError(f"the {split} split has no files (splits={self.splits!r}, "
                             f"{sum(map(len, self.sources.values()))} files in all)")
        ds = WaveformWindows(self.sources[split], self.seq_len, self.batch_size, self.tokenizer,
                             mode=mode, windows_per_epoch=self.windows_per_epoch if split == "train" else None,
                             short=self.short, normalize=self.normalize, seed=self.seed, epoch=epoch,
                             num_workers=self.num_workers, return_positions=self.return_positions)
        loader = _EpochLoader if split == "train" else DataLoader
        return loader(ds, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        epoch = trainer.current_epoch if trainer is not None else self._loads
        self._loads += 1
        return self._loader("train", self.train_windows, epoch)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", "tiled")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", "tiled")

    def predict_dataloader(self) -> DataLoader:
        """The test split's tiles (``window_id`` says which), e.g. for per-window bits per sample."""
        return self._loader("test", "tiled")
