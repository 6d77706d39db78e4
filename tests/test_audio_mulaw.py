"""Mu-law / linear quantisation of waveforms: round-trip error within the quantisation bound,
and agreement with torchaudio where it imports. Inputs: fresh random waveforms of awkward sizes
and the real bundled audio."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from longseq.datamodules.audio import bundled_audio
from longseq.tokenizers import MuLawTokenizer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def compand(x, mu):
    return np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)


def expand(y, mu):
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu


def roundtrip_bound(x: np.ndarray, bits: int, mu: float, quantization: str) -> np.ndarray:
    """Largest error decode(encode(x)) can have for each sample, from the quantiser's geometry.

    Encoding rounds y = F(x) (F = mu-law compander, or identity) to the nearest of 2**bits levels
    spaced d = 2 / (2**bits - 1) over [-1, 1], so the decoded value lies in
    [F^-1(y - d/2), F^-1(y + d/2)] (F^-1 is increasing): the bound is the larger distance from x
    to the ends of that interval, computed here in float64, independently of the tokenizer."""
    x = np.clip(x.astype(np.float64), -1, 1)
    d = 2.0 / (2 ** bits - 1)
    f = (lambda v: compand(v, mu)) if quantization == "mu-law" else (lambda v: v)
    finv = (lambda v: expand(v, mu)) if quantization == "mu-law" else (lambda v: v)
    y = f(x)
    lo, hi = finv(np.clip(y - d / 2, -1, 1)), finv(np.clip(y + d / 2, -1, 1))
    return np.maximum(hi - x, x - lo)


def real_waveform(n: int, seed: int) -> np.ndarray:
    """n samples of the bundled piano from a random position (real audio, not noise)."""
    path = bundled_audio()["piano"]
    start = np.random.default_rng(seed).integers(0, sf.info(str(path)).frames - n)
    x, _ = sf.read(str(path), start=start, frames=n, dtype="float32")
    return x


@pytest.mark.parametrize("bits,mu,quantization", [(8, 255, "mu-law"), (4, 15, "mu-law"),
                                                  (10, 1023, "mu-law"), (8, 255, "linear"),
                                                  (5, 31, "linear")])
@pytest.mark.parametrize("n", [1, 7, 1023, 40_001])
def test_roundtrip_within_quantisation_bound(bits, mu, quantization, n):
    rng = np.random.default_rng(1000 * bits + n)
    tok = MuLawTokenizer(bits=bits, mu=mu, quantization=quantization)
    waves = [rng.uniform(-1, 1, n).astype(np.float32),                # full scale
             (rng.standard_normal(n) * 0.02).clip(-1, 1).astype(np.float32),  # quiet: mu-law's regime
             real_waveform(n, seed=n + bits)]
    for x in waves:
        ids = tok.encode(torch.from_numpy(x))
        assert ids.dtype == torch.int64 and ids.shape == (n,)
        assert int(ids.min()) >= 0 and int(ids.max()) < 2 ** bits
        err = np.abs(tok.decode(ids).numpy().astype(np.float64) - x)
        bound = roundtrip_bound(x, bits, mu, quantization)
        # 1e-6: float32 rounding of the decoded value; the bound itself is a half level step
        assert (err <= bound + 1e-6).all(), f"max excess {np.max(err - bound)}"
        # the bound is not vacuous: the error reaches its scale, and two levels off breaks it
        if n > 1000:
            assert err.max() > 0.5 * bound.max()
        off = tok.decode(torch.where(ids < 2 ** (bits - 1), ids + 2, ids - 2)).numpy()
        assert (np.abs(off - x) > bound + 1e-6).all()


def test_global_bound_and_levels():
    """The worst case over [-1, 1] is the half step next to full scale; mu-law's step near zero is
    mu times finer than linear's (the reason it is used for audio)."""
    tok = MuLawTokenizer()
    x = np.linspace(-1, 1, 2_000_001)
    err = np.abs(tok.decode(tok.encode(torch.from_numpy(x))).numpy() - x)
    # the widest half-cell is the top one: F^-1(1) - F^-1(1 - d/2), F^-1 being convex there
    worst = 1 - expand(1 - 1 / 255, 255)
    assert err.max() <= worst + 1e-6
    assert err.max() >= 0.99 * worst
    # 256 levels: none at 0; the innermost cells are y in [0, 2/255] decoding to y = 1/255
    inner = np.abs(x) <= expand(2 / 255, 255)
    inner_worst = expand(2 / 255, 255) - expand(1 / 255, 255)
    assert err[inner].max() <= inner_worst + 1e-9
    assert err[inner].max() >= 0.99 * inner_worst
    assert inner_worst < (1 / 255) / 40  # linear 8-bit's half step is 1/255


def test_matches_torchaudio_where_it_imports():
    try:
        import torchaudio.functional as F
    except Exception as e:  # torchaudio 2.11 fails to load on torch 2.13 (DESIGN §5)
        pytest.skip(f"torchaudio does not import here: {type(e).__name__}")
    rng = np.random.default_rng(7)
    x = torch.from_numpy(np.concatenate([rng.uniform(-1, 1, 100_003), real_waveform(50_000, 3)]).astype(np.float32))
    tok = MuLawTokenizer()
    ref = F.mu_law_encoding(x, 256)
    assert torch.equal(tok.encode(x), ref)
    ids = torch.from_numpy(rng.integers(0, 256, 10_007))
    torch.testing.assert_close(tok.decode(ids), F.mu_law_decoding(ids, 256).float(), rtol=0, atol=1e-6)


def test_pad_id_decodes_to_silence_and_vocab():
    tok = MuLawTokenizer(bits=8)
    assert tok.levels == 256 and tok.pad_id == 256 and tok.vocab_size == 257
    assert float(tok.decode(torch.tensor([tok.pad_id]))[0]) == 0.0
    assert math.isclose(float(tok.decode(torch.tensor([255]))[0]), 1.0, abs_tol=1e-6)
