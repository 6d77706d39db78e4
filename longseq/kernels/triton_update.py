"""One decoding step of the selective scan, in place on the state (Triton).

One program per (channel block, sequence): loads state [BD, N], updates it with
exp(dt*A) * state + dt*x*B, writes it back and returns y = <state, C> + D*x, gated by silu(z).
Not autotuned: it writes its input ``state`` in place, so a timing trial would corrupt it.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
    dim, dstate, per_group,
    s_sb, s_sd, s_sn, s_xb, s_xd, s_tb, s_td, s_zb, s_zd,
    s_Bb, s_Bg, s_Bn, s_Cb, s_Cg, s_Cn, s_yb, s_yd,
    BD: tl.constexpr, NP: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, NP)
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    m2 = mask_d[:, None] & mask_n[None, :]
    d64 = offs_d.to(tl.int64)
    g64 = (offs_d // per_group).to(tl.int64)     # per channel: a block may straddle groups
    s_ptrs = state_ptr + pid_b * s_sb + d64[:, None] * s_sd + offs_n[None, :] * s_sn
    h = tl.load(s_ptrs, mask=m2, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + pid_b * s_xb + d64 * s_xd, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * s_tb + d64 * s_td, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))
    A = tl.load(A_ptr + d64[:, None] * dstate + offs_n[None, :], mask=m2, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + pid_b * s_Bb + g64[:, None] * s_Bg + offs_n[None, :] * s_Bn, mask=m2, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + pid_b * s_Cb + g64[:, None] * s_Cg + offs_n[None, :] * s_Cn, mask=m2, other=0.0).to(tl.float32)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bv
    tl.store(s_ptrs, h.to(state_ptr.dtype.element_ty), mask=m2)
    y = tl.sum(h * Cv, axis=1)
    if HAS_D:
        y += tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * s_zb + d64 * s_zd, mask=mask_d, other=0.0).to(tl.float32)
        y = y * z * tl.sigmoid(z)
    tl.store(y_ptr + pid_b * s_yb + d64 * s_yd, y.to(y_ptr.dtype.element_ty), mask=mask_d)
