"""A small autotuner for kernels whose launch grid or buffers depend on the block sizes.

Triton's ``@triton.autotune`` re-runs the kernel many times while timing it, which is wrong for a
kernel that accumulates into (or writes in place over) its arguments. Here each kernel wrapper
passes a ``run(cfg)`` closure that allocates or zeroes what it writes, so every trial starts clean,
and the winner is cached per key: in the process, and on disk for later processes
(:func:`disk_cache_path`). Tuning happens only on CUDA (never under TRITON_INTERPRET) and can be
switched off with ``LONGSEQ_AUTOTUNE=0`` (the first valid candidate is used then).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings

import torch

from .._atomic import atomic_path
from .._cache import cache_root

_CACHE: dict = {}
LOG: list = []   # (kernel, key, cfg, ms) of each tuned winner, for the benchmark's report
TRIALS: list = []  # (kernel, key, cfg, ms or None) of every trial
LOADED: list = []  # (kernel, key, cfg) of each winner read from the disk cache
_DISK: dict = {}   # path -> {entry key: {"cfg": repr, "ms": float}}, as read from that file
_WARNED: set = set()


def enabled(t: torch.Tensor) -> bool:
    return t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1" and os.environ.get("LONGSEQ_AUTOTUNE", "1") != "0"


def _time(run, cfg) -> float:
    """Median milliseconds of ``run(cfg)`` on the GPU."""
    from triton.testing import do_bench
    return do_bench(lambda: run(cfg), warmup=5, rep=20, return_mode="median")


def pick(name: str, key, candidates: list, run, device_tensor: torch.Tensor):
    """Return the fastest of ``candidates`` for ``key`` (timing ``run(cfg)``), or the first if not tuning.
    All candidates are compiled first, in parallel where Triton allows (:func:`_compile_in_parallel`).
    A winner found by an earlier process on the same GPU model, software and kernel code is read
    from the disk cache instead (:func:`disk_cache_path`)."""
    if not candidates:
        raise RuntimeError(f"{name}: no valid kernel configuration")
    if len(candidates) == 1 or not enabled(device_tensor):
        return candidates[0]
    full = (name, _device_name(device_tensor.device)) + tuple(key)
    if full in _CACHE:
        return _CACHE[full]
    # the entry names the candidate list too: a winner stands only against the same rivals
    entry = repr(full + (tuple(map(repr, candidates)),))
    path = disk_cache_path(device_tensor.device)
    stored = _disk_entries(path).get(entry) if path else None
    by_repr = {repr(c): c for c in candidates}
    if stored is not None and stored.get("cfg") in by_repr:
        best = _CACHE[full] = by_repr[stored["cfg"]]
        LOADED.append((name, key, best))
        return best
    _compile_in_parallel(candidates, run)
    best, best_ms = None, float("inf")
    for cfg in candidates:
        try:
            ms = _time(run, cfg)
        except Exception:  # a configuration that does not compile (e.g. out of resources) is skipped
            TRIALS.append((name, key, cfg, None))
            continue
        TRIALS.append((name, key, cfg, ms))
        if ms < best_ms:
            best, best_ms = cfg, ms
    if best is None:
        best = candidates[0]
    elif path:
        _disk_store(path, entry, dict(cfg=repr(best), ms=best_ms))
    _CACHE[full] = best
    LOG.append((name, key, best, best_ms))
    return best


# ---------------------------------------------------------------------------------- disk cache
# Timing a kernel's candidates at a new shape costs about a second per kernel at small sizes and
# tens of seconds for million-token sequences, in every new process (a training run, each
# `longseq predict`). The winners are therefore kept on disk, one JSON file per GPU model, Triton,
# PyTorch and version of the kernels' code (a hash of longseq/kernels/*.py): a change of any of
# them starts a new file, as the timings no longer hold.

def _device_name(dev: torch.device) -> str:
    return _cuda_device_name(dev.index if dev.index is not None else torch.cuda.current_device()) \
        if dev.type == "cuda" else dev.type


@functools.lru_cache(maxsize=None)
def _cuda_device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


@functools.lru_cache(maxsize=None)
def _code_digest() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for name in sorted(os.listdir(here)):
        if name.endswith(".py"):
            with open(os.path.join(here, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()[:12]


def disk_cache_path(dev: torch.device) -> str | None:
    """The file of tuned winners for ``dev``, or None where ``$LONGSEQ_TUNE_CACHE`` is ``0`` (off).

    It lies in ``tune/`` of the longseq cache (``$LONGSEQ_CACHE``, else ``~/.cache/longseq``). Its
    name holds the GPU model, the Triton and PyTorch versions and a hash of the kernels' code and of
    the environment variables that steer the scan kernels (``LONGSEQ_SCAN_*``), so that no timing is
    reused where it may not hold. Delete the folder to tune again."""
    if os.environ.get("LONGSEQ_TUNE_CACHE") == "0":
        return None
    import triton
    folder = cache_root() / "tune"
    knobs = sorted((k, v) for k, v in os.environ.items() if k.startswith("LONGSEQ_SCAN_"))
    digest = hashlib.sha256(repr((_code_digest(), knobs)).encode()).hexdigest()[:12]
    model = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in _device_name(dev))
    torch_version = torch.__version__.split("+")[0]
    return str(folder / f"{model}-triton{triton.__version__}-torch{torch_version}-{digest}.json")


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError):     # nothing stored yet
        return {}
    except (OSError, ValueError) as e:   # unreadable or not JSON: tune again, and say which file
        _warn_once(f"longseq: ignoring the kernel tuning cache {path} ({e}); it will be rewritten")
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        _warn_once(f"longseq: ignoring the kernel tuning cache {path} (no 'entries' object); "
                   "it will be rewritten")
        return {}
    return entries


def _disk_entries(path: str) -> dict:
    if path not in _DISK:
        _DISK[path] = _read(path)
    return _DISK[path]


def _disk_store(path: str, entry: str, value: dict) -> None:
    """Add one winner to the file: re-read it (another process may have added entries), then write
    the union to a temporary file that replaces it in one step, so that a reader never sees half a
    file. A folder that cannot be written only costs the re-tuning: a warning, once."""
    entries = _disk_entries(path)
    entries[entry] = value
    try:
        merged = {**_read(path), **entries}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"format": 1, "entries": merged}, indent=0))
        _DISK[path] = merged
    except OSError as e:
        _warn_once(f"longseq: cannot write the kernel tuning cache {path} ({e}); kernels will be "
                   "tuned again in each process (set LONGSEQ_CACHE to a writable folder, or LONGSEQ_TUNE_CACHE=0)")


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
