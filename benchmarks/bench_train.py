"""Training throughput and peak memory per sequence length: Mamba (longseq) vs a Transformer (SDPA).

    python benchmarks/bench_train.py                       # CUDA: 2^12 .. 2^20 tokens per sequence, bf16
    python benchmarks/bench_train.py --device cpu --lengths 8,10 --steps 2   # smoke run
    python benchmarks/bench_train.py --compile --lengths 12,16     # both models through torch.compile

One training step = forward + cross-entropy + backward + AdamW step, under bf16 autocast on CUDA
(fp32 on CPU), on batches of real DNA: random windows of the bundled E. coli K-12 genome, read
with gzip and tokenised with ``NucleotideTokenizer`` (no pyfaidx needed). Each length runs one
sequence per step (batch 1) unless ``--tokens-per-batch`` asks for more.

The Transformer baseline has the same width and depth: pre-norm blocks of causal multi-head
attention (``F.scaled_dot_product_attention``, which picks flash / memory-efficient kernels) and
a 4x GELU MLP, learned position embeddings. It runs at increasing lengths until it does not fit
(CUDA out of memory) or a step would take longer than ``--max-step-seconds`` (projected from the
previous length: attention is quadratic); those rows say why they were not measured.

Prints a table and writes JSON (device, versions, shapes, median step times) and Markdown.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from longseq import MambaConfig, MambaLM, NucleotideTokenizer  # noqa: E402
from longseq.kernels.dispatch import resolve_backend  # noqa: E402

GENOME = ROOT / "longseq" / "assets" / "dna" / "species" / "Escherichia_coli" / "K12_MG1655.fa.gz"


def read_genome(path: Path) -> torch.Tensor:
    """All records of a gzip FASTA, concatenated, as token ids (uint8 to save memory)."""
    with gzip.open(path, "rt") as f:
        seq = "".join(line.strip() for line in f if not line.startswith(">"))
    return NucleotideTokenizer().encode(seq).to(torch.uint8)


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        b, L, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, L, d))
        return x + self.mlp(self.norm2(x))


class TransformerLM(nn.Module):
    """GPT-style causal LM of the given width and depth (the attention baseline)."""

    def __init__(self, d_model: int, n_layer: int, vocab: int, max_len: int, heads: int):
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d_model), nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads) for _ in range(n_layer))
        self.norm, self.head = nn.LayerNorm(d_model), nn.Linear(d_model, vocab, bias=False)

    def forward(self, ids):
        x = self.emb(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))


def make_model(kind: str, args, L: int, device) -> nn.Module:
    vocab = NucleotideTokenizer().vocab_size
    if kind == "mamba":
        cfg = MambaConfig(d_model=args.d_model, n_layer=args.n_layer, vocab_size=vocab, d_state=args.d_state)
        return MambaLM(cfg).to(device)
    heads = max(1, args.d_model // 64) if args.d_model >= 64 else 1
    return TransformerLM(args.d_model, args.n_layer, vocab, L, heads).to(device)


def random_windows(genome: torch.Tensor, L: int, batch: int, gen: torch.Generator, device) -> torch.Tensor:
    """``batch`` random genome windows of L + 1 tokens (inputs and next-token targets), on the device."""
    starts = torch.randint(0, len(genome) - L - 1, (batch,), generator=gen)
    return torch.stack([genome[s:s + L + 1] for s in starts.tolist()]).long().to(device, non_blocking=True)


def train_step(forward, model: nn.Module, opt, win: torch.Tensor, amp) -> torch.Tensor:
    """One step: forward under ``amp``, cross-entropy, backward, clipping, optimiser; returns the loss."""
    with amp:
        logits = forward(win[:, :-1])
    loss = F.cross_entropy(logits.float().flatten(0, 1), win[:, 1:].flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def run_length(kind: str, L: int, batch: int, genome: torch.Tensor, args, device) -> dict:
    """Median step time, tokens/s and peak memory of ``kind`` at length L (or why it did not run)."""
    torch.manual_seed(0)
    row = {"model": kind, "seq_len": L, "batch": batch}
    model = None
    try:
        model = make_model(kind, args, L, device)
        # compiled: the first (warm-up) step compiles; the Mamba kernels enter as custom operators
        forward = torch.compile(model, mode=args.compile_mode) if args.compile else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        g = torch.Generator().manual_seed(L)
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for step in range(args.warmup + args.steps):
            win = random_windows(genome, L, batch, g, device)
            t0 = time.perf_counter()
            loss = train_step(forward, model, opt, win, amp)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if step >= args.warmup:
                times.append(dt)
                if dt > args.max_step_seconds:   # slow enough that one timed step is the answer
                    break
        med = statistics.median(times)
        row.update(status="ok", step_s=med, tokens_per_s=batch * L / med, loss=float(loss.detach()),
                   params=sum(p.numel() for p in model.parameters()))
        if device.type == "cuda":
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    except torch.cuda.OutOfMemoryError:
        row.update(status="out of memory")
    except Exception as e:  # a failing kernel must not lose the other rows; the row says what broke
        row.update(status=f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lengths", default="12,14,16,18,20", help="log2 of the sequence lengths")
    p.add_argument("--tokens-per-batch", type=int, default=0, help="batch = max(1, this // L); 0 = batch 1")
    p.add_argument("--d-model", type=int, default=64, help="width (default: configs/dna_nextbase_demo.yaml)")
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--models", default="mamba,transformer")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="run each model through torch.compile (inductor)")
    p.add_argument("--compile-mode", default=None, choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
                   help="torch.compile's mode (reduce-overhead: CUDA graphs of the forward and backward)")
    p.add_argument("--max-step-seconds", type=float, default=20.0)
    p.add_argument("--out", default=None, help="JSON path (default docs/benchmarks/train_<device>.json)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    genome = read_genome(GENOME)
    lengths = [2 ** int(x) for x in args.lengths.split(",")]
    backend = resolve_backend(None, torch.zeros(1, device=device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {name}; scan backend {backend}; genome {len(genome)} bases; model d_model={args.d_model} "
          f"n_layer={args.n_layer} d_state={args.d_state}", flush=True)
    rows = []
    batch_of = {L: (max(1, args.tokens_per_batch // L) if args.tokens_per_batch else 1) for L in lengths}
    for kind in args.models.split(","):
        projected = 0.0          # Transformer: projected seconds per step at the next length
        for i, L in enumerate(lengths):
            batch = batch_of[L]
            if kind == "transformer" and projected > args.max_step_seconds:
                status = (f"not run: projected {projected:.0f} s/step from the previous length "
                          "(attention is quadratic in length)" if math.isfinite(projected) else
                          "not run: a shorter length did not fit")
                rows.append({"model": kind, "seq_len": L, "batch": batch, "status": status})
                save(rows, args, name, backend, device)
                print(f"{kind:12s} L={L:>8d}  {status}", flush=True)
                if i + 1 < len(lengths):
                    projected *= (lengths[i + 1] / L) ** 2 * batch_of[lengths[i + 1]] / batch
                continue
            row = run_length(kind, L, batch, genome, args, device)
            rows.append(row)
            save(rows, args, name, backend, device)
            if row["status"] == "ok":
                if i + 1 < len(lengths):
                    projected = row["step_s"] * (lengths[i + 1] / L) ** 2 * batch_of[lengths[i + 1]] / batch
                mem = f"{row['peak_mem_gib']:.2f} GiB" if "peak_mem_gib" in row else "-"
                print(f"{kind:12s} L={L:>8d} batch={batch:<3d} step {row['step_s'] * 1e3:9.1f} ms  "
                      f"{row['tokens_per_s']:12.0f} tok/s  peak {mem}", flush=True)
            else:
                print(f"{kind:12s} L={L:>8d}  {row['status']}", flush=True)
                projected = float("inf")
    result = save(rows, args, name, backend, device)
    out = Path(args.out or ROOT / "docs" / "benchmarks" / f"train_{device.type}.json")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return result


def save(rows, args, name, backend, device) -> dict:
    """Write JSON and Markdown (through temporary files); called after every row, so a run cut
    short still leaves the rows it measured."""
    try:
        git = dict(cwd=ROOT, capture_output=True, text=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **git).stdout.strip()
        # a copied working tree (the device machine) can hold code its HEAD does not: say so
        if commit and subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **git).stdout.strip():
            commit += " + uncommitted changes"
    except OSError:
        commit = ""
    result = {"benchmark": "train_step", "device": name, "backend": backend, "torch": torch.__version__,
              "triton": _version("triton"), "cuda": torch.version.cuda, "python": platform.python_version(),
              "commit": commit or None, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
              "precision": "bf16-mixed" if device.type == "cuda" else "fp32", "compiled": args.compile, "compile_mode": args.compile_mode,
              "model": {"d_model": args.d_model, "n_layer": args.n_layer, "d_state": args.d_state},
              "warmup_steps": args.warmup, "timed_steps": args.steps, "data": str(GENOME.relative_to(ROOT)),
              "rows": rows}
    out = Path(args.out or ROOT / "docs" / "benchmarks" / f"train_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    md = [f"# Training step: Mamba vs Transformer ({name}, {result['precision']})", "",
          f"d_model {args.d_model}, n_layer {args.n_layer}, d_state {args.d_state}; scan backend `{backend}`; "
          f"torch {torch.__version__}{' (torch.compile)' if args.compile else ''}; {result['date_utc']} UTC; "
          f"median of {args.steps} steps after {args.warmup}; "
          "one training step = forward, loss, backward, AdamW.", "",
          "| model | seq_len | batch | step (ms) | tokens/s | peak memory (GiB) | note |",
          "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["status"] == "ok":
            mem = f"{r['peak_mem_gib']:.2f}" if "peak_mem_gib" in r else "-"
            md.append(f"| {r['model']} | {r['seq_len']:,} | {r['batch']} | {r['step_s'] * 1e3:.1f} | "
                      f"{r['tokens_per_s']:,.0f} | {mem} | |")
        else:
            md.append(f"| {r['model']} | {r['seq_len']:,} | {r['batch']} | | | | {r['status']} |")
    for path, text in ((out, json.dumps(result, indent=2) + "\n"), (out.with_suffix(".md"), "\n".join(md) + "\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return result


def _version(pkg):
    try:
        from importlib.metadata import version
        return version(pkg)
    except Exception:
        return None


if __name__ == "__main__":
    main()
