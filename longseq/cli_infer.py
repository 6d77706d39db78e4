"""``longseq generate CKPT ...`` and ``longseq classify CKPT reads.fa``: thin wrappers over ``longseq.load``.

``longseq.cli`` dispatches these two sub-commands here (argv without the sub-command name).
Errors in the user's input end the command with exit status 2 and a message naming what is wrong.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

__all__ = ["main_generate", "main_classify"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ckpt", help="Lightning checkpoint (.ckpt) or save_pretrained directory")
    parser.add_argument("-o", "--output", help="output file (default: stdout for text, generated.wav for audio)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32", help="weight dtype (default float32)")


def _load(parser, args):
    from .api import load

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return load(args.ckpt, device=device, dtype=_DTYPES[args.dtype])
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        parser.error(str(e))


def _write_text(text: str, output) -> None:
    from .api import _atomic_write

    if output is None:
        sys.stdout.write(text)
    else:
        _atomic_write(Path(output), lambda tmp: Path(tmp).write_text(text))
        print(f"wrote {output}", file=sys.stderr)


def main_generate(argv=None) -> int:
    """Sample DNA (FASTA to stdout or -o) or audio (WAV/FLAC to -o) from a trained model."""
    parser = argparse.ArgumentParser(prog="longseq generate", description=main_generate.__doc__)
    _common(parser)
    parser.add_argument("--n", type=int, default=None, help="DNA: bases to generate (default 1000); audio: samples")
    parser.add_argument("--seconds", type=float, default=None, help="audio: seconds to generate (default 4)")
    parser.add_argument("--prompt", default=None,
                        help="DNA: a sequence or a FASTA file (its first record); audio: a WAV/FLAC file")
    parser.add_argument("--num-samples", type=int, default=1, help="independent samples (default 1)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (default 0 = off)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0 = off)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (same seed, same output)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the decoding step (a few seconds to compile; on an H100 no faster than the default engine for the demo models)")
    args = parser.parse_args(argv)

    from .api import AudioPipeline, ClassifierPipeline, read_fasta

    pipe = _load(parser, args)
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                    num_samples=args.num_samples, compile=args.compile)
    try:
        if isinstance(pipe, ClassifierPipeline):
            parser.error(f"{args.ckpt} is a sequence classifier: it cannot generate; use `longseq classify`")
        if isinstance(pipe, AudioPipeline):
            if args.n is None and args.seconds is None:
                args.seconds = 4.0
            audio = pipe.generate(seconds=args.seconds, n_samples=args.n, prompt_wav=args.prompt, progress=True,
                                  **sampling)
            path = audio.save(args.output or "generated.wav")
            print(f"wrote {audio.seconds:.2f} s at {audio.sample_rate} Hz to {path}"
                  + (f" (and {args.num_samples - 1} more beside it)" if args.num_samples > 1 else ""), file=sys.stderr)
            return 0
        if args.seconds is not None:
            parser.error("--seconds is for audio models; this is a DNA model: use --n")
        prompt = args.prompt
        if prompt is not None and Path(prompt).is_file():
            prompt = read_fasta(prompt)[0][1]
        seqs = pipe.generate(prompt=prompt, n=args.n or 1000, **sampling)
        seqs = [seqs] if isinstance(seqs, str) else seqs
        text = "".join(f">generated_{i} seed={args.seed} temperature={args.temperature}\n"
                       + "\n".join(s[j:j + 80] for j in range(0, len(s), 80)) + "\n" for i, s in enumerate(seqs))
        _write_text(text, args.output)
        return 0
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))


def main_classify(argv=None) -> int:
    """Species probabilities for every read of a FASTA file (plain or gzip): a TSV to stdout or -o."""
    parser = argparse.ArgumentParser(prog="longseq classify", description=main_classify.__doc__)
    _common(parser)
    parser.add_argument("reads", help="FASTA file of sequences to classify (plain or .gz)")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per batch (default 32)")
    parser.add_argument("--chunk-size", type=int, default=1 << 16,
                        help="read longer sequences in pieces of this many bases (default 65536)")
    parser.add_argument("--rc-average", action="store_true", help="average with the reverse complement")
    args = parser.parse_args(argv)

    from .api import ClassifierPipeline

    pipe = _load(parser, args)
    if not isinstance(pipe, ClassifierPipeline):
        parser.error(f"{args.ckpt} is a {type(pipe).__name__.replace('Pipeline', '')} language model, "
                     "not a classifier; use `longseq generate`")
    try:
        preds = pipe.classify(Path(args.reads), batch_size=args.batch_size, chunk_size=args.chunk_size,
                              rc_average=args.rc_average)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    _write_text(preds.to_tsv(), args.output)
    return 0
