"""Audio windows under DDP x workers when workers are spawned (they do not inherit the process group).

A spawned worker learns its rank from the dataset's ``rank_world`` (recorded in the main process),
so here each simulated rank's dataset carries (rank, 2) and its worker is spawned.
"""
from torch.utils.data import DataLoader

from longseq.datamodules import WaveformDataModule
from longseq.datamodules.audio import bundled_audio


def window_ids(dm: WaveformDataModule, split: str, mode: str, rank_world=None) -> list[int]:
    dataset = dm._loader(split, mode).dataset
    if rank_world is None:  # in-process, one reader: every window
        loader = DataLoader(dataset, batch_size=None, num_workers=0)
    else:
        dataset.rank_world = rank_world
        loader = DataLoader(dataset, batch_size=None, num_workers=1, multiprocessing_context="spawn")
    return [int(w) for batch in loader for w in batch["window_id"]]


def test_spawned_workers_of_two_ranks_split_tiles_and_draw_distinct_windows():
    dm = WaveformDataModule(bundled_audio()["piano"], seq_len=2048, batch_size=4, split_by="time",
                            num_workers=1, windows_per_epoch=32)
    dm.setup()
    everything = window_ids(dm, "val", "tiled")
    rank0, rank1 = window_ids(dm, "val", "tiled", (0, 2)), window_ids(dm, "val", "tiled", (1, 2))
    assert len(set(rank0)) == len(rank0) and len(set(rank1)) == len(rank1)
    assert not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == sorted(everything)

    train0, train1 = window_ids(dm, "train", "random", (0, 2)), window_ids(dm, "train", "random", (1, 2))
    assert train0 and train1
    assert not set(train0) & set(train1)
