"""A small autotuner for kernels whose launch grid or buffers depend on the block sizes.

Triton's ``@triton.autotune`` re-runs the kernel many times while timing it, which is wrong for a
kernel that accumulates into (or writes in place over) its arguments. Here each kernel wrapper
passes a ``run(cfg)`` closure that allocates or zeroes what it writes, so every trial starts clean,
and the winner is cached per key. Tuning happens only on CUDA (never under TRITON_INTERPRET) and
can be switched off with ``LONGSEQ_AUTOTUNE=0`` (the first valid candidate is used then).
"""
from __future__ import annotations

import functools
import os

import torch

_CACHE: dict = {}
LOG: list = []   # (kernel, key, cfg, ms) of each tuned winner, for the benchmark's report
TRIALS: list = []  # (kernel, key, cfg, ms or None) of every trial


def enabled(t: torch.Tensor) -> bool:
    return t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1" and os.environ.get("LONGSEQ_AUTOTUNE", "1") != "0"


def pick(name: str, key, candidates: list, run, device_tensor: torch.Tensor):
    """Return the fastest of ``candidates`` for ``key`` (timing ``run(cfg)``), or the first if not tuning.
    All candidates are compiled first, in parallel where Triton allows (:func:`_compile_in_parallel`)."""
    if not candidates:
        raise RuntimeError(f"{name}: no valid kernel configuration")
    if len(candidates) == 1 or not enabled(device_tensor):
        return candidates[0]
    full = (name,) + tuple(key)
    if full in _CACHE:
        return _CACHE[full]
    from triton.testing import do_bench
    _compile_in_parallel(candidates, run)
    best, best_ms = None, float("inf")
    for cfg in candidates:
        try:
            ms = do_bench(lambda: run(cfg), warmup=5, rep=20, return_mode="median")
        except Exception:  # a configuration that does not compile (e.g. out of resources) is skipped
            TRIALS.append((name, key, cfg, None))
            continue
        TRIALS.append((name, key, cfg, ms))
        if ms < best_ms:
            best, best_ms = cfg, ms
    if best is None:
        best = candidates[0]
    _CACHE[full] = best
    LOG.append((name, key, best, best_ms))
    return best


def compile_workers() -> int:
    """Threads that compile the tuner's candidates: $LONGSEQ_COMPILE_WORKERS, else the CPUs this
    process may use (at most 16); 1 compiles them one by one, in the timing loop."""
    forced = os.environ.get("LONGSEQ_COMPILE_WORKERS")
    if forced:
        return max(1, int(forced))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(16, cpus)


def _compile_in_parallel(candidates: list, run) -> None:
    """Compile every candidate's kernels at once before any is timed. On first use (an empty Triton
    cache) compiling dominates the tuner's time: ~3 s per kernel, so a training step's forward and
    backward lists took 46-55 s one by one on the H100's host, and take 24-29 s (Triton 3.6) or 15 s
    (3.9) this way (kernel notes v22). Triton's ``AsyncCompileMode`` (in 3.6-3.9 at least) sends each
    ``warmup`` compilation to a thread pool; its Python front end holds the GIL, ptxas and much of
    the C++ do not. ``run(cfg)`` under ``triton_launch.compile_only`` issues those warmups and
    launches nothing. Errors are left to the timing loop, which skips a candidate that does not
    compile."""
    import triton
    mode = getattr(triton, "AsyncCompileMode", None)
    workers = min(len(candidates), compile_workers())
    if mode is None or workers < 2:
        return
    from concurrent.futures import ThreadPoolExecutor

    from .triton_launch import compile_only
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="longseq-compile") as pool, \
                mode(pool, ignore_errors=True), compile_only():
            for cfg in candidates:
                try:
                    run(cfg)
                except Exception:  # the timing loop reports it (and skips the candidate)
                    pass
    except RuntimeError:   # the caller's own AsyncCompileMode is active: the timing loop compiles
        pass


# Launch-time helpers. They run on every kernel call, so they stay cheap: triton.cdiv is a JIT
# function (~5 us per call from Python) and get_device_properties is not free either.
def launch_options(num_warps: int) -> dict:
    """Options for every kernel launch: ``num_warps``, and floating-point fusion asked for explicitly.

    Triton 3.9 warns that its default (``a * b + c`` compiled to one FMA) turns off in 3.10; the
    kernels' speed (the scan's recurrence is one FMA per element) and their float32 accuracy assume
    fused multiply-adds, so they must not depend on that default."""
    return {"num_warps": num_warps, "enable_fp_fusion": True}


def minor_version(version: str) -> tuple[int, int]:
    """(major, minor) of a version string such as Triton's: "3.9.1+git" -> (3, 9)."""
    major, minor = (int(x) for x in version.split(".")[:2])
    return major, minor


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(dev: torch.device, cpu: int) -> int:
    """Streaming multiprocessors of a CUDA device; ``cpu`` for other devices (the interpreter)."""
    if dev.type != "cuda":
        return cpu
    return _cuda_sm_count(dev.index if dev.index is not None else torch.cuda.current_device())
