"""``make demo`` (``python -m longseq.demo``): the main job on the bundled data, on a CPU, in minutes.

1. Pre-train a next-base Mamba language model on the bundled E. coli K-12 genome
   (configs/dna_nextbase_demo.yaml: sequence-length warmup 256 -> 1024), keep the best
   checkpoint by validation bits per base, and measure bits per base on the held-out test region.
2. Save it as a self-contained model directory (config.json + model.safetensors).
3. Fine-tune a species classifier from that backbone on the bundled genomes of 7 species
   (configs/species_demo.yaml) and measure accuracy on held-out regions of every genome.
4. Through the Python API (``longseq.load``): score a held-out stretch of E. coli, generate DNA
   from a prompt, and classify held-out reads written to a FASTA file.
5. Plot the training curves (PNG) and print where every output went.

``--quick`` shrinks everything to a smoke test (seconds of training; numbers meaningless).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

from ._atomic import atomic_path, save_figure

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _config(name: str) -> Path:
    path = CONFIGS / name
    if not path.is_file():
        raise SystemExit(f"longseq.demo: {path} not found; run the demo from a source checkout "
                         "(`make demo` in the repository root)")
    return path


def _quiet_args() -> list[str]:
    return ["--trainer.enable_model_summary", "false"]


def _fit(config: Path, root: Path, extra: list[str]):
    from .cli import run_cli

    return run_cli(["fit", "--config", str(config), "--trainer.default_root_dir", str(root), *_quiet_args(), *extra])


def _metrics(root: Path) -> list[dict]:
    files = sorted(root.glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not files:
        return []
    with open(files[-1]) as f:
        return list(csv.DictReader(f))


def _series(rows, key):
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]


def _smooth(points, k: int = 3):
    out = []
    for i in range(len(points)):
        window = points[max(0, i - k + 1): i + 1]
        out.append((points[i][0], sum(v for _, v in window) / len(window)))
    return out


def plot_curves(dna_rows, species_rows, path: Path) -> Path:
    """Training curves of both runs in one PNG (written to a temporary file, then renamed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    train = _series(dna_rows, "train/bits_per_base")
    if train:
        a.plot(*zip(*train), color="tab:blue", alpha=0.25, lw=0.8)
        a.plot(*zip(*_smooth(train)), color="tab:blue", label="train (smoothed)")
    val = _series(dna_rows, "val/bits_per_base")
    if val:
        a.plot(*zip(*val), "o-", color="tab:red", label="validation (held-out region)")
    a.axhline(2.0, color="gray", ls="--", lw=1, label="uniform over A C G T (2 bits)")
    a.set_xlabel("optimiser step")
    a.set_ylabel("bits per base")
    a.set_title("E. coli K-12 next-base pre-training")
    a.set_ylim(1.85, 2.15)
    a.legend(fontsize=8)
    loss = _series(species_rows, "train/loss")
    if loss:
        b.plot(*zip(*loss), color="tab:blue", alpha=0.25, lw=0.8)
        b.plot(*zip(*_smooth(loss)), color="tab:blue", label="train loss (nats, smoothed)")
    acc = _series(species_rows, "val/accuracy")
    if acc:
        b2 = b.twinx()
        b2.plot(*zip(*acc), "o-", color="tab:red", label="validation accuracy")
        b2.axhline(1 / 7, color="gray", ls="--", lw=1, label="chance (1/7)")
        b2.set_ylim(0, 1)
        b2.set_ylabel("accuracy")
        b2.legend(fontsize=8, loc="center right")
    b.set_xlabel("optimiser step")
    b.set_ylabel("cross-entropy (nats)")
    b.set_title("7-species classifier, fine-tuned from the DNA model")
    b.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return save_figure(fig, path)


def _write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def _held_out_reads(species_dm, per_species: int, length: int):
    """``per_species`` windows of ``length`` bases from each species' *test* regions, as (name, seq, species)."""
    reads = []
    for label, species in enumerate(species_dm.class_names):
        regions = [r for r in species_dm.regions["test"] if r.label == label and len(r) >= length]
        region = max(regions, key=len)
        fasta = species_dm.fastas[region.source]
        step = (len(region) - length) // max(1, per_species)
        for i in range(per_species):
            start = region.start + i * step
            reads.append((f"{species.replace(' ', '_')}|{region.contig}:{start}-{start + length}",
                          fasta.fetch(region.contig, start, start + length), species))
    return reads


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m longseq.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--quick", action="store_true", help="smoke test: a few steps of each stage")
    args = parser.parse_args(argv)
    out = Path(args.out)
    t0 = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    quick = args.quick

    import longseq
    from .datamodules import SequenceLengthWarmup, SpeciesDataModule
    from .datamodules.genome import bundled_genome

    print(f"longseq {longseq.__version__} demo: outputs under {out.resolve()}\n", flush=True)

    # --- 1. pre-train on the E. coli genome --------------------------------------------------------
    print("[1/5] next-base pre-training on E. coli K-12 MG1655 "
          f"({bundled_genome()}), configs/dna_nextbase_demo.yaml", flush=True)
    dna_extra = []
    if quick:
        dna_extra = ["--trainer.max_epochs", "1", "--trainer.max_steps", "4", "--data.init_args.max_eval_windows", "4",
                     "--model.init_args.d_model", "32", "--trainer.callbacks",
                     '[{"class_path": "longseq.datamodules.SequenceLengthWarmup", "init_args": {"stages": '
                     '[{"seq_len": 128, "batch_size": 4, "epochs": 1}]}}]']
    dna = _fit(_config("dna_nextbase_demo.yaml"), out / "dna", dna_extra)
    best = dna.trainer.checkpoint_callback.best_model_path or None
    # test at the final window length whatever epoch a time cap stopped training in, so that the
    # held-out set is the same windows on every machine
    warmup = [c for c in dna.trainer.callbacks if isinstance(c, SequenceLengthWarmup)]
    if warmup:
        dna.datamodule.set_stage(**{k: warmup[0].stages[-1][k] for k in ("seq_len", "batch_size")})
    test = dna.trainer.test(dna.model, datamodule=dna.datamodule, ckpt_path=best, verbose=False)[0]
    dna_bits = float(test["test/bits_per_base"])
    print(f"      held-out test region: {dna_bits:.4f} bits per base over {int(test['test/bases'])} bases "
          f"(2.0 = uniform guess)\n", flush=True)

    # --- 2. save ---------------------------------------------------------------------------------
    model_dir = dna.model.export_pretrained(out / "dna_model")
    print(f"[2/5] saved the DNA model to {model_dir}/ (config.json + model.safetensors)\n", flush=True)

    # --- 3. fine-tune a species classifier from the pre-trained backbone -------------------------------
    print("[3/5] species classifier (7 species, 10 genomes) fine-tuned from the DNA backbone, "
          "configs/species_demo.yaml", flush=True)
    sp_extra = ["--model.init_args.init_backbone", str(model_dir)]
    if quick:
        sp_extra += ["--trainer.max_epochs", "1", "--trainer.max_steps", "3", "--data.init_args.seq_len", "128",
                     "--data.init_args.max_eval_windows", "2"]
    species = _fit(_config("species_demo.yaml"), out / "species", sp_extra)
    best_sp = species.trainer.checkpoint_callback.best_model_path or None
    sp_test = species.trainer.test(species.model, datamodule=species.datamodule, ckpt_path=best_sp, verbose=False)[0]
    sp_acc = float(sp_test["test/accuracy"])
    print(f"      held-out test regions: accuracy {sp_acc:.3f}, macro F1 {float(sp_test['test/macro_f1']):.3f} "
          f"(chance {1 / 7:.3f})\n", flush=True)

    # --- 4. the Python API -------------------------------------------------------------------------
    print("[4/5] the Python API: longseq.load(...)", flush=True)
    pipe = longseq.load(model_dir)
    dm = dna.datamodule
    region = max(dm.regions["test"], key=len)
    span = 2000 if quick else 20000
    held_out = dm.fasta.fetch(region.contig, region.start, region.start + span)
    scored = pipe.score(held_out)
    print(f"      pipe.score(<{span} held-out bases>): {scored.bits_per_base:.4f} bits per base")
    prompt = held_out[:200]
    generated = pipe.generate(prompt=prompt, n=50 if quick else 600, temperature=1.0, top_p=0.95, seed=0)
    gen_path = _write_text(out / "generated.fa", f">generated continuation of {region.contig}:{region.start}-"
                                                 f"{region.start + 200} (E. coli held-out region)\n{generated}\n")
    print(f"      pipe.generate(prompt=<200 bases>, n={len(generated)}): {generated[:60]}... -> {gen_path}")
    sp_dm: SpeciesDataModule = species.datamodule
    reads = _held_out_reads(sp_dm, per_species=2 if quick else 8, length=sp_dm.seq_len)
    reads_path = _write_text(out / "heldout_reads.fa", "".join(f">{n}\n{s}\n" for n, s, _ in reads))
    classifier = longseq.load(species.trainer.checkpoint_callback.best_model_path or
                              out / "species" / "checkpoints" / "last.ckpt")
    predictions = classifier.classify(str(reads_path))
    labels = predictions.labels
    correct = sum(p == sp for p, (_, _, sp) in zip(labels, reads))
    pred_path = _write_text(out / "heldout_reads.predictions.tsv", predictions.to_tsv())
    print(f"      classifier.classify('{reads_path}'): {correct}/{len(reads)} held-out reads named correctly "
          f"-> {pred_path}\n", flush=True)

    # --- 5. plot and summary ------------------------------------------------------------------------
    png = plot_curves(_metrics(out / "dna"), _metrics(out / "species"), out / "training_curves.png")
    summary = {"dna_test_bits_per_base": dna_bits, "dna_test_bases": int(test["test/bases"]),
               "dna_api_bits_per_base_20kb": scored.bits_per_base,
               "species_test_accuracy": sp_acc, "species_test_macro_f1": float(sp_test["test/macro_f1"]),
               "species_reads_correct": f"{correct}/{len(reads)}", "seconds": round(time.time() - t0, 1),
               "quick": quick}
    summary_path = _write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    csv_dir = next(iter(sorted((out / "dna").glob("csv/version_*"))), out / "dna" / "csv")
    print("[5/5] outputs:")
    for what, where in [
        ("training curves (PNG)", png),
        ("DNA checkpoints (last + best)", out / "dna" / "checkpoints"),
        ("DNA model (save_pretrained)", model_dir),
        ("DNA logs: CSV / TensorBoard", f"{csv_dir}/metrics.csv  /  {out / 'dna' / 'tensorboard'}"),
        ("species checkpoints", out / "species" / "checkpoints"),
        ("species confusion matrices", next(iter(sorted((out / 'species').glob('csv/version_*'))), out) / "confusion"),
        ("generated DNA", gen_path),
        ("held-out reads / predictions", f"{reads_path}  /  {pred_path}"),
        ("summary (JSON)", summary_path),
    ]:
        print(f"      {what:32s} {where}")
    print(f"\ndone in {summary['seconds'] / 60:.1f} min: DNA {dna_bits:.4f} bits/base held out; "
          f"species accuracy {sp_acc:.3f} held out", flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
