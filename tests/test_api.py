"""longseq.load and the pipelines: classify, score, embed, generate (DNA and audio), errors."""
import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import longseq
from longseq import MambaClassifier, MambaConfig, MambaLM, MuLawTokenizer, NucleotideTokenizer
from longseq.api import Audio, AudioPipeline, ClassifierPipeline, DNAPipeline, read_fasta

ASSETS = Path(longseq.__file__).parent / "assets"
GENOMES = {"Escherichia_coli": ASSETS / "dna/species/Escherichia_coli/K12_MG1655.fa.gz",
           "Staphylococcus_aureus": ASSETS / "dna/species/Staphylococcus_aureus/COL.fa.gz",
           "Helicobacter_pylori": ASSETS / "dna/species/Helicobacter_pylori/G27.fa.gz"}
PIANO = ASSETS / "audio/piano_16k/bwv846.flac"
DNA_TOK = {"type": "NucleotideTokenizer", "kwargs": {}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def genome_bases(path: Path, start: int, n: int) -> str:
    """n real bases from ``start`` of the first record of a bundled genome (reads only what it needs)."""
    out, have = [], 0
    with gzip.open(path, "rt") as f:
        next(f)
        for line in f:
            if line.startswith(">"):
                break
            out.append(line.strip())
            have += len(out[-1])
            if have >= start + n:
                break
    return "".join(out)[start:start + n]


def fresh(seed, cls=MambaLM, **kw):
    torch.manual_seed(seed)
    cfg = dict(d_model=32, n_layer=2, vocab_size=8, d_state=8)
    cfg.update(kw.pop("cfg", {}))
    model = cls(MambaConfig(**cfg), **kw).eval()
    with torch.no_grad():  # logits of order 1, so probabilities differ visibly between inputs
        for name, p in model.named_parameters():
            if p.dim() > 1 and not name.endswith("A_log"):
                p.mul_(3)
    return model


def lightning_checkpoint(model, metadata, path):
    """The format longseq's tasks write: weights under 'model.' plus checkpoint['longseq']."""
    ckpt = {"epoch": 1, "global_step": 10, "pytorch-lightning_version": "2.6.6",
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "longseq": {"architecture": type(model).__name__, "config": model.config.to_dict(),
                        "head": model._head_config(), "metadata": metadata}}
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def reads():
    """Real reads of three species with awkward, unequal lengths (one soft-masked, one with an N)."""
    r = []
    for k, (species, path) in enumerate(GENOMES.items()):
        for j, n in enumerate((97, 300, 41)):
            seq = genome_bases(path, 20_000 + 5000 * j, n)
            if (k, j) == (0, 1):
                seq = seq[:100].lower() + seq[100:]
            if (k, j) == (1, 0):
                seq = seq[:50] + "N" + seq[51:]
            r.append((f"{species}_{j}", seq))
    return r


def direct_probs(model, seq):
    """Independent reference: the model's own forward on one whole sequence."""
    with torch.no_grad():
        return model(NucleotideTokenizer().encode(seq)[None]).softmax(-1)[0]


# ------------------------------------------------------------------------------------- classify

@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_classify_fasta_path_equals_sequences_equals_direct_forward(tmp_path, reads, pooling, monkeypatch):
    model = fresh(0, MambaClassifier, num_classes=3, pooling=pooling)
    names = list(GENOMES)
    model.save_pretrained(tmp_path / "clf", {"task": "species", "tokenizer": DNA_TOK, "class_names": names})
    pipe = longseq.load(tmp_path / "clf")
    assert isinstance(pipe, ClassifierPipeline) and pipe.class_names == names
    fasta = tmp_path / "reads.fa.gz"  # gzip, wrapped at 60 columns
    with gzip.open(fasta, "wt") as f:
        for name, seq in reads:
            f.write(f">{name} some description\n" + "\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)) + "\n")
    from_path = pipe.classify(str(fasta), batch_size=4, chunk_size=37)
    from_seqs = pipe.classify([s for _, s in reads], batch_size=4, chunk_size=37)
    monkeypatch.setattr(longseq.api, "FASTA_GROUP", 4)  # a large read file is streamed in groups
    streamed = pipe.classify(fasta, batch_size=4, chunk_size=37)
    assert streamed.names == from_path.names and (streamed.probs - from_seqs.probs).abs().max() < 1e-6
    assert from_path.names == [n for n, _ in reads] and from_path.class_names == names
    assert torch.allclose(from_path.probs, from_seqs.probs, atol=0, rtol=0)
    expected = torch.stack([direct_probs(model, s) for _, s in reads])
    assert (from_seqs.probs - expected).abs().max() < 1e-5
    assert (from_seqs.probs.std(0) > 1e-3).all()  # the inputs really are told apart
    # batch size and chunking change nothing
    other = pipe.classify([s for _, s in reads], batch_size=1, chunk_size=10_000)
    assert (other.probs - from_seqs.probs).abs().max() < 1e-5
    single = pipe.classify(reads[2][1])
    assert single.probs.shape == (1, 3) and (single.probs[0] - expected[2]).abs().max() < 1e-5
    table = from_path.to_tsv(tmp_path / "out.tsv").splitlines()
    assert table[0].split("\t") == ["name", "predicted", *names] and len(table) == len(reads) + 1
    assert (tmp_path / "out.tsv").read_text().splitlines() == table


def test_classify_reverse_complement_average(reads):
    model = fresh(1, MambaClassifier, num_classes=3)
    pipe = ClassifierPipeline(model, {"task": "species", "tokenizer": DNA_TOK})
    seqs = [s for _, s in reads[:4]]
    got = pipe.classify(seqs, rc_average=True).probs
    comp = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}
    for s, row in zip(seqs, got):
        rc = "".join(comp[b] for b in reversed(s.upper()))
        assert (row - (direct_probs(model, s) + direct_probs(model, rc)) / 2).abs().max() < 1e-5


def test_bidirectional_classifier_whole_and_windowed(reads):
    model = fresh(2, MambaClassifier, num_classes=3, pooling="mean", cfg=dict(bidirectional=True))
    pipe = ClassifierPipeline(model, {"task": "species", "tokenizer": DNA_TOK, "class_names": list("abc")})
    seqs = [s for _, s in reads]
    whole = pipe.classify(seqs, batch_size=3).probs
    assert (whole - torch.stack([direct_probs(model, s) for s in seqs])).abs().max() < 1e-5
    # longer than chunk_size: windows classified whole, probabilities averaged by window length
    s = seqs[1]
    windowed = pipe.classify([s], chunk_size=128).probs[0]
    parts = [s[i:i + 128] for i in range(0, len(s), 128)]
    ref = sum(len(p) * direct_probs(model, p) for p in parts) / len(s)
    assert (windowed - ref).abs().max() < 1e-5


# --------------------------------------------------------------------------------- score / embed

def test_chunked_scoring_equals_whole_sequence_and_direct_log_softmax(tmp_path):
    model = fresh(3)
    model.save_pretrained(tmp_path / "lm", {"task": "next_base", "tokenizer": DNA_TOK})
    pipe = longseq.load(tmp_path / "lm")
    assert isinstance(pipe, DNAPipeline)
    seq = genome_bases(GENOMES["Escherichia_coli"], 100_000, 2000)
    seq = seq[:700] + "NNN" + seq[703:]
    whole = pipe.score(seq, chunk_size=1 << 16)
    chunked = pipe.score(seq, chunk_size=97)
    assert (whole.log_likelihood.isnan() == chunked.log_likelihood.isnan()).all()
    ok = ~whole.log_likelihood.isnan()
    assert (whole.log_likelihood[ok] - chunked.log_likelihood[ok]).abs().max() < 1e-4
    assert abs(whole.bits_per_base - chunked.bits_per_base) < 1e-5
    # reference: log_softmax of one forward, N targets (positions 700..702) and position 0 unscored
    ids = NucleotideTokenizer().encode(seq)
    with torch.no_grad():
        ref = torch.log_softmax(model(ids[None])[0, :-1], -1).gather(1, ids[1:, None])[:, 0]
    keep = ids[1:] != 4
    assert whole.n_scored == int(keep.sum()) == len(seq) - 1 - 3
    assert torch.isnan(whole.log_likelihood[0]) and whole.log_likelihood[701].isnan()
    assert (whole.log_likelihood[1:][keep] - ref[keep]).abs().max() < 1e-4
    assert abs(whole.bits_per_base - float(-ref[keep].mean() / math.log(2))) < 1e-4
    assert [r.n_scored for r in pipe.score([seq[:10], seq[:20]])] == [9, 19]


def test_embed_mean_and_last_chunked_equal_backbone():
    model = fresh(4)
    pipe = DNAPipeline(model, {"task": "next_base", "tokenizer": DNA_TOK})
    seqs = [genome_bases(GENOMES["Staphylococcus_aureus"], 3000, n) for n in (130, 77)]
    with torch.no_grad():
        hidden = [model.backbone(NucleotideTokenizer().encode(s)[None])[0] for s in seqs]
    mean = pipe.embed(seqs, pooling="mean", chunk_size=50)
    last = pipe.embed(seqs, pooling="last", chunk_size=50)
    assert mean.shape == (2, 32)
    assert (mean - torch.stack([h.mean(0) for h in hidden])).abs().max() < 1e-5
    assert (last - torch.stack([h[-1] for h in hidden])).abs().max() < 1e-5
    assert (pipe.embed(seqs[0]) - mean[0]).abs().max() < 1e-5


# ------------------------------------------------------------------------------------- generate

def test_dna_generate_strings_seeds_and_prompts():
    model = fresh(5)
    pipe = DNAPipeline(model, {"task": "next_base", "tokenizer": DNA_TOK})
    prompt = genome_bases(GENOMES["Escherichia_coli"], 5000, 50)
    a = pipe.generate(prompt, n=120, seed=1)
    assert isinstance(a, str) and len(a) == 120 and set(a) <= set("ACGT")
    assert a == pipe.generate(prompt, n=120, seed=1) and a != pipe.generate(prompt, n=120, seed=2)
    both = pipe.generate([prompt, prompt[:7]], n=30, seed=3, temperature=0.8, top_k=3)
    assert [len(x) for x in both] == [30, 30]
    # each continuation equals that prompt's greedy continuation computed alone
    greedy = pipe.generate([prompt, prompt[:7]], n=25, temperature=0)
    assert greedy == [pipe.generate(prompt, n=25, temperature=0), pipe.generate(prompt[:7], n=25, temperature=0)]
    free = pipe.generate(n=40, seed=4, num_samples=3)
    assert len(free) == 3 and all(len(x) == 40 and set(x) <= set("ACGT") for x in free)
    with pytest.raises(ValueError, match="prompt 0: invalid nucleotide 'X' at position 2"):
        pipe.generate("ACX", n=5)


def test_audio_generate_stream_save_and_score(tmp_path):
    model = fresh(6, cfg=dict(vocab_size=257))
    model.save_pretrained(tmp_path / "audio", {"task": "waveform", "sample_rate": 16000,
                                              "tokenizer": {"type": "MuLawTokenizer", "kwargs": {"bits": 8}}})
    pipe = longseq.load(tmp_path / "audio")
    assert isinstance(pipe, AudioPipeline) and pipe.sample_rate == 16000
    chunks = []
    audio = pipe.generate(seconds=0.01, seed=0, callback=chunks.append)
    wave, rate = audio
    assert rate == 16000 and wave.shape == (160,) and wave.dtype == torch.float32 and wave.abs().max() <= 1
    assert torch.equal(torch.cat(chunks, -1)[0], wave)
    tok = MuLawTokenizer()
    assert int(tok.encode(wave).max()) <= 255  # never the pad id
    # a real prompt: 0.02 s of the bundled piano, from a WAV cut from it, and as a tensor
    clip, sr = sf.read(PIANO, frames=320, start=16000 * 5, dtype="float32")
    sf.write(tmp_path / "prompt.wav", clip, 16000)
    p1 = pipe.generate(n_samples=50, prompt_wav=tmp_path / "prompt.wav", temperature=0)
    p2 = pipe.generate(n_samples=50, prompt_wav=torch.from_numpy(clip), temperature=0)
    assert torch.equal(p1.waveform, p2.waveform)
    batch = pipe.generate(seconds=0.002, num_samples=3, seed=1)
    assert batch.waveform.shape == (3, 32)
    for suffix in (".wav", ".flac"):
        path = audio.save(tmp_path / f"out{suffix}")
        back, sr = sf.read(path, dtype="float32")
        assert sr == 16000 and np.abs(back - wave.numpy()).max() <= 1 / 32768 + 1e-7
    first = batch.save(tmp_path / "batch.wav")
    assert first.name == "batch_0.wav" and (tmp_path / "batch_2.wav").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    sc = pipe.score(tmp_path / "prompt.wav", chunk_size=100)
    assert sc.n_scored == 319 and 0 < sc.bits_per_sample < 20
    assert abs(sc.bits_per_sample - pipe.score(clip).bits_per_sample) < 1e-5
    sf.write(tmp_path / "fast.wav", clip, 32000)  # a file at another rate is resampled to the model's
    assert pipe.score(tmp_path / "fast.wav").n_scored == 160 - 1
    (tmp_path / "junk.wav").write_bytes(b"RIFF1234WAVEjunk")
    with pytest.raises(ValueError, match="junk.wav"):
        pipe.generate(n_samples=5, prompt_wav=tmp_path / "junk.wav")


# ---------------------------------------------------------------------------- load and its errors

def test_lightning_checkpoint_and_directory_load_the_same_pipeline(tmp_path, reads):
    model = fresh(7, MambaClassifier, num_classes=3)
    meta = {"task": "species", "tokenizer": DNA_TOK, "class_names": ["x", "y", "z"]}
    ckpt = lightning_checkpoint(model, meta, tmp_path / "last.ckpt")
    model.save_pretrained(tmp_path / "dir", meta)
    a, b = longseq.load(ckpt), longseq.load(tmp_path / "dir", dtype=torch.float64)
    assert a.class_names == b.class_names == ["x", "y", "z"] and b.model.head.weight.dtype == torch.float64
    seqs = [s for _, s in reads[:5]]
    assert (a.classify(seqs).probs - b.classify(seqs).probs).abs().max() < 1e-5
    lm = fresh(8, cfg=dict(vocab_size=257))
    path = lightning_checkpoint(lm, {"task": "waveform", "sample_rate": 8000,
                                     "tokenizer": {"type": "MuLawTokenizer", "kwargs": {}}}, tmp_path / "a.ckpt")
    audio = longseq.load(path)
    assert isinstance(audio, AudioPipeline) and audio.sample_rate == 8000
    assert "AudioPipeline" in repr(audio)
    again = longseq.load(a.save_pretrained(tmp_path / "converted"))  # .ckpt -> portable directory
    assert again.class_names == a.class_names and torch.equal(again.model.head.weight, a.model.head.weight)


def test_load_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        longseq.load(tmp_path / "nowhere.ckpt")
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.ckpt: not a readable PyTorch checkpoint"):
        longseq.load(text)
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="plain.ckpt: not a longseq checkpoint"):
        longseq.load(tmp_path / "plain.ckpt")
    model = fresh(9)
    bad = lightning_checkpoint(model, {"task": "next_base"}, tmp_path / "bad.ckpt")
    ck = torch.load(bad, weights_only=True)
    ck["longseq"]["config"]["d_modle"] = 3
    torch.save(ck, tmp_path / "typo.ckpt")
    with pytest.raises(ValueError, match=r"typo.ckpt.*cannot build MambaLM.*d_modle"):
        longseq.load(tmp_path / "typo.ckpt")
    ck = torch.load(bad, weights_only=True)
    ck["longseq"]["config"]["d_model"] = 16
    torch.save(ck, tmp_path / "shape.ckpt")
    with pytest.raises(ValueError, match="shape.ckpt: weights do not fit the MambaLM.*size mismatch"):
        longseq.load(tmp_path / "shape.ckpt")
    ck = torch.load(bad, weights_only=True)
    ck["longseq"]["metadata"]["task"] = "species"
    torch.save(ck, tmp_path / "kind.ckpt")
    with pytest.raises(ValueError, match="kind.ckpt: task 'species' needs a MambaClassifier"):
        longseq.load(tmp_path / "kind.ckpt")
    model.save_pretrained(tmp_path / "tok", {"task": "next_base", "tokenizer": {"type": "Sentencepiece"}})
    with pytest.raises(ValueError, match="unknown tokenizer type 'Sentencepiece'"):
        longseq.load(tmp_path / "tok")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        longseq.load(tmp_path / "empty")


def test_fasta_errors_name_file_and_record(tmp_path, reads):
    pipe = ClassifierPipeline(fresh(10, MambaClassifier, num_classes=3), {"tokenizer": DNA_TOK})
    bad = tmp_path / "bad.fa"
    bad.write_text(f">good\n{reads[0][1]}\n>broken read\nACGTAC@GT\n")
    with pytest.raises(ValueError, match=r"bad.fa: record 'broken': invalid nucleotide '@' at position 6"):
        pipe.classify(bad)
    (tmp_path / "empty.fa").write_text("")
    with pytest.raises(ValueError, match="empty.fa: no FASTA records"):
        pipe.classify(tmp_path / "empty.fa")
    with pytest.raises(FileNotFoundError, match="missing.fa"):
        pipe.classify(str(tmp_path / "missing.fa"))
    with pytest.raises(FileNotFoundError, match="reads.txt: FASTA file not found"):
        pipe.classify("reads.txt")
    assert read_fasta(bad)[0] == ("good", reads[0][1])
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        pipe.classify(["ACGT", ""])


def test_audio_output_is_written_atomically(tmp_path):
    wave = torch.linspace(-1, 1, 100)
    with pytest.raises(ValueError, match=r"unknown audio format '.mp5'"):
        Audio(wave, 16000).save(tmp_path / "x.mp5")
    assert list(tmp_path.iterdir()) == []
