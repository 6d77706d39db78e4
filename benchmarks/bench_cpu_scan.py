"""CPU selective scan: the chunked fast path against the plain float64 loop (selective_scan_ref).

    python benchmarks/bench_cpu_scan.py [--batch 2 --dim 256 --dstate 16 --seqlen 4096] [--out FILE]

Prints a table and writes JSON (machine, versions, shapes, median times, speed-up). Also times
the nucleotide tokenizer on 10 Mb, since it feeds every DNA pipeline.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, median_time, write_json  # noqa: E402

from longseq.kernels import selective_scan_chunked, selective_scan_ref  # noqa: E402
from longseq.tokenizers import NucleotideTokenizer  # noqa: E402


def inputs(batch, dim, dstate, seqlen, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    return dict(u=r(batch, dim, seqlen), delta=r(batch, dim, seqlen) * 0.5 - 2.0,
                A=-torch.arange(1, dstate + 1.0).repeat(dim, 1), B=r(batch, dstate, seqlen),
                C=r(batch, dstate, seqlen), D=r(dim), z=r(batch, dim, seqlen), delta_bias=r(dim) * 0.1,
                delta_softplus=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--dstate", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=f"docs/benchmarks/cpu_scan-{dt.date.today().isoformat()}.json")
    a = p.parse_args(argv)
    kw = inputs(a.batch, a.dim, a.dstate, a.seqlen)
    rows = []
    with torch.no_grad():
        t_loop, _ = median_time(lambda: selective_scan_ref(**kw), repeats=max(1, a.repeats // 2), warmup=0)
        rows.append(("plain loop (selective_scan_ref, float64)", t_loop))
        t_fast, _ = median_time(lambda: selective_scan_chunked(**kw), repeats=a.repeats)
        rows.append(("chunked fast path (selective_scan_chunked)", t_fast))
        # accuracy on float64 inputs (float32 outputs of both round to the same values)
        k64 = {k: (v.double()[..., :512] if torch.is_tensor(v) and v.dim() == 3 else v) for k, v in kw.items()}
        k64.update(A=kw["A"].double(), D=kw["D"].double(), delta_bias=kw["delta_bias"].double())
        y_ref, y_fast = selective_scan_ref(**k64), selective_scan_chunked(**k64)
    rel_err = ((y_fast - y_ref).norm() / y_ref.norm()).item()
    seq = ("ACGTNacgtn" * 1_000_000).encode()
    tok = NucleotideTokenizer()
    t_tok, _ = median_time(lambda: tok.encode(seq), repeats=a.repeats)

    shape = dict(batch=a.batch, dim=a.dim, dstate=a.dstate, seqlen=a.seqlen)
    print(f"selective scan on CPU, {shape}, {torch.get_num_threads()} threads")
    print(f"{'implementation':45s} {'median s':>10s} {'ktok/s':>8s}")
    for name, t in rows:
        print(f"{name:45s} {t:10.4f} {a.batch * a.seqlen / t / 1e3:8.2f}")
    print(f"speed-up of the fast path: {t_loop / t_fast:.1f}x   (relative error vs loop, float64 inputs: {rel_err:.1e})")
    print(f"NucleotideTokenizer.encode, 10 Mb: {t_tok * 1e3:.1f} ms")
    out = write_json(a.out, {
        "benchmark": "cpu_scan", "machine": machine_info(), "shape": shape,
        "median_s": {"plain_loop": t_loop, "chunked": t_fast}, "speedup": t_loop / t_fast,
        "relative_error": rel_err, "tokenizer_encode_10Mb_s": t_tok,
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
