"""Fused residual add + RMSNorm in Triton, fwd and bwd.

Forward, one program per block of ROWS rows: s = x + residual (float32), rstd = 1/sqrt(mean(s^2) +
eps), y = s * rstd * w; writes y, the residual stream s when asked (prenorm), and rstd for backward.
Backward: each program walks the row blocks pid, pid + P, ...: ds = rstd * (w*dy - s * rstd^2 *
mean(w*dy*s))
(+ the gradient arriving on the residual stream), and accumulates its partial dw in registers;
the wrapper sums the P partials (deterministic). Blocks of rows, not single rows, keep enough bytes
in flight when rows are short (d_model 64-256: one 256-element row per step ran the backward at
about half the copy bandwidth; kernel notes v23).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def rms_fwd_kernel(
    x_ptr, res_ptr, w_ptr, y_ptr, s_ptr, rstd_ptr,
    M, H, eps, s_x, s_r, s_y, s_s,
    BH: tl.constexpr, ROWS: tl.constexpr, HAS_RES: tl.constexpr, STORE_S: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BH)
    mrow = rows < M
    mask = mrow[:, None] & (cols < H)[None, :]
    r2, c2 = rows[:, None], cols[None, :]
    s = tl.load(x_ptr + r2 * s_x + c2, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        s += tl.load(res_ptr + r2 * s_r + c2, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=1) / H + eps)
    w = tl.load(w_ptr + cols, mask=cols < H, other=0.0).to(tl.float32)
    tl.store(y_ptr + r2 * s_y + c2, (s * rstd[:, None] * w[None, :]).to(y_ptr.dtype.element_ty), mask=mask)
    if STORE_S:
        tl.store(s_ptr + r2 * s_s + c2, s.to(s_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=mrow)


@triton.jit
def rms_bwd_kernel(
    x_ptr, res_ptr, w_ptr, rstd_ptr, dy_ptr, ds_in_ptr, dx_ptr, dres_ptr, dw_ptr,
    M, H, s_x, s_r, s_dy, s_dsi, s_dx, s_dr,
    BH: tl.constexpr, ROWS: tl.constexpr, HAS_RES: tl.constexpr, HAS_DS_IN: tl.constexpr,
    STORE_DRES: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BH)
    mcol = cols < H
    c2 = cols[None, :]
    w = tl.load(w_ptr + cols, mask=mcol, other=0.0).to(tl.float32)[None, :]
    dw = tl.zeros((BH,), tl.float32)
    for i in range(0, tl.cdiv(tl.cdiv(M, ROWS) - pid, nprog)):
        rows = (pid + i * nprog).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        mrow = rows < M
        mask = mrow[:, None] & mcol[None, :]
        r2 = rows[:, None]
        s = tl.load(x_ptr + r2 * s_x + c2, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            s += tl.load(res_ptr + r2 * s_r + c2, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=mrow, other=0.0)[:, None]
        dy = tl.load(dy_ptr + r2 * s_dy + c2, mask=mask, other=0.0).to(tl.float32)
        sh = s * rstd
        dw += tl.sum(dy * sh, axis=0)
        wdy = w * dy
        ds = rstd * (wdy - sh * (tl.sum(wdy * sh, axis=1) / H)[:, None])
        if HAS_DS_IN:
            ds += tl.load(ds_in_ptr + r2 * s_dsi + c2, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + r2 * s_dx + c2, ds.to(dx_ptr.dtype.element_ty), mask=mask)
        if STORE_DRES:
            tl.store(dres_ptr + r2 * s_dr + c2, ds.to(dres_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_ptr + pid.to(tl.int64) * H + cols, dw, mask=mcol)
