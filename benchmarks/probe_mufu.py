"""The chip's measured exp2 throughput, the unit that bounds the selective scan's exps (CUDA only).

    python benchmarks/probe_mufu.py [--out probe_mufu.json]

Each thread of a large grid runs a loop of independent ``ex2.approx.ftz.f32`` (the scan kernels'
exp2, longseq.kernels.triton_scan._ex2) on 8 values, with one FFMA and one FADD beside each, so
that the special-function unit (MUFU: 16 results per clock per SM on sm_90) and not instruction
issue is the limit. Prints and writes the exp2 rate (results per second and per clock per SM at
the SM clock nvidia-smi reported meanwhile) next to the data-sheet rate, and, from it, the time
the exps of the scan's forward need at the benchmark's shapes: the floor under any kernel that
evaluates them on this unit (docs/kernel_notes.md, v17).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.kernel_times import ClockLog  # noqa: E402
from longseq.kernels import triton_scan_op as op  # noqa: E402
from longseq.kernels.triton_scan import _ex2  # noqa: E402
from longseq.kernels.triton_tune import cdiv, launch_options  # noqa: E402

PER_THREAD = 8       # independent exps in flight per thread (ILP)
WARPS = 4


@triton.jit
def ex2_loop_kernel(out_ptr, iters, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = -(offs % 1024).to(tl.float32) * 1e-3          # in (-1.03, 0]: a decay's range
    acc = tl.zeros((BLOCK,), tl.float32)
    for _ in range(iters):
        acc += _ex2(x)
        x = x * 0.999 - 1e-4          # a new argument each step: nothing to hoist or fold
    tl.store(out_ptr + offs, acc)


def measure(iters: int = 4096) -> dict:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    block = WARPS * 32 * PER_THREAD
    programs = sms * 16                 # 16 programs of 4 warps (64 warps) per SM: full occupancy
    out = torch.empty(programs * block, device="cuda")

    def run():
        ex2_loop_kernel[(programs,)](out, iters, BLOCK=block, **launch_options(WARPS))

    run()
    torch.cuda.synchronize()
    with ClockLog() as clk:
        ms = do_bench(run, warmup=20, rep=1000, return_mode="median")
    mhz = statistics.median(clk.mhz) if clk.mhz else None
    exps = programs * block * iters
    rate = exps / (ms * 1e-3)
    return dict(device=torch.cuda.get_device_name(), sms=sms, programs=programs, warps=WARPS, block=block,
                iters=iters, ms=ms, ex2_per_s=rate, sm_mhz_median=mhz,
                ex2_per_clk_per_sm=rate / (sms * mhz * 1e6) if mhz else None, datasheet_per_clk_per_sm=16,
                torch=torch.__version__, triton=triton.__version__)


# the scan's MUFU instructions per (channel, state, step) in the compiled t4 forward (SASS MUFU counts per chunk of the
# tuner's picks, divided by the elements a thread holds): the output pass 80 per 64 (the decay exp2, plus
# softplus's ex2 and lg2 and the gate's ex2 and rcp per (channel, step)); the chunk-parallel summary pass
# 72 per 64 (no gate)
MUFU_OUTPUT_PASS = 80 / 64
MUFU_SUMMARY_PASS = 72 / 64


def forward_floor_ms(rate: float, batch: int, dim: int, seqlen: int, dstate: int = 16, groups: int = 1) -> float:
    """Time the forward's MUFU work needs at `rate` results per second; with `groups` > 1 the summary
    pass covers (groups - 1) / groups of the sequence as well."""
    elems = batch * dim * seqlen * dstate
    per = MUFU_OUTPUT_PASS + MUFU_SUMMARY_PASS * (groups - 1) / groups
    return elems * per / rate * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "probe_mufu.json"))
    a = p.parse_args(argv)
    r = measure()
    mhz = r["sm_mhz_median"]
    print(f"{r['device']}: {r['ex2_per_s'] / 1e12:.3f} T exp2/s in {r['ms']:.3f} ms, SM clock {mhz} MHz "
          f"-> {r['ex2_per_clk_per_sm']:.2f} per clock per SM (data sheet: 16)")
    # the forward's floors at the benchmark's shapes: batch 8 at 8K (one pass) and batch 1 in the sequence
    # groups of the tuner's bf16 picks on the H100 (scan-h100-v13.json; two passes)
    picks = [(8, 1536, 8192, "t4p2:16:16:2"), (1, 1536, 262144, "t4:16:8:1:32"), (1, 1536, 1048576, "t4:32:8:2:16")]
    r["forward_floor_ms"] = {}
    for b, d, L, cfg in picks:
        c = op.parse_cfg(cfg)
        g = op._n_groups(b * cdiv(d, c[1]), cdiv(L, c[2]), torch.device("cuda"), c[4]) if len(c) > 4 else 1
        f = forward_floor_ms(r["ex2_per_s"], b, d, L, groups=g)
        r["forward_floor_ms"][f"{b}x{d}x{L}/G{g}"] = f
        print(f"  forward {b}x{d}x{L} (dstate 16, {g} sequence group{'s' if g > 1 else ''}): MUFU floor {f:.3f} ms, "
              f"{f * 1e6 / (b * L):.2f} ns/token")
    with open(a.out, "w") as fh:
        json.dump(r, fh, indent=1)


if __name__ == "__main__":
    main()
