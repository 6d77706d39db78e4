"""The tuner's winners kept on disk (longseq/kernels/triton_tune.py): a later process takes them
without timing, and only where they hold (same candidates, same code, same steering variables); a
bad or unwritable cache costs a warning and a re-tuning, never a wrong pick or a half-written file.

The tuner times only on CUDA; here its timing function is replaced by a table of made-up times and
"a new process" is the tuner's in-memory state cleared, so the disk logic runs on any machine."""
import json
import os
import warnings

import pytest
import torch

from longseq.kernels import triton_tune

CANDS = [("t4", 8, 8, 1), ("t4", 4, 8, 1), ("t4", 16, 16, 2)]
TIMES = {CANDS[0]: 2.0, CANDS[1]: 1.0, CANDS[2]: 3.0}


@pytest.fixture
def tuner(monkeypatch, tmp_path):
    """The tuner switched on for CPU tensors, timing from TIMES; returns (pick, timed list)."""
    monkeypatch.setenv("LONGSEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LONGSEQ_TUNE_CACHE", raising=False)
    for k in [k for k in os.environ if k.startswith("LONGSEQ_SCAN_")]:
        monkeypatch.delenv(k)
    monkeypatch.setattr(triton_tune, "enabled", lambda t: True)
    monkeypatch.setattr(triton_tune, "_compile_in_parallel", lambda cands, run: None)
    timed = []

    def fake_time(run, cfg):
        timed.append(cfg)
        return TIMES[cfg]
    monkeypatch.setattr(triton_tune, "_time", fake_time)
    monkeypatch.setattr(triton_tune, "_CACHE", {})
    monkeypatch.setattr(triton_tune, "_DISK", {})
    monkeypatch.setattr(triton_tune, "_WARNED", set())
    t = torch.zeros(1)

    def pick(key=(8, 1536, 2048), cands=CANDS):
        return triton_tune.pick("scan_fwd", key, list(cands), lambda cfg: None, t)
    return pick, timed


def new_process(monkeypatch):
    monkeypatch.setattr(triton_tune, "_CACHE", {})
    monkeypatch.setattr(triton_tune, "_DISK", {})


def cache_files(tmp_path):
    folder = tmp_path / "cache" / "tune"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_a_later_process_takes_the_winner_without_timing(tuner, tmp_path, monkeypatch):
    pick, timed = tuner
    assert pick() == CANDS[1] and timed == CANDS
    files = cache_files(tmp_path)
    assert len(files) == 1 and files[0].name.startswith("cpu-triton")     # the device's model names it
    entries = json.loads(files[0].read_text())["entries"]
    assert [v["cfg"] for v in entries.values()] == [repr(CANDS[1])]
    new_process(monkeypatch)
    timed.clear()
    assert pick() == CANDS[1] and timed == []
    # another key is timed, and both winners are kept in the one file
    assert pick(key=(1, 1536, 2 ** 20)) == CANDS[1] and timed == CANDS
    assert len(json.loads(cache_files(tmp_path)[0].read_text())["entries"]) == 2
    assert not [p for p in (tmp_path / "cache" / "tune").iterdir() if p.name.startswith(".")]   # no temporary left


def test_a_winner_stands_only_against_the_same_candidates(tuner, monkeypatch):
    pick, timed = tuner
    assert pick(cands=CANDS[:1] + CANDS[2:]) == CANDS[0]
    new_process(monkeypatch)
    timed.clear()
    assert pick() == CANDS[1] and timed == CANDS         # a longer list (here with a faster one) is timed


def test_steering_variables_and_the_switch(tuner, tmp_path, monkeypatch):
    pick, timed = tuner
    pick()
    new_process(monkeypatch)
    timed.clear()
    monkeypatch.setenv("LONGSEQ_SCAN_CHAN_AXIS", "1")     # another kernel layout: its own file
    pick()
    assert timed == CANDS and len(cache_files(tmp_path)) == 2
    new_process(monkeypatch)
    timed.clear()
    monkeypatch.setenv("LONGSEQ_TUNE_CACHE", "0")          # off: timed every process, nothing read or written
    for f in cache_files(tmp_path):
        f.unlink()
    pick()
    assert timed == CANDS and cache_files(tmp_path) == []


def test_a_corrupt_cache_is_named_and_rewritten(tuner, tmp_path, monkeypatch):
    pick, timed = tuner
    pick()
    path, = cache_files(tmp_path)
    path.write_text('{"format": 1, "entries": {')          # e.g. a disk that filled up mid-write elsewhere
    new_process(monkeypatch)
    timed.clear()
    with pytest.warns(RuntimeWarning, match=f"ignoring the kernel tuning cache {path}"):
        assert pick() == CANDS[1]
    assert timed == CANDS
    assert len(json.loads(path.read_text())["entries"]) == 1   # valid again
    path.write_text('["a list"]')
    new_process(monkeypatch)
    monkeypatch.setattr(triton_tune, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="no 'entries' object"):
        pick()


def test_a_stored_winner_that_is_no_candidate_is_not_used(tuner, tmp_path, monkeypatch):
    pick, timed = tuner
    pick()
    path, = cache_files(tmp_path)
    data = json.loads(path.read_text())
    for v in data["entries"].values():
        v["cfg"] = "('t4', 99, 99, 9)"
    path.write_text(json.dumps(data))
    new_process(monkeypatch)
    timed.clear()
    assert pick() == CANDS[1] and timed == CANDS


def test_an_unwritable_cache_warns_once_and_still_tunes(tuner, tmp_path, monkeypatch):
    pick, timed = tuner
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LONGSEQ_CACHE", str(blocker / "cache"))   # no folder can be made under a file
    with pytest.warns(RuntimeWarning, match="cannot write the kernel tuning cache"):
        assert pick() == CANDS[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pick(key=(2, 64, 256)) == CANDS[1]           # the second failure is quiet
    assert timed == CANDS + CANDS
