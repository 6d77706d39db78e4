"""A MambaLM's forward under torch.no_grad() on CUDA: median time and peak memory per length.

    python benchmarks/inference_forward.py --d-model 768 --lengths 262144 1048576
    python benchmarks/inference_forward.py ... --as-training-forward      # the behaviour before v22

Before v22 the fused scan saw that the parameters require grad (they do, under no_grad too) and ran
its training forward, which also writes the states every 32 steps and the pre-gate output for a
backward that never comes. ``--as-training-forward`` forces that path again, for the comparison in
one process. Prints one JSON line per length (bf16 autocast, batch 1).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from longseq import MambaConfig, MambaLM  # noqa: E402
from longseq.kernels import triton_scan_op  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--lengths", type=int, nargs="+", default=[262144, 1048576])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--as-training-forward", action="store_true")
    a = p.parse_args(argv)
    if a.as_training_forward:
        fwd = triton_scan_op._fwd
        triton_scan_op._fwd = lambda *args: fwd(*args[:-1], True)
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=a.d_model, n_layer=a.n_layer, vocab_size=8)).cuda()
    for L in a.lengths:
        ids = torch.randint(0, 5, (1, L), device="cuda")
        times = []
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            model(ids)                                   # compile and tune
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            for _ in range(a.reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(ids)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
        print(json.dumps(dict(device=torch.cuda.get_device_name(), d_model=a.d_model, n_layer=a.n_layer, seqlen=L,
                              as_training_forward=a.as_training_forward, median_ms=round(statistics.median(times), 3),
                              peak_extra_gib=round((torch.cuda.max_memory_allocated() - base) / 2**30, 3))), flush=True)


if __name__ == "__main__":
    main()
