"""Depthwise causal conv1d (with fused bias, SiLU and initial state) in Triton, fwd and bwd.

Forward: one program per (time block, channel block, sequence); y[d, t] = act(b[d] +
sum_k w[d, k] x[d, t - (W-1) + k]) with the W-1 inputs before t = 0 read from ``initial_state``.
Backward: a first kernel recomputes the pre-activation and writes g = dy * act'(pre) (float32); a
second forms dx (the transposed convolution of g), and per-block partial sums of dw and dbias that
the wrapper adds up in a fixed order (deterministic, no atomics).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tap(x_base, i_base, offs_l, mask_d, mask_l, k, seqlen, s_xl, s_il, W: tl.constexpr, HAS_INIT: tl.constexpr):
    """The inputs tap k of the window sees at the steps offs_l, x[t - (W-1) + k] as float32 [BD, BL]:
    from initial_state where that index is negative (zeros without one), zeros past seqlen."""
    tt = offs_l - (W - 1) + k
    mx = mask_d[:, None] & ((tt >= 0) & (tt < seqlen))[None, :]
    xv = tl.load(x_base + tt.to(tl.int64)[None, :] * s_xl, mask=mx, other=0.0).to(tl.float32)
    if HAS_INIT:
        mi = mask_d[:, None] & ((tt < 0) & mask_l)[None, :]
        xv += tl.load(i_base + (tt + (W - 1)).to(tl.int64)[None, :] * s_il, mask=mi, other=0.0).to(tl.float32)
    return xv


@triton.jit
def conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, y_ptr, dy_ptr,
    dim, seqlen,
    s_xb, s_xd, s_xl, s_ib, s_id, s_il, s_yb, s_yd, s_yl, s_gb, s_gd, s_gl,
    W: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr, GRAD: tl.constexpr,
):
    """GRAD=False: y = act(conv(x)). GRAD=True: y (float32) = dy * act'(conv(x))."""
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_l = pid_l * BL + tl.arange(0, BL)
    offs_d = pid_d * BD + tl.arange(0, BD)
    mask_d = offs_d < dim
    mask_l = offs_l < seqlen
    d64 = offs_d.to(tl.int64)
    x_base = x_ptr + pid_b * s_xb + d64[:, None] * s_xd
    i_base = init_ptr + pid_b * s_ib + d64[:, None] * s_id
    acc = tl.zeros((BD, BL), tl.float32)
    for k in tl.static_range(W):
        xv = _tap(x_base, i_base, offs_l, mask_d, mask_l, k, seqlen, s_xl, s_il, W, HAS_INIT)
        wk = tl.load(w_ptr + offs_d * W + k, mask=mask_d, other=0.0).to(tl.float32)
        acc += wk[:, None] * xv
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    m2 = mask_d[:, None] & mask_l[None, :]
    if GRAD:
        g = tl.load(dy_ptr + pid_b * s_gb + d64[:, None] * s_gd + offs_l.to(tl.int64)[None, :] * s_gl,
                    mask=m2, other=0.0).to(tl.float32)
        if SILU:
            sg = tl.sigmoid(acc)
            g = g * sg * (1.0 + acc * (1.0 - sg))
        out = g
    else:
        out = acc
        if SILU:
            out = acc * tl.sigmoid(acc)
    tl.store(y_ptr + pid_b * s_yb + d64[:, None] * s_yd + offs_l.to(tl.int64)[None, :] * s_yl,
             out.to(y_ptr.dtype.element_ty), mask=m2)


@triton.jit
def conv_bwd_kernel(
    g_ptr, x_ptr, w_ptr, init_ptr, dx_ptr, dw_ptr, db_ptr,
    dim, seqlen, nblocks,
    s_xb, s_xd, s_xl, s_ib, s_id, s_il, s_dxb, s_dxd, s_dxl,
    W: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr, HAS_INIT: tl.constexpr,
):
    """g: (batch, dim, seqlen) float32 contiguous. dx[t] = sum_k w[k] g[t + W-1-k];
    dw partial (batch, nblocks, dim, W); db partial (batch, nblocks, dim)."""
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_l = pid_l * BL + tl.arange(0, BL)
    offs_d = pid_d * BD + tl.arange(0, BD)
    mask_d = offs_d < dim
    mask_l = offs_l < seqlen
    d64 = offs_d.to(tl.int64)
    g_base = g_ptr + (pid_b * dim + d64)[:, None] * seqlen
    x_base = x_ptr + pid_b * s_xb + d64[:, None] * s_xd
    i_base = init_ptr + pid_b * s_ib + d64[:, None] * s_id
    m2 = mask_d[:, None] & mask_l[None, :]
    g = tl.load(g_base + offs_l.to(tl.int64)[None, :], mask=m2, other=0.0)
    dx = tl.zeros((BD, BL), tl.float32)
    part = (pid_b * nblocks + pid_l) * dim + d64
    for k in tl.static_range(W):
        wk = tl.load(w_ptr + offs_d * W + k, mask=mask_d, other=0.0).to(tl.float32)
        ts = offs_l + (W - 1 - k)
        gs = tl.load(g_base + ts.to(tl.int64)[None, :], mask=mask_d[:, None] & (ts < seqlen)[None, :], other=0.0)
        dx += wk[:, None] * gs
        # dw[k] = sum_t g[t] * xs[t - (W-1) + k]
        xv = _tap(x_base, i_base, offs_l, mask_d, mask_l, k, seqlen, s_xl, s_il, W, HAS_INIT)
        tl.store(dw_ptr + part * W + k, tl.sum(g * xv, axis=1), mask=mask_d)
    tl.store(db_ptr + part, tl.sum(g, axis=1), mask=mask_d)
    tl.store(dx_ptr + pid_b * s_dxb + d64[:, None] * s_dxd + offs_l.to(tl.int64)[None, :] * s_dxl,
             dx.to(dx_ptr.dtype.element_ty), mask=m2)


@triton.jit
def conv_update_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, y_ptr,
    dim, s_xb, s_xd, s_sb, s_sd, s_sl, s_yb, s_yd,
    W: tl.constexpr, WP: tl.constexpr, BD: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):
    """One new input per channel (decoding): y = act(b + sum_k w[k] window[k]) with window = the
    W-1 cached inputs then x; the state (batch, dim, W-1) becomes the window's last W-1 inputs,
    in place. One program per (channel block, sequence); each owns its channels' state rows."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)
    mask_d = offs_d < dim
    d64 = offs_d.to(tl.int64)
    offs_k = tl.arange(0, WP)
    s_rows = state_ptr + pid_b * s_sb + d64[:, None] * s_sd
    # window[:, k] = state[:, k] for k < W-1, x for k = W-1
    in_state = offs_k < W - 1
    win = tl.load(s_rows + offs_k.to(tl.int64)[None, :] * s_sl, mask=mask_d[:, None] & in_state[None, :],
                  other=0.0).to(tl.float32)
    x = tl.load(x_ptr + pid_b * s_xb + d64 * s_xd, mask=mask_d, other=0.0)
    win = tl.where((offs_k == W - 1)[None, :], x.to(tl.float32)[:, None], win)
    w = tl.load(w_ptr + d64[:, None] * W + offs_k[None, :], mask=mask_d[:, None] & (offs_k < W)[None, :],
                other=0.0).to(tl.float32)
    acc = tl.sum(win * w, axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y_ptr + pid_b * s_yb + d64 * s_yd, acc.to(y_ptr.dtype.element_ty), mask=mask_d)
    # shift left by one: state[:, k] = window[:, k + 1], formed from the registers (a select
    # and a sum over a [BD, WP, WP] tile; exact). The barrier makes every thread's loads of the
    # state complete before any thread overwrites it (a thread may store an element that
    # another thread of this program loaded).
    pick = (offs_k[:, None] + 1) == offs_k[None, :]
    nxt = tl.sum(tl.where(pick[None, :, :], win[:, None, :], 0.0), axis=2)
    tl.debug_barrier()
    tl.store(s_rows + offs_k.to(tl.int64)[None, :] * s_sl, nxt.to(state_ptr.dtype.element_ty),
             mask=mask_d[:, None] & in_state[None, :])
