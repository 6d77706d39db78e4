"""MambaConfig, the mixer/backbone, LM and classifier heads, recurrent step and save/load."""
import gzip
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import longseq
from longseq import MambaClassifier, MambaConfig, MambaLM, NucleotideTokenizer
from longseq.heads import load_pretrained

ECOLI = Path(longseq.__file__).parent / "assets" / "dna" / "species" / "Escherichia_coli" / "K12_MG1655.fa.gz"


def tiny(**kw):
    base = dict(d_model=32, n_layer=2, vocab_size=8)
    base.update(kw)
    return MambaConfig(**base)


def test_mamba_ssm_initialisation():
    torch.manual_seed(0)
    cfg = tiny(n_layer=4, d_state=16, dt_min=0.001, dt_max=0.1)
    model = MambaLM(cfg)
    mixer = model.backbone.layers[0].mixer
    # A = -[1..d_state] for every channel; D = 1.
    assert torch.allclose(-torch.exp(mixer.A_log), -torch.arange(1, 17.0).expand(cfg.d_inner, 16))
    assert torch.equal(mixer.D, torch.ones(cfg.d_inner))
    # softplus(dt bias) lies in [dt_min, dt_max]: the bias is the inverse softplus of the sampled dt.
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 0.001 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert mixer.dt_rank == math.ceil(32 / 16) and mixer.d_inner == 64
    # out_proj rescaled by 1/sqrt(n_layer): kaiming-uniform bound sqrt(1/fan_in), divided by 2.
    bound = math.sqrt(1 / cfg.d_inner) / math.sqrt(cfg.n_layer)
    assert mixer.out_proj.weight.abs().max() <= bound
    assert mixer.out_proj.weight.abs().max() > 0.8 * bound
    assert model.lm_head.weight is model.backbone.embedding.weight
    assert model.backbone.embedding.weight.shape[0] == cfg.padded_vocab_size
    assert abs(model.backbone.embedding.weight.std().item() - 0.02) < 0.005


def test_padded_vocab_and_logit_shape():
    cfg = tiny(vocab_size=259)
    assert cfg.padded_vocab_size == 264
    out = MambaLM(cfg)(torch.randint(0, 259, (2, 9)))
    assert out.shape == (2, 9, 259)


@pytest.mark.parametrize("kw", [dict(), dict(rms_norm=False), dict(residual_in_fp32=False), dict(d_conv=2, d_state=4)])
def test_step_equals_parallel_forward(kw):
    torch.manual_seed(1)
    model = MambaLM(tiny(**kw)).eval()
    ids = torch.randint(0, 8, (3, 70))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_inference_cache(3)
        stepped = torch.stack([model.step(ids[:, t], cache) for t in range(ids.shape[1])], dim=1)
    assert cache.seqlen_offset == 70
    assert (stepped - full).abs().max().item() < 1e-4


def test_prefill_then_step_and_pieces_equal_whole():
    torch.manual_seed(2)
    model = MambaLM(tiny()).eval()
    ids = torch.randint(0, 8, (2, 90))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_inference_cache(2)
        pieces = [model(ids[:, :1], cache), model(ids[:, 1:40], cache), model(ids[:, 40:89], cache)]
        last = model.step(ids[:, 89], cache)
    assert (torch.cat(pieces, 1) - full[:, :89]).abs().max().item() < 1e-4
    assert (last - full[:, 89]).abs().max().item() < 1e-4


def test_save_load_round_trip_bit_for_bit(tmp_path):
    torch.manual_seed(3)
    model = MambaLM(tiny())
    with torch.no_grad():  # move weights away from their initial values
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(tmp_path / "m", metadata={"tokenizer": "nucleotide"})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded, meta = load_pretrained(tmp_path / "m")
    assert meta == {"tokenizer": "nucleotide"}
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight
    ids = torch.randint(0, 8, (2, 20))
    assert torch.equal(model(ids), loaded(ids))


def test_classifier_round_trip_and_pooling(tmp_path):
    torch.manual_seed(4)
    for pooling in ("last", "mean"):
        clf = MambaClassifier(tiny(bidirectional=True), num_classes=3, pooling=pooling)
        ids = torch.randint(0, 5, (4, 33))
        logits = clf(ids)
        assert logits.shape == (4, 3)
        clf.save_pretrained(tmp_path / pooling)
        again = MambaClassifier.from_pretrained(tmp_path / pooling)
        assert again.pooling == pooling and again.num_classes == 3
        assert torch.equal(again(ids), logits)
    with pytest.raises(ValueError, match="MambaLM"):
        MambaLM.from_pretrained(tmp_path / "last")


def test_bidirectional_sees_the_future():
    torch.manual_seed(5)
    clf = MambaClassifier(tiny(bidirectional=True), num_classes=2, pooling="mean")
    ids = torch.randint(0, 4, (1, 20))
    h1 = clf.backbone(ids)
    ids2 = ids.clone()
    ids2[0, -1] = (ids2[0, -1] + 1) % 4
    h2 = clf.backbone(ids2)
    assert not torch.allclose(h1[0, 0], h2[0, 0])  # position 0 changed by the last token
    causal = MambaLM(tiny())
    assert torch.allclose(causal.backbone(ids)[0, :-1], causal.backbone(ids2)[0, :-1])
    with pytest.raises(ValueError, match="cache"):
        clf.backbone.allocate_inference_cache(1)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="d_model"):
        MambaConfig(d_model=0, n_layer=1, vocab_size=8)
    with pytest.raises(ValueError, match="unknown MambaConfig keys"):
        MambaConfig.from_dict({"d_model": 8, "n_layer": 1, "vocab_size": 8, "d_modle": 3})
    with pytest.raises(ValueError, match="input_ids"):
        MambaLM(tiny())(torch.rand(2, 5))
    with pytest.raises(FileNotFoundError, match="config.json"):
        MambaLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="config.json"):
        MambaLM.from_pretrained(tmp_path)


def read_first_record(path: Path, n: int) -> str:
    chunks, total = [], 0
    with gzip.open(path, "rt") as fh:
        assert fh.readline().startswith(">")
        for line in fh:
            if line.startswith(">"):
                break
            chunks.append(line.strip())
            total += len(chunks[-1])
            if total >= n:
                break
    return "".join(chunks)[:n]


def test_training_on_bundled_genome_lowers_held_out_loss():
    torch.manual_seed(6)
    tok = NucleotideTokenizer()
    ids = tok.encode(read_first_record(ECOLI, 300_000))
    train, held = ids[:250_000], ids[250_000:]
    L, batch = 128, 8
    held_windows = held[: (len(held) // (L + 1)) * (L + 1)].view(-1, L + 1)[:16]
    model = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=tok.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def held_loss():
        with torch.no_grad():
            logits = model(held_windows[:, :-1])
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), held_windows[:, 1:].reshape(-1)).item()

    before = held_loss()
    for _ in range(50):
        starts = torch.randint(0, len(train) - L - 1, (batch,))
        w = torch.stack([train[s: s + L + 1] for s in starts.tolist()])
        logits = model(w[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_loss()
    assert after < before - 0.3, (before, after)
    assert after / math.log(2) < 2.05  # near or below 2 bits per base on held-out E. coli


def test_step_follows_weight_updates():
    # The decoding step caches -exp(A_log); an in-place update of A_log must be seen at once.
    torch.manual_seed(7)
    model = MambaLM(tiny()).eval()
    ids = torch.randint(0, 8, (2, 12))
    with torch.no_grad():
        cache = model.allocate_inference_cache(2)
        for t in range(12):
            model.step(ids[:, t], cache)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        full = model(ids)
        cache = model.allocate_inference_cache(2)
        stepped = torch.stack([model.step(ids[:, t], cache) for t in range(12)], dim=1)
    assert (stepped - full).abs().max().item() < 1e-4
