"""GenomeDataModule: next-base windows streamed from one FASTA file (DESIGN §5)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ._base import SPLITS, RegionWindows, WindowDataModule
from ._windows import Region, usable_regions
from .fasta import FastaError, IndexedFasta

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "dna"
_BED_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                    "validation": "val", "test": "test"}


def bundled_genome() -> Path:
    """Path of the bundled reference genome (E. coli K-12 MG1655, 4.6 Mb, plain gzip)."""
    return ASSETS / "species" / "Escherichia_coli" / "K12_MG1655.fa.gz"


def read_bed(path, contigs: dict[str, int]) -> dict[str, list[tuple[str, int, int]]]:
    """Intervals per split from a BED file of ``chrom start end split`` (Basenji / HyenaDNA).

    Split names train/training, val/valid/validation, test; further columns are ignored; lines
    starting with '#', 'track' or 'browser' and blank lines are skipped. Errors name the line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FastaError(f"BED file not found: {path}")
    out: dict[str, list[tuple[str, int, int]]] = {s: [] for s in SPLITS}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            fields = line.split()
            where = f"{path}: line {lineno}"
            if len(fields) < 4:
                raise FastaError(f"{where}: expected 4 columns (chrom start end split), got {len(fields)}")
            chrom, start, end, split = fields[:4]
            try:
                start, end = int(start), int(end)
            except ValueError:
                raise FastaError(f"{where}: start and end must be integers, got {fields[1]!r}, {fields[2]!r}") from None
            if split.lower() not in _BED_SPLIT_NAMES:
                raise FastaError(f"{where}: unknown split {split!r} (expected train, valid/val or test)")
            if chrom not in contigs:
                raise FastaError(f"{where}: contig {chrom!r} is not in the FASTA (it has "
                                 f"{len(contigs)} contigs, e.g. {', '.join(list(contigs)[:5])})")
            if not 0 <= start < end <= contigs[chrom]:
                raise FastaError(f"{where}: interval [{start}, {end}) is outside contig {chrom!r} "
                                 f"of length {contigs[chrom]}")
            out[_BED_SPLIT_NAMES[split.lower()]].append((chrom, start, end))
    if not any(out.values()):
        raise FastaError(f"{path}: no intervals found")
    return out


def merge_intervals(intervals: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Union of intervals per contig (touching or overlapping ones are joined), sorted."""
    merged: list[list] = []
    for chrom, start, end in sorted(intervals):
        if merged and merged[-1][0] == chrom and start <= merged[-1][2]:
            merged[-1][2] = max(merged[-1][2], end)
        else:
            merged.append([chrom, start, end])
    return [tuple(m) for m in merged]


def region_split(contigs: dict[str, int], val_fraction: float, test_fraction: float):
    """Each contig cut into train | test | val: the last ``val_fraction`` for val, the
    ``test_fraction`` before it for test, the rest for train."""
    out = {s: [] for s in SPLITS}
    for name, length in contigs.items():
        val_start = int(round(length * (1 - val_fraction)))
        test_start = int(round(length * (1 - val_fraction - test_fraction)))
        for split, a, b in (("train", 0, test_start), ("test", test_start, val_start), ("val", val_start, length)):
            if b > a:
                out[split].append((name, a, b))
    return out


class GenomeWindows(RegionWindows):
    """Next-base batches: ``seq_len + 1`` bases per window; inputs are the first ``seq_len``,
    labels the last ``seq_len`` (inputs shifted by one), -100 where the target base is N."""

    def __init__(self, fasta, regions, seq_len, rc_aug, max_tiles=None):
        super().__init__([fasta], regions, seq_len + 1, max_tiles)
        self.rc_aug = rc_aug

    def batch(self, idx, starts, rng):
        # Compact, for the trip from the worker: codes (1 byte a base) and labels as int8 with
        # N already -100, so that the training process only widens both (two cheap casts).
        ids, wids = self.ids(idx, starts, rng, self.rc_aug)
        labels = ids[:, 1:].view(np.int8).copy()
        labels[labels == self.tokenizer.n_id] = -100
        return {"codes": torch.from_numpy(ids), "labels8": torch.from_numpy(labels), "window_id": wids}

    def expand(self, batch):
        # numpy, not torch: torch's casts of strided uint8 views were 10-40x slower here
        codes, labels = batch.pop("codes").numpy(), batch.pop("labels8").numpy()
        return {"input_ids": torch.from_numpy(codes[:, :-1].astype(np.int64)),
                "labels": torch.from_numpy(labels.astype(np.int64)), **batch}


class GenomeDataModule(WindowDataModule):
    """Windows of a genome for next-base prediction, streamed from a FASTA file through pyfaidx.

    Batches are ``{"input_ids": (B, L), "labels": (B, L), "window_id": (B,)}`` with L = seq_len:
    labels are the inputs shifted by one base, -100 where the target is N (not scored);
    window_id is the window's start in genome coordinates (contigs laid end to end in FASTA order).

    Args:
        fasta: FASTA file: plain, bgzip, or plain gzip (decompressed once into the cache,
            ``$LONGSEQ_CACHE`` or ``~/.cache/longseq``). Default: the bundled E. coli genome.
        seq_len: window length L (tokens per row). ``SequenceLengthWarmup`` changes it via
            ``set_stage``.
        batch_size: windows per batch.
        bed: BED file of ``chrom start end split`` (Basenji / HyenaDNA ``sequences.bed``). Intervals
            of one split are merged where they touch; windows lie wholly inside one merged
            interval, so no window mixes splits.
        splits: ``{"train": [contigs], "val": [...], "test": [...]}``: whole contigs per split.
        val_fraction, test_fraction: without ``bed`` or ``splits``, every contig is cut into
            train | test | val with the last ``val_fraction`` for val and the ``test_fraction``
            before it for test.
        rc_aug: reverse-complement half of the training windows.
        train_sampling: ``"random"`` (windows at uniformly random positions) or ``"tiled"``
            (every tile of the training regions once per epoch, in a per-epoch shuffled order).
        samples_per_epoch: random training windows per epoch over all ranks and workers
            (default: as many as cover the training bases once at the current seq_len).
        max_eval_windows: cap on val/test windows (evenly spaced over the tiles); default all.
        num_workers: DataLoader workers per rank (each opens its own FASTA handle).
        seed: base seed; each (epoch, rank, worker) draws from its own derived seed.
        cache_dir: overrides the cache folder.

    Windows never cross a contig end or a split boundary; regions shorter than a window are
    skipped with a warning that counts them. Val/test windows tile each region with stride L,
    the last one shifted back inside the region; with several ranks/workers the tiles are split
    into contiguous blocks, without overlap or loss.
    """

    def __init__(self, fasta: str | None = None, seq_len: int = 1024, batch_size: int = 8,
                 bed: str | None = None, splits: dict[str, list[str]] | None = None,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, rc_aug: bool = True,
                 train_sampling: str = "random", samples_per_epoch: int | None = None,
                 max_eval_windows: int | None = None, num_workers: int = 0, seed: int = 0,
                 cache_dir: str | None = None):
        super().__init__(seq_len, batch_size, num_workers, seed, samples_per_epoch, max_eval_windows,
                         rc_aug, cache_dir)
        self.save_hyperparameters()
        if train_sampling not in ("random", "tiled"):
            raise ValueError(f"GenomeDataModule: train_sampling must be 'random' or 'tiled', got {train_sampling!r}")
        self.train_sampling = train_sampling
        self.fasta_path = Path(fasta) if fasta is not None else bundled_genome()
        if bed is not None and splits is not None:
            raise ValueError("GenomeDataModule: give either bed or splits, not both")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(f"GenomeDataModule: val_fraction + test_fraction must be in [0, 1), got "
                             f"{val_fraction} + {test_fraction}")
        self.bed, self.splits = bed, splits
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.fasta: IndexedFasta | None = None
        self.regions: dict[str, list[Region]] | None = None

    def prepare_data(self) -> None:
        # Index (and, for plain gzip, decompress) once, in the main process of each node.
        IndexedFasta(self.fasta_path, cache_dir=self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.regions is not None:
            return
        self.fasta = IndexedFasta(self.fasta_path, cache_dir=self.cache_dir)
        contigs = self.fasta.contigs
        if self.bed is not None:
            intervals = {s: merge_intervals(v) for s, v in read_bed(self.bed, contigs).items()}
        elif self.splits is not None:
            intervals = self._contig_splits(contigs)
        else:
            intervals = region_split(contigs, self.val_fraction, self.test_fraction)
        offsets = dict(zip(contigs, np.cumsum([0] + list(contigs.values()))[:-1].tolist()))
        self.regions = {s: [Region(0, c, a, b, offset=offsets[c]) for c, a, b in intervals[s]] for s in SPLITS}

    def _contig_splits(self, contigs):
        unknown_splits = set(self.splits) - set(SPLITS)
        if unknown_splits:
            raise ValueError(f"GenomeDataModule: splits keys must be train/val/test, got {sorted(unknown_splits)}")
        seen: dict[str, str] = {}
        out = {s: [] for s in SPLITS}
        for split, names in self.splits.items():
            for name in names:
                if name not in contigs:
                    raise FastaError(f"GenomeDataModule: splits[{split!r}] names contig {name!r}, which is "
                                     f"not in {self.fasta_path} (contigs: {', '.join(list(contigs)[:10])}"
                                     f"{', ...' if len(contigs) > 10 else ''})")
                if name in seen:
                    raise ValueError(f"GenomeDataModule: contig {name!r} is in both {seen[name]!r} and {split!r}")
                seen[name] = split
                out[split].append((name, 0, contigs[name]))
        return out

    def _source(self, split: str, train: bool) -> GenomeWindows:
        if self.regions is None:
            self.setup()
        span = self.seq_len + 1
        regions = usable_regions(self.regions[split], span, split, "contig" if self.splits else "region")
        if not regions:
            longest = max((len(r) for r in self.regions[split]), default=0)
            msg = (f"GenomeDataModule: seq_len {self.seq_len} (+1 for the shifted target) is larger than "
                   f"every {split} region of {self.fasta_path} (longest: {longest} bases)")
            if train:
                raise ValueError(msg)
            warnings.warn(msg + f"; the {split} loader is empty", stacklevel=2)
        return GenomeWindows(self.fasta, regions, self.seq_len, self.rc_aug and train,
                             None if train else self.max_eval_windows)
