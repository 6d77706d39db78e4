"""`longseq generate` and `longseq classify` (longseq.cli_infer) on saved models and real data."""
import gzip
from pathlib import Path

import pytest
import soundfile as sf
import torch

import longseq
from longseq import MambaClassifier, MambaConfig, MambaLM
from longseq.cli_infer import main_classify, main_generate

ASSETS = Path(longseq.__file__).parent / "assets"
DNA_TOK = {"type": "NucleotideTokenizer", "kwargs": {}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def real_reads(n_reads=5, length=150):
    with gzip.open(ASSETS / "dna/species/Vibrio_cholerae/N16961_O1_El_Tor.fa.gz", "rt") as f:
        next(f)
        seq = "".join(line.strip() for _, line in zip(range(60), f))
    return [(f"read{i}", seq[i * 300:i * 300 + length - 7 * i]) for i in range(n_reads)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=16, n_layer=1, vocab_size=8, d_state=4)
    MambaLM(cfg).save_pretrained(root / "dna", {"task": "next_base", "tokenizer": DNA_TOK})
    MambaClassifier(cfg, 2).save_pretrained(root / "clf", {"task": "species", "tokenizer": DNA_TOK,
                                                           "class_names": ["vibrio", "other"]})
    MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=257, d_state=4)).save_pretrained(
        root / "audio", {"task": "waveform", "sample_rate": 16000, "tokenizer": {"type": "MuLawTokenizer"}})
    return root


def test_generate_dna_fasta_to_stdout_and_file(models, tmp_path, capsys):
    assert main_generate([str(models / "dna"), "--n", "170", "--seed", "3", "--prompt", "ACGTACGT",
                          "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(">generated_0 seed=3") and len("".join(out[1:])) == 170 and len(out[1]) == 80
    main_generate([str(models / "dna"), "--n", "170", "--seed", "3", "--prompt", "ACGTACGT", "-o",
                   str(tmp_path / "g.fa"), "--num-samples", "2", "--top-k", "2"])
    from longseq.api import read_fasta
    recs = read_fasta(tmp_path / "g.fa")
    assert [r[0] for r in recs] == ["generated_0", "generated_1"] and all(len(s) == 170 for _, s in recs)
    # a FASTA file as prompt: its first record
    (tmp_path / "p.fa").write_text(">p\nACGTTT\n")
    assert main_generate([str(models / "dna"), "--n", "5", "--prompt", str(tmp_path / "p.fa"), "--temperature", "0"]) == 0


def test_generate_audio_writes_wav(models, tmp_path, capsys):
    out = tmp_path / "clip.flac"
    assert main_generate([str(models / "audio"), "--seconds", "0.005", "-o", str(out), "--seed", "1",
                          "--top-p", "0.9"]) == 0
    wave, sr = sf.read(out)
    assert sr == 16000 and wave.shape == (80,)
    assert str(out) in capsys.readouterr().err


def test_classify_prints_tsv_and_writes_file(models, tmp_path, capsys):
    fasta = tmp_path / "reads.fa"
    fasta.write_text("".join(f">{n} desc\n{s}\n" for n, s in real_reads()))
    assert main_classify([str(models / "clf"), str(fasta), "--batch-size", "2", "--chunk-size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "name\tpredicted\tvibrio\tother" and len(lines) == 6
    probs = [[float(x) for x in ln.split("\t")[2:]] for ln in lines[1:]]
    assert all(abs(sum(p) - 1) < 1e-4 for p in probs)
    pipe = longseq.load(models / "clf")
    ref = pipe.classify([s for _, s in real_reads()]).probs
    assert (torch.tensor(probs) - ref).abs().max() < 1e-5
    main_classify([str(models / "clf"), str(fasta), "-o", str(tmp_path / "p.tsv"), "--rc-average"])
    assert (tmp_path / "p.tsv").read_text().splitlines()[0] == lines[0]


@pytest.mark.parametrize("which,argv,message", [
    ("clf", ["generate", "--n", "5"], "sequence classifier: it cannot generate"),
    ("dna", ["classify", "READS"], "not a classifier"),
    ("dna", ["generate", "--seconds", "2"], "--seconds is for audio models"),
    ("clf", ["classify", "missing.fa"], "missing.fa: FASTA file not found"),
    ("nowhere", ["generate"], "no such checkpoint"),
    ("dna", ["generate", "--top-p", "0"], "top_p must be in"),
])
def test_cli_errors_exit_2_with_a_message(models, tmp_path, capsys, which, argv, message):
    cmd, rest = argv[0], [a.replace("READS", str(tmp_path / "r.fa")) for a in argv[1:]]
    rest = [str(tmp_path / a) if a.endswith(".fa") and "/" not in a else a for a in rest]
    (tmp_path / "r.fa").write_text(">r\nACGT\n")
    main = main_generate if cmd == "generate" else main_classify
    with pytest.raises(SystemExit) as e:
        main([str(models / which), *rest] if cmd == "generate" else [str(models / which), *rest])
    assert e.value.code == 2 and message in capsys.readouterr().err
