"""Windows over genome regions, and the sharded iterable datasets shared by the genome data modules.

A *region* is an interval ``[start, end)`` of one contig of one FASTA file that belongs to one
split. Windows lie wholly inside a region, so a window never crosses a contig end or a split
boundary. Training windows are drawn at random, each (rank, worker) shard from its own seed;
val/test windows are deterministic tiles, split between shards without overlap or loss.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader, IterableDataset

from .sharding import rank_and_world, shard_context, shard_seed, split_range


@dataclass(frozen=True)
class Region:
    """``[start, end)`` of ``contig`` in FASTA number ``source``; ``label`` is the class (species)."""
    source: int
    contig: str
    start: int
    end: int
    label: int = -1
    offset: int = 0        # global coordinate of this contig's base 0 (for window ids)

    def __len__(self) -> int:
        return self.end - self.start


def usable_regions(regions: list[Region], span: int, split: str, what: str = "region") -> list[Region]:
    """Regions long enough for a window of ``span`` bases; warns with a count of those skipped."""
    kept = [r for r in regions if len(r) >= span]
    skipped = len(regions) - len(kept)
    if skipped:
        lost = sum(len(r) for r in regions if len(r) < span)
        warnings.warn(f"{split}: skipped {skipped} of {len(regions)} {what}s shorter than a window of "
                      f"{span} bases ({lost} bases unused)", stacklevel=3)
    return kept


def tile_starts(region: Region, span: int) -> np.ndarray:
    """Starts of windows tiling ``region``: stride ``span``; the last tile is shifted back inside
    the region (overlapping its neighbour) instead of being padded, so every base is covered."""
    last = region.end - span
    starts = np.arange(region.start, last + 1, span, dtype=np.int64)
    if starts[-1] != last:
        starts = np.append(starts, last)
    return starts


class WindowLoader(DataLoader):
    """A DataLoader over a WindowDataset that expands each compact batch as it arrives."""

    def __iter__(self):
        expand = self.dataset.source.expand
        for batch in super().__iter__():
            yield expand(batch)


def evenly_spaced(n: int, k: int | None) -> np.ndarray:
    """``k`` indices spread evenly over ``range(n)`` (all of them when k is None or >= n)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


class WindowDataset(IterableDataset):
    """Yields ready-made batches (use ``DataLoader(batch_size=None)``) from a window ``source``.

    ``source`` must provide ``draw(rng, n)`` (random windows) and ``tiles()`` (deterministic
    windows), both as a pair of int64 arrays ``(region_index, start)``, ``batch(region_index,
    start, rng) -> dict`` (rng None: no augmentation) and ``expand(batch) -> dict``; it is
    pickled into each worker. Batches leave the workers compact (uint8 codes, 1 byte a base) and
    ``WindowLoader`` expands them to the int64 contract in the main process: shipping int64
    between processes costs 8x the bytes and capped a worker at ~50 Mb/s.

    Args:
        train: random windows (``samples`` per epoch over all shards, each shard seeded by
            ``shard_seed(seed, epoch, shard)``) or, if False, every tile once across all shards.
        tiled: with ``train``, every tile once per epoch instead of random windows, in an order
            shuffled per epoch (the same permutation on every shard, which then takes its block).
        epoch: epoch of the first iteration; each further ``iter()`` in the same process (the
            main process, or a persistent worker) advances it by one.
        num_workers: the DataLoader's worker count (to know the shard count in ``__len__``).
    """

    def __init__(self, source, batch_size: int, train: bool, samples: int = 0, seed: int = 0,
                 epoch: int = 0, num_workers: int = 0, tiled: bool = False):
        super().__init__()
        self.source, self.batch_size, self.train = source, batch_size, train
        self.samples, self.seed, self.epoch = samples, seed, epoch
        self.num_workers = max(1, num_workers)
        self.rank_world = rank_and_world()      # for workers that do not inherit the process group
        self._tiles = source.tiles() if (tiled or not train) else None

    def _train_batches_per_shard(self, num_shards: int) -> int:
        return math.ceil(self.samples / (num_shards * self.batch_size))

    def __len__(self) -> int:
        """Batches this rank yields (over all of its workers)."""
        rank, world = self.rank_world
        shards = world * self.num_workers
        if self._tiles is None:
            return self._train_batches_per_shard(shards) * self.num_workers
        return sum(math.ceil(len(split_range(len(self._tiles[0]), rank * self.num_workers + w, shards))
                             / self.batch_size) for w in range(self.num_workers))

    def __iter__(self):
        shard, num_shards = shard_context()
        epoch, self.epoch = self.epoch, self.epoch + 1
        rng = np.random.default_rng(shard_seed(self.seed, epoch, shard))
        if self._tiles is None:
            for _ in range(self._train_batches_per_shard(num_shards)):
                yield self.source.batch(*self.source.draw(rng, self.batch_size), rng)
            return
        regions, starts = self._tiles
        if self.train:
            order = np.random.default_rng(shard_seed(self.seed, epoch, 0)).permutation(len(starts))
            regions, starts = regions[order], starts[order]
        block = split_range(len(starts), shard, num_shards)
        for i in range(block.start, block.stop, self.batch_size):
            j = min(i + self.batch_size, block.stop)
            yield self.source.batch(regions[i:j], starts[i:j], rng if self.train else None)
