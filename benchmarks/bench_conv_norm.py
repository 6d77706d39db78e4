"""The causal conv and the residual add + RMSNorm kernels at the mixer's shapes, against the
memory-bandwidth floor (and, with --baseline, another copy of longseq's kernels in the same run).

    python3 benchmarks/bench_conv_norm.py [--baseline DIR] [--out conv_norm.json]

Shapes are those of the models in docs/benchmarks/train.md: (batch, channels, L) for the conv with
SiLU, bias and width 4 (channels = d_inner), and (rows, H) for the norm as the model calls it
(prenorm, residual in float32, H = d_model); bf16 activations. Bytes (each tensor read or written
once, as METHOD.md counts them):
- conv forward: x read, y written (2 es per element); backward: x and dy read, dx written (3 es);
- norm forward: x (es) and the float32 residual read, y (es) and the float32 sum written; backward:
  x, residual, dy, the sum's gradient read, dx and the residual's gradient written.
The floor is those bytes at the copy bandwidth measured in the same run (a 1 GiB device copy).
``--baseline DIR``: DIR holds another version of the package as ``DIR/longseq`` (e.g. an older
commit's checkout); its kernels run beside ours, interleaved, under the name "baseline".
Prints a table and writes JSON (device, versions, shapes, median times, GB/s, fraction of floor).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import triton

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from longseq.kernels import triton_ops  # noqa: E402

CONV_SHAPES = [(1, 512, 2 ** 20), (1, 128, 2 ** 20), (1, 1536, 2 ** 16), (8, 1536, 2048)]
NORM_SHAPES = [(2 ** 20, 256), (2 ** 20, 64), (2 ** 16, 768), (16384, 768)]


def load_baseline(path: str):
    """triton_ops of the package in path/longseq, imported under another name."""
    spec = importlib.util.spec_from_file_location("longseq_baseline", Path(path) / "longseq" / "__init__.py",
                                                  submodule_search_locations=[str(Path(path) / "longseq")])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["longseq_baseline"] = mod
    spec.loader.exec_module(mod)
    return importlib.import_module("longseq_baseline.kernels.triton_ops")


def timed(fn, reps: int) -> float:
    """Median ms of fn over reps (CUDA events), after two calls (compiling)."""
    fn(), fn()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return statistics.median(out)


def copy_bandwidth() -> float:
    src = torch.empty(2 ** 28, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src), 20)
    return 2 * src.numel() * 4 / (ms / 1e3)


def conv_cases(ops, shape):
    b, d, L = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(b, d, L, device="cuda", generator=g).bfloat16()
    w, bias = torch.randn(d, 4, device="cuda", generator=g), torch.randn(d, device="cuda", generator=g)
    dy = torch.randn(b, d, L, device="cuda", generator=g).bfloat16()
    return {"conv fwd": (lambda: ops.conv_forward(x, w, bias, None, True), 2 * 2 * x.numel()),
            "conv bwd": (lambda: ops.conv_backward(dy, x, w, bias, None, True, False), 3 * 2 * x.numel())}


def norm_cases(ops, shape):
    M, H = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(M, H, device="cuda", generator=g).bfloat16()
    res = torch.randn(M, H, device="cuda", generator=g)
    w = torch.randn(H, device="cuda", generator=g)
    y, s, rstd = ops.rms_forward(x, w, res, 1e-5, True, True)
    dy, ds = torch.randn_like(y), torch.randn_like(s)
    n = M * H
    return {"norm fwd": (lambda: ops.rms_forward(x, w, res, 1e-5, True, True), n * (2 + 4 + 2 + 4)),
            "norm bwd": (lambda: ops.rms_backward(dy, ds, x, w, res, rstd), n * (2 + 4 + 2 + 4 + 2 + 4))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default=None, help="a directory holding another version as DIR/longseq")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--only", choices=("conv", "norm"), default=None, help="time only these kernels")
    p.add_argument("--conv-tiles", nargs="*", default=[], metavar="BD:BLJ:NT",
                   help="also time our conv with these tiles (channels, lanes, backward tiles per chunk), "
                        "each as an implementation of its own")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    impls = {"longseq": triton_ops}
    if args.baseline:
        impls["baseline"] = load_baseline(args.baseline)
    bw = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw / 1e9:.0f} GB/s; triton {triton.__version__}")
    rows = []
    tiles = {"longseq": None, **{f"longseq {t}": tuple(int(v) for v in t.split(":")) for t in args.conv_tiles}}
    default_tiles = (triton_ops._CONV_BD, triton_ops._CONV_BLJ, triton_ops._CONV_NT)
    for kind, shapes, cases in (("conv", CONV_SHAPES, conv_cases), ("norm", NORM_SHAPES, norm_cases)):
        if args.only not in (None, kind):
            continue
        variants = {**{name: ops for name, ops in impls.items() if name != "longseq"},
                    **{name: triton_ops for name in (tiles if kind == "conv" else ["longseq"])}}
        for shape in shapes:
            per_impl = {name: cases(ops, shape) for name, ops in variants.items()}
            for op in per_impl["longseq"]:
                for name in variants:                  # interleaved: same shape, one after the other
                    fn, nbytes = per_impl[name][op]
                    tile = tiles.get(name) or default_tiles
                    triton_ops._CONV_BD, triton_ops._CONV_BLJ, triton_ops._CONV_NT = tile
                    ms = timed(fn, args.reps)
                    triton_ops._CONV_BD, triton_ops._CONV_BLJ, triton_ops._CONV_NT = default_tiles
                    gbs = nbytes / (ms / 1e3) / 1e9
                    row = dict(op=op, impl=name, shape=list(shape), ms=ms, bytes=nbytes, gb_s=gbs,
                               floor_ms=nbytes / bw * 1e3, fraction_of_floor=nbytes / bw / (ms / 1e3))
                    rows.append(row)
                    print(f"  {op:<9} {name:<16} {str(shape):<20} {ms:8.3f} ms  {gbs:7.0f} GB/s  "
                          f"floor {row['floor_ms']:.3f} ms ({100 * row['fraction_of_floor']:.0f}%)")
            torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps(dict(
            device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
            date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), copy_bandwidth_gb_s=bw / 1e9,
            baseline=args.baseline, rows=rows), indent=1))


if __name__ == "__main__":
    main()
