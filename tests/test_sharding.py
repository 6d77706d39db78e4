"""Sharding over DDP ranks x dataloader workers: unit checks and a real 2-process gloo run."""
import gzip
import itertools
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from Bio import SeqIO
from torch.utils.data import DataLoader, IterableDataset

from longseq.datamodules import GenomeDataModule
from longseq.datamodules.genome import bundled_genome
from longseq.datamodules.sharding import shard_context, shard_seed, split_range


@pytest.mark.parametrize("n", [0, 1, 5, 97, 1000, 1023])
@pytest.mark.parametrize("num_shards", [1, 2, 3, 7, 8, 200])
def test_split_range_partitions_exactly(n, num_shards):
    blocks = [split_range(n, s, num_shards) for s in range(num_shards)]
    assert [i for b in blocks for i in b] == list(range(n))          # in order, no overlap, no loss
    assert all(b.step == 1 for b in blocks)
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1


def test_split_range_rejects_bad_arguments():
    with pytest.raises(ValueError, match="shard_id must be in"):
        split_range(10, 3, 3)
    with pytest.raises(ValueError, match="num_shards must be >= 1"):
        split_range(10, 0, 0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        split_range(-1, 0, 1)


def test_shard_seeds_are_distinct_and_reproducible():
    grid = list(itertools.product(range(4), range(6), range(16)))
    seeds = [shard_seed(*t) for t in grid]
    assert len(set(seeds)) == len(grid)                  # (0,1,0) and (0,0,1) do not collide
    assert seeds == [shard_seed(*t) for t in grid]
    assert all(0 <= s < 2 ** 63 for s in seeds)
    torch.Generator().manual_seed(max(seeds))
    with pytest.raises(ValueError, match="epoch must be a non-negative integer"):
        shard_seed(0, -1, 0)


class _WhoAmI(IterableDataset):
    def __iter__(self):
        yield shard_context()


def test_shard_context_in_workers():
    assert shard_context() == (0, 1)
    seen = list(DataLoader(_WhoAmI(), batch_size=None, num_workers=3))
    assert sorted(map(tuple, seen)) == [(0, 3), (1, 3), (2, 3)]


def _ddp_rank(rank, world, tmpdir, cache):
    os.environ["LONGSEQ_CACHE"] = cache
    dist.init_process_group("gloo", init_method=f"file://{tmpdir}/rendezvous", rank=rank, world_size=world)
    try:
        assert shard_context() == (rank, world)
        dm = GenomeDataModule(seq_len=1000, batch_size=4, samples_per_epoch=64, num_workers=2, seed=11,
                              max_eval_windows=None)
        dm.setup()
        # In a process started by mp.spawn, workers are spawned too: they do not inherit the process
        # group and must take rank/world from their dataset (what the train loader checks here).
        # The val loader then uses forked workers, which start in a fraction of the time.
        train_loader = dm.train_dataloader()
        train = [b["window_id"] for b in train_loader]
        mp.set_start_method("fork", force=True)
        val_loader = dm.val_dataloader()
        val = [b["window_id"] for b in val_loader]
        torch.save({"train": train, "val": val, "lens": (len(train_loader), len(val_loader))},
                   f"{tmpdir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_two_workers(tmp_path):
    cache = str(tmp_path / "cache")
    GenomeDataModule(cache_dir=cache).prepare_data()      # decompress + index once, like Lightning does
    mp.spawn(_ddp_rank, args=(2, str(tmp_path), cache), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    # Train: 64 windows per epoch over 4 shards (2 ranks x 2 workers), 4 batches of 4 per shard.
    # Workers alternate in the loader's output, so batch i of a rank came from worker i % 2.
    shards = {}
    for rank, res in enumerate(results):
        assert res["lens"][0] == len(res["train"]) == 8
        for i, wid in enumerate(res["train"]):
            shards.setdefault((rank, i % 2), []).extend(wid.tolist())
    assert sorted(shards) == [(0, 0), (0, 1), (1, 0), (1, 1)] and all(len(v) == 16 for v in shards.values())
    every = [w for v in shards.values() for w in v]
    assert len(set(every)) == 64                            # every (rank, worker) drew distinct windows

    # Val: the tiles of the last 10% of the genome, split between the 4 shards without overlap or loss.
    with gzip.open(bundled_genome(), "rt") as f:
        n = len(next(SeqIO.parse(f, "fasta")).seq)
    a = round(n * 0.9)
    expected = list(range(a, n - 1001 + 1, 1001))
    if expected[-1] != n - 1001:
        expected.append(n - 1001)
    got = [w for res in results for b in res["val"] for w in b.tolist()]
    assert sorted(got) == expected and len(got) == len(set(got))
    for res in results:
        assert res["lens"][1] == len(res["val"])            # the loader length Lightning sees is exact
    per_rank = [sum(len(b) for b in res["val"]) for res in results]
    assert abs(per_rank[0] - per_rank[1]) <= 2
