"""Helpers shared by the benchmark scripts: timing, machine description, JSON output."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    info = {
        "date": _dt.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception:
        pass
    return info


def median_time(fn, repeats: int = 5, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of fn() in seconds (CPU work; synchronises CUDA if used)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write JSON atomically (temp file + rename) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
    return path


def scan_inputs(batch: int, dim: int, seqlen: int, dtype: torch.dtype, dstate: int = 16, seed: int = 0,
                pad: int = 0, device: str = "cuda") -> dict:
    """Seeded inputs of the Mamba block's selective scan, as every scan benchmark uses them.

    u, delta, z and an output gradient dy are [batch, dim, seqlen] and B, C [batch, dstate, seqlen],
    all in ``dtype`` (delta ~ N(-2, 0.5), i.e. softplus(delta + bias) around 0.13); A [dim, dstate] is
    -(1 .. dstate) with a 1% jitter per channel, D and bias [dim] float32. ``pad`` > 0 makes u, delta,
    z and dy views into rows of seqlen + pad elements (off a power-of-two row stride;
    probe_working_set.py).
    """
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, device=device, generator=g)  # noqa: E731
    rows = lambda x: x.to(dtype)[..., :seqlen]  # noqa: E731
    wide = (batch, dim, seqlen + pad)
    return dict(u=rows(r(*wide)), delta=rows(r(*wide) * 0.5 - 2.0), z=rows(r(*wide)), dy=rows(r(*wide)),
                B=r(batch, dstate, seqlen).to(dtype), C=r(batch, dstate, seqlen).to(dtype),
                A=-torch.arange(1, dstate + 1, device=device, dtype=torch.float32).repeat(dim, 1)
                * (1 + 0.01 * r(dim, 1)).abs(),
                D=r(dim), bias=r(dim) * 0.1)

