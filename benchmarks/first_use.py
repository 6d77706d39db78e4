"""How long a GPU user's first steps take: the Triton kernels' compilation and autotuning on first use.

    python benchmarks/first_use.py --seqlen 16384 --d-model 64 --n-layer 2     # the demo's model size

In one process: a MambaLM's training step (bf16 autocast, cross-entropy, backward, AdamW) three
times, then its inference forward three times, each timed to the GPU's end. The first of each pays
Triton's compilation (unless its on-disk cache already holds the kernels) and the tuner's trials
(unless the tuner's disk cache holds the winners: ``$LONGSEQ_CACHE/tune``, off with
LONGSEQ_TUNE_CACHE=0); the later ones are the steady state. Run it several times with the same
$TRITON_CACHE_DIR and $LONGSEQ_CACHE to separate the costs (cold; warm compilation cache, tuner's
cache off; both warm), and with LONGSEQ_AUTOTUNE=0 for no trials. Prints one JSON line: wall
seconds of every call, the tuner's trial count and the kernels it picked.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from longseq import MambaConfig, MambaLM  # noqa: E402
from longseq.kernels import triton_tune  # noqa: E402


def timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seqlen", type=int, default=16384)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--tag", default="")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=a.d_model, n_layer=a.n_layer, vocab_size=8)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 5, (a.batch, a.seqlen + 1), device="cuda")

    def train_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(ids[:, :-1])

    row = dict(tag=a.tag, device=torch.cuda.get_device_name(), seqlen=a.seqlen, batch=a.batch, d_model=a.d_model,
               n_layer=a.n_layer, autotune=os.environ.get("LONGSEQ_AUTOTUNE", "1"),
               tune_cache=os.environ.get("LONGSEQ_TUNE_CACHE", "1"),
               train_s=[round(timed(train_step), 4) for _ in range(3)],
               infer_s=[round(timed(infer), 4) for _ in range(3)],
               trials=len(triton_tune.TRIALS), from_disk=len(triton_tune.LOADED), picked=[(n, str(k), str(c)) for n, k, c, _ in triton_tune.LOG])
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
