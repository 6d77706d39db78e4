"""The longseq console script: usage, unknown config keys named, dispatch of generate / classify,
and validate on a checkpoint reproducing the metric logged during fit."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from longseq.cli import main, run_cli
from longseq.tasks import NextBaseTask, SpeciesClassificationTask

ROOT = Path(__file__).resolve().parents[1]
DNA = ROOT / "configs" / "dna_nextbase_demo.yaml"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def test_usage_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    out = capsys.readouterr().out
    for word in ("fit", "validate", "test", "predict", "generate", "classify", "--config"):
        assert word in out


@pytest.mark.parametrize("where", ["yaml_nested", "yaml_top", "command_line"])
def test_unknown_config_keys_fail_with_the_key_name(tmp_path, capsys, where):
    args = ["fit", "--config", str(DNA), "--trainer.default_root_dir", str(tmp_path)]
    if where == "yaml_nested":
        bad = tmp_path / "bad.yaml"
        bad.write_text(DNA.read_text().replace("    d_model: 64", "    d_modle: 64"))
        args[2], key = str(bad), "d_modle"
    elif where == "yaml_top":
        bad = tmp_path / "bad.yaml"
        bad.write_text(DNA.read_text().replace("trainer:", "trainr:", 1))
        args[2], key = str(bad), "trainr"
    else:
        args += ["--trainer.max_stepz", "3"]
        key = "max_stepz"
    with pytest.raises(SystemExit) as e:
        run_cli(args)
    assert e.value.code != 0
    assert key in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()


def test_generate_and_classify_dispatch_to_the_inference_commands(tmp_path, capsys):
    torch.manual_seed(0)
    lm = NextBaseTask(d_model=16, n_layer=1)
    lm_dir = lm.export_pretrained(tmp_path / "lm")
    with pytest.raises(SystemExit) as e:
        main(["generate", str(lm_dir), "--n", "30", "--seed", "1", "-o", str(tmp_path / "gen.fa")])
    assert e.value.code == 0
    lines = (tmp_path / "gen.fa").read_text().splitlines()
    assert lines[0].startswith(">generated_0") and len(lines[1]) == 30 and set(lines[1]) <= set("ACGT")

    clf = SpeciesClassificationTask(num_classes=2, d_model=16, n_layer=1)
    clf.metadata["class_names"] = ["first", "second"]
    clf_dir = clf.export_pretrained(tmp_path / "clf")
    reads = tmp_path / "reads.fa"
    reads.write_text(">r1\nACGTACGTAC\n>r2\nGGGCCCGGGCCC\n")
    with pytest.raises(SystemExit) as e:
        main(["classify", str(clf_dir), str(reads)])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "r1" in out and "r2" in out and "first" in out
    # a DNA LM is not a classifier: the error names what to use instead
    with pytest.raises(SystemExit) as e:
        main(["classify", str(lm_dir), str(reads)])
    assert e.value.code == 2 and "longseq generate" in capsys.readouterr().err


def test_console_script_fit_then_validate_reproduces_the_logged_metric(tmp_path):
    """`longseq fit` as installed (a subprocess), then `longseq validate --ckpt_path`."""
    script = Path(sys.executable).parent / "longseq"
    assert script.is_file(), "the longseq console script is not installed (pip install -e .)"
    root = tmp_path / "run"
    common = ["--config", str(DNA), "--trainer.default_root_dir", str(root), *QUIET,
              "--model.init_args.d_model", "16", "--model.init_args.n_layer", "1",
              "--trainer.callbacks", '[{"class_path": "longseq.datamodules.SequenceLengthWarmup", "init_args": '
              '{"stages": [{"seq_len": 64, "batch_size": 4, "epochs": 1}]}}]',
              "--data.init_args.max_eval_windows", "8"]
    fit = subprocess.run([str(script), "fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches",
                          "4", "--trainer.log_every_n_steps", "1"], capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = root / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and list((root / "checkpoints").glob("best-*.ckpt"))
    assert (root / "csv" / "version_0" / "config.yaml").is_file()       # the run's full config is kept
    assert list((root / "tensorboard").glob("version_0/events.out.tfevents.*"))
    with open(root / "csv" / "version_0" / "metrics.csv") as f:
        logged = [float(r["val/bits_per_base"]) for r in csv.DictReader(f) if r.get("val/bits_per_base")]
    val = subprocess.run([str(script), "validate", *common, "--ckpt_path", str(ckpt)],
                         capture_output=True, text=True, timeout=300)
    assert val.returncode == 0, val.stderr[-3000:]
    with open(root / "csv" / "version_1" / "metrics.csv") as f:
        again = [float(r["val/bits_per_base"]) for r in csv.DictReader(f) if r.get("val/bits_per_base")]
    assert again == pytest.approx([logged[-1]], rel=1e-6)
