"""API round trip from just-trained checkpoints: train a few steps on the bundled real data with
longseq's tasks and data modules, then ``longseq.load`` the Lightning checkpoint and the exported
directory and check that the pipeline holds exactly the trained weights and metadata."""
import gzip
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import longseq
from longseq.api import AudioPipeline, ClassifierPipeline, DNAPipeline
from longseq.datamodules.genome import bundled_genome
from longseq.tasks import SpeciesClassificationTask


pytestmark = pytest.mark.usefixtures("one_torch_thread")



CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def train(task, dm, root: Path, steps: int = 3) -> Path:
    ckpt = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=0,
                         callbacks=[ckpt], default_root_dir=root)
    trainer.fit(task, datamodule=dm)
    return Path(ckpt.last_model_path)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def genome_bases(n: int, skip: int = 0) -> str:
    with gzip.open(bundled_genome(), "rt") as f:
        next(f)
        seq = "".join(line.strip() for _, line in zip(range((skip + n) // 60 + 2), f))
    return seq[skip:skip + n]


def test_dna_round_trip_from_a_just_trained_demo_checkpoint(tmp_path, monkeypatch, capsys):
    """configs/dna_nextbase_demo.yaml through `longseq fit` (shortened), then the API and `longseq generate`."""
    from longseq.cli import run_cli
    from longseq.cli_infer import main_generate

    monkeypatch.setenv("LONGSEQ_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "dna"
    cli = run_cli(["fit", "--config", str(CONFIGS / "dna_nextbase_demo.yaml"),
                   "--model.init_args.d_model", "32", "--model.init_args.d_state", "8",
                   "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "1", "--trainer.max_steps", "3",
                   "--trainer.callbacks", "[]", "--trainer.enable_progress_bar", "false",
                   "--trainer.enable_model_summary", "false", "--trainer.limit_val_batches", "1",
                   "--data.init_args.seq_len", "128", "--data.init_args.batch_size", "4",
                   "--data.init_args.samples_per_epoch", "16", "--data.init_args.max_eval_windows", "2"])
    task = cli.model
    last = root / "checkpoints" / "last.ckpt"
    assert last.is_file()
    pipe = longseq.load(last)
    assert isinstance(pipe, DNAPipeline) and pipe.metadata["task"] == "next_base"
    assert same_weights(pipe.model, task.model)
    task.export_pretrained(tmp_path / "export")
    exported = longseq.load(tmp_path / "export")
    assert same_weights(exported.model, task.model) and exported.metadata == pipe.metadata
    seq = genome_bases(600, skip=123_456)
    ids = pipe.tokenizer.encode(seq)
    task.model.eval()
    with torch.no_grad():
        ref = torch.log_softmax(task.model(ids[None])[0, :-1], -1).gather(1, ids[1:, None])[:, 0]
    score = pipe.score(seq, chunk_size=100)
    assert (score.log_likelihood[1:] - ref).abs().max() < 1e-4
    new = pipe.generate(seq[:50], n=64, seed=0)
    assert len(new) == 64 and new == exported.generate(seq[:50], n=64, seed=0)
    assert main_generate([str(last), "--prompt", seq[:50], "--n", "64", "--seed", "0", "--device", "cpu"]) == 0
    assert "".join(capsys.readouterr().out.splitlines()[1:]) == new


def test_species_round_trip_keeps_class_names(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGSEQ_CACHE", str(tmp_path / "cache"))
    from longseq.datamodules.species import SpeciesDataModule, bundled_species

    fastas = {k: v for k, v in bundled_species().items() if k in ("Escherichia coli", "Helicobacter pylori",
                                                                 "Escherichia_coli", "Helicobacter_pylori")}
    assert len(fastas) == 2, sorted(bundled_species())
    torch.manual_seed(0)
    task = SpeciesClassificationTask(pooling="mean", d_model=32, n_layer=1, d_state=8, warmup_steps=1)
    dm = SpeciesDataModule(fastas, seq_len=96, batch_size=4, samples_per_epoch=8, max_eval_windows=2)
    last = train(task, dm, tmp_path, steps=2)
    pipe = longseq.load(last)
    assert isinstance(pipe, ClassifierPipeline) and pipe.class_names == list(task.metadata["class_names"])
    assert sorted(pipe.class_names) == sorted(fastas) and same_weights(pipe.model, task.model)
    seq = genome_bases(300, skip=9000)
    task.model.eval()
    with torch.no_grad():
        ref = task.model(pipe.tokenizer.encode(seq)[None]).softmax(-1)[0]
    assert (pipe.classify([seq], chunk_size=64).probs[0] - ref).abs().max() < 1e-5


def test_audio_round_trip_keeps_rate_and_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGSEQ_CACHE", str(tmp_path / "cache"))
    from longseq.datamodules.audio import WaveformDataModule, bundled_audio
    from longseq.tasks import WaveformGenerationTask

    digits = bundled_audio()["digits"]
    files = sorted(digits.glob("*/esp00*_*.flac"))[:12]
    torch.manual_seed(0)
    task = WaveformGenerationTask(gen_clips=1, gen_seconds=0.005, gen_prompt=16, d_model=32, n_layer=1, d_state=8,
                                  warmup_steps=1)
    dm = WaveformDataModule(files, seq_len=256, batch_size=2, splits=(0.5, 0.25, 0.25))
    last = train(task, dm, tmp_path, steps=2)
    pipe = longseq.load(last)
    assert isinstance(pipe, AudioPipeline) and pipe.sample_rate == 16000 and same_weights(pipe.model, task.model)
    assert pipe.tokenizer.bits == 8 and pipe.tokenizer.quantization == "mu-law"
    audio = pipe.generate(n_samples=40, prompt_wav=files[0], seed=0)
    assert audio.waveform.shape == (40,) and audio.sample_rate == 16000
