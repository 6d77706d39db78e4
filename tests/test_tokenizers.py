"""Tokenizers: round trips, IUPAC -> N, lowercase, reverse complement, strict errors, mu-law bounds."""
import gzip
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import longseq
from longseq.tokenizers import ByteTokenizer, MuLawTokenizer, NucleotideTokenizer

ECOLI = Path(longseq.__file__).parent / "assets" / "dna" / "species" / "Escherichia_coli" / "K12_MG1655.fa.gz"


def real_dna(n=20000) -> str:
    with gzip.open(ECOLI, "rt") as fh:
        fh.readline()
        seq = []
        while sum(map(len, seq)) < n:
            seq.append(fh.readline().strip())
    return "".join(seq)[:n]


def test_round_trip_real_genome():
    tok = NucleotideTokenizer()
    seq = real_dna()
    ids = tok.encode(seq)
    assert ids.dtype == torch.int64 and ids.shape == (len(seq),)
    assert tok.decode(ids) == seq.upper()
    assert tok.decode(tok.encode(seq.encode())) == seq.upper()


def test_lowercase_iupac_and_rna():
    tok = NucleotideTokenizer()
    assert tok.encode("acgtn").tolist() == [0, 1, 2, 3, 4]
    assert tok.encode("RYSWKMBDHVNryswkmbdhvn").tolist() == [4] * 22
    assert tok.encode("Uu").tolist() == [3, 3]
    assert tok.decode(tok.encode("AcRt")) == "ACNT"


def test_reverse_complement_matches_string_reverse_complement():
    tok = NucleotideTokenizer()
    seq = real_dna(5000)
    comp = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}
    expected = "".join(comp[c] for c in reversed(seq.upper()))
    assert tok.decode(tok.reverse_complement(tok.encode(seq))) == expected
    batch = torch.stack([tok.encode("ACGTN"), tok.encode("AACCG")])
    assert [tok.decode(r) for r in tok.reverse_complement(batch)] == ["NACGT", "CGGTT"]
    specials = torch.tensor([tok.bos_id, 0, tok.pad_id])
    assert tok.reverse_complement(specials).tolist() == [tok.pad_id, 3, tok.bos_id]


@pytest.mark.parametrize("bad,pos", [("ACGTX", 4), ("E", 0), ("ACG T", 3), ("AC-GT", 2), ("ACGT\n", 4)])
def test_strict_error_names_position(bad, pos):
    tok = NucleotideTokenizer()
    with pytest.raises(ValueError, match=f"position {pos}"):
        tok.encode(bad)
    assert tok.encode.__self__.strict
    lenient = NucleotideTokenizer(strict=False).encode(bad)
    assert lenient[pos].item() == NucleotideTokenizer.n_id


def test_non_ascii_is_reported():
    with pytest.raises(ValueError, match="position 2"):
        NucleotideTokenizer().encode("ACé")


def test_decode_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="ids"):
        NucleotideTokenizer().decode(torch.tensor([0, 9]))


def test_byte_round_trip():
    tok = ByteTokenizer()
    data = bytes(range(256)) * 3
    ids = tok.encode(data)
    assert ids.max() == 255 and tok.decode(ids) == data
    assert tok.decode(torch.tensor([104, tok.bos_id, 105])) == b"hi"
    assert tok.encode("é").tolist() == [0xC3, 0xA9]
    assert tok.vocab_size == 259


def torchaudio_style_mu_law(x: torch.Tensor, channels: int) -> torch.Tensor:
    # torchaudio.functional.mu_law_encoding, written out (torchaudio does not load with torch 2.13).
    mu = channels - 1.0
    x_mu = torch.sign(x) * torch.log1p(mu * torch.abs(x)) / torch.log1p(torch.tensor(mu))
    return ((x_mu + 1) / 2 * mu + 0.5).to(torch.int64)


def test_mu_law_matches_torchaudio_formula_and_bound():
    tok = MuLawTokenizer()
    x = torch.rand(100_000) * 2 - 1
    ids = tok.encode(x)
    assert ids.min() >= 0 and ids.max() <= 255
    assert torch.equal(ids, torchaudio_style_mu_law(x, 256))
    try:
        import torchaudio.functional as AF
    except Exception:  # torchaudio 2.11 does not load with torch 2.13 (DESIGN §5)
        pass
    else:
        assert torch.equal(ids, AF.mu_law_encoding(x, 256))
        assert torch.allclose(tok.decode(ids), AF.mu_law_decoding(ids, 256))
    # round-trip error is at most half a quantisation step in the companded domain, mapped back:
    # |x - dec(enc(x))| <= |d expand / dy| * step/2 with expand(y) = ((1+mu)^|y| - 1)/mu.
    y = torch.sign(x) * torch.log1p(255 * x.abs()) / math.log1p(255)
    slope = torch.exp((y.abs() + 1 / 255) * math.log1p(255)) * math.log1p(255) / 255
    err = (tok.decode(ids) - x).abs()
    assert (err <= slope * (1 / 255) + 1e-6).all()


def test_linear_quantization_bound_and_pad():
    tok = MuLawTokenizer(bits=8, quantization="linear")
    x = torch.rand(10_000) * 2 - 1
    err = (tok.decode(tok.encode(x)) - x).abs()
    assert err.max() <= 1 / 255 + 1e-6
    assert tok.decode(torch.tensor([tok.pad_id])).item() == 0.0
    assert tok.vocab_size == 257


def test_mu_law_rejects_nan_and_ints():
    tok = MuLawTokenizer()
    with pytest.raises(ValueError, match="index 2"):
        tok.encode(torch.tensor([0.0, 0.1, float("nan")]))
    with pytest.raises(ValueError, match="floating"):
        tok.encode(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="quantization"):
        MuLawTokenizer(quantization="log")
