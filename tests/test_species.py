"""SpeciesDataModule on the 10 bundled genomes of 7 species (sequences checked with Bio.SeqIO)."""
import gzip

import numpy as np
import pytest
import torch
from Bio import SeqIO

from longseq.datamodules import SpeciesDataModule
from longseq.datamodules.species import bundled_species

IDS = {c: i for i, c in enumerate("ACGT")}
COMPLEMENT = str.maketrans("ACGTRYSWKMBDHVN", "TGCANNNNNNNNNNN")


@pytest.fixture(autouse=True, scope="module")
def cache(tmp_path_factory):
    # one cache per module: the bundled genomes are decompressed once, not once per test
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LONGSEQ_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def catalogue():
    """All bundled genomes laid end to end in the module's order (species sorted, files in manifest
    order): a list of (species, contig, global offset, sequence)."""
    out, pos = [], 0
    species = bundled_species()
    for name in sorted(species):
        for path in species[name]:
            with gzip.open(path, "rt") as f:
                for rec in SeqIO.parse(f, "fasta"):
                    out.append((name, rec.id, pos, str(rec.seq).upper()))
                    pos += len(rec.seq)
    return out


def locate(catalogue, wid):
    for species, contig, offset, seq in catalogue:
        if offset <= wid < offset + len(seq):
            return species, contig, wid - offset, seq
    raise AssertionError(f"window id {wid} outside every genome")


def as_ids(seq):
    return [IDS.get(c, 4) for c in seq]


def test_labels_names_and_sequences(catalogue):
    dm = SpeciesDataModule(seq_len=500, batch_size=16, samples_per_epoch=160, seed=3)
    assert dm.class_names == sorted(bundled_species()) and dm.num_classes == 7
    flipped = 0
    for b in dm.train_dataloader():
        assert set(b) == {"input_ids", "label", "window_id"}
        assert b["input_ids"].shape == (16, 500) and b["label"].shape == (16,) and b["label"].dtype == torch.long
        for ids, label, wid in zip(b["input_ids"].tolist(), b["label"].tolist(), b["window_id"].tolist()):
            species, contig, start, seq = locate(catalogue, wid)
            assert dm.class_names[label] == species
            window = seq[start:start + 500]
            assert start + 500 <= round(len(seq) * 0.8)                  # train part of the contig
            if ids != as_ids(window):
                assert ids == as_ids(window.translate(COMPLEMENT)[::-1])
                flipped += 1
    assert 40 < flipped < 120


def test_species_are_drawn_uniformly():
    dm = SpeciesDataModule(seq_len=64, batch_size=512, samples_per_epoch=512 * 14, seed=0, rc_aug=False)
    labels = torch.cat([b["label"] for b in dm.train_dataloader()])
    counts = torch.bincount(labels, minlength=7).numpy()
    assert counts.sum() == 7168
    # 1024 expected each, binomial sd ~30: every class within 5 sd, though genomes differ 3.4x in size
    assert np.abs(counts - 1024).max() < 150, counts


def test_contig_sampling_uniform_vs_length():
    def plasmid_share(mode):
        dm = SpeciesDataModule({"K": bundled_species()["Klebsiella pneumoniae"]}, seq_len=1000, batch_size=500,
                               samples_per_epoch=2000, contig_sampling=mode, rc_aug=False)
        ids = torch.cat([b["window_id"] for b in dm.train_dataloader()])
        return (ids >= 5333942).float().mean().item()      # past the chromosome (the first record)
    # by length: plasmids hold ~6% of the usable positions; uniform: 3 of 4 usable contigs are plasmids
    assert plasmid_share("length") < 0.1 and plasmid_share("uniform") > 0.6


def test_region_split_keeps_windows_inside_their_split(catalogue):
    dm = SpeciesDataModule(seq_len=2000, batch_size=64, samples_per_epoch=640, seed=1)
    bounds = {"train": (0.0, 0.8), "test": (0.8, 0.9), "val": (0.9, 1.0)}
    loaders = {"train": dm.train_dataloader(), "val": dm.val_dataloader(), "test": dm.test_dataloader()}
    seen = {}
    for split, loader in loaders.items():
        for b in loader:
            for label, wid in zip(b["label"].tolist(), b["window_id"].tolist()):
                species, contig, start, seq = locate(catalogue, wid)
                assert dm.class_names[label] == species
                lo, hi = bounds[split]
                assert round(len(seq) * lo) <= start and start + 2000 <= round(len(seq) * hi)
                seen.setdefault(split, set()).add(species)
    assert all(len(v) == 7 for v in seen.values())


def test_eval_windows_capped_per_species():
    dm = SpeciesDataModule(seq_len=1000, batch_size=50, max_eval_windows=20)
    labels = torch.cat([b["label"] for b in dm.val_dataloader()])
    assert torch.bincount(labels).tolist() == [20] * 7


def test_split_by_contig():
    species = bundled_species()
    dm = SpeciesDataModule({"K": species["Klebsiella pneumoniae"], "S": species["Staphylococcus aureus"]},
                           seq_len=1000, split_by="auto")
    dm.setup()
    k = {s: {r.contig for r in dm.regions[s] if r.label == 0} for s in ("train", "val", "test")}
    assert k["train"] >= {"CP003200.1"} and not (k["train"] & k["val"]) and not (k["val"] & k["test"])
    assert sum(len(v) for v in k.values()) == 7 and all(k.values())
    assert all(r.start == 0 for s in dm.regions.values() for r in s if r.label == 0)    # whole contigs
    s_regions = [r for s in dm.regions.values() for r in s if r.label == 1]
    assert len(s_regions) == 6 and any(r.start > 0 for r in s_regions)                # S. aureus: by region
    with pytest.raises(ValueError, match="needs at least 3 contigs per species; 'S' has 2"):
        SpeciesDataModule({"K": species["Klebsiella pneumoniae"], "S": species["Staphylococcus aureus"]},
                          split_by="contig").setup()


def test_class_names_in_state_dict():
    dm = SpeciesDataModule(seq_len=100)
    state = dm.state_dict()
    assert state == {"class_names": sorted(bundled_species())}
    SpeciesDataModule(seq_len=100).load_state_dict(state)
    fewer = {k: v for k, v in list(bundled_species().items())[:3]}
    with pytest.raises(ValueError, match="trained on classes"):
        SpeciesDataModule(fewer).load_state_dict(state)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split_by must be"):
        SpeciesDataModule(split_by="strain")
    with pytest.raises(ValueError, match="contig_sampling must be"):
        SpeciesDataModule(contig_sampling="gc")
    with pytest.raises(ValueError, match="species 'x' has no FASTA files"):
        SpeciesDataModule({"x": []})
    with pytest.raises(ValueError, match=r"seq_len 2000000 is larger than every train region of Helicobacter pylori"):
        SpeciesDataModule(seq_len=2_000_000).train_dataloader()


def test_class_names_are_saved_in_lightning_checkpoints(tmp_path):
    import lightning.pytorch as pl

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(8, 7)

        def training_step(self, batch, idx):
            return torch.nn.functional.cross_entropy(self.embed(batch["input_ids"]).mean(1), batch["label"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = SpeciesDataModule(seq_len=64, batch_size=4)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Tiny(), datamodule=dm)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert ckpt["SpeciesDataModule"]["class_names"] == dm.class_names
    assert ckpt["datamodule_hyper_parameters"]["seq_len"] == 64
