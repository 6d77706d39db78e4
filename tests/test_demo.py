"""`python -m longseq.demo --quick`: the whole main job end to end (train, test, save, fine-tune,
API score / generate / classify, plot), shrunk to a few steps; checks every output it announces."""
import json
import subprocess
import sys
from pathlib import Path

import longseq

ROOT = Path(__file__).resolve().parents[1]


def test_quick_demo_writes_every_output_it_announces(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "longseq.demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = proc.stdout
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert step in text
    png = out / "training_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["quick"] is True and 0 < summary["dna_test_bits_per_base"] < 4
    assert (out / "dna" / "checkpoints" / "last.ckpt").is_file()
    assert (out / "species" / "checkpoints" / "last.ckpt").is_file()
    # the saved DNA model loads on its own and generates the bases the demo printed
    assert isinstance(longseq.load(out / "dna_model"), longseq.api.DNAPipeline)
    generated = (out / "generated.fa").read_text().splitlines()
    assert generated[0].startswith(">") and len(generated[1]) == 50 and set(generated[1]) <= set("ACGTN")
    reads = (out / "heldout_reads.fa").read_text().count(">")
    tsv = (out / "heldout_reads.predictions.tsv").read_text().strip().splitlines()
    assert reads == 7 * 2 and len(tsv) == reads + 1          # a header and one row per read
