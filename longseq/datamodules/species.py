"""SpeciesDataModule: windows labelled by the species whose genome they come from (DESIGN §5)."""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import torch

from ._base import SPLITS, RegionWindows, WindowDataModule
from ._windows import Region, evenly_spaced, usable_regions
from .fasta import IndexedFasta
from .genome import ASSETS, region_split


def bundled_species() -> dict[str, list[Path]]:
    """The bundled genomes by species name (from ``assets/dna/manifest.tsv``): 10 genomes, 7 species."""
    out: dict[str, list[Path]] = {}
    with open(ASSETS / "manifest.tsv", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            out.setdefault(row["species"], []).append(ASSETS / row["file"])
    return out


def contig_split(contigs: list[tuple[int, str, int]], fractions: dict[str, float]):
    """Whole contigs to splits: longest to train, next to val, next to test, then each further
    contig to the split furthest below its share of bases. ``contigs``: (source, name, length)."""
    order = sorted(contigs, key=lambda c: -c[2])
    out = {s: [] for s in SPLITS}
    bases = dict.fromkeys(SPLITS, 0)
    total = sum(c[2] for c in contigs)
    for i, (source, name, length) in enumerate(order):
        if i < 3:
            split = SPLITS[i]
        else:
            split = min(SPLITS, key=lambda s: bases[s] / total - fractions[s])
        out[split].append((source, name, 0, length))
        bases[split] += length
    return out


class SpeciesWindows(RegionWindows):
    """Classification batches: species drawn uniformly, then a contig (uniformly or by length),
    then a window inside it."""

    def __init__(self, fastas, regions, seq_len, num_classes, rc_aug, contig_sampling, max_per_class=None):
        super().__init__(fastas, regions, seq_len)
        self.rc_aug, self.max_per_class = rc_aug, max_per_class
        self.labels = labels = np.array([r.label for r in regions], dtype=np.int64)
        self.classes = [c for c in range(num_classes) if (labels == c).any()]
        self.by_class = [np.flatnonzero(labels == c) for c in self.classes]
        weights = self.num_starts if contig_sampling == "length" else np.ones(len(regions))
        self.class_p = [weights[ix] / weights[ix].sum() for ix in self.by_class]

    def draw(self, rng, n):
        which = rng.integers(0, len(self.classes), size=n)
        idx = np.array([rng.choice(self.by_class[k], p=self.class_p[k]) for k in which], dtype=np.int64)
        return idx, self._start_in(idx, rng)

    def tiles(self):
        """All tiles, or at most ``max_per_class`` evenly spaced ones per species."""
        idx, starts = super().tiles()
        if self.max_per_class is None or not len(idx):
            return idx, starts
        labels = self.labels[idx]
        keep = np.concatenate([np.flatnonzero(labels == c)[evenly_spaced(int((labels == c).sum()), self.max_per_class)]
                               for c in np.unique(labels)])
        keep.sort()
        return idx[keep], starts[keep]

    def batch(self, idx, starts, rng):
        ids, wids = self.ids(idx, starts, rng, self.rc_aug)
        labels = torch.tensor([self.regions[i].label for i in idx.tolist()], dtype=torch.long)
        return {"codes": torch.from_numpy(ids), "label": labels, "window_id": wids}

    def expand(self, batch):
        return {"input_ids": torch.from_numpy(batch.pop("codes").numpy().astype(np.int64)), **batch}


class SpeciesDataModule(WindowDataModule):
    """Windows of several genomes labelled by species, for classification.

    Batches are ``{"input_ids": (B, L), "label": (B,), "window_id": (B,)}``; ``label`` indexes
    ``class_names`` (the species names, sorted), which are saved with Lightning checkpoints.
    window_id is the window's start in the coordinates of all genomes laid end to end.

    Args:
        fastas: ``{species name: FASTA path or [paths]}`` (e.g. several strains per species).
            Default: the bundled set (``bundled_species()``: 10 genomes of 7 bacteria).
        seq_len: window length L. ``SequenceLengthWarmup`` changes it via ``set_stage``.
        batch_size: windows per batch.
        split_by: how a species' sequence is divided between train/val/test, so that no window
            crosses splits:
            ``"region"`` (default): every contig is cut into train | test | val, the last
            ``val_fraction`` for val and the ``test_fraction`` before it for test;
            ``"contig"``: whole contigs (records of all the species' files) go to one split:
            needs at least 3 contigs per species;
            ``"auto"``: "contig" for species with at least 3 contigs, "region" for the others.
            (Region is the default because bacterial genomes have one chromosome, and a species'
            further records are often small plasmids, not representative test material.)
        contig_sampling: ``"length"`` (contigs drawn in proportion to their usable windows, i.e.
            uniform over positions of the species) or ``"uniform"``.
        rc_aug: reverse-complement half of the training windows.
        samples_per_epoch: training windows per epoch over all ranks and workers (default: as
            many as cover the training bases once at the current seq_len).
        max_eval_windows: cap on val/test windows *per species* (evenly spaced), which also
            balances classes at evaluation; default all tiles.
        num_workers, seed, cache_dir: as for GenomeDataModule.
    """

    def __init__(self, fastas: dict[str, str | list[str]] | None = None, seq_len: int = 1024,
                 batch_size: int = 32, split_by: str = "region", contig_sampling: str = "length",
                 val_fraction: float = 0.1, test_fraction: float = 0.1, rc_aug: bool = True,
                 samples_per_epoch: int | None = None, max_eval_windows: int | None = None,
                 num_workers: int = 0, seed: int = 0, cache_dir: str | None = None):
        super().__init__(seq_len, batch_size, num_workers, seed, samples_per_epoch, max_eval_windows,
                         rc_aug, cache_dir)
        self.save_hyperparameters()
        if fastas is None:
            fastas = bundled_species()
        if not isinstance(fastas, dict) or not fastas:
            raise ValueError("SpeciesDataModule: fastas must be a non-empty {species: path or [paths]} dict")
        self.files = {name: [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
                      for name, paths in fastas.items()}
        empty = [name for name, paths in self.files.items() if not paths]
        if empty:
            raise ValueError(f"SpeciesDataModule: species {empty[0]!r} has no FASTA files")
        if split_by not in ("region", "contig", "auto"):
            raise ValueError(f"SpeciesDataModule: split_by must be 'region', 'contig' or 'auto', got {split_by!r}")
        if contig_sampling not in ("length", "uniform"):
            raise ValueError(f"SpeciesDataModule: contig_sampling must be 'length' or 'uniform', got {contig_sampling!r}")
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(f"SpeciesDataModule: val_fraction and test_fraction must be > 0 with a sum < 1, "
                             f"got {val_fraction} and {test_fraction}")
        self.split_by, self.contig_sampling = split_by, contig_sampling
        self.fractions = {"train": 1 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
        self.class_names: list[str] = sorted(self.files)
        self.fastas: list[IndexedFasta] | None = None
        self.regions: dict[str, list[Region]] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _all_paths(self) -> list[tuple[int, Path]]:
        return [(label, p) for label, name in enumerate(self.class_names) for p in self.files[name]]

    def prepare_data(self) -> None:
        for _, path in self._all_paths():
            IndexedFasta(path, cache_dir=self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.regions is not None:
            return
        self.fastas, labels = [], []
        for label, path in self._all_paths():
            self.fastas.append(IndexedFasta(path, cache_dir=self.cache_dir))
            labels.append(label)
        offsets, total = [], 0          # global coordinate of each (file, contig)
        for fa in self.fastas:
            offsets.append({})
            for name, length in fa.contigs.items():
                offsets[-1][name] = total
                total += length
        self.regions = {s: [] for s in SPLITS}
        for label, species in enumerate(self.class_names):
            sources = [i for i, lab in enumerate(labels) if lab == label]
            contigs = [(i, name, length) for i in sources for name, length in self.fastas[i].contigs.items()]
            mode = self.split_by if self.split_by != "auto" else ("contig" if len(contigs) >= 3 else "region")
            if mode == "contig":
                if len(contigs) < 3:
                    raise ValueError(f"SpeciesDataModule: split_by='contig' needs at least 3 contigs per species; "
                                     f"{species!r} has {len(contigs)} (use split_by='region' or 'auto')")
                parts = contig_split(contigs, self.fractions)
            else:
                parts = {s: [] for s in SPLITS}
                for i in sources:
                    for split, items in region_split(self.fastas[i].contigs, self.fractions["val"],
                                                     self.fractions["test"]).items():
                        parts[split] += [(i, c, a, b) for c, a, b in items]
            for split, items in parts.items():
                self.regions[split] += [Region(i, c, a, b, label=label, offset=offsets[i][c]) for i, c, a, b in items]

    def _source(self, split: str, train: bool) -> SpeciesWindows:
        if self.regions is None:
            self.setup()
        regions = usable_regions(self.regions[split], self.seq_len, split)
        present = {r.label for r in regions}
        missing = [self.class_names[c] for c in range(self.num_classes) if c not in present]
        if missing:
            msg = (f"SpeciesDataModule: seq_len {self.seq_len} is larger than every {split} region of "
                   f"{', '.join(missing)}")
            if train:
                raise ValueError(msg)
            warnings.warn(msg + f"; {split} has no windows of these species", stacklevel=2)
        return SpeciesWindows(self.fastas, regions, self.seq_len, self.num_classes, self.rc_aug and train,
                              self.contig_sampling, None if train else self.max_eval_windows)

    def state_dict(self) -> dict:
        """Saved in Lightning checkpoints: the class names (label i is ``class_names[i]``)."""
        return {"class_names": list(self.class_names)}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = list(state_dict.get("class_names", []))
        if saved and saved != self.class_names:
            raise ValueError(f"SpeciesDataModule: the checkpoint was trained on classes {saved}, but this data "
                             f"module has {self.class_names}; labels would not match")

