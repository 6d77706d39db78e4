"""Selective-scan benchmark on the GPU: fused Triton kernels vs mamba_ssm, the PyTorch paths and SDPA.

    python benchmarks/bench_scan.py --out docs/benchmarks/scan-h100.json

For fp32 and bf16: batch 8, dim 1536, dstate 16 at seqlen 2K/8K/32K, and batch 1 at 256K and 1M.
Inputs as in a Mamba block: u, delta, z, B, C in the dtype, A/D/delta_bias float32, softplus on.
Reports forward (inference: no states saved; and training: chunk states saved) and fwd+bwd time
(median of CUDA-event timings, triton.testing.do_bench), GB/s over the byte count below, and the
fraction of the HBM floor = bytes / (device-to-device copy bandwidth measured in the same run).

Bytes (each input read once, each output written once): fwd = (3*b*d*L + 2*b*n*L)*es [u, delta, z,
B, C] + b*d*L*es [y]; bwd adds reading u, delta, z, B, C, dy and writing du, ddelta, dz, dB, dC.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

# every run times its own candidates (its report lists the trials), whatever an earlier run stored
os.environ.setdefault("LONGSEQ_TUNE_CACHE", "0")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from longseq.kernels import reference as R  # noqa: E402
from longseq.kernels import triton_ops, triton_scan_op, triton_tune  # noqa: E402
from common import scan_inputs  # noqa: E402

DEV = "cuda"
SHAPES = [(8, 1536, 2048), (8, 1536, 8192), (8, 1536, 32768), (1, 1536, 262144), (1, 1536, 1 << 20)]
N = 16


def bench(fn, rep=200, warmup=25):
    return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def once(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def copy_bandwidth():
    x = torch.empty(4 << 30, device=DEV, dtype=torch.uint8)
    x.fill_(3)
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x), rep=300)
    del x, y
    return 2 * (4 << 30) / ms / 1e6  # GB/s counting read + write


def warm_up(seconds=2.0):
    """Keep the GPU busy for a while before the first timed row (clocks and power state settle:
    the first row of an earlier run came out 1.6x slower than the tuner's own timing of it)."""
    a = torch.randn(4096, 4096, device=DEV)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


def host_overhead(calls=200):
    """Microseconds of Python/launch time per forward call, from a shape whose kernels take ~nothing."""
    t = scan_inputs(1, 64, 64, torch.float32, device=DEV)
    with torch.no_grad():
        for _ in range(20):
            ours(t)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            ours(t)
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def ours(t, grad=False):
    return triton_ops.selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["bias"],
                                     delta_softplus=True)


def load_mamba(wait_s):
    """Import the selective_scan_cuda built by build_mamba_ssm.py (waits up to wait_s for the build)."""
    bdir = os.environ.get("MAMBA_BUILD_DIR", "/tmp/mamba_build")
    log = os.environ.get("MAMBA_BUILD_LOG", "")
    t0 = time.time()
    if log and not os.path.exists(log) and not os.path.exists(os.path.join(bdir, "selective_scan_cuda.so")):
        return None, "no build was started (SKIP_MAMBA, or no .mamba_src)"   # nothing to wait for
    while True:
        if os.path.exists(os.path.join(bdir, "selective_scan_cuda.so")):
            done = (not log) or (os.path.exists(log) and "built in" in open(log).read())
            if done:
                break
        if log and os.path.exists(log) and "rc=" in open(log).read():
            break
        if time.time() - t0 > wait_s:
            return None, f"not built within the lease (waited {wait_s:.0f} s more after our runs)"
        time.sleep(5)
    try:
        sys.path.insert(0, bdir)
        import selective_scan_cuda  # noqa: F401
        return selective_scan_cuda, "built from the mamba_ssm 2.3.2.post1 sdist on the device (sm_90)"
    except Exception as e:  # noqa: BLE001
        tail = open(log).read()[-1500:] if log and os.path.exists(log) else ""
        return None, f"build failed or import failed: {e!r}; log tail: {tail}"


def save(res, path):
    # the tuner's trials with every row: a run cut off at its time limit still has them
    res["trials"] = [dict(kernel=k, key=[str(x) for x in key], cfg=list(cfg), ms=ms)
                     for k, key, cfg, ms in triton_tune.TRIALS]
    res["tuned"] = [dict(kernel=k, key=[str(x) for x in key], cfg=list(cfg), ms=ms) for k, key, cfg, ms in triton_tune.LOG]
    with open(path, "w") as f:
        json.dump(res, f, indent=1)


def main():
    global N  # --dstate: the inputs and the byte counts read it
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="scan-bench.json")
    ap.add_argument("--mamba-wait", type=float, default=240)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--shapes", default="", help="comma-separated BxDxL (default: all of SHAPES)")
    ap.add_argument("--dtypes", default="bfloat16,float32", help="comma-separated (default: both)")
    ap.add_argument("--dstate", type=int, default=N, help=f"state size (default {N})")
    ap.add_argument("--ours-only", action="store_true",
                    help="skip the PyTorch paths and SDPA (short device runs; their numbers do not change)")
    args = ap.parse_args()
    N = args.dstate
    torch.backends.cuda.matmul.allow_tf32 = True
    props = torch.cuda.get_device_properties(0)
    res = dict(device=props.name, sms=props.multi_processor_count, torch=torch.__version__,
               triton=__import__("triton").__version__, chan_axis=os.environ.get("LONGSEQ_SCAN_CHAN_AXIS") or "per kernel",
               rows=[], notes=[])
    bw = copy_bandwidth()
    res["copy_GBps"] = bw
    print(f"device {props.name}; copy bandwidth {bw:.0f} GB/s (read+write)", flush=True)
    res["host_us_per_call"] = host_overhead()
    print(f"host time per selective_scan call (tiny shape, GPU idle): {res['host_us_per_call']:.0f} us", flush=True)
    warm_up()
    shapes = SHAPES[:2] if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    for dtype in [getattr(torch, name) for name in args.dtypes.split(",")]:
        es = torch.finfo(dtype).bits // 8
        for (b, d, L) in shapes:
            torch.cuda.empty_cache()
            t = scan_inputs(b, d, L, dtype, dstate=N, device=DEV)
            row = dict(dtype=str(dtype).split(".")[-1], batch=b, dim=d, seqlen=L, dstate=N)
            fwd_bytes = (4 * b * d * L + 2 * b * N * L) * es
            bwd_bytes = (7 * b * d * L + 4 * b * N * L) * es
            row.update(fwd_bytes=fwd_bytes, fwdbwd_bytes=fwd_bytes + bwd_bytes)
            big = b * L >= 1 << 18
            rep = 30 if big else 100
            with torch.no_grad():
                ms = bench(lambda: ours(t), rep=rep)
            row["ours_fwd_ms"] = ms
            row["ours_fwd_GBps"] = fwd_bytes / ms / 1e6
            row["ours_fwd_floor_frac"] = (fwd_bytes / bw / 1e6) / ms
            row["ours_ns_per_token_channel"] = ms * 1e6 / (b * d * L)
            xs = {k: (v.requires_grad_() if k in ("u", "delta", "z", "B", "C", "A", "D", "bias") else v)
                  for k, v in t.items()}
            row["ours_fwd_train_ms"] = bench(lambda: ours(xs), rep=rep)

            def fb():
                for v in xs.values():
                    v.grad = None
                ours(xs).backward(xs["dy"])
            row["ours_fwdbwd_ms"] = bench(fb, rep=rep)
            row["kernels"] = {name: dict(n_regs=getattr(k, "n_regs", None), n_spills=getattr(k, "n_spills", None))
                              for name, k in triton_scan_op.COMPILED.items()}
            row["ours_fwdbwd_floor_frac"] = ((fwd_bytes + bwd_bytes) / bw / 1e6) / row["ours_fwdbwd_ms"]
            for v in xs.values():
                v.grad = None
            # the chunked PyTorch reference (the CPU default), on the GPU
            prev = res["rows"][-1] if res["rows"] else None
            if args.ours_only:
                res["rows"].append(row)
                save(res, args.out)
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
                del t, xs
                continue
            if L >= 1 << 20 and prev and prev["batch"] == b and prev["dtype"] == row["dtype"]:
                # linear in L: extrapolated from the previous (256K) row, stated in the output
                row["chunked_ref_fwd_ms"] = prev["chunked_ref_fwd_ms"] * L / prev["seqlen"]
                row["chunked_ref_extrapolated"] = True
            elif L * b <= 1 << 18:
                with torch.no_grad():
                    row["chunked_ref_fwd_ms"] = bench(lambda: R.selective_scan_chunked(
                        t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["bias"], True), rep=100, warmup=3)
            else:
                with torch.no_grad():
                    row["chunked_ref_fwd_ms"] = once(lambda: R.selective_scan_chunked(
                        t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["bias"], True))
            # the plain loop (selective_scan_ref: float64, one step per Python iteration): a 256-step prefix,
            # extrapolated linearly to L (stated in the output)
            P = 256
            with torch.no_grad():
                sl = {k: (v[..., :P] if v.dim() >= 3 else v) for k, v in t.items()}
                pms = once(lambda: R.selective_scan_ref(sl["u"], sl["delta"], sl["A"], sl["B"], sl["C"], sl["D"],
                                                        sl["z"], sl["bias"], True))
            row["plain_loop_fwd_ms_extrapolated"] = pms * L / P
            # SDPA flash attention with the same width: 24 heads x 64 = 1536, causal, bf16
            if L >= 1 << 20 and prev and prev.get("sdpa_flash_fwd_ms"):
                # causal attention is quadratic in L: extrapolated from the previous (256K) row
                f = (L / prev["seqlen"]) ** 2
                row["sdpa_flash_fwd_ms"] = prev["sdpa_flash_fwd_ms"] * f
                row["sdpa_flash_fwdbwd_ms"] = prev["sdpa_flash_fwdbwd_ms"] * f
                row["sdpa_extrapolated"] = True
            else:
              try:
                H, hd = d // 64, 64
                q = torch.randn(b, H, L, hd, device=DEV, dtype=torch.bfloat16, requires_grad=True)
                k = torch.randn_like(q, requires_grad=True)
                v = torch.randn_like(q, requires_grad=True)
                from torch.nn.attention import SDPBackend, sdpa_kernel
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    with torch.no_grad():
                        f = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
                        row["sdpa_flash_fwd_ms"] = bench(f, rep=rep) if L <= 32768 else once(f)
                    go = torch.randn_like(q)

                    def sfb():
                        q.grad = k.grad = v.grad = None
                        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(go)
                    row["sdpa_flash_fwdbwd_ms"] = bench(sfb, rep=rep) if L <= 32768 else once(sfb)
                del q, k, v, go
              except Exception as e:  # noqa: BLE001
                row["sdpa_error"] = repr(e)[:200]
            res["rows"].append(row)
            save(res, args.out)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
            del t, xs
    res["tuned"] = [dict(kernel=k, key=[str(x) for x in key], cfg=list(cfg), ms=ms) for k, key, cfg, ms in triton_tune.LOG]
    res["registers"] = {name: dict(n_regs=getattr(k, "n_regs", None), n_spills=getattr(k, "n_spills", None),
                                   shared=getattr(getattr(k, "metadata", None), "shared", None),
                                   num_warps=getattr(getattr(k, "metadata", None), "num_warps", None))
                        for name, k in triton_scan_op.COMPILED.items()}
    print("registers:", res["registers"], flush=True)
    # mamba_ssm's CUDA kernel, if the background build finished
    torch.cuda.empty_cache()
    mod, note = (None, "not run (--ours-only)") if args.ours_only else load_mamba(args.mamba_wait)
    res["mamba_ssm"] = note
    print("mamba_ssm:", note[:300], flush=True)
    if mod is not None:
        for row in res["rows"]:
            dtype = getattr(torch, row["dtype"])
            b, d, L = row["batch"], row["dim"], row["seqlen"]
            torch.cuda.empty_cache()
            try:
                t = scan_inputs(b, d, L, dtype, dstate=N, device=DEV)
                rep = 30 if b * L >= 1 << 18 else 100
                # mamba_ssm's C++ entry takes variable B/C as (batch, groups, dstate, L)
                Bm, Cm = t["B"].unsqueeze(1), t["C"].unsqueeze(1)
                args_ = (t["u"], t["delta"], t["A"], Bm, Cm, t["D"], t["z"], t["bias"], True)
                out, x, *rest = mod.fwd(*args_)
                ours_y = ours(t)
                row["mamba_vs_ours_rel"] = float(((rest[0].float() - ours_y.float()).norm() / rest[0].float().norm()))
                row["mamba_fwd_ms"] = bench(lambda: mod.fwd(*args_), rep=rep)

                def mfb():
                    out, x, *rest = mod.fwd(*args_)
                    mod.bwd(t["u"], t["delta"], t["A"], Bm, Cm, t["D"], t["z"], t["bias"], t["dy"], x, out,
                            None, True, False)
                row["mamba_fwdbwd_ms"] = bench(mfb, rep=rep)
                save(res, args.out)
                print(json.dumps({k: row[k] for k in ("dtype", "batch", "seqlen", "mamba_fwd_ms", "mamba_fwdbwd_ms",
                                                        "ours_fwd_ms", "ours_fwdbwd_ms", "mamba_vs_ours_rel")}), flush=True)
                del t, out, x, rest
            except Exception as e:  # noqa: BLE001
                row["mamba_error"] = repr(e)[:300]
                print("mamba error", row["mamba_error"], flush=True)
    res["trials"] = [dict(kernel=k, key=[str(x) for x in key], cfg=list(cfg), ms=ms)
                     for k, key, cfg, ms in triton_tune.TRIALS]
    save(res, args.out)
    # summary table (the device reply carries the end of the output)
    print("\n dtype  b     L     fwd_ms  fwd_floor  train_fwd  fwdbwd_ms fb_floor  ns/tok/ch  mamba_f  mamba_fb  sdpa_f  sdpa_fb  loop_x  chunk_f")
    for r in res["rows"]:
        print(f"{r['dtype']:>6} {r['batch']} {r['seqlen']:>8} {r['ours_fwd_ms']:8.3f} {r['ours_fwd_floor_frac']:8.2f} "
              f"{r['ours_fwd_train_ms']:9.3f} {r['ours_fwdbwd_ms']:9.3f} {r['ours_fwdbwd_floor_frac']:7.2f} "
              f"{r['ours_ns_per_token_channel']:9.4f} {r.get('mamba_fwd_ms', float('nan')):8.3f} "
              f"{r.get('mamba_fwdbwd_ms', float('nan')):8.3f} {r.get('sdpa_flash_fwd_ms', float('nan')):8.2f} "
              f"{r.get('sdpa_flash_fwdbwd_ms', float('nan')):8.2f} "
              f"{r.get('plain_loop_fwd_ms_extrapolated', float('nan')) / r['ours_fwd_ms']:7.0f} "
              f"{r.get('chunked_ref_fwd_ms', float('nan')):8.2f}")


if __name__ == "__main__":
    main()
