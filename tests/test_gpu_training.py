"""GPU training through the CLI (run on the device: `pytest -m gpu tests/test_gpu_training.py`):
the DNA demo config under bf16-mixed with the default strategy and with FSDP, whose clipping by
norm goes through FSDP's own clip_grad_norm_ (Lightning's FSDP plugin refuses clipping by norm)."""
import math

import lightning.pytorch as pl
import pytest
import torch

from longseq.cli import run_cli

from test_tasks import CONFIGS, TINY, read_metrics, series

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CLIP = 0.05   # far below this model's raw gradient norms, so unclipped gradients would show


class GradNormAfterStep(pl.Callback):
    """Records the gradient norm the optimiser stepped with (grads are still set after the step)."""

    def __init__(self):
        self.norms = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        grads = [p.grad.float().norm() for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.stack(grads).norm()))


@pytest.mark.parametrize("strategy", ["auto", "fsdp"])
def test_dna_demo_trains_bf16_on_gpu(tmp_path, strategy):
    root = tmp_path / strategy
    stages = ('[{"class_path": "longseq.datamodules.SequenceLengthWarmup", "init_args": {"stages": '
              '[{"seq_len": 1024, "batch_size": 8, "epochs": 3}]}}]')
    cli = run_cli(["--config", str(CONFIGS / "dna_nextbase_demo.yaml"), *TINY,
                   "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.strategy", strategy,
                   "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "3",
                   "--trainer.limit_train_batches", "20", "--trainer.callbacks", stages,
                   "--trainer.gradient_clip_val", str(CLIP),
                   "--model.init_args.lr", "0.01", "--model.init_args.warmup_steps", "3",
                   "--data.init_args.samples_per_epoch", "160", "--data.init_args.max_eval_windows", "16"],
                  run=False)
    assert cli.trainer.precision == "bf16-mixed"          # the CLI's default on a bf16 GPU
    probe = GradNormAfterStep()
    cli.trainer.callbacks.append(probe)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    val = series(read_metrics(root), "val/bits_per_base")
    assert len(val) == 3 and all(math.isfinite(v) for _, v in val), val
    assert val[-1][1] < val[0][1], val
    assert len(probe.norms) == 60
    assert max(probe.norms) <= CLIP * 1.01, probe.norms  # every step was clipped by norm


def test_compile_mode_reduce_overhead_fits_as_eager_on_gpu(tmp_path):
    """compile_mode="reduce-overhead" (CUDA graphs of the forward and backward) through a fit with two
    window lengths and validation: the same training losses and validation result as eager."""
    stages = ('[{"class_path": "longseq.datamodules.SequenceLengthWarmup", "init_args": {"stages": '
              '[{"seq_len": 512, "batch_size": 8, "epochs": 1}, {"seq_len": 1024, "batch_size": 4, "epochs": 1}]}}]')
    runs = {}
    for mode in ("null", "reduce-overhead"):
        root = tmp_path / mode
        cli = run_cli(["fit", "--config", str(CONFIGS / "dna_nextbase_demo.yaml"), *TINY,
                       "--trainer.accelerator", "gpu", "--trainer.devices", "1",
                       "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "2",
                       "--trainer.limit_train_batches", "12", "--trainer.callbacks", stages,
                       "--model.init_args.compile_mode", mode,
                       "--data.init_args.samples_per_epoch", "96", "--data.init_args.max_eval_windows", "16"])
        assert getattr(cli.model, "_compiled", False) == (mode != "null")
        rows = read_metrics(root)
        runs[mode] = ([v for _, v in series(rows, "train/loss")], [v for _, v in series(rows, "val/bits_per_base")])
    (eager, eager_val), (graphed, graphed_val) = runs["null"], runs["reduce-overhead"]
    assert len(eager) == 24 and len(eager_val) == 2
    assert graphed == pytest.approx(eager, rel=1e-2) and graphed_val == pytest.approx(eager_val, rel=1e-2)


def test_audio_task_generates_with_compile_mode_on_gpu(tmp_path):
    """The waveform task's validation-end clips (the prompt's forward through the compiled model,
    then the recurrent step) with compile_mode="reduce-overhead"."""
    import soundfile as sf

    root = tmp_path / "audio"
    run_cli(["fit", "--config", str(CONFIGS / "audio_demo.yaml"), *TINY,
             "--trainer.accelerator", "gpu", "--trainer.devices", "1",
             "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "1",
             "--trainer.max_steps", "16", "--trainer.val_check_interval", "8",
             "--model.init_args.compile_mode", "reduce-overhead",
             "--model.init_args.gen_seconds", "0.005", "--model.init_args.gen_prompt", "32",
             "--data.init_args.seq_len", "256", "--data.init_args.batch_size", "4",
             "--data.init_args.windows_per_epoch", "64", "--trainer.limit_val_batches", "4"])
    bits = series(read_metrics(root), "val/bits_per_sample")
    assert len(bits) == 2 and all(math.isfinite(v) for _, v in bits), bits
    wavs = sorted((root / "csv").glob("version_*/samples/*.wav"))
    assert len(wavs) == 2 * 2
    data, rate = sf.read(wavs[-1])
    assert rate == 16000 and len(data) == 32 + 80
