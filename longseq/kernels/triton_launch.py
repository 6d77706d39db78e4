"""Kernel launches with less host time than ``kernel[grid](*args, **constexprs)``.

On every call, Triton's ``JITFunction.run`` binds the arguments to the signature, specialises each
one (dtype, 16-byte alignment, integer range, ``== 1``), builds a cache key from them and reads
several settings from the environment before it launches. For the scan's kernels, with about 70
arguments, that is 140-190 us of host time per launch on the H100's host (Triton 3.6 and 3.9;
``benchmarks/profile_host.py``, kernel notes v20), as long as the GPU takes for a whole small scan.
The direct path below takes ~93 us, half of it in Triton's own launcher.

:func:`launch` keeps the compiled kernel of each distinct call in a dictionary keyed by what decides
Triton's specialisation and more (each tensor's dtype and alignment, each other argument's exact
value, the constexprs and launch options), goes through ``JITFunction.run`` the first time a key is
seen (compiling if needed, and returning the ``CompiledKernel`` as before), and afterwards calls
the compiled kernel's launcher itself with the same arguments ``JITFunction.run`` would pass.

The direct call relies on the launcher's calling convention, which is the same in Triton 3.6 to
3.9 (read in their sources). Other versions, the interpreter, launch hooks (e.g. Triton's
profiler) and ``LONGSEQ_TRITON_LAUNCH=triton`` take the plain path, which is always correct.
Like ``JITFunction.run``'s cache, this one assumes that Triton's compile settings from the
environment (``TRITON_DEBUG`` and the like) do not change within the process.
"""
from __future__ import annotations

import contextlib
import contextvars
import os

import torch
import triton
from triton.runtime.jit import JITFunction

from .triton_tune import minor_version


def direct_launch_supported(version: str) -> bool:
    """Whether this Triton's launcher takes the calling convention :func:`launch` uses (3.6 - 3.9)."""
    return (3, 6) <= minor_version(version) <= (3, 9)


_SUPPORTED = direct_launch_supported(triton.__version__)
_COMPILED: dict = {}   # (kernel, device, constexprs and options, argument key) -> (CompiledKernel, trailing args)
MAX_CACHED = 4096      # distinct calls kept; more (e.g. ever-changing shapes) clear the dictionary
# per thread (a context variable): another thread's launches meanwhile still run
_COMPILE_ONLY = contextvars.ContextVar("longseq_compile_only", default=False)


@contextlib.contextmanager
def compile_only():
    """Inside this context :func:`launch` compiles each kernel it is given and runs nothing (Triton's
    ``warmup``); under ``triton.AsyncCompileMode`` the compilation goes to that mode's thread pool.
    The tuner uses it to compile all its candidates at once before timing them."""
    token = _COMPILE_ONLY.set(True)
    try:
        yield
    finally:
        _COMPILE_ONLY.reset(token)


def _args_key(args: tuple) -> tuple[tuple, list]:
    """(key, launcher arguments) of a launch's positional arguments. The key is finer than Triton's
    specialisation: tensors by dtype and 16-byte alignment (what Triton reads of them), integers and
    everything else by exact value (Triton: range, % 16, == 1). The launcher gets each tensor as its
    address, which it takes as is (given a tensor, it would call data_ptr() and ask the driver
    whether the address is a device one); a tensor's key says whether it is on a CUDA device, so
    that a CPU tensor misses the cache and gets Triton's own launch and its error."""
    key, call = [], []
    for a in args:
        if a.__class__ is int:
            key.append(a)
            call.append(a)
        elif isinstance(a, torch.Tensor):
            p = a.data_ptr()
            key.append((a.dtype, p % 16 == 0, a.is_cuda))
            call.append(p)
        else:
            key.append((type(a), a))
            call.append(a)
    return tuple(key), call


def _hooked() -> bool:
    rt = triton.knobs.runtime
    return any(getattr(h, "calls", h) for h in (rt.launch_enter_hook, rt.launch_exit_hook))


def direct() -> bool:
    """Whether :func:`launch` may call compiled kernels' launchers itself in this process now."""
    return _SUPPORTED and os.environ.get("LONGSEQ_TRITON_LAUNCH", "direct") != "triton" and not _hooked()


def _trailing(kernel: JITFunction, npos: int, kwargs: dict) -> tuple:
    """The values of the parameters after the ``npos`` positional ones, in signature order, as
    ``JITFunction.run`` passes them to the launcher (constexprs included; the launcher skips them)."""
    out = []
    for name in kernel.arg_names[npos:]:
        if name in kwargs:
            out.append(kwargs[name])
        else:
            default = kernel.signature.parameters[name].default
            if default is kernel.signature.empty:
                raise TypeError(f"{kernel.fn.__name__}: missing argument {name!r}")
            out.append(default)
    return tuple(out)


_CHECKED: dict = {}    # (check, id(CompiledKernel)) -> (CompiledKernel, verdict): checks on the plain path
CHECK_FAILED = object()  # what launch returns, launching nothing, for a compiled kernel its check rejects


def _passes(check, kernel, grid, args, kwargs) -> bool:
    """check(CompiledKernel) for this call, compiling without launching (Triton's warmup); memoised per
    compiled kernel, so that the plain path parses each one once."""
    compiled = kernel.run(*args, grid=grid, warmup=True, **kwargs)
    hit = _CHECKED.get((check, id(compiled)))
    if hit is None:
        hit = _CHECKED[check, id(compiled)] = (compiled, bool(check(compiled)))
    return hit[1]


def launch(kernel, grid: tuple, *args, check=None, **kwargs):
    """``kernel[grid](*args, **kwargs)`` with less host time; returns the ``CompiledKernel`` (what the
    plain call returns). ``args`` are the kernel's leading parameters, passed positionally;
    ``kwargs`` the rest (constexprs) and launch options such as ``num_warps``. ``check``, if given, is
    a predicate on the compiled kernel (e.g. on its layouts), tested before the first launch of each
    distinct call: where it fails nothing runs and launch returns ``CHECK_FAILED`` (not under the
    interpreter, which compiles nothing)."""
    if _COMPILE_ONLY.get() and isinstance(kernel, JITFunction):
        return kernel.run(*args, grid=grid, warmup=True, **kwargs)
    if not isinstance(kernel, JITFunction):   # interpreted kernels are no JITFunction
        return kernel[grid](*args, **kwargs)
    if not direct():
        if check is not None and not _passes(check, kernel, grid, args, kwargs):
            return CHECK_FAILED
        return kernel[grid](*args, **kwargs)
    device = torch.cuda.current_device()
    arg_key, call = _args_key(args)
    key = (kernel, device, tuple(kwargs.items()), arg_key)
    hit = _COMPILED.get(key)
    if hit is None:
        if len(_COMPILED) >= MAX_CACHED:
            _COMPILED.clear()
        if check is not None and not _passes(check, kernel, grid, args, kwargs):
            _COMPILED[key] = (CHECK_FAILED, None)
            return CHECK_FAILED
        compiled = kernel[grid](*args, **kwargs)
        _COMPILED[key] = (compiled, _trailing(kernel, len(args), kwargs))
        return compiled
    compiled, trailing = hit
    if compiled is CHECK_FAILED:
        return compiled
    stream = torch._C._cuda_getCurrentRawStream(device)
    g1 = grid[1] if len(grid) > 1 else 1
    g2 = grid[2] if len(grid) > 2 else 1
    # JITFunction.run's call, with no launch metadata and no hooks (direct() checked there are none)
    compiled.run(grid[0], g1, g2, stream, compiled.function, compiled.packed_metadata, None, None, None,
                 *call, *trailing)
    return compiled
