"""What the genome data modules share: stage (seq_len, batch_size), loaders, region sources."""
from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from ..tokenizers import NucleotideTokenizer
from ._windows import Region, WindowDataset, WindowLoader, evenly_spaced, tile_starts

SPLITS = ("train", "val", "test")


def check_positive(name: str, value, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


class RegionWindows:
    """Windows of ``span`` bases inside ``regions`` (all of one split); picklable into workers.

    Train draws are uniform over every valid window start of the split; tiles cover each region
    (see ``tile_starts``), thinned to ``max_tiles`` evenly spaced ones if given.
    """

    def __init__(self, fastas, regions: list[Region], span: int, max_tiles: int | None = None):
        self.fastas, self.regions, self.span, self.max_tiles = fastas, regions, span, max_tiles
        self.region_start = np.array([r.start for r in regions], dtype=np.int64)
        self.num_starts = np.array([len(r) - span + 1 for r in regions], dtype=np.int64)
        self.tokenizer = NucleotideTokenizer()

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.num_starts / self.num_starts.sum()
        idx = rng.choice(len(self.regions), size=n, p=p)
        return idx, self._start_in(idx, rng)

    def _start_in(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.region_start[idx] + rng.integers(0, self.num_starts[idx])

    def tiles(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.regions:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        starts = [tile_starts(r, self.span) for r in self.regions]
        idx = np.concatenate([np.full(len(s), i, dtype=np.int64) for i, s in enumerate(starts)])
        starts = np.concatenate(starts)
        keep = evenly_spaced(len(starts), self.max_tiles)
        return idx[keep], starts[keep]

    def ids(self, idx: np.ndarray, starts: np.ndarray, rng: np.random.Generator | None = None,
            rc_aug: bool = False) -> tuple[np.ndarray, torch.Tensor]:
        """Token ids (n, span) as uint8 and global window ids (n,) for the given windows.

        With ``rng`` and ``rc_aug``, a random half of the rows is reverse-complemented (training).
        Works on bytes (``bytes.translate`` with the tokenizer's own table) and converts to int64
        once per batch: at 2^20 bases this is several times faster than per-window tensors.
        """
        out = np.empty((len(idx), self.span), dtype=np.uint8)
        flip = rng.random(len(idx)) < 0.5 if (rng is not None and rc_aug) else np.zeros(len(idx), bool)
        wids = []
        for row, (i, s) in enumerate(zip(idx.tolist(), starts.tolist())):
            r = self.regions[i]
            fasta = self.fastas[r.source]
            seq = fasta.fetch(r.contig, s, s + self.span)
            codes = seq.encode("ascii", "replace").translate(_ENCODE)
            bad = codes.find(b"\xff")
            if bad >= 0:   # only if the file was opened with validate=False
                raise ValueError(f"{fasta.source}: invalid character {seq[bad]!r} in contig {r.contig!r} "
                                 f"at offset {s + bad} (0-based)")
            if flip[row]:
                codes = codes.translate(_COMPLEMENT)[::-1]
            out[row] = np.frombuffer(codes, dtype=np.uint8)
            wids.append(r.offset + s)
        return out, torch.tensor(wids, dtype=torch.long)


def _byte_tables() -> tuple[bytes, bytes]:
    """Byte -> id table taken from NucleotideTokenizer itself (255 = invalid), and the complement
    table on ids taken from its reverse_complement, so the loader cannot drift from the tokenizer."""
    tok = NucleotideTokenizer()
    encode = bytearray(b"\xff" * 256)
    for b in range(256):
        try:
            encode[b] = int(tok.encode(bytes([b]))[0])
        except ValueError:
            pass
    ids = torch.arange(tok.vocab_size)
    complement = bytearray(b"\xff" * 256)
    complement[:tok.vocab_size] = bytes(tok.reverse_complement(ids).flip(-1).tolist())
    return bytes(encode), bytes(complement)


_ENCODE, _COMPLEMENT = _byte_tables()


class WindowDataModule(LightningDataModule):
    """Base of GenomeDataModule and SpeciesDataModule: stages, loaders, checkpointed state."""

    def __init__(self, seq_len: int, batch_size: int, num_workers: int, seed: int,
                 samples_per_epoch: int | None, max_eval_windows: int | None, rc_aug: bool, cache_dir):
        super().__init__()
        owner = type(self).__name__
        self.seq_len = check_positive("seq_len", seq_len, owner)
        self.batch_size = check_positive("batch_size", batch_size, owner)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"{owner}: num_workers must be an integer >= 0, got {num_workers!r}")
        self.num_workers, self.seed, self.rc_aug, self.cache_dir = num_workers, int(seed), rc_aug, cache_dir
        self.samples_per_epoch = (None if samples_per_epoch is None
                                  else check_positive("samples_per_epoch", samples_per_epoch, owner))
        self.max_eval_windows = (None if max_eval_windows is None
                                 else check_positive("max_eval_windows", max_eval_windows, owner))
        self.tokenizer = NucleotideTokenizer()

    # --- to be provided by subclasses -------------------------------------------------------
    def _source(self, split: str, train: bool):
        raise NotImplementedError

    # --- stages (SequenceLengthWarmup) ----------------------------------------------------
    def set_stage(self, seq_len: int, batch_size: int) -> None:
        """Serve windows of ``seq_len`` in batches of ``batch_size`` from the next train/val/test
        loader built (the SequenceLengthWarmup protocol)."""
        owner = type(self).__name__
        self.seq_len = check_positive("seq_len", seq_len, owner)
        self.batch_size = check_positive("batch_size", batch_size, owner)

    # --- loaders -----------------------------------------------------------------------------
    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.current_epoch if trainer is not None else 0

    def _loader(self, split: str, train: bool) -> DataLoader:
        source = self._source(split, train)
        samples = 0
        tiled = train and getattr(self, "train_sampling", "random") == "tiled"
        if train and not tiled:
            samples = self.samples_per_epoch or max(self.batch_size, int(source.num_starts.sum()) // self.seq_len)
        dataset = WindowDataset(source, self.batch_size, train=train, samples=samples, seed=self.seed,
                                epoch=self._epoch(), num_workers=self.num_workers, tiled=tiled)
        # Persistent train workers keep their dataset copy, so its epoch counter advances (fresh
        # random windows every epoch) even when the trainer does not rebuild the loader.
        return WindowLoader(dataset, batch_size=None, num_workers=self.num_workers,
                            persistent_workers=train and self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
