"""Kernels: selective scan, causal conv1d, one-step state update, fused add + RMSNorm.

Each public function dispatches to the fused Triton kernels on CUDA (``backend="triton"``) or
to ``backend="reference"``, which runs on any device: for the selective scan on CPU tensors that is
the numba-compiled kernel of ``cpu_scan`` (float64 inside), on other devices the chunked
pure-PyTorch scan; the other operations are plain PyTorch.
``selective_scan_ref`` is the float64 plain-loop ground truth that every backend is tested against.
"""
from .dispatch import (causal_conv1d, causal_conv1d_update, resolve_backend, rms_norm, selective_scan,
                       selective_state_update)
from .reference import (causal_conv1d_ref, causal_conv1d_update_ref, rms_norm_ref, selective_scan_chunked,
                        selective_scan_ref, selective_state_update_ref)

__all__ = [
    "selective_scan", "causal_conv1d", "causal_conv1d_update", "selective_state_update", "rms_norm",
    "resolve_backend", "selective_scan_ref", "selective_scan_chunked", "causal_conv1d_ref",
    "causal_conv1d_update_ref", "selective_state_update_ref", "rms_norm_ref",
]
