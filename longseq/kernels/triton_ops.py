"""Fused Triton kernels behind :mod:`longseq.kernels.dispatch` (``backend="triton"``).

selective_scan (fwd + bwd), causal_conv1d (fwd + bwd), causal_conv1d_update and
selective_state_update (one decoding step, in place) and rms_norm (fused residual add, fwd + bwd). Each runs on CUDA tensors, and on CPU
tensors under ``TRITON_INTERPRET=1`` (how CI tests them). Kernels live in ``triton_scan.py``,
``triton_conv.py``, ``triton_update.py`` and ``triton_norm.py``; the scan's launch logic and
autograd Function in ``triton_scan_op.py``.
"""
from __future__ import annotations

import torch

from . import custom_ops
from .checks import check_conv_update_args, check_tensor
from .reference import causal_conv1d_ref  # argument checks, and the initial state gradient (_conv_dinit)
from .triton_conv import conv_bwd_kernel, conv_fwd_kernel, conv_update_kernel
from .triton_norm import rms_bwd_kernel, rms_fwd_kernel
from .triton_scan_op import _pow2, selective_scan
from .triton_launch import launch
from .triton_tune import cdiv, launch_options, sm_count
from .triton_update import state_update_kernel


__all__ = ["selective_scan", "causal_conv1d", "causal_conv1d_update", "selective_state_update", "rms_norm"]


# ----------------------------------------------------------------------------- causal conv1d

# A program's tile: _CONV_BD channels (one per warp) x _CONV_BLJ lanes x R steps per lane; the
# backward's programs walk _CONV_NT such tiles (a chunk) and write one partial dw, db per chunk.
_CONV_BD, _CONV_BLJ, _CONV_NT = 4, 32, 8


def _conv_steps(x, width: int) -> int:
    """R, the steps a thread holds: one 16-byte vector of x's dtype, or more where the window's
    W-1 earlier inputs would not fit in one neighbour's R (then correct, but no longer 16 bytes
    a thread)."""
    return max(16 // x.element_size(), _pow2(width - 1))


def _conv_optional(x, bias, init):
    """The optional arguments both kernels take: (bias or a dummy, init or a dummy, init's strides)."""
    return (bias if bias is not None else x, init if init is not None else x,
            init.stride() if init is not None else (0, 0, 0))


def conv_forward(x, weight, bias, init, silu: bool):
    """The causal conv (SiLU fused if ``silu``) of x (batch, dim, seqlen); ``init`` the W-1 inputs
    before it or None. Returns y in x's dtype."""
    batch, dim, seqlen = x.shape
    W = weight.shape[1]
    R = _conv_steps(x, W)
    y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    b, i, i_strides = _conv_optional(x, bias, init)
    launch(conv_fwd_kernel, (cdiv(seqlen, _CONV_BLJ * R), cdiv(dim, _CONV_BD), batch),
        x, weight.contiguous(), b, i, y, dim, seqlen, *x.stride(), *i_strides, *y.stride(),
        W=W, BD=_CONV_BD, BLJ=_CONV_BLJ, R=R, HAS_BIAS=bias is not None, HAS_INIT=init is not None,
        SILU=silu, **launch_options(_CONV_BD))
    return y


def conv_backward(dy, x, weight, bias, init, silu: bool, need_dinit: bool, dy2=None):
    """(dx, dweight, dbias or None, dinit or None) of :func:`conv_forward` for the output gradient dy,
    or dy + dy2 where the output had two readers (the kernel adds them as it reads them)."""
    weight_c = weight.contiguous()
    batch, dim, seqlen = x.shape
    W = weight.shape[1]
    R = _conv_steps(x, W)
    nchunks = cdiv(seqlen, _CONV_BLJ * R * _CONV_NT)
    dx = torch.empty((batch, dim, seqlen), device=x.device, dtype=x.dtype)
    dw_p = torch.empty((batch, nchunks, dim, W), device=x.device, dtype=torch.float32)
    db_p = torch.empty((batch, nchunks, dim), device=x.device, dtype=torch.float32)
    b, i, i_strides = _conv_optional(x, bias, init)
    g2 = dy2 if dy2 is not None else dy
    launch(conv_bwd_kernel, (nchunks, cdiv(dim, _CONV_BD), batch),
        x, weight_c, b, i, dy, g2, dx, dw_p, db_p, dim, seqlen, nchunks,
        *x.stride(), *i_strides, *dy.stride(), *g2.stride(), *dx.stride(),
        W=W, WP=max(2, _pow2(W)), BD=_CONV_BD, BLJ=_CONV_BLJ, R=R, NT=_CONV_NT,
        HAS_BIAS=bias is not None, HAS_INIT=init is not None, SILU=silu, HAS_DY2=dy2 is not None,
        **launch_options(_CONV_BD))
    dw = dw_p.sum((0, 1)).to(weight.dtype)
    db = db_p.sum((0, 1)).to(bias.dtype) if bias is not None else None
    dinit = None
    if init is not None and need_dinit:
        head = dy[..., :W - 1] if dy2 is None else dy[..., :W - 1] + dy2[..., :W - 1]
        dinit = _conv_dinit(head, x, weight_c, bias, init, silu)
    return dx, dw, db, dinit


def _conv_dinit(dy, x, weight, bias, init, silu: bool):
    """The initial state's gradient: dinit[j] (time j - (W-1)) = sum_{k <= j} w[k] g[j - k], with
    g = dy * act'(pre) at the first W-1 steps (recomputed here: the kernel keeps g in registers)."""
    W = weight.shape[1]
    n = min(W - 1, x.shape[2])
    pre = causal_conv1d_ref(x[..., :n].float(), weight.float(), None if bias is None else bias.float(),
                            None, init.float())
    g = dy[..., :n].float()
    if silu:
        sg = torch.sigmoid(pre)
        g = g * sg * (1 + pre * (1 - sg))
    dinit = torch.zeros(init.shape, device=x.device, dtype=torch.float32)
    for j in range(W - 1):
        for k in range(j + 1):
            if j - k < n:
                dinit[..., j] += weight[:, k].float() * g[..., j - k]
    return dinit.to(init.dtype)


class CausalConv1dFn(torch.autograd.Function):
    """The conv; with ``readers`` 2 its output comes twice (the second a view of the first), and the
    two gradients are summed by the backward kernel as it reads them."""

    @staticmethod
    def forward(ctx, x, weight, bias, init, silu, readers):
        ctx.save_for_backward(x, weight, bias, init)
        ctx.silu = silu
        ctx.set_materialize_grads(False)    # a reader that reached no loss adds nothing: not read
        y = conv_forward(x, weight, bias, init, silu)
        return y if readers == 1 else (y, y.view_as(y))

    @staticmethod
    def backward(ctx, dy, dy2=None):
        x, weight, bias, init = ctx.saved_tensors
        if dy is None:
            dy, dy2 = dy2, None
        if dy is None:
            return (None,) * 6
        return (*conv_backward(dy, x, weight, bias, init, ctx.silu, ctx.needs_input_grad[3], dy2), None, None)


def causal_conv1d(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False,
                  readers=1):
    """Depthwise causal conv1d; same contract as :func:`longseq.kernels.dispatch.causal_conv1d`."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or not isinstance(weight, torch.Tensor) \
            or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        return causal_conv1d_ref(x, weight, bias, activation, initial_state, return_final_state)  # raises
    batch, dim, seqlen = x.shape
    W = weight.shape[1]
    check_tensor("causal_conv1d", "weight", weight, (dim, W), x.device, shape_doc="(dim, width)")
    if bias is not None:
        check_tensor("causal_conv1d", "bias", bias, (dim,), x.device, shape_doc="(dim,)")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: argument 'activation' must be None, 'silu' or 'swish'; got {activation!r}")
    if initial_state is not None:
        check_tensor("causal_conv1d", "initial_state", initial_state, (batch, dim, W - 1), x.device,
                     shape_doc="(batch, dim, width - 1)")
    init = initial_state if W > 1 else None
    if torch.compiler.is_compiling():       # the custom operator (custom_ops), one node of the graph
        y = custom_ops.causal_conv1d_fwd(x, weight, bias, init, activation is not None)
        ys = (y,) * readers                 # (the compiled backward adds the readers' gradients)
    else:
        ys = CausalConv1dFn.apply(x, weight, bias, init, activation is not None, readers)
        ys = (ys,) if readers == 1 else ys
    if not return_final_state:
        return ys[0] if readers == 1 else ys
    # the last W-1 inputs of cat(initial_state, x), by autograd-tracked slicing (no full copy)
    if W == 1:
        final = x[..., :0]
    elif seqlen >= W - 1:
        final = x[..., seqlen - (W - 1):]
    else:
        init = initial_state if initial_state is not None else x.new_zeros(batch, dim, W - 1)
        final = torch.cat([init.to(x.dtype)[..., seqlen:], x], dim=-1)
    return (*ys, final)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """One decoding step: x (batch, dim) -> y (batch, dim); ``conv_state`` advanced in place.

    One kernel (no copies; x and the state may be strided views). Not differentiable: decoding only.
    """
    check_conv_update_args(x, conv_state, weight, bias, activation)
    step = custom_ops.causal_conv1d_update if torch.compiler.is_compiling() else conv_update
    return step(x, conv_state, weight, bias, activation is not None)


def conv_update(x, conv_state, weight, bias, silu: bool):
    """The conv step's launch (arguments checked by :func:`causal_conv1d_update`)."""
    batch, dim = x.shape
    W = weight.shape[1]
    y = torch.empty((batch, dim), device=x.device, dtype=x.dtype)
    BD = min(64, _pow2(dim))
    launch(conv_update_kernel, (cdiv(dim, BD), batch),
        x, conv_state, weight.contiguous(), bias if bias is not None else y, y,
        dim, *x.stride(), *conv_state.stride(), *y.stride(),
        W=W, WP=max(2, _pow2(W)), BD=BD, HAS_BIAS=bias is not None, SILU=silu, **launch_options(4))
    return y


# ----------------------------------------------------------------------------- state update

def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decoding step in place on ``state`` (batch, dim, dstate); returns y (batch, dim)."""
    if state.dim() != 3:
        raise ValueError(f"selective_state_update: argument 'state' must be (batch, dim, dstate); got {tuple(state.shape)}")
    batch, dim, dstate = state.shape
    dev = state.device
    fn = "selective_state_update"
    for name, t in (("x", x), ("dt", dt)):
        check_tensor(fn, name, t, (batch, dim), dev, shape_doc="(batch, dim)")
    if z is not None:
        check_tensor(fn, "z", z, (batch, dim), dev, shape_doc="(batch, dim)")
    check_tensor(fn, "A", A, (dim, dstate), dev, shape_doc="(dim, dstate)")
    groups = 1 if B.dim() == 2 else B.shape[1]
    if dim % groups:
        raise ValueError(f"{fn}: 'dim' ({dim}) must be divisible by groups ({groups})")
    shp = (batch, dstate) if B.dim() == 2 else (batch, groups, dstate)
    for name, t in (("B", B), ("C", C)):
        check_tensor(fn, name, t, shp, dev, shape_doc="(batch, dstate) or (batch, groups, dstate)")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        if t is not None:
            check_tensor(fn, name, t, (dim,), dev, shape_doc="(dim,)")
    step = custom_ops.selective_state_update if torch.compiler.is_compiling() else state_update
    return step(state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus))


def state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus: bool):
    """The decoding step's launch (arguments checked by :func:`selective_state_update`)."""
    batch, dim, dstate = state.shape
    dev = state.device
    groups = 1 if B.dim() == 2 else B.shape[1]
    A = A.float().contiguous()
    y = torch.empty((batch, dim), device=dev, dtype=x.dtype)
    bs = (B.stride(0), 0, B.stride(1)) if B.dim() == 2 else B.stride()
    cs = (C.stride(0), 0, C.stride(1)) if C.dim() == 2 else C.stride()
    BD = min(16, _pow2(dim))
    dummy = y
    launch(state_update_kernel, (cdiv(dim, BD), batch),
        state, x, dt, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
        dt_bias if dt_bias is not None else dummy, y,
        dim, dstate, dim // groups, *state.stride(), *x.stride(), *dt.stride(),
        *(z.stride() if z is not None else (0, 0)), *bs, *cs, *y.stride(),
        BD=BD, NP=max(2, _pow2(dstate)), HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, **launch_options(4))
    return y


# ----------------------------------------------------------------------------- add + RMSNorm

def _rms_tiles(H: int):
    """(BH, rows per program, warps) of the RMSNorm kernels: short rows (d_model < 512) in blocks of
    4096 elements, 16 per thread (v23: the backward at d_model 64-256 from 28-52% to 81-83% of the
    copy bandwidth); longer rows one per program, 8 elements per thread."""
    BH = _pow2(H)
    if BH >= 512:       # one row, as before v23: blocks of 2-4 long rows were slower (16384 x 768)
        return BH, 1, min(16, BH // 256)
    return BH, 4096 // BH, 8


def _rows(t, H):
    t2 = t.reshape(-1, H)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def rms_forward(x, weight, residual, eps: float, prenorm: bool, residual_in_fp32: bool):
    """(y, s or None, rstd): the normalised rows of ``x + residual`` in x's shape and dtype, the sum
    itself when ``prenorm``, and each row's 1 / rms (float32, for the backward)."""
    H = x.shape[-1]
    x2 = _rows(x, H)
    r2 = _rows(residual, H) if residual is not None else None
    M = x2.shape[0]
    y = torch.empty((M, H), device=x.device, dtype=x.dtype)
    sdt = torch.float32 if residual_in_fp32 else x.dtype
    s = torch.empty((M, H), device=x.device, dtype=sdt) if prenorm else y
    rstd = torch.empty((M,), device=x.device, dtype=torch.float32)
    BH, rows, warps = _rms_tiles(H)
    if M:
        launch(rms_fwd_kernel, (cdiv(M, rows),),
            x2, r2 if r2 is not None else x2, weight, y, s, rstd, M, H, float(eps),
            x2.stride(0), r2.stride(0) if r2 is not None else 0, y.stride(0), s.stride(0),
            BH=BH, ROWS=rows, HAS_RES=r2 is not None, STORE_S=bool(prenorm), **launch_options(warps))
    return y.reshape(x.shape), (s.reshape(x.shape) if prenorm else None), rstd


def rms_backward(dy, ds_in, x, weight, residual, rstd):
    """(dx, dweight, dresidual or None) of :func:`rms_forward` for the gradients of y and of s (None
    when s was not returned or not used)."""
    H = x.shape[-1]
    x2 = _rows(x, H)
    r2 = _rows(residual, H) if residual is not None else None
    M = x2.shape[0]
    dev = x2.device
    if dy is None:
        dy = torch.zeros(x.shape, device=dev, dtype=x2.dtype)
    dy2 = _rows(dy, H)
    ds2 = _rows(ds_in, H) if ds_in is not None else None
    dx = torch.empty((M, H), device=dev, dtype=x2.dtype)
    dres = torch.empty((M, H), device=dev, dtype=residual.dtype) if r2 is not None else dx
    BH, rows, warps = _rms_tiles(H)
    nprog = max(1, min(cdiv(M, rows), 4 * sm_count(dev, cpu=2)))
    dw_p = torch.empty((nprog, H), device=dev, dtype=torch.float32)
    if M:
        launch(rms_bwd_kernel, (nprog,),
            x2, r2 if r2 is not None else x2, weight, rstd, dy2, ds2 if ds2 is not None else dy2, dx, dres, dw_p,
            M, H, x2.stride(0), r2.stride(0) if r2 is not None else 0, dy2.stride(0),
            ds2.stride(0) if ds2 is not None else 0, dx.stride(0), dres.stride(0),
            BH=BH, ROWS=rows, HAS_RES=r2 is not None, HAS_DS_IN=ds2 is not None, STORE_DRES=r2 is not None,
            **launch_options(warps))
    else:
        dw_p.zero_()
    dw = dw_p.sum(0).to(weight.dtype)
    return dx.reshape(x.shape), dw, (dres.reshape(x.shape) if r2 is not None else None)


class RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, residual, eps, prenorm, residual_in_fp32):
        y, s, rstd = rms_forward(x, weight, residual, eps, prenorm, residual_in_fp32)
        ctx.save_for_backward(x, weight, residual, rstd)
        return (y, s) if prenorm else y

    @staticmethod
    def backward(ctx, dy, ds_in=None):
        x, weight, residual, rstd = ctx.saved_tensors
        return (*rms_backward(dy, ds_in, x, weight, residual, rstd), None, None, None)


def rms_norm(x, weight, residual=None, eps=1e-5, prenorm=False, residual_in_fp32=False):
    """Fused (residual add +) RMSNorm; same contract as :func:`longseq.kernels.reference.rms_norm_ref`."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"rms_norm: argument 'x' must be a tensor with a last dimension; got {x!r}")
    H = x.shape[-1]
    check_tensor("rms_norm", "weight", weight, (H,), x.device, shape_doc="(hidden,)")
    if residual is not None:
        check_tensor("rms_norm", "residual", residual, tuple(x.shape), x.device, shape_doc="x.shape")
    if torch.compiler.is_compiling():    # the custom operator (custom_ops), one node of the compiled graph
        y, s, _ = custom_ops.rms_norm_fwd(x, weight, residual, float(eps), bool(prenorm), bool(residual_in_fp32))
        return (y, s) if prenorm else y
    return RMSNormFn.apply(x, weight, residual, eps, bool(prenorm), bool(residual_in_fp32))
