"""GenomeDataModule on the bundled genomes: batch contract, splits, tiling, BED, errors.

Expected windows are recomputed independently from Bio.SeqIO strings and plain Python.
"""
import gzip

import numpy as np
import pytest
import torch
from Bio import SeqIO

from longseq.datamodules import GenomeDataModule
from longseq.datamodules.fasta import FastaError
from longseq.datamodules.genome import bundled_genome
from longseq.datamodules.species import bundled_species
from longseq.tokenizers import NucleotideTokenizer

VIBRIO = bundled_species()["Vibrio cholerae"][0]                # 2 records with IUPAC codes
KLEBSIELLA = bundled_species()["Klebsiella pneumoniae"][0]      # chromosome + 6 plasmids
IDS = {c: i for i, c in enumerate("ACGT")}
COMPLEMENT = str.maketrans("ACGTN", "TGCAN")


@pytest.fixture(autouse=True, scope="module")
def cache(tmp_path_factory):
    # one cache per module: the bundled genomes are decompressed once, not once per test
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LONGSEQ_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def genome(path):
    """Contigs laid end to end in file order: (concatenated upper-case sequence, {name: (offset, length)})."""
    with gzip.open(path, "rt") as f:
        recs = [(r.id.split()[0], str(r.seq).upper()) for r in SeqIO.parse(f, "fasta")]
    offsets, pos = {}, 0
    for name, seq in recs:
        offsets[name] = (pos, len(seq))
        pos += len(seq)
    return "".join(s for _, s in recs), offsets


def as_ids(seq):
    """Independent tokenisation: A C G T -> 0..3, anything else (IUPAC ambiguity) -> N = 4."""
    return [IDS.get(c, 4) for c in seq]


def collect(loader):
    return [b for b in loader]


def test_batches_are_shifted_windows_of_the_genome():
    seq, _ = genome(bundled_genome())
    dm = GenomeDataModule(seq_len=1000, batch_size=3, rc_aug=False, samples_per_epoch=12)
    dm.setup()
    assert isinstance(dm.tokenizer, NucleotideTokenizer)
    batches = collect(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader()) == 4
    for b in batches:
        assert set(b) == {"input_ids", "labels", "window_id"}
        assert b["input_ids"].shape == b["labels"].shape == (3, 1000) and b["input_ids"].dtype == torch.long
        assert b["labels"].dtype == torch.long and b["window_id"].shape == (3,)
        for row, start in enumerate(b["window_id"].tolist()):
            expect = as_ids(seq[start:start + 1001])
            assert b["input_ids"][row].tolist() == expect[:-1]
            assert b["labels"][row].tolist() == expect[1:]
            assert start + 1001 <= int(len(seq) * 0.8)             # inside the train region


def test_reverse_complement_augmentation_and_n_masking():
    """V. cholerae carries IUPAC ambiguity codes: their targets must be -100, and reverse-complemented
    rows must equal the reverse complement of the forward window."""
    seq, offsets = genome(VIBRIO)
    ambiguous = [i for i, c in enumerate(seq) if c not in "ACGT"]
    assert len(ambiguous) >= 30
    dm = GenomeDataModule(VIBRIO, seq_len=2048, batch_size=16, rc_aug=True, samples_per_epoch=256, seed=5)
    flipped = forward = 0
    masked = 0
    for b in dm.train_dataloader():
        for row, start in enumerate(b["window_id"].tolist()):
            window = seq[start:start + 2049]
            ids, labels = b["input_ids"][row].tolist(), b["labels"][row].tolist()
            rc = window.translate(COMPLEMENT)[::-1]
            rc = "".join(c if c in "ACGT" else "N" for c in rc)
            if ids == as_ids(window[:-1]) and ids != as_ids(rc[:-1]):
                forward += 1
                full = window
            else:
                assert ids == as_ids(rc[:-1]) and labels[-1] in (as_ids(rc[-1])[0], -100)
                flipped += 1
                full = rc
            expect = [x if x != 4 else -100 for x in as_ids(full[1:])]
            assert labels == expect
            masked += expect.count(-100)
    assert forward > 50 and flipped > 50           # about half each of 256
    # and the evaluation tiles mask N without augmenting
    for b in dm.val_dataloader():
        for row, start in enumerate(b["window_id"].tolist()):
            window = seq[start:start + 2049]
            assert b["input_ids"][row].tolist() == as_ids(window[:-1])
            assert b["labels"][row].tolist() == [x if x != 4 else -100 for x in as_ids(window[1:])]
            masked += (b["labels"][row] == -100).sum().item()
    assert masked > 0


def test_windows_never_cross_contig_ends():
    seq, offsets = genome(VIBRIO)
    ends = sorted(o + n for o, n in offsets.values())
    dm = GenomeDataModule(VIBRIO, seq_len=4096, batch_size=32, splits={"train": list(offsets)},
                          samples_per_epoch=2048, seed=1)
    starts = torch.cat([b["window_id"] for b in dm.train_dataloader()]).numpy()
    for end in ends:
        assert not ((starts < end) & (starts + 4097 > end)).any()


@pytest.mark.parametrize("seq_len", [1000, 1023, 4095])
def test_val_and_test_tiles_cover_their_regions_exactly(seq_len):
    seq, _ = genome(bundled_genome())
    n = len(seq)
    dm = GenomeDataModule(seq_len=seq_len, batch_size=7)
    for split, (a, b) in {"test": (round(n * 0.8), round(n * 0.9)), "val": (round(n * 0.9), n)}.items():
        loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
        batches = collect(loader)
        assert len(batches) == len(loader)
        starts = torch.cat([x["window_id"] for x in batches]).tolist()
        assert starts == sorted(starts) and len(set(starts)) == len(starts)
        covered = np.zeros(n, bool)
        for s in starts:
            assert a <= s and s + seq_len + 1 <= b
            covered[s:s + seq_len + 1] = True
        assert covered[a:b].all() and covered.sum() == b - a
        # tiles are non-overlapping except the last one, shifted back inside the region
        assert all(y - x == seq_len + 1 for x, y in zip(starts[:-2], starts[1:-1]))
        assert starts[-1] == b - seq_len - 1
        assert collect(loader)[0]["window_id"].tolist() == batches[0]["window_id"].tolist()   # deterministic


def test_train_windows_change_between_epochs_and_follow_the_seed():
    a = GenomeDataModule(seq_len=512, batch_size=4, samples_per_epoch=16, seed=7)
    b = GenomeDataModule(seq_len=512, batch_size=4, samples_per_epoch=16, seed=7)
    loader = a.train_dataloader()
    first = torch.cat([x["window_id"] for x in loader])
    second = torch.cat([x["window_id"] for x in loader])
    assert not torch.equal(first, second)
    assert torch.equal(first, torch.cat([x["window_id"] for x in b.train_dataloader()]))


def test_bed_intervals(tmp_path):
    seq, offsets = genome(KLEBSIELLA)
    chrom = list(offsets)[0]
    bed = tmp_path / "splits.bed"
    bed.write_text("# Basenji-style sequences.bed\n"
                   f"{chrom}\t0\t300000\ttrain\n{chrom}\t300000\t600000\ttrain\n"      # touching: merged
                   f"{chrom}\t1000000\t1040000\tvalid\n{chrom}\t1040000\t1042000\ttest\n"
                   f"{chrom}\t2000000\t2001000\ttrain\n")                             # shorter than a window
    dm = GenomeDataModule(KLEBSIELLA, seq_len=4096, batch_size=8, bed=str(bed), samples_per_epoch=400)
    with pytest.warns(UserWarning, match="skipped 1 of 2 regions"):
        train = torch.cat([b["window_id"] for b in dm.train_dataloader()]).numpy()
    assert (train >= 0).all() and (train + 4097 <= 600000).all()
    assert (train + 4097 > 300000).any() and (train < 300000).any()       # windows span the merged join
    val = torch.cat([b["window_id"] for b in dm.val_dataloader()]).numpy()
    assert val.min() == 1000000 and val.max() + 4097 == 1040000
    with pytest.warns(UserWarning, match="test loader is empty"):
        assert collect(dm.test_dataloader()) == []


@pytest.mark.parametrize("line,message", [
    ("chrUn\t0\t100\ttrain", r"line 2: contig 'chrUn' is not in the FASTA"),
    ("{chrom}\t5000000\t9000000\ttest", r"line 2: interval \[5000000, 9000000\) is outside contig"),
    ("{chrom}\t10\t5\ttest", r"line 2: interval \[10, 5\) is outside"),
    ("{chrom}\t0\t100", r"line 2: expected 4 columns"),
    ("{chrom}\tzero\t100\ttrain", r"line 2: start and end must be integers"),
    ("{chrom}\t0\t100\tholdout", r"line 2: unknown split 'holdout'"),
])
def test_bad_bed_lines_are_named(tmp_path, line, message):
    chrom = list(genome(KLEBSIELLA)[1])[0]
    bed = tmp_path / "bad.bed"
    bed.write_text(f"{chrom}\t0\t100000\ttrain\n" + line.format(chrom=chrom) + "\n")
    dm = GenomeDataModule(KLEBSIELLA, seq_len=1024, bed=str(bed))
    with pytest.raises(FastaError, match=r"bad.bed: " + message):
        dm.setup()


def test_contig_splits_skip_short_contigs_with_a_count():
    _, offsets = genome(KLEBSIELLA)
    names = list(offsets)
    dm = GenomeDataModule(KLEBSIELLA, seq_len=5000, batch_size=4, samples_per_epoch=64,
                          splits={"train": names[:1] + names[4:], "val": names[1:3], "test": names[3:4]})
    with pytest.warns(UserWarning, match=r"skipped 3 of 4 contigs shorter than a window of 5001 bases \(8412 bases"):
        train = torch.cat([b["window_id"] for b in dm.train_dataloader()]).numpy()
    assert (train + 5001 <= offsets[names[0]][1]).all()
    val = torch.cat([b["window_id"] for b in dm.val_dataloader()]).numpy()
    lo = offsets[names[1]][0]
    assert val.min() == lo and val.max() + 5001 == lo + offsets[names[1]][1] + offsets[names[2]][1]
    with pytest.raises(FastaError, match=r"splits\['val'\] names contig 'chrX'"):
        GenomeDataModule(KLEBSIELLA, splits={"train": names[:1], "val": ["chrX"]}).setup()


def test_seq_len_larger_than_every_contig():
    dm = GenomeDataModule(VIBRIO, seq_len=3_000_000)
    with pytest.raises(ValueError, match=r"seq_len 3000000 .* larger than every train region .*longest: 2368919"):
        dm.train_dataloader()


def test_bad_arguments():
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        GenomeDataModule(seq_len=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        GenomeDataModule(batch_size=2.5)
    with pytest.raises(ValueError, match="either bed or splits"):
        GenomeDataModule(bed="x.bed", splits={"train": ["a"]})
    with pytest.raises(FastaError, match="FASTA file not found: .*missing.fa"):
        GenomeDataModule("missing.fa").setup()


def test_workers_deliver_the_same_tiles_as_the_main_process():
    """Workers ship compact uint8 codes; the loader expands them: same batches as in-process."""
    def by_window(num_workers):
        dm = GenomeDataModule(VIBRIO, seq_len=3000, batch_size=5, num_workers=num_workers, max_eval_windows=40)
        out = {}
        for b in dm.val_dataloader():
            assert b["input_ids"].dtype == b["labels"].dtype == torch.long
            for i, w in enumerate(b["window_id"].tolist()):
                out[w] = (b["input_ids"][i], b["labels"][i])
        return out
    main, workers = by_window(0), by_window(2)
    assert sorted(main) == sorted(workers) and len(main) == 40
    for w in main:
        assert torch.equal(main[w][0], workers[w][0]) and torch.equal(main[w][1], workers[w][1])


def test_tiled_training_covers_every_tile_once_per_epoch_in_a_new_order():
    seq, _ = genome(bundled_genome())
    n_train = round(len(seq) * 0.8)
    expected = list(range(0, n_train - 20001 + 1, 20001))
    if expected[-1] != n_train - 20001:
        expected.append(n_train - 20001)
    dm = GenomeDataModule(seq_len=20000, batch_size=8, train_sampling="tiled", num_workers=2)
    loader = dm.train_dataloader()
    epochs = [torch.cat([b["window_id"] for b in loader]).tolist() for _ in range(2)]
    for got in epochs:
        assert sorted(got) == expected
    assert epochs[0] != epochs[1]
    assert len(loader) == sum(1 for _ in loader)
    with pytest.raises(ValueError, match="train_sampling must be"):
        GenomeDataModule(train_sampling="shuffled")
