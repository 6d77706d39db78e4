"""WaveformDataModule on the real bundled audio (and files derived from it in tmp_path).

Reference for every window: the file decoded whole with soundfile (and, for a file at another
rate, mixed to mono and resampled whole with soxr), sliced at the window's position."""
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from longseq.datamodules import WaveformDataModule
from longseq.datamodules.audio import (AudioFileError, bundled_audio, resolve_audio_files,
                                       split_files)

ASSETS = bundled_audio()
PIANO = str(ASSETS["piano"])
SPEAKER = r"^(.*)_[a-z]+\."  # <speaker>_<digit>.flac


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def piano(start_s: float, seconds: float) -> np.ndarray:
    x, sr = sf.read(PIANO, start=int(start_s * 16000), frames=int(seconds * 16000), dtype="float64")
    assert sr == 16000
    return x


def batches(loader):
    return list(loader)


def check_against_reference(batch, ref_by_file, dm, L):
    """input_ids/labels of every row equal the tokens of the reference slice, shifted by one."""
    tok = dm.tokenizer
    for row in range(batch["input_ids"].shape[0]):
        f, s = int(batch["file_index"][row]), int(batch["start"][row])
        ref = ref_by_file[f][s:s + L + 1]
        ids = tok.encode(torch.from_numpy(ref.astype(np.float32)))
        n = len(ids)
        assert torch.equal(batch["input_ids"][row, :min(n, L)], ids[:L])
        assert torch.equal(batch["labels"][row, :n - 1], ids[1:])
        assert (batch["labels"][row, n - 1:] == -100).all()
        assert (batch["input_ids"][row, n:] == tok.pad_id).all()


def test_bundled_audio_is_real_and_small():
    assert sf.info(PIANO).samplerate == 16000 and sf.info(PIANO).channels == 1
    assert sf.info(PIANO).frames == 1907229  # 119.2 s, the whole prelude
    clips = sorted(ASSETS["digits"].glob("*/*.flac"))
    assert len(clips) == 100
    speakers = {c.name.rsplit("_", 1)[0] for c in clips}
    rows = ASSETS["digits_speakers"].read_text().splitlines()[1:]
    assert speakers == {r.split("\t")[0] for r in rows} and len(speakers) == 10
    for c in clips[::9]:
        i = sf.info(str(c))
        assert (i.samplerate, i.channels, i.frames) == (16000, 1, 16000)
        assert c.parent.name == c.stem.rsplit("_", 1)[1]  # <digit>/<speaker>_<digit>.flac
    total = sum(p.stat().st_size for p in ASSETS["piano"].parents[1].rglob("*") if p.is_file())
    assert total <= 3_500_000


def test_windows_equal_slices_of_the_decoded_file():
    """Random train windows and tiled val windows of the FLAC equal slices of the whole decode
    (awkward seq_len, batch not dividing the window count, time split of one file)."""
    whole, _ = sf.read(PIANO, dtype="float32")
    L = 3001
    dm = WaveformDataModule(PIANO, seq_len=L, batch_size=3, split_by="time", splits=(0.96, 0.03, 0.01),
                            windows_per_epoch=10, return_positions=True, seed=5)
    dm.setup()
    segs = {name: [(s.offset, s.frames) for s in dm.sources[name]] for name in ("train", "val", "test")}
    # the time split cuts the file into three consecutive, non-overlapping pieces
    (o0, n0), (o1, n1), (o2, n2) = segs["train"][0], segs["val"][0], segs["test"][0]
    assert o0 == 0 and o1 == n0 and o2 == o1 + n1 and o2 + n2 == len(whole)
    train = batches(dm.train_dataloader())
    assert [b["input_ids"].shape[0] for b in train] == [3, 3, 3, 1] and len(dm.train_dataloader()) == 4
    for b in train:
        check_against_reference(b, {0: whole[o0:o0 + n0]}, dm, L)
    val = batches(dm.val_dataloader())
    starts = torch.cat([b["start"] for b in val])
    assert torch.equal(starts, torch.arange(len(starts)) * L)  # tiled from frame 0, stride L
    assert (len(starts) - 1) * L < n1 - 1 <= len(starts) * L  # the tail tile is there, padded
    for b in val:
        check_against_reference(b, {0: whole[o1:o1 + n1]}, dm, L)
    scored = sum(int((b["labels"] != -100).sum()) for b in val)
    assert scored == n1 - 1  # every sample but the first is a target exactly once


def test_stereo_44k_file_is_mixed_and_resampled_like_soxr_on_the_whole_file(tmp_path):
    """A stereo 44.1 kHz WAV made from the real piano: windows equal soxr's resample of the
    whole mono mix, sliced; the resampled copy lives in the cache only."""
    data = tmp_path / "data"
    data.mkdir()
    left, right = piano(10, 5), piano(40, 5)
    stereo = soxr.resample(np.stack([left, 0.5 * right], axis=1), 16000, 44100, "VHQ")
    path = data / "stereo44k.wav"
    sf.write(str(path), stereo, 44100, subtype="PCM_24")
    decoded, _ = sf.read(str(path), dtype="float64")
    ref = soxr.resample(decoded.mean(axis=1), 44100, 16000, "HQ")
    cache = tmp_path / "cache"
    L = 2500
    dm = WaveformDataModule(str(data), seq_len=L, batch_size=4, splits={"val": [str(path)], "train": []},
                            cache_dir=str(cache), return_positions=True)
    val = batches(dm.val_dataloader())
    ds = dm.val_dataloader().dataset
    assert ds.sources[0].frames == len(ref)
    compared = 0
    for b in val:
        for f, s in zip(b["file_index"].tolist(), b["start"].tolist()):
            if L <= s <= len(ref) - 2 * L:  # away from the file's edges
                w = ds.read_window(f, s)
                np.testing.assert_allclose(w, ref[s:s + L + 1], rtol=0, atol=2e-6)
                assert torch.equal(b["input_ids"][b["start"].tolist().index(s)],
                                   dm.tokenizer.encode(torch.from_numpy(w))[:L])
                compared += 1
    assert compared >= 25
    # nothing written next to the data; one finished file in the cache, reused by the next module
    assert sorted(os.listdir(data)) == ["stereo44k.wav"]
    cached = list(cache.iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".wav" and not cached[0].name.startswith(".")
    mtime = cached[0].stat().st_mtime_ns
    dm2 = WaveformDataModule(str(data), seq_len=L, batch_size=4, splits={"val": [str(path)], "train": []},
                             cache_dir=str(cache), channel=1)
    dm2.setup()  # channel=1 is another signal: a second cache entry; the first is untouched
    assert len(list(cache.iterdir())) == 2 and cached[0].stat().st_mtime_ns == mtime
    w1 = dm2.val_dataloader().dataset.read_window(0, 16000)
    ref1 = soxr.resample(np.ascontiguousarray(decoded[:, 1]), 44100, 16000, "HQ")
    np.testing.assert_allclose(w1, ref1[16000:16000 + L + 1], rtol=0, atol=2e-6)


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def test_memory_stays_flat_while_streaming_a_long_file(tmp_path):
    """Tile a 12-minute FLAC (six copies of the prelude: 23 MB as int16, 46 MB as float32)
    window by window: the peak RSS while streaming all 932 windows stays within a few MB of the
    RSS before the first one. (A loader that decoded the whole file per window adds ~22 MB here.)"""
    long = tmp_path / "long.flac"
    x, _ = sf.read(PIANO, dtype="int16")
    with sf.SoundFile(str(long), "w", 16000, 1, subtype="PCM_16") as f:
        for _ in range(6):
            f.write(x)
    del x
    # warm up imports, the token table and the allocator on two windows of another file
    warm = iter(WaveformDataModule(PIANO, seq_len=12288, batch_size=1,
                                   splits={"val": [PIANO], "train": []}).val_dataloader())
    next(warm), next(warm)
    dm = WaveformDataModule(str(long), seq_len=12288, batch_size=1, splits={"val": [str(long)], "train": []})
    loader = dm.val_dataloader()
    with open("/proc/self/clear_refs", "w") as f:  # reset this process's peak RSS (Linux)
        f.write("5")
    before = peak_rss_mb()
    n = sum(1 for _ in loader)
    assert n == 932
    assert peak_rss_mb() - before < 6, f"peak RSS grew from {before:.1f} MB to {peak_rss_mb():.1f} MB"


def test_split_by_file_puts_no_file_in_two_splits(tmp_path):
    paths = resolve_audio_files(ASSETS["digits"])
    assert len(paths) == 100
    plain = split_files(paths, (0.88, 0.06, 0.06))
    assert [len(plain[s]) for s in ("train", "val", "test")] == [88, 6, 6]
    assert plain["train"] == paths[:88]  # sorted names, cut in order (SaShiMi)
    by_speaker = split_files(paths, (0.8, 0.1, 0.1), split_group=SPEAKER, split_seed=3)
    for split in (plain, by_speaker):
        sets = [set(split[s]) for s in ("train", "val", "test")]
        assert sets[0] | sets[1] | sets[2] == set(paths)
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    speakers = {s: {p.name.rsplit("_", 1)[0] for p in by_speaker[s]} for s in by_speaker}
    assert [len(speakers[s]) for s in ("train", "val", "test")] == [8, 1, 1]
    assert not (speakers["train"] & (speakers["val"] | speakers["test"]))

    # SC09 layout: validation_list.txt / testing_list.txt relative to the dataset root
    root = tmp_path / "sc"
    shutil.copytree(ASSETS["digits"], root)
    (root / "validation_list.txt").write_text("".join(f"{d}/esp005_{d}.flac\n" for d in ("one", "two", "nine")))
    (root / "testing_list.txt").write_text("# test speaker\nzero/fli_awb_0_zero.flac\nbed/x.wav\n")
    (root / "bed").mkdir()  # a word outside the selection below, as in Speech Commands' lists
    shutil.copy(root / "one" / "esp001_one.flac", root / "bed" / "x.wav")
    dm = WaveformDataModule(str(root / "*" / "*.flac"), seq_len=4000, batch_size=8, return_positions=True,
                            splits={"val": str(root / "validation_list.txt"),
                                    "test": str(root / "testing_list.txt")})
    dm.setup()
    assert [len(dm.files[s]) for s in ("train", "val", "test")] == [96, 3, 1]
    val_files = {str(dm.files["val"][int(f)]) for b in dm.val_dataloader() for f in b["file_index"]}
    assert val_files == {str(root / d / f"esp005_{d}.flac") for d in ("one", "two", "nine")}
    train_files = {int(f) for b in dm.train_dataloader() for f in b["file_index"]}
    assert train_files <= set(range(96))
    (root / "bad_list.txt").write_text("one/esp005_one.flac\n")
    with pytest.raises(ValueError, match="both"):
        split_files(resolve_audio_files(root), {"val": str(root / "validation_list.txt"),
                                                "test": str(root / "bad_list.txt")})


def test_short_files_padded_and_masked_or_dropped():
    digits = str(ASSETS["digits"])
    dm = WaveformDataModule(digits, seq_len=20000, batch_size=5, split_group=SPEAKER, splits=(0.8, 0.1, 0.1))
    b = next(iter(dm.val_dataloader()))
    assert b["input_ids"].shape == (5, 20000)
    assert (b["input_ids"][:, 16000:] == dm.tokenizer.pad_id).all()
    assert (b["input_ids"][:, :16000] < 256).all()
    assert ((b["labels"] == -100).sum(1) == 20000 - 15999).all()
    with pytest.raises(ValueError, match="short='pad'"):
        WaveformDataModule(digits, seq_len=16000, short="drop", split_group=SPEAKER,
                           splits=(0.8, 0.1, 0.1)).val_dataloader()
    dm = WaveformDataModule(digits, seq_len=5000, batch_size=64, short="drop", split_group=SPEAKER,
                            splits=(0.8, 0.1, 0.1))
    val = batches(dm.val_dataloader())
    assert sum(len(b["window_id"]) for b in val) == 10 * 3  # 3 whole tiles per 1 s clip, tail dropped
    assert all((b["labels"] != -100).all() for b in val)
    # dropping keeps file_index pointing into the split's file list: 1 s clips go, the piano stays
    mixed = [str(p) for p in sorted(ASSETS["digits"].glob("one/*.flac"))] + [PIANO]
    dm = WaveformDataModule(mixed, seq_len=20000, batch_size=4, short="drop", windows_per_epoch=8,
                            splits={"train": mixed}, return_positions=True)
    dm.setup()
    piano_index = [str(p) for p in dm.files["train"]].index(PIANO)
    b = next(iter(dm.train_dataloader()))
    assert (b["file_index"] == piano_index).all() and (b["labels"] != -100).all()


def test_peak_normalisation_scales_each_window_to_full_scale():
    dm = WaveformDataModule(PIANO, seq_len=4096, batch_size=4, split_by="time", normalize="peak",
                            windows_per_epoch=8, return_positions=True)
    dm_raw = WaveformDataModule(PIANO, seq_len=4096, batch_size=4, split_by="time",
                                windows_per_epoch=8, return_positions=True)
    ds, raw = dm.train_dataloader().dataset, dm_raw.train_dataloader().dataset
    for f, s in [(0, 0), (0, 123_457), (0, 1_000_003)]:
        w, r = ds.read_window(f, s), raw.read_window(f, s)
        assert np.abs(w).max() == 1.0
        np.testing.assert_allclose(w, r / np.abs(r).max(), rtol=1e-6, atol=0)
    b = next(iter(dm.train_dataloader()))
    full = (b["input_ids"] == 0) | (b["input_ids"] == 255) | (b["labels"] == 0) | (b["labels"] == 255)
    assert full.any(dim=1).all()  # the peak reaches an extreme level in every window


def test_set_stage_sharding_and_epochs():
    digits = str(ASSETS["digits"])
    dm = WaveformDataModule(digits, seq_len=4000, batch_size=8, split_group=SPEAKER, splits=(0.8, 0.1, 0.1),
                            windows_per_epoch=40, return_positions=True, seed=11)
    dm.set_stage(seq_len=1000, batch_size=3)
    loader = dm.train_dataloader()
    first = batches(loader)
    assert first[0]["input_ids"].shape == (3, 1000) and sum(len(b["window_id"]) for b in first) == 40
    second = batches(loader)  # the same loader iterated again is the next epoch: new windows
    key = lambda bs: [(int(f), int(s)) for b in bs for f, s in zip(b["file_index"], b["start"])]
    assert key(first) != key(second)
    again = WaveformDataModule(digits, seq_len=1000, batch_size=3, split_group=SPEAKER, splits=(0.8, 0.1, 0.1),
                               windows_per_epoch=40, return_positions=True, seed=11)
    assert key(batches(again.train_dataloader())) == key(first)  # reproducible from the seed

    # two workers: val tiles split without overlap or loss; train windows differ per worker
    dm = WaveformDataModule(digits, seq_len=3000, batch_size=4, split_group=SPEAKER, splits=(0.8, 0.1, 0.1),
                            windows_per_epoch=24, num_workers=2, return_positions=True)
    val_loader = dm.val_dataloader()
    val = batches(val_loader)
    ids = sorted(int(w) for b in val for w in b["window_id"])
    assert ids == list(range(10 * 6)) and len(val) == len(val_loader)
    train_loader = dm.train_dataloader()
    train = batches(train_loader)
    assert len(train) == len(train_loader) and sum(len(b["window_id"]) for b in train) == 24
    assert sorted(int(w) for b in train for w in b["window_id"]) == list(range(24))
    halves = [set(key(train[i::2])) for i in range(2)]  # workers alternate batches
    assert not halves[0] & halves[1]


def make_bad(tmp_path, kind):
    x, _ = sf.read(PIANO, frames=48000, start=160000, dtype="float32")
    p = tmp_path / {"truncated_flac": "cut.flac", "truncated_wav": "cut.wav", "not_audio": "notes.wav",
                    "empty": "empty.wav", "rate": "slow.wav", "nan": "nan.wav", "nan_resampled": "nan44.wav",
                    "no_resample": "cd.wav"}[kind]
    if kind == "truncated_flac":
        sf.write(str(p), x, 16000, subtype="PCM_16")
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    elif kind == "truncated_wav":
        sf.write(str(p), x, 16000, subtype="PCM_16")
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif kind == "not_audio":
        shutil.copy(ASSETS["digits_speakers"], p)
    elif kind == "empty":
        sf.write(str(p), x[:0], 16000)
    elif kind == "rate":
        sf.write(str(p), x, 400)  # a 400 Hz header: 40x from 16 kHz
    elif kind in ("nan", "nan_resampled"):
        x = x.copy()
        x[31234] = np.nan
        sf.write(str(p), x, 16000 if kind == "nan" else 44100, subtype="FLOAT")
    elif kind == "no_resample":
        sf.write(str(p), x, 44100)
    return p


@pytest.mark.parametrize("kind,message", [
    ("truncated_flac", "truncated or corrupt"),
    ("truncated_wav", "truncated: its header declares"),
    ("not_audio", "cannot be read as audio"),
    ("empty", "zero-length"),
    ("rate", "400 Hz cannot be resampled"),
    ("nan", "non-finite sample .* at frame 31234"),
    ("nan_resampled", "non-finite sample .* at frame 31234"),
    ("no_resample", "44100 Hz differs .* resample=False"),
])
def test_bad_input_names_the_file(tmp_path, kind, message):
    data = tmp_path / "data"
    data.mkdir()
    bad = make_bad(data, kind)
    before = sorted(os.listdir(data))
    dm = WaveformDataModule(str(bad), seq_len=4000, batch_size=2, splits={"val": [str(bad)], "train": []},
                            cache_dir=str(tmp_path / "cache"), resample=kind != "no_resample")
    with pytest.raises(AudioFileError, match=message) as err:
        batches(dm.val_dataloader())
    assert str(bad) in str(err.value)
    assert sorted(os.listdir(data)) == before  # nothing written next to the data
    cache = tmp_path / "cache"
    assert not cache.exists() or not list(cache.iterdir())  # no half-written cache file


def test_file_discovery_errors_and_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="no audio files"):
        resolve_audio_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_audio_files(tmp_path / "missing.flac")
    with pytest.raises(FileNotFoundError, match="no files match"):
        resolve_audio_files(str(tmp_path / "*.flac"))
    digits = ASSETS["digits"]
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"path\tlabel\n{digits}/one/esp001_one.flac\t1\n{PIANO}\tpiano\n")
    assert resolve_audio_files(manifest) == sorted([digits / "one" / "esp001_one.flac", ASSETS["piano"]])
    assert len(resolve_audio_files(str(digits / "t*" / "*.flac"))) == 20  # two, three
    manifest.write_text(f"{digits}/one/esp001_one.flac\nnope.flac\n")
    with pytest.raises(FileNotFoundError, match=r"train.tsv:2: .*nope.flac"):
        resolve_audio_files(manifest)
    with pytest.raises(ValueError, match="does not match"):
        split_files(resolve_audio_files(digits), (0.8, 0.1, 0.1), split_group=r"^(\d+)")
    with pytest.raises(ValueError, match="three non-negative ratios"):
        WaveformDataModule(PIANO, splits=(0.5, 0.6, -0.1)).setup()


def test_sequence_length_warmup_drives_the_module_in_a_trainer(tmp_path):
    """Lightning fit with SequenceLengthWarmup: each epoch's batches have that stage's shape,
    val follows the stage, and each epoch draws new windows (seeded by the epoch)."""
    import lightning.pytorch as pl

    from longseq.datamodules import SequenceLengthWarmup

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = {"train": [], "val": []}

        def training_step(self, batch, i):
            self.seen["train"].append((self.current_epoch, tuple(batch["input_ids"].shape),
                                       tuple(batch["start"].tolist())))
            return (self.w * 0).sum() + self.w.sum() * 0

        def validation_step(self, batch, i):
            self.seen["val"].append((self.current_epoch, tuple(batch["input_ids"].shape)))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = WaveformDataModule(str(ASSETS["digits"]), seq_len=4000, batch_size=2, split_group=SPEAKER,
                            splits=(0.8, 0.1, 0.1), windows_per_epoch=6, return_positions=True)
    warmup = SequenceLengthWarmup([{"seq_len": 500, "batch_size": 3, "epochs": 1},
                                   {"seq_len": 1000, "batch_size": 2, "epochs": 2}])
    model = Recorder()
    trainer = pl.Trainer(max_epochs=3, callbacks=[warmup], reload_dataloaders_every_n_epochs=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    train = model.seen["train"]
    assert [(e, s) for e, s, _ in train] == [(0, (3, 500))] * 2 + [(1, (2, 1000))] * 3 + [(2, (2, 1000))] * 3
    assert {(e, s[1]) for e, s in model.seen["val"]} == {(0, 500), (1, 1000), (2, 1000)}
    starts = {e: [st for ee, _, st in train if ee == e] for e in (1, 2)}
    assert starts[1] != starts[2]


def test_resampling_agrees_with_torchaudio_where_it_imports(tmp_path):
    """Where torchaudio imports (the GPU machines' stack), its Kaiser-windowed sinc resampler and
    our soxr cache agree on real piano audio up to the two filters' different transition bands
    (69 dB SNR measured with torchaudio 2.11 on the GPU machine)."""
    try:
        import torchaudio.functional as F
    except Exception as e:  # torchaudio 2.11 fails to load on torch 2.13 (DESIGN §5)
        pytest.skip(f"torchaudio does not import here: {type(e).__name__}")
    x44 = soxr.resample(piano(20, 4), 16000, 44100, "VHQ").astype(np.float32)
    path = tmp_path / "p44.wav"
    sf.write(str(path), x44, 44100, subtype="FLOAT")
    dm = WaveformDataModule(str(path), seq_len=8000, batch_size=1, splits={"val": [str(path)], "train": []},
                            cache_dir=str(tmp_path / "cache"))
    ours = dm.val_dataloader().dataset.read_window(0, 16000)
    theirs = F.resample(torch.from_numpy(x44).double(), 44100, 16000, lowpass_filter_width=64,
                        rolloff=0.9475937167399596, resampling_method="sinc_interp_kaiser",
                        beta=14.769656459379492).numpy()[16000:16000 + 8001]
    snr = 10 * np.log10(np.sum(theirs**2) / np.sum((ours - theirs) ** 2))
    assert snr > 60, f"soxr vs torchaudio: SNR {snr:.1f} dB"
