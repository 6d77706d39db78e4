"""Fused residual add + RMSNorm in Triton, fwd and bwd.

Forward, one program per row: s = x + residual (float32), rstd = 1/sqrt(mean(s^2) + eps),
y = s * rstd * w; writes y, the residual stream s when asked (prenorm), and rstd for backward.
Backward: each program walks rows pid, pid + P, ...: ds = rstd * (w*dy - s * rstd^2 * mean(w*dy*s))
(+ the gradient arriving on the residual stream), and accumulates its partial dw in registers;
the wrapper sums the P partials (deterministic).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def rms_fwd_kernel(
    x_ptr, res_ptr, w_ptr, y_ptr, s_ptr, rstd_ptr,
    H, eps, s_x, s_r, s_y, s_s,
    BH: tl.constexpr, HAS_RES: tl.constexpr, STORE_S: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BH)
    mask = cols < H
    s = tl.load(x_ptr + row * s_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        s += tl.load(res_ptr + row * s_r + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=0) / H + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * s_y + cols, (s * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)
    if STORE_S:
        tl.store(s_ptr + row * s_s + cols, s.to(s_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def rms_bwd_kernel(
    x_ptr, res_ptr, w_ptr, rstd_ptr, dy_ptr, ds_in_ptr, dx_ptr, dres_ptr, dw_ptr,
    M, H, s_x, s_r, s_dy, s_dsi, s_dx, s_dr,
    BH: tl.constexpr, HAS_RES: tl.constexpr, HAS_DS_IN: tl.constexpr, STORE_DRES: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BH)
    mask = cols < H
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BH,), tl.float32)
    pid64 = pid.to(tl.int64)
    for i in range(0, tl.cdiv(M - pid, nprog)):
        row = pid64 + i * nprog
        s = tl.load(x_ptr + row * s_x + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            s += tl.load(res_ptr + row * s_r + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        dy = tl.load(dy_ptr + row * s_dy + cols, mask=mask, other=0.0).to(tl.float32)
        sh = s * rstd
        dw += dy * sh
        wdy = w * dy
        ds = rstd * (wdy - sh * (tl.sum(wdy * sh, axis=0) / H))
        if HAS_DS_IN:
            ds += tl.load(ds_in_ptr + row * s_dsi + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + row * s_dx + cols, ds.to(dx_ptr.dtype.element_ty), mask=mask)
        if STORE_DRES:
            tl.store(dres_ptr + row * s_dr + cols, ds.to(dres_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_ptr + pid.to(tl.int64) * H + cols, dw, mask=mask)
