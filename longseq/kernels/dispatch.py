"""One entry point per kernel; picks the backend for the tensors' device.

``backend=None`` means the best available: the fused Triton kernels on CUDA tensors when Triton
imports, otherwise ``reference``: the compiled numba scan (``cpu_scan``) for CPU tensors and the
chunked pure-PyTorch scan for tensors on other devices. ``LONGSEQ_SCAN_BACKEND`` (``triton`` or
``reference``) overrides the default for every call that does not name a backend.
"""
from __future__ import annotations

import importlib.util
import os

import torch

from . import reference

BACKENDS = ("triton", "reference")


# looked up once at import: torch.compile cannot trace importlib (a graph break per call otherwise)
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


_AVAILABLE: list = []      # the answer, once known


@torch.compiler.assume_constant_result    # torch.compile: called, not traced
def triton_available() -> bool:
    """True when Triton imports and can run here (a CUDA device, or TRITON_INTERPRET=1)."""
    if not _AVAILABLE:
        _AVAILABLE.append(_TRITON_INSTALLED and (torch.cuda.is_available()
                                                 or os.environ.get("TRITON_INTERPRET") == "1"))
    return _AVAILABLE[0]


def resolve_backend(backend: str | None, tensor: torch.Tensor) -> str:
    """The backend a call will use: the argument, else $LONGSEQ_SCAN_BACKEND, else the device's best."""
    if backend is None:
        backend = os.environ.get("LONGSEQ_SCAN_BACKEND") or None
    if backend is None:
        return "triton" if tensor.is_cuda and triton_available() else "reference"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None; got {backend!r}")
    if backend == "triton" and not triton_available():
        raise ValueError("backend='triton' needs the triton package and a CUDA device "
                         "(or TRITON_INTERPRET=1 to run the kernels on the CPU); use backend='reference'")
    return backend


def _triton():
    # Imported lazily: importing Triton costs ~1 s and CPU-only users never need it.
    from . import triton_ops
    return triton_ops


def _cpu_scan():
    # Imported lazily: importing numba costs ~1 s and only CPU scans need it.
    from . import cpu_scan
    return cpu_scan


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_state=None, backend=None):
    """Selective scan with ``mamba_ssm.selective_scan_fn``'s arguments, shapes and semantics.

    u, delta, z: (batch, dim, seqlen); A: (dim, dstate); B, C: (batch, dstate, seqlen) or grouped
    (batch, groups, dstate, seqlen); D, delta_bias: (dim,); initial_state: (batch, dim, dstate).

        delta <- softplus(delta + delta_bias) (softplus only if delta_softplus)
        h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t ;  y_t = <h_t, C_t> + D u_t ;  y *= silu(z)

    Returns y (dtype of u), or (y, last_state) with last_state (batch, dim, dstate) float32.
    Accumulates in float32 for every input dtype; differentiable in every tensor argument.
    Scanning a sequence in two pieces, passing the first piece's last state as the second's
    ``initial_state``, equals scanning it whole.
    """
    kwargs = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                  return_last_state=return_last_state, initial_state=initial_state)
    if resolve_backend(backend, u) == "triton":
        return _triton().selective_scan(u, delta, A, B, C, **kwargs)
    if u.device.type == "cpu":
        return _cpu_scan().selective_scan_cpu(u, delta, A, B, C, **kwargs)
    # Not a CPU tensor (a GPU without Triton, MPS, ...): numba cannot read the memory, and copying
    # to the CPU and back would be slower than the chunked whole-tensor path on the device.
    return reference.selective_scan_chunked(u, delta, A, B, C, **kwargs)


def causal_conv1d(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False,
                  backend=None, readers=1):
    """Depthwise causal conv1d over (batch, dim, seqlen) with weight (dim, width); see causal_conv1d_ref.

    ``readers=2`` returns the output twice, ``(y, y_again[, final_state])``, for two consumers (the
    Mamba mixer's x-projection and scan): the same values, and on the Triton backend the backward
    kernel adds the two gradients as it reads them, where autograd would add them in a pass of its
    own (~1 ms per layer of 512 channels at 2^20 tokens on an H100)."""
    if readers not in (1, 2):
        raise ValueError(f"causal_conv1d: argument 'readers' must be 1 or 2; got {readers!r}")
    kwargs = dict(bias=bias, activation=activation, initial_state=initial_state,
                  return_final_state=return_final_state)
    if resolve_backend(backend, x) == "triton":
        return _triton().causal_conv1d(x, weight, readers=readers, **kwargs)
    out = reference.causal_conv1d_ref(x, weight, **kwargs)
    if readers == 1:
        return out
    return (out[0], out[0], out[1]) if return_final_state else (out, out)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, backend=None):
    """One decoding step of causal_conv1d: x (batch, dim) -> y (batch, dim), ``conv_state``
    (batch, dim, width-1) advanced in place; see causal_conv1d_update_ref."""
    if resolve_backend(backend, x) == "triton":
        return _triton().causal_conv1d_update(x, conv_state, weight, bias, activation)
    return reference.causal_conv1d_update_ref(x, conv_state, weight, bias, activation)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           backend=None):
    """One decoding step of the scan, in place on ``state``; returns y (batch, dim)."""
    kwargs = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
    if resolve_backend(backend, x) == "triton":
        return _triton().selective_state_update(state, x, dt, A, B, C, **kwargs)
    return reference.selective_state_update_ref(state, x, dt, A, B, C, **kwargs)


def rms_norm(x, weight, residual=None, eps=1e-5, prenorm=False, residual_in_fp32=False, backend=None):
    """RMSNorm of ``x + residual`` over the last dim; with ``prenorm`` also returns the sum."""
    kwargs = dict(residual=residual, eps=eps, prenorm=prenorm, residual_in_fp32=residual_in_fp32)
    if resolve_backend(backend, x) == "triton":
        return _triton().rms_norm(x, weight, **kwargs)
    return reference.rms_norm_ref(x, weight, **kwargs)
