"""Depthwise causal conv1d (with fused bias, SiLU and initial state) in Triton, fwd and bwd.

y[d, t] = act(b[d] + sum_k w[d, k] x[d, t - (W-1) + k]), with the W-1 inputs before t = 0 read from
``initial_state``. Layout: each thread owns R consecutive steps of one channel (R * element size =
16 bytes, one vector load), the lanes of a warp the next steps of the same channel, so a warp
reads and writes whole contiguous runs of a row. A thread's window reaches W-1 <= R steps back
(forward) and forward (the backward's transposed convolution); it reads its neighbours' R steps
(L1 hits) and picks the steps it needs in registers (``_cols``/``_at``), so nothing is shifted
through memory.
Backward: one kernel recomputes the pre-activation and g = dy * act'(pre) in registers and forms
dx, with per-chunk partial sums of dw and dbias. It reads x and dy once and writes dx once from
HBM (6 bytes per bf16 element); the former two-kernel backward wrote and re-read g in float32
(16 bytes per element).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _cols(t, R: tl.constexpr):
    """The R steps each thread holds of a [BD, BLJ, R] tile, as a tuple of R [BD, BLJ] tensors in step
    order. Split in registers (no data moves) when the R steps are in one thread, as the loads lay
    them out for R * element size = 16 bytes."""
    if R == 1:
        return (tl.reshape(t, (t.shape[0], t.shape[1])),)
    else:
        even, odd = tl.split(tl.reshape(t, (t.shape[0], t.shape[1], R // 2, 2)))
        ce = _cols(even, R // 2)
        co = _cols(odd, R // 2)
        out = ()
        for i in tl.static_range(R // 2):
            out = out + (ce[i], co[i])
        return out


@triton.jit
def _tile(c, R: tl.constexpr):
    """The inverse of :func:`_cols`: R [BD, BLJ] tensors back into one [BD, BLJ, R] tile."""
    if R == 1:
        return tl.reshape(c[0], (c[0].shape[0], c[0].shape[1], 1))
    else:
        even = ()
        odd = ()
        for i in tl.static_range(R // 2):
            even = even + (c[2 * i],)
            odd = odd + (c[2 * i + 1],)
        a = _tile(even, R // 2)
        b = _tile(odd, R // 2)
        return tl.reshape(tl.join(a, b), (a.shape[0], a.shape[1], R))


@triton.jit
def _at(prev, cur, nxt, i: tl.constexpr, R: tl.constexpr):
    """Step i (-R <= i < 2R) relative to a thread's first step, from the columns of the thread's
    R steps (cur) and of the R steps before (prev) and after (nxt) them."""
    if i < 0:
        return prev[R + i]
    elif i < R:
        return cur[i]
    else:
        return nxt[i - R]


@triton.jit
def _window(x_base, i_base, steps, mask_d, seqlen, s_xl, s_il, W: tl.constexpr, HAS_INIT: tl.constexpr):
    """x at the steps [BLJ, R] of the rows x_base [BD, 1, 1], as float32 [BD, BLJ, R]: zeros past
    seqlen, and before step 0 the initial state's W-1 inputs (zeros without one)."""
    st = steps[None, :, :]
    md = mask_d[:, None, None]
    xv = tl.load(x_base + st.to(tl.int64) * s_xl, mask=md & (st >= 0) & (st < seqlen), other=0.0).to(tl.float32)
    if HAS_INIT:
        ti = st + (W - 1)
        xv += tl.load(i_base + ti.to(tl.int64) * s_il, mask=md & (st < 0) & (ti >= 0), other=0.0).to(tl.float32)
    return xv


@triton.jit
def _taps(w_ptr, offs_d, mask_d, W: tl.constexpr):
    """The W weights of the block's channels, as a tuple of float32 [BD, 1]."""
    ws = ()
    for k in tl.static_range(W):
        ws = ws + (tl.load(w_ptr + offs_d * W + k, mask=mask_d, other=0.0).to(tl.float32)[:, None],)
    return ws


@triton.jit
def _pre(ws, bias, prev, cur, nxt, p: tl.constexpr, W: tl.constexpr, R: tl.constexpr):
    """The pre-activation at step p of each thread's steps: bias + sum_k w[k] x[p - (W-1) + k]."""
    acc = bias
    for k in tl.static_range(W):
        acc = acc + ws[k] * _at(prev, cur, nxt, p - (W - 1) + k, R)
    return acc


@triton.jit
def conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, y_ptr,
    dim, seqlen,
    s_xb, s_xd, s_xl, s_ib, s_id, s_il, s_yb, s_yd, s_yl,
    W: tl.constexpr, BD: tl.constexpr, BLJ: tl.constexpr, R: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr,
):
    """y = act(conv(x)) for BLJ * R steps of BD channels: each thread takes R consecutive steps
    (one 16-byte load) and the R before them (for its window's W-1 <= R earlier inputs)."""
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)
    mask_d = offs_d < dim
    d64 = offs_d.to(tl.int64)
    steps = pid_l * (BLJ * R) + tl.arange(0, BLJ)[:, None] * R + tl.arange(0, R)[None, :]
    x_base = x_ptr + pid_b * s_xb + d64[:, None, None] * s_xd
    i_base = init_ptr + pid_b * s_ib + d64[:, None, None] * s_id
    cur = _cols(_window(x_base, i_base, steps, mask_d, seqlen, s_xl, s_il, W, HAS_INIT), R)
    prev = _cols(_window(x_base, i_base, steps - R, mask_d, seqlen, s_xl, s_il, W, HAS_INIT), R)
    ws = _taps(w_ptr, offs_d, mask_d, W)
    bias = tl.zeros((BD, 1), tl.float32)
    if HAS_BIAS:
        bias += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    ys = ()
    for r in tl.static_range(R):
        pre = _pre(ws, bias, prev, cur, cur, r, W, R)
        if SILU:
            pre = pre * tl.sigmoid(pre)
        ys = ys + (pre,)
    st = steps[None, :, :]
    tl.store(y_ptr + pid_b * s_yb + d64[:, None, None] * s_yd + st.to(tl.int64) * s_yl,
             _tile(ys, R).to(y_ptr.dtype.element_ty), mask=mask_d[:, None, None] & (st < seqlen))


@triton.jit
def _grad_at(g_base, g2_base, st, md, seqlen, s_gl, s_g2l, R: tl.constexpr, HAS_DY2: tl.constexpr):
    """The output's gradient at steps ``st`` in float32, as R columns: dy, plus dy2 if given."""
    m = md & (st < seqlen)
    g = tl.load(g_base + st.to(tl.int64) * s_gl, mask=m, other=0.0).to(tl.float32)
    if HAS_DY2:
        g += tl.load(g2_base + st.to(tl.int64) * s_g2l, mask=m, other=0.0).to(tl.float32)
    return _cols(g, R)


@triton.jit
def conv_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, dy_ptr, dy2_ptr, dx_ptr, dw_ptr, db_ptr,
    dim, seqlen, nchunks,
    s_xb, s_xd, s_xl, s_ib, s_id, s_il, s_gb, s_gd, s_gl, s_g2b, s_g2d, s_g2l, s_dxb, s_dxd, s_dxl,
    W: tl.constexpr, WP: tl.constexpr, BD: tl.constexpr, BLJ: tl.constexpr, R: tl.constexpr,
    NT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr,
    HAS_DY2: tl.constexpr,
):
    """dx, and partial sums of dw and dbias, for NT tiles of BLJ * R steps of BD channels (one
    chunk). g = dy * act'(pre) is recomputed in registers: dx[t] = sum_k w[k] g[t + W-1-k] needs
    g at the W-1 steps after a thread's R, so each thread also reads x and dy at the next R steps.
    With HAS_DY2 the output's gradient is dy + dy2 (the output read twice; the sum made here).
    dw partial (batch, nchunks, dim, W) and db partial (batch, nchunks, dim), float32, that the
    wrapper adds up in a fixed order (deterministic, no atomics)."""
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)
    mask_d = offs_d < dim
    d64 = offs_d.to(tl.int64)
    x_base = x_ptr + pid_b * s_xb + d64[:, None, None] * s_xd
    i_base = init_ptr + pid_b * s_ib + d64[:, None, None] * s_id
    g_base = dy_ptr + pid_b * s_gb + d64[:, None, None] * s_gd
    g2_base = dy2_ptr + pid_b * s_g2b + d64[:, None, None] * s_g2d
    dx_base = dx_ptr + pid_b * s_dxb + d64[:, None, None] * s_dxd
    ws = _taps(w_ptr, offs_d, mask_d, W)
    bias = tl.zeros((BD, 1), tl.float32)
    if HAS_BIAS:
        bias += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    acc_w = tl.zeros((BD, BLJ, WP), tl.float32)
    acc_b = tl.zeros((BD, BLJ), tl.float32)
    for it in range(NT):
        steps = (pid_l * NT + it) * (BLJ * R) + tl.arange(0, BLJ)[:, None] * R + tl.arange(0, R)[None, :]
        st = steps[None, :, :]
        cur = _cols(_window(x_base, i_base, steps, mask_d, seqlen, s_xl, s_il, W, HAS_INIT), R)
        prev = _cols(_window(x_base, i_base, steps - R, mask_d, seqlen, s_xl, s_il, W, HAS_INIT), R)
        nxt = _cols(_window(x_base, i_base, steps + R, mask_d, seqlen, s_xl, s_il, W, HAS_INIT), R)
        md = mask_d[:, None, None]
        dy_cur = _grad_at(g_base, g2_base, st, md, seqlen, s_gl, s_g2l, R, HAS_DY2)
        dy_nxt = _grad_at(g_base, g2_base, st + R, md, seqlen, s_gl, s_g2l, R, HAS_DY2)
        g = ()
        for p in tl.static_range(R + W - 1):
            pre = _pre(ws, bias, prev, cur, nxt, p, W, R)
            gp = _at(dy_cur, dy_cur, dy_nxt, p, R)
            if SILU:
                sg = tl.sigmoid(pre)
                gp = gp * sg * (1.0 + pre * (1.0 - sg))
            g = g + (gp,)
        dxs = ()
        for r in tl.static_range(R):
            acc = g[r + W - 1] * ws[0]
            for k in tl.static_range(1, W):
                acc += g[r + W - 1 - k] * ws[k]
            dxs = dxs + (acc,)
            acc_b += g[r]
        tl.store(dx_base + st.to(tl.int64) * s_dxl, _tile(dxs, R).to(dx_ptr.dtype.element_ty),
                 mask=md & (st < seqlen))
        # dw[k] = sum_t g[t] x[t - (W-1) + k], over this thread's R steps
        dws = ()
        for k in tl.static_range(WP):
            if k < W:
                s = g[0] * _at(prev, cur, nxt, k - (W - 1), R)
                for r in tl.static_range(1, R):
                    s += g[r] * _at(prev, cur, nxt, r - (W - 1) + k, R)
                dws = dws + (s,)
            else:
                dws = dws + (tl.zeros((BD, BLJ), tl.float32),)
        acc_w += _tile(dws, WP)
    part = (pid_b * nchunks + pid_l) * dim + d64
    offs_k = tl.arange(0, WP)
    tl.store(dw_ptr + part[:, None] * W + offs_k[None, :], tl.sum(acc_w, axis=1),
             mask=mask_d[:, None] & (offs_k < W)[None, :])
    tl.store(db_ptr + part, tl.sum(acc_b, axis=1), mask=mask_d)


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
