"""Generation speed: the recurrent engine (prefill + step, CUDA graphs) against re-running the full forward.

For a DNA LM (tokens/s) and a waveform LM (samples/s and real-time factor at 16 kHz), at batch 1
and 16, on the CPU or a CUDA device:

- ``engine``: ``longseq.generation.generate`` (on CUDA: blocks of steps replayed as a CUDA graph);
- ``engine-eager`` (CUDA only): the same without graphs;
- ``engine-compile`` (CUDA, --compile): the step through torch.compile, inside the graph;
- ``naive``: ``naive_generate``, the full forward over the whole sequence for every new token.

Models are random-initialised at the demo sizes (d_model 64, 2 layers, d_state 16: configs/*_demo.yaml) (speed does not depend on the weights), or a
trained model given with --dna-model / --audio-model. Prints a table and writes JSON (device,
versions, sizes, median seconds). Imports only torch, numpy, tqdm and longseq, so it runs on the
lent GPU machine as is. Example:

    python benchmarks/bench_generate.py --device cuda --compile --out docs/benchmarks/generate_h100.json
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import longseq  # noqa: E402
from longseq import MambaConfig, MambaLM, NucleotideTokenizer  # noqa: E402
from longseq.generation import generate, naive_generate  # noqa: E402
from longseq.kernels import resolve_backend  # noqa: E402

ECOLI = Path(longseq.__file__).parent / "assets/dna/species/Escherichia_coli/K12_MG1655.fa.gz"
SAMPLE_RATE = 16000


def real_prompt(n: int) -> torch.Tensor:
    """n real bases from the bundled E. coli genome (stdlib gzip: no Biopython needed)."""
    with gzip.open(ECOLI, "rt") as f:
        next(f)
        seq = "".join(line.strip() for _, line in zip(range(n // 60 + 400), f))
    return NucleotideTokenizer().encode(seq[20_000:20_000 + n])


def build(kind: str, args, device, dtype):
    path = args.dna_model if kind == "dna" else args.audio_model
    if path:
        return longseq.load(path, device=device, dtype=dtype).model
    torch.manual_seed(0)
    d, n = (args.dna_d_model, args.dna_layers) if kind == "dna" else (args.audio_d_model, args.audio_layers)
    cfg = MambaConfig(d_model=d, n_layer=n, vocab_size=8 if kind == "dna" else 257)
    return MambaLM(cfg).to(device=device, dtype=dtype).eval()


def timed(fn, repeats: int, device) -> list[float]:
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


def markdown(env, models, args, rows) -> str:
    """The results as a Markdown table (written beside the JSON)."""
    lines = [f"Generation on {env['device']} ({env['date']}): torch {env['torch']}, triton {env['triton']}, "
             f"{env['dtype']}, kernels: {env['backend']}, CPU threads {env['threads']}. "
             f"Sampling: temperature {args.temperature}, top_p {args.top_p}.", ""]
    for kind, cfg in models.items():
        lines.append(f"- {kind}: d_model {cfg['d_model']}, n_layer {cfg['n_layer']}, vocab {cfg['vocab_size']}, "
                     f"{cfg['parameters'] / 1e6:.2f} M parameters")
    lines += ["", "| model | method | batch | new tokens | median s | tokens/s | per stream /s | RTF (16 kHz) | vs naive |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | {r['batch']} | error: {r['error'][:120]} | | | | | |")
            continue
        naive = next((x for x in rows if x.get("method") == "naive" and x["model"] == r["model"]
                      and x["batch"] == r["batch"] and "tokens_per_s" in x), None)
        speed = f"{r['tokens_per_s'] / naive['tokens_per_s']:.1f}x" if naive and r["method"] != "naive" else ""
        rtf = f"{r['real_time_factor']:.3f}" if "real_time_factor" in r else ""
        lines.append(f"| {r['model']} | {r['method']} | {r['batch']} | {r['new_tokens']} | {r['seconds_median']:.4f} | "
                     f"{r['tokens_per_s']:.0f} | {r['tokens_per_s'] / r['batch']:.0f} | {rtf} | {speed} |")
    lines += ["", "RTF = generation time / audio duration per stream (< 1: faster than real time). "
              "'vs naive' = tokens/s over the naive loop's tokens/s at the same batch (naive: "
              f"{args.naive_tokens or args.tokens} new tokens; its cost per token grows with length).", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batches", default="1,16")
    p.add_argument("--tokens", type=int, default=1024, help="new tokens per sequence (DNA, and naive for both)")
    p.add_argument("--audio-samples", type=int, default=None,
                   help="new samples per stream for the engine (default: 16000 on CUDA, 2048 on CPU)")
    p.add_argument("--eager-tokens", type=int, default=1024, help="new tokens for engine-eager on CUDA (both models)")
    p.add_argument("--eager-repeats", type=int, default=1)
    p.add_argument("--prompt", type=int, default=256, help="DNA prompt length (real E. coli bases)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per point (default: 3 CUDA, 1 CPU)")
    p.add_argument("--naive-repeats", type=int, default=1)
    p.add_argument("--naive-tokens", type=int, default=None,
                   help="new tokens for the naive loop (default --tokens; its cost grows as tokens^2)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd steps (CUDA, audio model)")
    p.add_argument("--compile-batches", default="1", help="batches to time with --compile (each compiles anew)")
    p.add_argument("--dna-model"), p.add_argument("--audio-model")
    # defaults: the demo models (configs/dna_nextbase_demo.yaml, configs/audio_demo.yaml)
    p.add_argument("--dna-d-model", type=int, default=64), p.add_argument("--dna-layers", type=int, default=2)
    p.add_argument("--audio-d-model", type=int, default=64), p.add_argument("--audio-layers", type=int, default=2)
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--models", default="dna,audio", help="which of dna,audio to time")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0, help="(the API's default: plain sampling)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 suits token-by-token decoding of small models best)")
    p.add_argument("--out", default=None, help="JSON path (default docs/benchmarks/generate_<device>.json)")
    p.add_argument("--render", metavar="JSON", help="only rewrite the Markdown table of an existing result JSON")
    args = p.parse_args(argv)
    if args.render:
        data = json.loads(Path(args.render).read_text())
        saved = argparse.Namespace(**{**vars(args), **data["args"]})
        Path(args.render).with_suffix(".md").write_text(markdown(data["env"], data["models"], saved, data["results"]))
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    cuda = device.type == "cuda"
    repeats = args.repeats or (3 if cuda else 1)
    audio_n = args.audio_samples or (16000 if cuda else 2048)
    batches = [int(b) for b in args.batches.split(",")]
    out_path = Path(args.out or f"docs/benchmarks/generate_{'cuda' if cuda else 'cpu'}.json")
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
           "torch": torch.__version__, "python": platform.python_version(), "dtype": args.dtype,
           "threads": torch.get_num_threads(), "backend": resolve_backend(None, torch.empty(0, device=device)),
           "LONGSEQ_SCAN_BACKEND": os.environ.get("LONGSEQ_SCAN_BACKEND")}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    rows, models = [], {}

    def record(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        out_path.parent.mkdir(parents=True, exist_ok=True)  # rewritten after each point: a crash keeps the rest
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"env": env, "models": models, "args": vars(args), "results": rows}, indent=2))
        os.replace(tmp, out_path)

    for kind in args.models.split(","):
        model = build(kind, args, device, dtype)
        models[kind] = {**model.config.to_dict(), "parameters": sum(p.numel() for p in model.parameters())}
        allowed = range(4) if kind == "dna" else range(256)
        for batch in batches:
            prompt = (real_prompt(args.prompt) if kind == "dna" else torch.tensor([128]))[None].repeat(batch, 1)
            prompt = prompt.to(device)
            n_engine = args.tokens if kind == "dna" else audio_n
            variants = [("engine", dict(), n_engine, repeats)]
            if cuda:
                variants.append(("engine-eager", dict(cuda_graph=False), min(args.eager_tokens, n_engine),
                                 args.eager_repeats))
                if args.compile and kind == "audio" and str(batch) in args.compile_batches.split(","):
                    variants.append(("engine-compile", dict(compile=True), n_engine, repeats))
            for name, kw, n, reps in variants:
                try:
                    run = lambda: generate(model, prompt, n, temperature=args.temperature, top_p=args.top_p,  # noqa: E731
                                           seed=0,
                                           allowed_tokens=allowed, progress=False, **kw)
                    if kw.get("compile"):
                        torch._dynamo.reset()        # each compile row compiles anew and counts its breaks
                        counters.clear()
                    warm = timed(run, 1, device)[0]  # compilation, autotuning, graph capture paths
                    times = timed(run, reps, device)
                    med = statistics.median(times)
                    row = {"model": kind, "method": name, "batch": batch, "prompt": prompt.shape[1],
                           "new_tokens": n, "seconds_median": med, "seconds_all": times, "first_call_s": warm,
                           "tokens_per_s": batch * n / med}
                    if kw.get("compile"):    # a break splits the step's graph (kernel notes v21)
                        row["graph_breaks"] = dict(counters["graph_break"])
                    if kind == "audio":
                        row["samples_per_s_per_stream"] = n / med
                        row["real_time_factor"] = med / (n / SAMPLE_RATE)  # < 1: faster than real time
                    record(row)
                except Exception as e:  # keep measuring the other points; the JSON says what failed
                    record({"model": kind, "method": name, "batch": batch, "error": f"{type(e).__name__}: {e}"})
            if not args.skip_naive:
                n = args.naive_tokens or args.tokens
                try:
                    times = timed(lambda: naive_generate(model, prompt, n, temperature=args.temperature, top_p=args.top_p, seed=0,
                                                         allowed_tokens=allowed), args.naive_repeats, device)
                    med = statistics.median(times)
                    engine = next((r for r in rows if r.get("model") == kind and r.get("batch") == batch
                                   and r.get("method") == "engine" and "tokens_per_s" in r), None)
                    row = {"model": kind, "method": "naive", "batch": batch, "prompt": prompt.shape[1],
                           "new_tokens": n, "seconds_median": med, "seconds_all": times, "tokens_per_s": batch * n / med}
                    if engine:
                        row["engine_speedup"] = engine["tokens_per_s"] / row["tokens_per_s"]
                    record(row)
                except Exception as e:
                    record({"model": kind, "method": "naive", "batch": batch, "error": f"{type(e).__name__}: {e}"})

    table = markdown(env, models, args, rows)
    print("\n" + table)
    md = out_path.with_suffix(".md")
    md.write_text(table)
    print(f"wrote {out_path} and {md}")


if __name__ == "__main__":
    main()
