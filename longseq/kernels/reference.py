"""Pure-PyTorch kernels: the float64 ground truth and the chunked scan for non-CPU devices.

Semantics (DESIGN §2, identical to ``mamba_ssm.selective_scan_fn``)::

    delta <- delta + delta_bias;  if delta_softplus: delta <- softplus(delta)
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = <h_t, C_t> + D * u_t;   if z is given: y <- y * silu(z)

``selective_scan_ref`` is a plain loop over time in float64: slow, obviously right, and the
reference every other backend is tested against. ``selective_scan_chunked`` computes the same
function a chunk of time steps at a time with whole-tensor operations, so the Python overhead is
paid once per chunk; see its docstring for the algebra and how it stays finite. On CPU tensors
``selective_scan`` uses the compiled scan in ``cpu_scan.py`` instead (~4x faster forward, ~7x
with the backward); the chunked scan stays for tensors numba cannot read (a GPU without Triton,
MPS), where its whole-tensor operations run on the device.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from .checks import check_conv_update_args, check_selective_scan_args, check_tensor

__all__ = [
    "selective_scan_ref",
    "selective_scan_chunked",
    "causal_conv1d_ref",
    "selective_state_update_ref",
    "rms_norm_ref",
]


def _prepare_delta(delta: torch.Tensor, delta_bias, delta_softplus: bool) -> torch.Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _grouped(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(batch, dstate, L) or (batch, groups, dstate, L) -> (batch, groups, 1, dstate, L)."""
    if t.dim() == 3:
        t = t.unsqueeze(1)
    return t.reshape(t.shape[0], groups, 1, t.shape[-2], t.shape[-1])


def _finish(y, u, D, z):
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * u.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def _state_dtype(u: torch.Tensor) -> torch.dtype:
    # DESIGN: last_state is float32; a float64 scan keeps float64 so gradcheck stays exact.
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None):
    """The selective scan as a plain loop over time, computed in float64.

    Same arguments and shapes as :func:`longseq.kernels.selective_scan`. Returns ``y`` in the
    dtype of ``u`` (and the last state, float32 unless ``u`` is float64). Differentiable.
    It costs one Python iteration per token: use it to check other backends, not to train.
    """
    batch, dim, seqlen, dstate, groups = check_selective_scan_args(
        u, delta, A, B, C, D, z, delta_bias, initial_state, fn="selective_scan_ref")
    f64 = torch.float64
    delta = _prepare_delta(delta.to(f64), None if delta_bias is None else delta_bias.to(f64), delta_softplus)
    u64, A64 = u.to(f64), A.to(f64)
    Bg, Cg = _grouped(B.to(f64), groups), _grouped(C.to(f64), groups)
    per = dim // groups
    Bx = Bg.expand(batch, groups, per, dstate, seqlen).reshape(batch, dim, dstate, seqlen)
    Cx = Cg.expand(batch, groups, per, dstate, seqlen).reshape(batch, dim, dstate, seqlen)
    h = u64.new_zeros(batch, dim, dstate) if initial_state is None else initial_state.to(f64)
    ys = []
    for t in range(seqlen):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A64) * h + dt * Bx[..., t] * u64[:, :, t, None]
        ys.append((h * Cx[..., t]).sum(-1))
    y = _finish(torch.stack(ys, dim=-1), u64, None if D is None else D.to(f64), None if z is None else z.to(f64))
    y = y.to(u.dtype)
    return (y, h.to(_state_dtype(u))) if return_last_state else y


# Largest |sum of delta*A| allowed inside one chunk: exp(+-limit) must stay finite in float64
# (overflow at 709). Chunks that could exceed it are split (down to one step).
_EXP_LIMIT = 600.0


def _reverse_cumsum(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1).cumsum(-1).flip(-1)


def _chunk_states(h, dt, dtu, A, Bc):
    """States of one chunk, (b, g, p, n, T), and S = A * cumsum(delta) (same shape).

    With S_t = A * cumsum(delta)_t the recurrence solves to
        h_t = exp(S_t) * (h_0 + sum_{s<=t} exp(-S_s) * delta_s * B_s * u_s),
    two cumulative sums instead of T sequential steps (the caller keeps |S| below _EXP_LIMIT).
    """
    S = torch.cumsum(dt, dim=-1).mul(A)
    if dt.shape[-1] == 1:  # one step: no exp(-S), which may overflow where exp(S) underflows
        return torch.exp(S).mul_(h).add_(dtu * Bc), S
    x = torch.exp(S.neg()).mul_(dtu).mul_(Bc)
    return torch.cumsum(x, dim=-1).add_(h).mul_(torch.exp(S)), S


class _ChunkScan(torch.autograd.Function):
    """One chunk of the scan with a hand-written backward.

    Shapes (grouped layout): h (b, g, p, n, 1); dt, dtu (b, g, p, 1, T); A (g, p, n, 1);
    Bc, Cc (b, g, 1, n, T). Returns y (b, g, p, T) and the last state (b, g, p, n, 1).
    Backward keeps only the inputs (views of the full tensors) and recomputes the chunk's states,
    so a whole sequence costs O(batch*dim*seqlen) memory. With G_t = dL/dh_t (from y and the
    last state), R_t = sum_{s>=t} exp(S_s) G_s and lam_t = exp(-S_t) R_t (= dL/d(delta_t B_t u_t)):
    dh_0 = R_0, dS_t = G_t h_t - lam_t delta_t B_t u_t, then the chain rule through S = A*cumsum(delta).
    """

    @staticmethod
    def forward(ctx, h, dt, dtu, A, Bc, Cc):
        ctx.save_for_backward(h, dt, dtu, A, Bc, Cc)
        hs, _ = _chunk_states(h, dt, dtu, A, Bc)
        return (hs * Cc).sum(dim=-2), hs[..., -1:].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gh_last):
        h, dt, dtu, A, Bc, Cc = ctx.saved_tensors
        hs, S = _chunk_states(h, dt, dtu, A, Bc)
        G = gy.unsqueeze(-2) * Cc
        G[..., -1:] += gh_last
        if dt.shape[-1] == 1:
            R = torch.exp(S).mul_(G)
            lam = G
        else:
            E = torch.exp(S)
            R = _reverse_cumsum(E * G)
            lam = R / E
        b = dtu * Bc
        dS = G * hs - lam * b
        d_h = R[..., :1]
        d_dtu = (lam * Bc).sum(dim=-2, keepdim=True)
        d_B = (lam * dtu).sum(dim=2, keepdim=True)
        d_C = (gy.unsqueeze(-2) * hs).sum(dim=2, keepdim=True)
        d_A = (dS * torch.cumsum(dt, dim=-1)).sum(dim=(0, -1)).unsqueeze(-1)
        d_dt = _reverse_cumsum((dS * A).sum(dim=-2, keepdim=True))
        return d_h, d_dt, d_dtu, d_A, d_B, d_C


def _scan_chunk(h, dt, dtu, A, Bc, Cc, limit: float):
    """Scan one chunk (shapes as in _ChunkScan). exp(-S) grows along the chunk, so a chunk whose
    |S| could exceed ``limit`` is split in two and the halves are scanned in order."""
    T = dt.shape[-1]
    if T > 1 and float(dt.detach().abs().sum(-1).amax()) * float(A.detach().abs().amax()) > limit:
        half = T // 2
        y0, h = _scan_chunk(h, dt[..., :half], dtu[..., :half], A, Bc[..., :half], Cc[..., :half], limit)
        y1, h = _scan_chunk(h, dt[..., half:], dtu[..., half:], A, Bc[..., half:], Cc[..., half:], limit)
        return torch.cat([y0, y1], dim=-1), h
    return _ChunkScan.apply(h, dt, dtu, A, Bc, Cc)


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False, initial_state=None, chunk_size: int = 64):
    """Pure-PyTorch selective scan, ``chunk_size`` steps per Python step (the ``reference`` backend
    for tensors that are not on the CPU; CPU tensors use the compiled ``cpu_scan``).

    Computes in float64 whatever the input dtype: the closed form within a chunk sums terms of
    very different sizes, and float64 keeps its error far below float32 rounding. Each chunk's
    backward is written out and recomputes the chunk's states, so only chunk inputs and boundary
    states are kept: memory stays O(batch*dim*seqlen) plus one chunk's (batch, dim, dstate, chunk).
    """
    batch, dim, seqlen, dstate, groups = check_selective_scan_args(
        u, delta, A, B, C, D, z, delta_bias, initial_state, fn="selective_scan")
    cdt = torch.float64
    limit = _EXP_LIMIT
    per = dim // groups
    delta = _prepare_delta(delta.to(cdt), delta_bias, delta_softplus)
    dt = delta.reshape(batch, groups, per, 1, seqlen)
    dtu = (delta * u.to(cdt)).reshape(batch, groups, per, 1, seqlen)
    Ag = A.to(cdt).reshape(groups, per, dstate, 1)
    Bg, Cg = _grouped(B.to(cdt), groups), _grouped(C.to(cdt), groups)
    if initial_state is None:
        h = u.new_zeros(batch, groups, per, dstate, 1, dtype=cdt)
    else:
        h = initial_state.to(cdt).reshape(batch, groups, per, dstate, 1)
    ys = []
    for s in range(0, seqlen, chunk_size):
        sl = slice(s, s + chunk_size)
        y, h = _scan_chunk(h, dt[..., sl], dtu[..., sl], Ag, Bg[..., sl], Cg[..., sl], limit)
        ys.append(y)
    y = torch.cat(ys, dim=-1).reshape(batch, dim, seqlen)
    y = _finish(y, u, D, z).to(u.dtype)
    if return_last_state:
        return y, h.reshape(batch, dim, dstate).to(_state_dtype(u))
    return y


def causal_conv1d_ref(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False):
    """Depthwise causal convolution: y[:, d, t] = sum_k weight[d, k] * x[:, d, t - (W-1) + k].

    x (batch, dim, seqlen); weight (dim, width); bias (dim,); activation None | "silu" | "swish";
    initial_state (batch, dim, width-1): the inputs that precede x (zeros when None). With
    ``return_final_state`` also returns the last width-1 inputs, to continue on the next piece.
    """
    fn = "causal_conv1d"
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"{fn}: argument 'x' must be 3-D (batch, dim, seqlen); got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    batch, dim, seqlen = x.shape
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != dim:
        raise ValueError(f"{fn}: argument 'weight' must have shape (dim, width) with dim = {dim}; got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    width = weight.shape[1]
    check_tensor(fn, "weight", weight, (dim, width), x.device, shape_doc="(dim, width)")
    if bias is not None:
        check_tensor(fn, "bias", bias, (dim,), x.device, shape_doc="(dim,)")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"{fn}: argument 'activation' must be None, 'silu' or 'swish'; got {activation!r}")
    if initial_state is None:
        initial_state = x.new_zeros(batch, dim, width - 1)
    else:
        check_tensor(fn, "initial_state", initial_state, (batch, dim, width - 1), x.device,
                     shape_doc="(batch, dim, width - 1)")
    xs = torch.cat([initial_state.to(x.dtype), x], dim=-1)
    y = F.conv1d(xs, weight.to(x.dtype).unsqueeze(1), None if bias is None else bias.to(x.dtype), groups=dim)
    if activation is not None:
        y = F.silu(y)
    if return_final_state:
        return y, xs[..., xs.shape[-1] - (width - 1):]
    return y


def causal_conv1d_update_ref(x, conv_state, weight, bias=None, activation=None):
    """One decoding step of :func:`causal_conv1d_ref`: x (batch, dim) -> y (batch, dim).

    ``conv_state`` (batch, dim, width-1) holds the previous width-1 inputs and is advanced in
    place (its oldest input dropped, x appended), as ``mamba_ssm``'s ``causal_conv1d_update``.
    Equals the parallel conv over a length-1 sequence with ``initial_state=conv_state``.
    """
    check_conv_update_args(x, conv_state, weight, bias, activation)
    window = torch.cat([conv_state.to(x.dtype), x.unsqueeze(-1)], dim=-1)  # (batch, dim, width)
    # the same F.conv1d call as causal_conv1d_ref on this window, so decoding reproduces it exactly
    y = F.conv1d(window, weight.to(x.dtype).unsqueeze(1), None if bias is None else bias.to(x.dtype),
                 groups=x.shape[1]).squeeze(-1)
    if activation is not None:
        y = F.silu(y)
    conv_state.copy_(window[..., 1:])
    return y


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One recurrent step of the scan, in place on ``state`` (batch, dim, dstate); returns y (batch, dim).

    x, dt, z: (batch, dim); B, C: (batch, dstate) or (batch, groups, dstate). Accumulates in the
    state's dtype (float32 in the model's inference cache).
    """
    batch, dim, dstate = state.shape
    groups = 1 if B.dim() == 2 else B.shape[1]
    cdt = state.dtype
    dt = dt.to(cdt)
    if dt_bias is not None:
        dt = dt + dt_bias.to(cdt)
    if dt_softplus:
        dt = F.softplus(dt)
    Bx = B.to(cdt).reshape(batch, groups, 1, dstate).expand(batch, groups, dim // groups, dstate).reshape(batch, dim, dstate)
    Cx = C.to(cdt).reshape(batch, groups, 1, dstate).expand(batch, groups, dim // groups, dstate).reshape(batch, dim, dstate)
    xf = x.to(cdt)
    state.copy_(torch.exp(dt[..., None] * A.to(cdt)) * state + (dt * xf)[..., None] * Bx)
    y = (state * Cx).sum(-1)
    if D is not None:
        y = y + D.to(cdt) * xf
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(x.dtype)


def rms_norm_ref(x, weight, residual=None, eps=1e-5, prenorm=False, residual_in_fp32=False):
    """RMSNorm over the last dimension, after adding ``residual`` when given.

    Returns ``weight * s / sqrt(mean(s^2) + eps)`` with ``s = x + residual`` (computed in float32),
    in x's dtype; with ``prenorm`` also returns ``s`` (float32 if ``residual_in_fp32``, else x's
    dtype), the residual stream for the next block.
    """
    s = x.float() if residual is None else x.float() + residual.float()
    y = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    y = y.to(x.dtype)
    if prenorm:
        return y, (s if residual_in_fp32 else s.to(x.dtype))
    return y
