"""IndexedFasta on the bundled genomes (plain gzip, bgzip and plain copies) and on bad input.

The reference for every sequence is Biopython's own parser (Bio.SeqIO), independent of pyfaidx
and of our gzip decompression/re-wrapping.
"""
import gzip
import os
import re
import time
import warnings

import numpy as np
import pytest
from Bio import SeqIO, bgzf

from longseq.datamodules.fasta import FastaError, IndexedFasta
from longseq.datamodules.genome import bundled_genome
from longseq.datamodules.species import bundled_species

KLEBSIELLA = bundled_species()["Klebsiella pneumoniae"][0]      # 7 records, one with an N
VIBRIO = bundled_species()["Vibrio cholerae"][0]                # 2 records, IUPAC codes


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("LONGSEQ_CACHE", str(path))
    return path


def records(path):
    with gzip.open(path, "rt") as f:
        return {r.id: str(r.seq) for r in SeqIO.parse(f, "fasta")}


def check_random_fetches(fa, ref, n=200, seed=0):
    rng = np.random.default_rng(seed)
    assert fa.contigs == {name: len(seq) for name, seq in ref.items()}
    names = list(ref)
    for _ in range(n):
        name = names[rng.integers(len(names))]
        length = len(ref[name])
        size = int(rng.choice([1, 7, 79, 80, 81, 1000, 65537]))
        size = min(size, length)
        start = int(rng.integers(0, length - size + 1))
        assert fa.fetch(name, start, start + size) == ref[name][start:start + size]
    for name in names:      # both ends of every contig
        assert fa.fetch(name, 0, 5) == ref[name][:5]
        assert fa.fetch(name, len(ref[name]) - 5, len(ref[name])) == ref[name][-5:]


def write_fasta(path, recs, width):
    """Plain FASTA with a given line width (a callable width(i) gives irregular lines)."""
    with open(path, "w") as f:
        for name, seq in recs.items():
            f.write(f">{name} derived from a bundled genome\n")
            i, k = 0, 0
            while i < len(seq):
                w = width(k) if callable(width) else width
                f.write(seq[i:i + w] + "\n")
                i, k = i + w, k + 1


def test_plain_gzip_is_decompressed_once_into_the_cache(cache, tmp_path):
    src = tmp_path / "data" / "kleb.fa.gz"
    src.parent.mkdir()
    src.write_bytes(KLEBSIELLA.read_bytes())
    fa = IndexedFasta(src)
    assert fa.compression == "plain" and str(fa.path).startswith(str(cache))
    check_random_fetches(fa, records(src))
    assert sorted(os.listdir(src.parent)) == ["kleb.fa.gz"]       # nothing next to the user's file
    mtime = fa.path.stat().st_mtime_ns
    again = IndexedFasta(src)
    assert again.path == fa.path and again.path.stat().st_mtime_ns == mtime
    assert not [p for p in cache.rglob("*.tmp")]


def test_bgzip_is_read_in_place(cache, tmp_path):
    ref = records(VIBRIO)
    plain = tmp_path / "vibrio.fa"
    write_fasta(plain, ref, 60)
    src = tmp_path / "vibrio.fa.gz"
    with open(plain, "rb") as f, bgzf.BgzfWriter(str(src), "wb") as out:
        out.write(f.read())
    plain.unlink()
    fa = IndexedFasta(src)
    assert fa.compression == "bgzip" and fa.path == src
    check_random_fetches(fa, ref, n=50)
    assert sorted(os.listdir(tmp_path)) == ["cache", "vibrio.fa.gz", "vibrio.fa.gz.fai", "vibrio.fa.gz.gzi"]


def test_plain_fasta_index_and_stale_index(cache, tmp_path):
    ref = records(VIBRIO)
    src = tmp_path / "vibrio.fa"
    write_fasta(src, ref, 61)
    fa = IndexedFasta(src)
    assert fa.path == src and (tmp_path / "vibrio.fa.fai").exists()
    check_random_fetches(fa, ref, n=50)
    # The FASTA changes after indexing: the old .fai is stale and must be rebuilt, with a warning.
    chr2 = list(ref)[1]
    ref[chr2] = ref[chr2][:500_000]
    write_fasta(src, ref, 61)
    old = time.time() - 100
    os.utime(tmp_path / "vibrio.fa.fai", (old, old))
    with pytest.warns(UserWarning, match="older than"):
        fa = IndexedFasta(src)
    assert fa.contigs[chr2] == 500_000
    check_random_fetches(fa, ref, n=50)


@pytest.mark.parametrize("bgzip", [False, True])
def test_irregular_line_widths_are_rewrapped_into_the_cache(cache, tmp_path, bgzip):
    ref = records(KLEBSIELLA)
    src = tmp_path / "ragged.fa"
    write_fasta(src, ref, lambda k: 50 + (k * 7) % 31)
    if bgzip:
        with open(src, "rb") as f, bgzf.BgzfWriter(str(src) + ".gz", "wb") as out:
            out.write(f.read())
        src.unlink()
        src = tmp_path / "ragged.fa.gz"
    with pytest.warns(UserWarning, match="irregular line widths"):
        fa = IndexedFasta(src)
    assert str(fa.path).startswith(str(cache))
    assert sorted(os.listdir(tmp_path)) == ["cache", src.name]     # no stray index next to the input
    check_random_fetches(fa, ref, n=100)


def test_case_is_preserved(cache, tmp_path):
    ref = {name: seq.lower() if i % 2 else seq for i, (name, seq) in enumerate(records(KLEBSIELLA).items())}
    src = tmp_path / "soft.fa"
    write_fasta(src, ref, 70)
    check_random_fetches(IndexedFasta(src), ref, n=30)


def test_missing_and_empty_files(cache, tmp_path):
    with pytest.raises(FastaError, match="not found.*nope.fa"):
        IndexedFasta(tmp_path / "nope.fa")
    (tmp_path / "empty.fa").write_text("")
    with pytest.raises(FastaError, match="empty.fa: the file is empty"):
        IndexedFasta(tmp_path / "empty.fa")


@pytest.mark.parametrize("gz", [False, True])
def test_not_fasta(cache, tmp_path, gz):
    seq = next(iter(records(VIBRIO).values()))[:1000]
    text = f"; a comment is fine\n{seq[:70]}\n{seq[70:140]}\n"
    src = tmp_path / ("raw.txt.gz" if gz else "raw.txt")
    src.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    with pytest.raises(FastaError, match=r"raw.txt(.gz)?: (line 2: )?.*not a FASTA file|Unexpected text.*line 2"):
        IndexedFasta(src)


@pytest.mark.parametrize("gz", [False, True])
def test_empty_record(cache, tmp_path, gz):
    seq = next(iter(records(VIBRIO).values()))[:1000]
    text = f">first\n{seq[:500]}\n>hollow\n>third\n{seq[500:]}\n"
    src = tmp_path / ("e.fa.gz" if gz else "e.fa")
    src.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    with pytest.raises(FastaError, match=r"e.fa(.gz)?: (line 3: )?record 'hollow' is empty"):
        IndexedFasta(src)


@pytest.mark.parametrize("gz", [False, True])
def test_invalid_character_names_contig_and_offset(cache, tmp_path, gz):
    ref = records(VIBRIO)
    rng = np.random.default_rng(3)
    offset = int(rng.integers(100_000, 1_000_000))
    chr2 = list(ref)[1]
    ref[chr2] = ref[chr2][:offset] + "X" + ref[chr2][offset + 1:]
    src = tmp_path / "bad.fa"
    write_fasta(src, ref, 70)
    if gz:
        src.with_suffix(".fa.gz").write_bytes(gzip.compress(src.read_bytes(), compresslevel=1))
        src.unlink()
        src = src.with_suffix(".fa.gz")
    with pytest.raises(FastaError, match=rf"bad.fa.*'X' in contig {re.escape(repr(chr2))} at offset {offset}\b"):
        IndexedFasta(src)


def test_bundled_files_are_valid_and_complete(cache):
    # Every bundled genome opens, and its lengths match the manifest (total_bp column).
    import csv
    from longseq.datamodules.genome import ASSETS
    with open(ASSETS / "manifest.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for row in rows:
            fa = IndexedFasta(ASSETS / row["file"])
            assert len(fa.contigs) == int(row["records"]) and sum(fa.contigs.values()) == int(row["total_bp"])
    assert bundled_genome().exists()


@pytest.mark.parametrize("fmt", ["genbank", "embl"])
def test_genbank_and_embl_are_converted_into_the_cache(cache, tmp_path, fmt):
    from Bio.Seq import Seq
    from Bio.SeqRecord import SeqRecord
    ref = {name: seq for name, seq in list(records(KLEBSIELLA).items())[1:4]}    # three plasmids
    src = tmp_path / f"plasmids.{fmt}.gz"
    with gzip.open(src, "wt") as f:
        SeqIO.write([SeqRecord(Seq(seq), id=name, name=name[:16], description="plasmid",
                               annotations={"molecule_type": "DNA"}) for name, seq in ref.items()], f, fmt)
    fa = IndexedFasta(src)
    assert str(fa.path).startswith(str(cache))
    check_random_fetches(fa, ref, n=30)
