"""Tasks: optimiser groups, schedule, metrics against independent computations, checkpoint payload,
and each demo config trained end to end (shortened) with its validation metric improving."""
import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import longseq
from longseq.cli import run_cli
from longseq.tasks import NextBaseTask, SpeciesClassificationTask, WaveformGenerationTask
from longseq.tasks.base import param_groups, warmup_cosine
from longseq.tasks.next_base import lm_loss
from longseq.tasks.species import scores_from_confusion

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY = ["--model.init_args.d_model", "32", "--model.init_args.n_layer", "2", "--model.init_args.d_state", "8",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1"]


def read_metrics(root: Path) -> list[dict]:
    files = sorted(root.glob("csv/version_*/metrics.csv"))
    assert files, f"no metrics.csv under {root}"
    with open(files[-1]) as f:
        return list(csv.DictReader(f))


def series(rows, key):
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]


def test_param_groups_exclude_ssm_params_norms_and_biases():
    model = longseq.MambaLM(longseq.MambaConfig(d_model=32, n_layer=2, vocab_size=8))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert not decayed & kept
    assert decayed | kept == set(names.values())   # every parameter once (tied head = embedding)
    for n in kept:
        assert n.endswith(("A_log", ".D", "bias")) or "norm" in n, n
    for n in decayed:
        assert not n.endswith(("A_log", ".D", "bias")) and "norm" not in n, n
    assert "backbone.layers.0.mixer.in_proj.weight" in decayed and "backbone.embedding.weight" in decayed


def test_warmup_cosine_schedule():
    f = warmup_cosine(warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0)
    for step in (10, 37, 60, 95, 110):
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 10) / 100))
        assert f(step) == pytest.approx(expected)
    assert f(500) == pytest.approx(0.1)                    # stays at the floor past the end
    assert all(f(s) >= f(s + 1) for s in range(10, 120))    # monotone after warmup


@pytest.mark.parametrize("shape", [(3, 17, 8), (1, 5, 257)])
def test_lm_loss_matches_a_direct_sum(shape):
    g = torch.Generator().manual_seed(sum(shape))
    logits = torch.randn(*shape, generator=g, dtype=torch.float64)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=g)
    labels[0, ::3] = -100
    mean, total, count, correct = lm_loss(logits, labels)
    ref_total, ref_count, ref_correct = 0.0, 0, 0
    for b in range(shape[0]):
        for t in range(shape[1]):
            y = int(labels[b, t])
            if y == -100:
                continue
            row = logits[b, t]
            ref_total += float(torch.logsumexp(row, 0) - row[y])
            ref_count += 1
            ref_correct += int(int(row.argmax()) == y)
    assert int(count) == ref_count and int(correct) == ref_correct
    assert float(total) == pytest.approx(ref_total, rel=1e-6)
    assert float(mean) == pytest.approx(ref_total / ref_count, rel=1e-6)


def test_accuracy_and_macro_f1_from_confusion_matrix():
    g = torch.Generator().manual_seed(0)
    k = 5
    target = torch.randint(0, k, (200,), generator=g)
    pred = torch.where(torch.rand(200, generator=g) < 0.6, target, torch.randint(0, k, (200,), generator=g))
    pred[pred == 4] = 3                  # class 4 is never predicted: its F1 is 0
    cm = torch.zeros(k, k, dtype=torch.long)
    for t, p in zip(target.tolist(), pred.tolist()):
        cm[t, p] += 1
    acc, f1 = scores_from_confusion(cm)
    f1s = []
    for c in range(k):
        tp = sum(1 for t, p in zip(target.tolist(), pred.tolist()) if t == c and p == c)
        fp = sum(1 for t, p in zip(target.tolist(), pred.tolist()) if t != c and p == c)
        fn = sum(1 for t, p in zip(target.tolist(), pred.tolist()) if t == c and p != c)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    assert float(acc) == pytest.approx(float((pred == target).float().mean()))
    assert float(f1) == pytest.approx(sum(f1s) / k)


def test_model_settings_errors_name_the_field():
    with pytest.raises(ValueError, match="d_state"):
        NextBaseTask(d_model=32, n_layer=1, d_state=0)
    with pytest.raises(ValueError, match="unknown MambaConfig keys.*d_modle"):
        NextBaseTask(d_model=32, n_layer=1, model_overrides={"d_modle": 3})
    with pytest.raises(ValueError, match="model_overrides may not set.*n_layer"):
        NextBaseTask(d_model=32, n_layer=1, model_overrides={"n_layer": 3})
    with pytest.raises(ValueError, match="pooling"):
        SpeciesClassificationTask(pooling="max")


def test_dna_demo_trains_and_checkpoint_loads_with_the_api(tmp_path):
    root = tmp_path / "dna"
    stages = ('[{"class_path": "longseq.datamodules.SequenceLengthWarmup", "init_args": {"stages": '
              '[{"seq_len": 64, "batch_size": 8, "epochs": 1}, {"seq_len": 128, "batch_size": 4, "epochs": 2}]}}]')
    cli = run_cli(["fit", "--config", str(CONFIGS / "dna_nextbase_demo.yaml"), *TINY,
                   "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "3",
                   "--trainer.callbacks", stages, "--trainer.val_check_interval", "6",
                   "--model.init_args.lr", "0.01", "--model.init_args.warmup_steps", "3",
                   "--data.init_args.samples_per_epoch", "96", "--data.init_args.max_eval_windows", "16"])
    rows = read_metrics(root)
    val = series(rows, "val/bits_per_base")
    assert len(val) >= 4
    assert val[-1][1] < val[0][1] - 0.05, val          # better than the first evaluation
    assert val[-1][1] < 2.0, val                        # and than a uniform guess over A C G T
    # the warmup switched the window length: epoch 0 at 64 bases, epochs 1-2 at 128
    assert cli.datamodule.seq_len == 128
    ckpt = root / "checkpoints" / "last.ckpt"
    best = list((root / "checkpoints").glob("best-*.ckpt"))
    assert ckpt.is_file() and len(best) == 1
    payload = torch.load(ckpt, map_location="cpu", weights_only=True)["longseq"]
    assert payload["architecture"] == "MambaLM" and payload["metadata"]["task"] == "next_base"
    assert payload["metadata"]["tokenizer"]["type"] == "NucleotideTokenizer"
    assert payload["config"]["d_model"] == 32 and payload["config"]["d_state"] == 8
    # the API scores a held-out window with the trained weights: same loss as the task computes
    pipe = longseq.load(ckpt)
    batch = next(iter(cli.datamodule.val_dataloader()))
    ids, labels = batch["input_ids"][:1], batch["labels"][:1]
    with torch.no_grad():
        ref = F.cross_entropy(cli.model.model(ids)[0], labels[0], ignore_index=-100, reduction="sum")
    tok = longseq.NucleotideTokenizer()
    seq = tok.decode(torch.cat([ids[0], labels[0, -1:]]))
    scored = pipe.score(seq)
    assert float(-scored.log_likelihood[1:].double().nansum()) == pytest.approx(float(ref), rel=1e-4)
    assert scored.n_scored == int((labels != -100).sum())
    # export_pretrained writes the same model and metadata as the checkpoint
    out = cli.model.export_pretrained(tmp_path / "exported")
    model, meta = longseq.heads.load_pretrained(out)
    assert meta == payload["metadata"]
    assert torch.equal(model.lm_head.weight, cli.model.model.lm_head.weight)


def test_compile_mode_is_checked_and_trains_as_eager(tmp_path):
    with pytest.raises(ValueError, match="compile_mode.*reduce-overhead.*'fast'"):
        NextBaseTask(d_model=32, n_layer=1, compile_mode="fast")
    # the demo config through torch.compile (inductor on the CPU; the numba scan runs eagerly in
    # it): the same losses as eager, step by step, and a checkpoint with the same parameter names
    stages = ('[{"class_path": "longseq.datamodules.SequenceLengthWarmup", "init_args": {"stages": '
              '[{"seq_len": 128, "batch_size": 4, "epochs": 1}]}}]')
    runs = {}
    for mode in ("null", "default"):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        root = tmp_path / mode
        cli = run_cli(["fit", "--config", str(CONFIGS / "dna_nextbase_demo.yaml"), *TINY,
                       "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "1",
                       "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2",
                       "--trainer.callbacks", stages, "--model.init_args.compile_mode", mode,
                       "--data.init_args.samples_per_epoch", "16", "--data.init_args.max_eval_windows", "8"])
        assert getattr(cli.model, "_compiled", False) == (mode != "null")
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert (graphs > 0) == (mode != "null"), graphs      # the compiled forward ran
        rows = read_metrics(root)
        state = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        runs[mode] = ([v for _, v in series(rows, "train/loss")], series(rows, "val/bits_per_base")[-1][1], state)
    (eager, eager_val, eager_state), (compiled, compiled_val, compiled_state) = runs["null"], runs["default"]
    assert len(eager) == 4 and compiled == pytest.approx(eager, rel=1e-4)
    assert compiled_val == pytest.approx(eager_val, rel=1e-4)
    assert compiled_state.keys() == eager_state.keys()


def test_species_demo_trains_above_chance_and_writes_confusion_png(tmp_path):
    root = tmp_path / "species"
    cli = run_cli(["fit", "--config", str(CONFIGS / "species_demo.yaml"), *TINY,
                   "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "1",
                   "--trainer.max_steps", "40", "--trainer.val_check_interval", "10",
                   "--model.init_args.lr", "0.01", "--model.init_args.warmup_steps", "3",
                   "--data.init_args.seq_len", "128", "--data.init_args.batch_size", "8",
                   "--data.init_args.samples_per_epoch", "320", "--data.init_args.max_eval_windows", "6"])
    rows = read_metrics(root)
    acc = series(rows, "val/accuracy")
    assert len(acc) == 4
    chance = 1 / 7
    assert acc[-1][1] > acc[0][1] and acc[-1][1] > 2 * chance, acc
    assert series(rows, "val/macro_f1")
    pngs = sorted((root / "csv").glob("version_*/confusion/val_epoch=*_step=*.png"))
    assert len(pngs) == 4 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    payload = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["longseq"]
    assert payload["metadata"]["class_names"] == cli.datamodule.class_names
    assert payload["head"] == {"num_classes": 7, "pooling": "mean"}
    pipe = longseq.load(root / "checkpoints" / "last.ckpt")
    assert list(pipe.class_names) == cli.datamodule.class_names


def test_audio_demo_trains_and_writes_generated_wavs(tmp_path):
    import soundfile as sf

    root = tmp_path / "audio"
    cli = run_cli(["fit", "--config", str(CONFIGS / "audio_demo.yaml"), *TINY,
                   "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "1",
                   "--trainer.max_steps", "24", "--trainer.val_check_interval", "8",
                   "--model.init_args.lr", "0.01", "--model.init_args.warmup_steps", "3",
                   "--model.init_args.gen_seconds", "0.005", "--model.init_args.gen_prompt", "32",
                   "--data.init_args.files", str(ROOT / "longseq/assets/audio/piano_16k/bwv846.flac"),
                   "--data.init_args.seq_len", "128", "--data.init_args.batch_size", "4",
                   "--data.init_args.windows_per_epoch", "96", "--trainer.limit_val_batches", "4"])
    bits = series(read_metrics(root), "val/bits_per_sample")
    assert len(bits) == 3
    assert bits[-1][1] < bits[0][1] and bits[-1][1] < 7.0, bits     # 8 bits = a uniform guess
    wavs = sorted((root / "csv").glob("version_*/samples/*.wav"))
    assert len(wavs) == 3 * 2
    data, rate = sf.read(wavs[-1])
    assert rate == 16000 and len(data) == 32 + 80
    assert cli.model.metadata["sample_rate"] == 16000
    assert cli.model.metadata["tokenizer"] == {"type": "MuLawTokenizer",
                                               "kwargs": {"bits": 8, "mu": 255.0, "quantization": "mu-law"}}
