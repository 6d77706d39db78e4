"""Which share of the data this process and dataloader worker owns.

One implementation for every modality. With DDP ranks x dataloader workers there are
``world_size * num_workers`` readers; each gets a shard id, its own random seed (so random
training windows differ between readers) and, for deterministic val/test tiles, a contiguous
block of the tile list (so the tiles are split without overlap or loss).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def shard_context() -> tuple[int, int]:
    """Return ``(shard_id, num_shards)`` for the calling process and dataloader worker.

    ``shard_id = rank * num_workers + worker_id`` and ``num_shards = world_size * num_workers``,
    where rank/world_size come from ``torch.distributed`` when it is initialised (else 0/1) and
    worker_id/num_workers from ``torch.utils.data.get_worker_info()`` (else 0/1, i.e. the
    loading happens in the main process).

    Dataloader workers started with the "spawn" method (the default inside processes launched by
    ``torch.multiprocessing.spawn`` or Lightning's ``ddp_spawn``) do not inherit the process
    group. So a dataset should record ``self.rank_world = rank_and_world()`` when it is built in
    the main process: in a worker without a process group, that attribute of the worker's
    dataset supplies rank and world size.
    """
    info = torch.utils.data.get_worker_info()
    rank, world_size = rank_and_world()
    if world_size == 1 and info is not None and hasattr(info.dataset, "rank_world"):
        rank, world_size = info.dataset.rank_world
    worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * num_workers + worker_id, world_size * num_workers


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` from ``torch.distributed`` when initialised, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_seed(base_seed: int, epoch: int, shard_id: int) -> int:
    """A distinct, reproducible seed for ``(base_seed, epoch, shard_id)``.

    Uses numpy's SeedSequence, which hashes the three integers so that nearby tuples give
    unrelated streams (adding them, e.g. ``base_seed + shard_id``, would make shard 1 of epoch 0
    collide with shard 0 of epoch 1). The result fits ``torch.Generator.manual_seed`` and
    ``numpy.random.default_rng`` (0 <= seed < 2**63).
    """
    for name, value in (("base_seed", base_seed), ("epoch", epoch), ("shard_id", shard_id)):
        if int(value) != value or value < 0:
            raise ValueError(f"shard_seed: {name} must be a non-negative integer, got {value!r}")
    state = np.random.SeedSequence([int(base_seed), int(epoch), int(shard_id)]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def split_range(n: int, shard_id: int, num_shards: int) -> range:
    """The contiguous block of ``range(n)`` owned by ``shard_id``.

    Blocks are ``[n * s // num_shards, n * (s + 1) // num_shards)``: they never overlap, cover
    ``range(n)`` exactly, and differ in size by at most one (some are empty when n < num_shards).
    """
    if n < 0:
        raise ValueError(f"split_range: n must be >= 0, got {n}")
    if num_shards < 1:
        raise ValueError(f"split_range: num_shards must be >= 1, got {num_shards}")
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"split_range: shard_id must be in [0, {num_shards}), got {shard_id}")
    return range(n * shard_id // num_shards, n * (shard_id + 1) // num_shards)
