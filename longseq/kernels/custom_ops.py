"""The fused Triton kernels as PyTorch custom operators: the form in which ``torch.compile`` takes them.

Dynamo cannot trace a kernel launch: the launch path reads tensor addresses, the autotuner times
candidates, and Dynamo's own support for Triton kernels called from Python fails on our launches
(graph breaks in the decoding step; an internal error for a training step, kernel notes v21).
Registered with ``torch.library.custom_op``, each kernel call is one opaque node of the compiled
graph: a fake implementation gives its outputs' shapes and dtypes, an autograd formula links the
forward to its backward kernel, and inductor fuses the PyTorch work around it.

The Triton wrappers (``triton_ops``, ``triton_scan_op``) check their arguments, then call these
operators while ``torch.compiler.is_compiling()`` and their own autograd Functions and launchers
otherwise: every custom-operator call costs dispatcher host time, and an eager call has no graph
to join. Both routes run the same forward, backward and launch functions. The operators are
registered when the Triton wrappers are first imported.

Custom operators return tensors only: an output the kernel does not produce (the saved states
of an inference forward, a gradient nobody asked for) comes back as an empty placeholder.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

SAVE_CHUNK = 32   # triton_scan_op.SAVE_CHUNK (checked by a test): the training forward's saved-state stride


def _ops():
    from . import triton_ops
    return triton_ops


def _scan_op():
    from . import triton_scan_op
    return triton_scan_op


def _none(t: Tensor | None, like: Tensor) -> Tensor:
    """A placeholder for an output that is None."""
    return like.new_empty(0) if t is None else t


# ----------------------------------------------------------------------------- selective scan

@torch.library.custom_op("longseq::selective_scan_fwd", mutates_args=())
def selective_scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                       z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
                       initial_state: Optional[Tensor], save: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, last state, saved states, pre-gate output); the last two are placeholders unless ``save``
    (and the fourth unless z is given too)."""
    y, last, states, ypre = _scan_op()._fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                            initial_state, save)
    return y, last, _none(states, u), _none(ypre, u)


@selective_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, save):
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    f32 = torch.float32
    states = u.new_empty((batch, dim, -(-seqlen // SAVE_CHUNK), dstate), dtype=f32) if save else u.new_empty(0)
    ypre = u.new_empty(u.shape) if save and z is not None else u.new_empty(0)
    return u.new_empty(u.shape), u.new_empty((batch, dim, dstate), dtype=f32), states, ypre


@torch.library.custom_op("longseq::selective_scan_bwd", mutates_args=())
def selective_scan_bwd(dout: Tensor, dlast: Optional[Tensor], u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                       C: Tensor, D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                       delta_softplus: bool, states: Tensor, ypre: Optional[Tensor], need_dB: bool,
                       need_dC: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state), float32 for A, D, the bias and
    the initial state; placeholders for what does not exist or is not needed."""
    need = (True, True, True, need_dB, need_dC)
    out = _scan_op()._bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, states, need, ypre)
    du, ddelta, dA, dB, dC, dD, dz, dbias, dinit = out
    if dB is not None and dC is not None and dB.untyped_storage().data_ptr() == dC.untyped_storage().data_ptr():
        dC = dC.clone()          # float32 dB and dC are views of one buffer; outputs may not alias
    return tuple(_none(t, u) for t in (du, ddelta, dA, dB, dC, dD, dz, dbias, dinit))


@selective_scan_bwd.register_fake
def _(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, states, ypre, need_dB, need_dC):
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    f32 = torch.float32
    empty = u.new_empty(0)
    return (u.new_empty(u.shape), delta.new_empty(u.shape), u.new_empty((dim, dstate), dtype=f32),
            B.new_empty(B.shape) if need_dB else empty, C.new_empty(C.shape) if need_dC else empty,
            u.new_empty((dim,), dtype=f32) if D is not None else empty,
            z.new_empty(z.shape) if z is not None else empty,
            u.new_empty((dim,), dtype=f32) if delta_bias is not None else empty,
            u.new_empty((batch, dim, dstate), dtype=f32))


def _scan_setup(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, save = inputs
    _, _, states, ypre = output
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states, ypre if z is not None else None)
    ctx.softplus = delta_softplus
    ctx.dtypes = tuple(None if t is None else t.dtype for t in (A, D, delta_bias, initial_state))


def _scan_backward(ctx, dy, dlast, _dstates, _dypre):
    u, delta, A, B, C, D, z, delta_bias, states, ypre = ctx.saved_tensors
    if states.dim() != 4:
        raise RuntimeError("longseq::selective_scan_fwd ran with save=False, so it kept no states for its "
                           "backward: pass save=True when a gradient is wanted")
    need = ctx.needs_input_grad
    if dy is None:
        dy = torch.zeros_like(u)
    du, ddelta, dA, dB, dC, dD, dz, dbias, dinit = selective_scan_bwd(
        dy, dlast, u, delta, A, B, C, D, z, delta_bias, ctx.softplus, states, ypre, need[3], need[4])
    a_dt, d_dt, b_dt, i_dt = ctx.dtypes
    return (du, ddelta, dA.to(a_dt), dB if need[3] else None, dC if need[4] else None,
            None if D is None else dD.to(d_dt),
            None if z is None else dz, None if delta_bias is None else dbias.to(b_dt), None,
            None if i_dt is None else dinit.to(i_dt), None)


selective_scan_fwd.register_autograd(_scan_backward, setup_context=_scan_setup)


# ----------------------------------------------------------------------------- causal conv1d

@torch.library.custom_op("longseq::causal_conv1d_fwd", mutates_args=())
def causal_conv1d_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], initial_state: Optional[Tensor],
                      silu: bool) -> Tensor:
    return _ops().conv_forward(x, weight, bias, initial_state, silu)


@causal_conv1d_fwd.register_fake
def _(x, weight, bias, initial_state, silu):
    return x.new_empty(x.shape)


@torch.library.custom_op("longseq::causal_conv1d_bwd", mutates_args=())
def causal_conv1d_bwd(dy: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                      initial_state: Optional[Tensor], silu: bool,
                      need_dinit: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dx, dw, db, dinit = _ops().conv_backward(dy, x, weight, bias, initial_state, silu, need_dinit)
    return dx, dw, _none(db, x), _none(dinit, x)


@causal_conv1d_bwd.register_fake
def _(dy, x, weight, bias, initial_state, silu, need_dinit):
    empty = x.new_empty(0)
    return (x.new_empty(x.shape), weight.new_empty(weight.shape),
            bias.new_empty(bias.shape) if bias is not None else empty,
            initial_state.new_empty(initial_state.shape) if initial_state is not None and need_dinit else empty)


def _conv_setup(ctx, inputs, output):
    x, weight, bias, initial_state, silu = inputs
    ctx.save_for_backward(x, weight, bias, initial_state)
    ctx.silu = silu


def _conv_backward(ctx, dy):
    x, weight, bias, init = ctx.saved_tensors
    dx, dw, db, dinit = causal_conv1d_bwd(dy, x, weight, bias, init, ctx.silu, ctx.needs_input_grad[3])
    need_dinit = init is not None and ctx.needs_input_grad[3]
    return dx, dw, None if bias is None else db, dinit if need_dinit else None, None


causal_conv1d_fwd.register_autograd(_conv_backward, setup_context=_conv_setup)


# ----------------------------------------------------------------------------- add + RMSNorm

@torch.library.custom_op("longseq::rms_norm_fwd", mutates_args=())
def rms_norm_fwd(x: Tensor, weight: Tensor, residual: Optional[Tensor], eps: float, prenorm: bool,
                 residual_in_fp32: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(y, s or a placeholder, rstd)."""
    y, s, rstd = _ops().rms_forward(x, weight, residual, eps, prenorm, residual_in_fp32)
    return y, _none(s, x), rstd


@rms_norm_fwd.register_fake
def _(x, weight, residual, eps, prenorm, residual_in_fp32):
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    s = x.new_empty(x.shape, dtype=torch.float32 if residual_in_fp32 else x.dtype) if prenorm else x.new_empty(0)
    return x.new_empty(x.shape), s, x.new_empty((rows,), dtype=torch.float32)


@torch.library.custom_op("longseq::rms_norm_bwd", mutates_args=())
def rms_norm_bwd(dy: Tensor, ds: Optional[Tensor], x: Tensor, weight: Tensor, residual: Optional[Tensor],
                 rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    dx, dw, dres = _ops().rms_backward(dy, ds, x, weight, residual, rstd)
    return dx, dw, _none(dres, x)


@rms_norm_bwd.register_fake
def _(dy, ds, x, weight, residual, rstd):
    dres = residual.new_empty(residual.shape) if residual is not None else x.new_empty(0)
    return x.new_empty(x.shape), weight.new_empty(weight.shape), dres


def _rms_setup(ctx, inputs, output):
    x, weight, residual, eps, prenorm, residual_in_fp32 = inputs
    ctx.save_for_backward(x, weight, residual, output[2])
    ctx.prenorm = prenorm


def _rms_backward(ctx, dy, ds, _drstd):
    x, weight, residual, rstd = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(x)
    dx, dw, dres = rms_norm_bwd(dy, ds if ctx.prenorm else None, x, weight, residual, rstd)
    return dx, dw, None if residual is None else dres, None, None, None


rms_norm_fwd.register_autograd(_rms_backward, setup_context=_rms_setup)


# ----------------------------------------------------------------------------- decoding steps (in place)

@torch.library.custom_op("longseq::causal_conv1d_update", mutates_args=("conv_state",))
def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor],
                         silu: bool) -> Tensor:
    """:func:`longseq.kernels.triton_ops.causal_conv1d_update`; advances ``conv_state`` in place."""
    return _ops().conv_update(x, conv_state, weight, bias, silu)


@causal_conv1d_update.register_fake
def _(x, conv_state, weight, bias, silu):
    return x.new_empty(x.shape[:2])


@torch.library.custom_op("longseq::selective_state_update", mutates_args=("state",))
def selective_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor],
                           dt_softplus: bool) -> Tensor:
    """:func:`longseq.kernels.triton_ops.selective_state_update`; advances ``state`` in place."""
    return _ops().state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


@selective_state_update.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    return x.new_empty(state.shape[:2])
