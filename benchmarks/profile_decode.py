"""Which GPU kernels one decoding step launches, and how long each takes (CUDA only).

    python benchmarks/profile_decode.py [--d-model 64 --layers 2 --vocab 257 --batch 1]

At batch 1 a step of a small model is a few dozen tiny kernels whose count, not their arithmetic,
sets the time; this lists them (torch.profiler over eager steps) so fusions can be aimed, and times
whole ``generate`` calls (one second of 16 kHz audio by default) for several graph block sizes.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from longseq import MambaConfig, MambaLM  # noqa: E402
from longseq.generation import SamplingParams, _Decoder, generate  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=257)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--samples", type=int, default=16000)
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=args.d_model, n_layer=args.layers, vocab_size=args.vocab)).to(dev).eval()
    params = SamplingParams()
    with torch.inference_mode():
        cache = model.allocate_inference_cache(args.batch, device=dev)
        eager = _Decoder(model, cache, args.batch, 1, model.config.vocab_size, params, None, dev,
                         cuda_graph=False)
        for _ in range(5):
            eager.run(None)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                eager.run(None)
            torch.cuda.synchronize()
        names = Counter()
        total_us = Counter()
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                names[e.name] += 1
                total_us[e.name] += e.device_time
        per_step = sum(names.values()) / args.steps
        print(f"kernels per step (incl. noise fill): {per_step:.1f}")
        for name, n in names.most_common():
            print(f"  {n / args.steps:5.1f} x {total_us[name] / n:7.2f} us  {name[:110]}")
        # whole generate() calls (graph capture and per-block work included) by graph block size
        prompt = torch.zeros(args.batch, 1, dtype=torch.long, device=dev)
        for block in (32, 64, 128, 256):
            times = []
            for _ in range(4):
                torch.cuda.synchronize()
                t = time.perf_counter()
                generate(model, prompt, args.samples, block=block, seed=0)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            best = statistics.median(times[1:])
            us = best / args.samples * 1e6
            print(f"generate {args.samples} samples, block {block}: {best:.3f} s, {us:.2f} us per step, "
                  f"RTF at 16 kHz {best / (args.samples / 16000):.3f}")


if __name__ == "__main__":
    main()
