"""Fused Triton selective scan: forward and backward kernels (docs/kernels.md, docs/kernel_notes.md).

One program owns ``BD`` channels of one sequence and works on 4-D register tiles [BL, NQ, BD, NR]
(state n = q * NR + r; [BL, BD, NQ, NR] for some kernels on Triton >= 3.7, see ``_chan4``): NR states
in each thread, NQ state groups and the channels on the lanes and warps, and all BL steps of a chunk
in each thread, so a chunk is an unrolled per-thread loop ``h = a_t * h + b_t`` and the state
carries to the next chunk in registers. Nothing of size (batch, dim, seqlen, dstate) ever reaches
device memory; the training forward stores the state every SAVE_EVERY chunks (and, with z, the
output before the gate) for the backward.

The backward (``scan_bwd_t4_kernel``) walks the windows between saved states in reverse, recomputes
each sub-chunk's states with the forward recurrence and runs the reverse recurrence for dL/dh over
the same registers. dB and dC are reduced over the program's channels before one atomic add per
(n, t) (or, in deterministic mode, stored per program and summed afterwards). With few programs
(batch 1 at long lengths) both directions run chunk-parallel over sequence groups, after a summary
pass (``SUMMARY`` in the forward, ``scan_bwd_t4_summary_kernel`` in the backward).

All arithmetic is float32; ``exp2`` with A pre-scaled by log2(e). Offsets that can exceed 2^31
(batch, channel and time offsets) are computed in int64.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl


@triton.jit
def _take(x, sel, nz):
    """x[s] along axis 0 (kept as a size-1 axis), with sel = (arange == s) and nz = -0.0 tiles.
    With axis 0 held inside each thread and s a compile-time constant this is a register pick:
    where() folds per register to x or -0.0 and x + (-0.0) folds to x (with +0.0 fill the adds
    would stay: 0 + x is not x for x = -0.0). nz must be made as zeros * -1.0: a -0.0 literal
    loses its sign in Triton 3.6's front end."""
    return tl.sum(tl.where(sel, x, nz), axis=0, keep_dims=True)


# The 4-D tiles' axis order. Their layout comes from the coalesced loads of A and the states
# ([1, NQ, BD, NR] / [1, BD, NQ, NR], contiguous along NR only). Triton's coalescing pass orders
# the dims that tie on contiguity by ascending index up to 3.6 and by descending index after it, and
# the first of them gets the lanes first. The state groups (NQ) must come first: then a 16-channel
# tile keeps two channels per thread and the backward's sums of dB and dC over the channels start
# in-thread (v18: with the channels first they run on shuffles alone, +49% for t4:16:4:1). So the
# channels sit on axis CHAN_AXIS = 2 ([BL, NQ, BD, NR]) under the old rule and 1 ([BL, BD, NQ, NR])
# under the new one, where the one-warp forward measured faster with 2 (triton_scan_op.chan_axis
# picks per kernel and version). These helpers place and reduce tiles for either order.
@triton.jit
def _chan4(x, CHAN_AXIS: tl.constexpr):
    """A per-channel tile [L, BD] as a 4-D tile."""
    if CHAN_AXIS == 2:
        r = x[:, None, :, None]
    else:
        r = x[:, :, None, None]
    return r


@triton.jit
def _state4(x, CHAN_AXIS: tl.constexpr):
    """A per-state tile [L, NQ, NR] (B, C, dB, dC) as a 4-D tile."""
    if CHAN_AXIS == 2:
        r = x[:, :, None, :]
    else:
        r = x[:, None, :, :]
    return r


@triton.jit
def _zeros4(L: tl.constexpr, NQ: tl.constexpr, BD: tl.constexpr, NR: tl.constexpr, CHAN_AXIS: tl.constexpr):
    """A float32 4-D tile of zeros with L steps."""
    if CHAN_AXIS == 2:
        r = tl.zeros((L, NQ, BD, NR), tl.float32)
    else:
        r = tl.zeros((L, BD, NQ, NR), tl.float32)
    return r


@triton.jit
def _sum_states(x, CHAN_AXIS: tl.constexpr):
    """A 4-D tile summed over the states: [L, BD]."""
    return tl.sum(tl.sum(x, axis=3), axis=3 - CHAN_AXIS)


# Fast float32 math on the SFU (MUFU) for the t4 kernels: one instruction each for 2^x, log2(x)
# and 1/x (PTX ex2/lg2/rcp.approx.ftz: ~2 ulp, denormals flushed). tl.log2 would call libdevice's
# full-precision log2f (~20 instructions) and tl.sigmoid a full division. The interpreter cannot
# run inline PTX, so under TRITON_INTERPRET=1 the same formulas use tl.exp2 / tl.log2 / division.
FAST_MATH = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") != "1")


@triton.jit
def _asm_f32(x, ASM: tl.constexpr):
    # one PTX instruction on each float32 value
    return tl.inline_asm_elementwise(ASM, "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _ex2(x):
    return _asm_f32(x, "ex2.approx.ftz.f32 $0, $1;") if FAST_MATH else tl.exp2(x)


@triton.jit
def _lg2(x):
    return _asm_f32(x, "lg2.approx.ftz.f32 $0, $1;") if FAST_MATH else tl.log2(x)


@triton.jit
def _rcp(x):
    return _asm_f32(x, "rcp.approx.ftz.f32 $0, $1;") if FAST_MATH else 1.0 / x


@triton.jit
def _to_f32(x):
    # bf16 -> f32 as an opaque instruction, so that the compiler converts each loaded value once
    # (in the load's layout) instead of after broadcasting it to the compute layout. Used for the
    # per-channel tiles (u, delta, z, ...). B and C, broadcast over the program's channels, are
    # widened with a plain .to(float32) after the broadcast (_state4(B).to(float32)): their bf16
    # copies then go through shared memory (half the bytes on the L1/shared pipe, the busiest unit)
    # and each thread widens its own, with fewer registers: 3-6% faster at bf16 on the H100 (v11).
    # Triton 3.6 keeps the conversion in bf16 with the widening before the broadcast too; 3.9 only
    # with it after (v26: its backward 7-10% faster). (docs/kernel_notes.md)
    if FAST_MATH and x.dtype == tl.bfloat16:
        return tl.inline_asm_elementwise("cvt.f32.bf16 $0, $1;", "=r,h", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return x.to(tl.float32)


@triton.jit
def _softplus2(x):
    # softplus (beta=1, threshold=20) as ln2 * log2(1 + 2^(x log2 e)): two SFU instructions
    return tl.where(x > 20.0, x, 0.6931471805599453 * _lg2(1.0 + _ex2(1.4426950408889634 * x)))


@triton.jit
def _sigmoid(x):
    return _rcp(1.0 + _ex2(-1.4426950408889634 * x))


@triton.jit
def _delta_tile(raw, m2, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """A raw [BL, BD] delta tile -> (delta + bias, then softplus of it with zeros where m2 is
    false), both float32."""
    pre = _to_f32(raw)
    if HAS_BIAS:
        pre = pre + bias[None, :]
    dl = _softplus2(pre) if SOFTPLUS else pre
    return pre, tl.where(m2, dl, 0.0)


@triton.jit
def _t4_indices(pid_d, dim, dstate, per_group, BD: tl.constexpr, NQ: tl.constexpr, NR: tl.constexpr,
                BL: tl.constexpr, CHAN_AXIS: tl.constexpr):
    """A t4 program's channel offsets and mask [BD], step offsets [BL], B/C group (int64), and its
    state indices and masks: n4/d4/mask_dn4 as 4-D tiles of one step, n3/mask_n3 [1, NQ, NR]
    (n = q * NR + r)."""
    d0 = pid_d * BD
    offs_d = d0 + tl.arange(0, BD)
    mask_d = offs_d < dim
    offs_l = tl.arange(0, BL)
    d64 = offs_d.to(tl.int64)
    g64 = (d0 // per_group).to(tl.int64)
    # written out per order (not as _state4(n3)) so that the CHAN_AXIS = 2 code is v18's, op for op
    if CHAN_AXIS == 2:
        n4 = (tl.arange(0, NQ)[None, :, None, None] * NR + tl.arange(0, NR)[None, None, None, :]).to(tl.int64)
    else:
        n4 = (tl.arange(0, NQ)[None, None, :, None] * NR + tl.arange(0, NR)[None, None, None, :]).to(tl.int64)
    d4 = _chan4(d64[None, :], CHAN_AXIS)
    mask_dn4 = _chan4(mask_d[None, :], CHAN_AXIS) & (n4 < dstate)
    n3 = (tl.arange(0, NQ)[None, :, None] * NR + tl.arange(0, NR)[None, None, :]).to(tl.int64)
    mask_n3 = n3 < dstate
    return offs_d, mask_d, offs_l, d64, g64, n4, d4, mask_dn4, n3, mask_n3


@triton.jit
def _t4_channel_consts(A_ptr, bias_ptr, D_ptr, offs_d, mask_d, d4, n4, mask_dn4, dstate,
                       HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """A (a 4-D tile of one step) and delta_bias, D [BD] of a t4 program's channels, as float32 (bias and D
    zero where absent)."""
    A = _to_f32(tl.load(A_ptr + d4 * dstate + n4, mask=mask_dn4, other=0.0))
    bias = tl.zeros(offs_d.shape, tl.float32)
    if HAS_BIAS:
        bias = _to_f32(tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0))
    Dv = tl.zeros(offs_d.shape, tl.float32)
    if HAS_D:
        Dv = _to_f32(tl.load(D_ptr + offs_d, mask=mask_d, other=0.0))
    return A, bias, Dv


@triton.jit
def _chunk_loads(c, offs_l, seqlen, mask_d, mask_n3, u_base, dl_base, B_base, C_base, z_base,
                 s_ul, s_dl, s_Bl, s_Cl, s_zl, BL: tl.constexpr, WITH_C: tl.constexpr, WITH_Z: tl.constexpr):
    """Chunk c's raw u, delta [BL, BD], B, C [BL, NQ, NR] and z tiles (zeros past seqlen); C and z are
    placeholders (u's and B's tiles) when not needed."""
    t = c * BL + offs_l
    t64 = t.to(tl.int64)
    mask_t = t < seqlen
    m2 = mask_t[:, None] & mask_d[None, :]
    mnt = mask_t[:, None, None] & mask_n3
    u = tl.load(u_base + t64[:, None] * s_ul, mask=m2, other=0.0)
    dl = tl.load(dl_base + t64[:, None] * s_dl, mask=m2, other=0.0)
    B = tl.load(B_base + t64[:, None, None] * s_Bl, mask=mnt, other=0.0)
    C = B
    if WITH_C:
        C = tl.load(C_base + t64[:, None, None] * s_Cl, mask=mnt, other=0.0)
    z = u
    if WITH_Z:
        z = tl.load(z_base + t64[:, None] * s_zl, mask=m2, other=0.0)
    return u, dl, B, C, z


@triton.jit
def scan_fwd_t4_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr,
    y_ptr, ypre_ptr, states_ptr, last_ptr, hsum_ptr, ssum_ptr,
    dim, seqlen, dstate, per_group, nchunks, cpp,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    s_yb, s_yd, s_yl,
    BD: tl.constexpr, NP: tl.constexpr, BL: tl.constexpr, NR: tl.constexpr, SAVE_EVERY: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_INIT: tl.constexpr, SAVE_STATES: tl.constexpr, SUMMARY: tl.constexpr, GROUPED: tl.constexpr,
    SAVE_YPRE: tl.constexpr, CHAN_AXIS: tl.constexpr, AHEAD: tl.constexpr = 1,
):
    """Forward with 4-D tiles [BL, NQ, BD, NR] (state n = q * NR + r) and a sequential recurrence.

    Unlike the tm/cm kernels (one (d, n) pair per thread, y summed over n by a 16-lane shuffle
    tree), each thread here holds NR states of its channel(s) and all BL steps of the chunk. The A
    load, contiguous along n, anchors the compute layout on the GPU: NR states in-thread (one
    16-byte vector), NQ and the channels on the lanes (which first: CHAN_AXIS, see _chan4), the
    channels on the warps. The chunk is then
    solved by an unrolled loop over its BL steps (h = a_t * h + b_t, one FFMA per element; the scan
    of v1-v3 spent 3), y's sum over n is NR-1 in-thread FMAs and log2(NQ) shuffles per step, and the
    chunk's last state is a register, not a reduction. With SAVE_STATES the state is stored every
    SAVE_EVERY chunks (every SAVE_EVERY * BL steps), for the backward; with SAVE_YPRE the output
    before the z gate (y + D u) too, so that the backward's dz needs no second sum over the states
    (mamba_ssm saves it for the same reason).

    Chunk-parallel mode (few programs, e.g. batch 1 at 256K): grid axis 2 splits the sequence into
    groups of ``cpp`` chunks. Pass 1 (SUMMARY) runs each group from a zero state and stores its end
    state to hsum [G, batch, dim, dstate] and its sum of delta (after softplus) to ssum [G, batch,
    dim]: the group's decay is exp2(A2 * sum). Pass 2 (GROUPED) folds the earlier groups' summaries
    into its start state, h = exp2(A2 * s_j) * h + hend_j for j < g, then runs as usual; only the
    last group stores the last state."""
    NQ: tl.constexpr = NP // NR
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_g = tl.program_id(2)
    nb = tl.num_programs(1)
    offs_d, mask_d, offs_l, d64, g64, n4, d4, mask_dn4, n3, mask_n3 = _t4_indices(
        pid_d, dim, dstate, per_group, BD, NQ, NR, BL, CHAN_AXIS)

    u_base = u_ptr + pid_b * s_ub + d64[None, :] * s_ud
    dl_base = delta_ptr + pid_b * s_db + d64[None, :] * s_dd
    y_base = y_ptr + pid_b * s_yb + d64[None, :] * s_yd
    ypre_base = ypre_ptr + (pid_b * dim + d64[None, :]) * seqlen       # contiguous (batch, dim, seqlen)
    z_base = z_ptr + pid_b * s_zb + d64[None, :] * s_zd
    B_base = B_ptr + pid_b * s_Bb + g64 * s_Bg + n3 * s_Bn
    C_base = C_ptr + pid_b * s_Cb + g64 * s_Cg + n3 * s_Cn

    A, bias, Dv = _t4_channel_consts(A_ptr, bias_ptr, D_ptr, offs_d, mask_d, d4, n4, mask_dn4, dstate, HAS_BIAS, HAS_D)
    A2 = A * 1.4426950408889634
    row4 = (pid_b * dim + d4) * dstate + n4
    h = _zeros4(1, NQ, BD, NR, CHAN_AXIS)
    if HAS_INIT and not SUMMARY:
        h = _to_f32(tl.load(init_ptr + row4, mask=mask_dn4, other=0.0))
    if GROUPED:
        for j in range(pid_g):
            sj = tl.load(ssum_ptr + (j * nb + pid_b) * dim + d4, mask=_chan4(mask_d[None, :], CHAN_AXIS), other=0.0)
            hj = tl.load(hsum_ptr + j * nb * dim * dstate + row4, mask=mask_dn4, other=0.0)
            h = tl.exp2(A2 * sj) * h + hj
    nsaved = (nchunks + SAVE_EVERY - 1) // SAVE_EVERY
    st_base = states_ptr + (pid_b * dim + d4) * nsaved * dstate + n4
    l4 = offs_l[:, None, None, None]
    nz = _zeros4(BL, NQ, BD, NR, CHAN_AXIS) * -1.0
    dsum = tl.zeros((BD,), tl.float32)

    # software pipelining: the next chunk's raw tiles (AHEAD = 2: the next two chunks') are loaded
    # before this chunk's arithmetic, so their DRAM latency overlaps it (a one-warp program has few
    # neighbours on the SM to hide it; two ahead pays where the DRAM is slow to serve, v13)
    c_lo = pid_g * cpp
    c_hi = tl.minimum(c_lo + cpp, nchunks)
    nxt = _chunk_loads(c_lo, offs_l, seqlen, mask_d, mask_n3, u_base, dl_base, B_base, C_base, z_base,
                       s_ul, s_dl, s_Bl, s_Cl, s_zl, BL, not SUMMARY, HAS_Z and not SUMMARY)
    if AHEAD == 2:
        nxt2 = _chunk_loads(c_lo + 1, offs_l, seqlen, mask_d, mask_n3, u_base, dl_base, B_base, C_base, z_base,
                            s_ul, s_dl, s_Bl, s_Cl, s_zl, BL, not SUMMARY, HAS_Z and not SUMMARY)
    for c in range(c_lo, c_hi):
        u_raw, dl_raw, B_raw, C_raw, z_raw = nxt
        ahead = _chunk_loads(c + AHEAD, offs_l, seqlen, mask_d, mask_n3, u_base, dl_base, B_base, C_base, z_base,
                             s_ul, s_dl, s_Bl, s_Cl, s_zl, BL, not SUMMARY, HAS_Z and not SUMMARY)
        if AHEAD == 2:
            nxt = nxt2
            nxt2 = ahead
        else:
            nxt = ahead
        t = c * BL + offs_l
        mask_t = t < seqlen
        t64 = t.to(tl.int64)
        if SAVE_STATES:
            tl.store(st_base + (c // SAVE_EVERY) * dstate, h, mask=mask_dn4 & (c % SAVE_EVERY == 0))
        m2 = mask_t[:, None] & mask_d[None, :]
        u = _to_f32(u_raw)
        _, dl = _delta_tile(dl_raw, m2, bias, HAS_BIAS, SOFTPLUS)
        a = tl.exp2(_chan4(dl, CHAN_AXIS) * A2)                            # a 4-D tile over the BL steps
        bx = _chan4(dl * u, CHAN_AXIS) * _state4(B_raw, CHAN_AXIS).to(tl.float32)    # B and C: see _to_f32
        if SUMMARY:
            dsum += tl.sum(dl, axis=0)
            for s in tl.static_range(BL):
                sel = l4 == s
                h = _take(a, sel, nz) * h + _take(bx, sel, nz)
        else:
            C4 = _state4(C_raw, CHAN_AXIS).to(tl.float32)
            hs = _zeros4(BL, NQ, BD, NR, CHAN_AXIS)
            for s in tl.static_range(BL):
                sel = l4 == s
                h = _take(a, sel, nz) * h + _take(bx, sel, nz)
                hs = tl.where(sel, h, hs)
            y = _sum_states(hs * C4, CHAN_AXIS)                             # [BL, BD]
            if HAS_D:
                y = y + Dv[None, :] * u
            if HAS_Z:
                if SAVE_YPRE:
                    tl.store(ypre_base + t64[:, None], y.to(ypre_ptr.dtype.element_ty), mask=m2)
                zt = _to_f32(z_raw)
                y = y * zt * _sigmoid(zt)
            tl.store(y_base + t64[:, None] * s_yl, y.to(y_ptr.dtype.element_ty), mask=m2)
    if SUMMARY:
        tl.store(hsum_ptr + pid_g * nb * dim * dstate + row4, h, mask=mask_dn4)
        tl.store(ssum_ptr + (pid_g * nb + pid_b) * dim + d64, dsum, mask=mask_d)
    elif pid_g == tl.num_programs(2) - 1:
        tl.store(last_ptr + row4, h, mask=mask_dn4)


# dB and dC: the sum over a program's channels, then one atomic add (or store) per (step, state).
# tl.sum over channels that sit on lanes is a butterfly all-reduce: every channel lane ends with all
# BL * NR sums (3 levels x BL * NR shuffles for 8 channel lanes), and one lane of each replica group adds
# them. A reduce-scatter halves what each lane holds at every level instead (BL * NR / 2 + ... shuffles:
# 14 instead of 48 for BL * NR = 16), and the 8 channel lanes then add disjoint parts (kernel notes v25).
# Triton has no shuffle, so the exchange is PTX shfl.sync.bfly, which is right only on the layout it was
# written for: one warp, the state groups (NQ lanes) on the lowest lane bits, then BDL channel lanes.
# Triton chooses layouts itself, so the launcher checks each compiled kernel's (triton_scan_op
# scatter_lanes, shuffle_layouts_ok) and uses BDL = 0 (tl.sum) where it differs. The interpreter runs
# the same exchange as a gather along the channel axis.
@triton.jit
def _lane_swap(x, lane, K: tl.constexpr, LANE_MASK: tl.constexpr):
    """x [BDL, NQ, V] with the BDL axis on lanes (bit K of its index on lane bit log2(LANE_MASK)): the
    value that the lane with bit K of its channel-lane index flipped holds."""
    if FAST_MATH:
        r = tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, $2, 0x1f, 0xffffffff;", "=f,f,r",
                                      [x, tl.full(x.shape, LANE_MASK, tl.int32)], dtype=tl.float32,
                                      is_pure=False, pack=1)   # reads other lanes: not a per-element op
    else:
        r = tl.gather(x, (lane ^ (1 << K)) + tl.zeros(x.shape, tl.int32), axis=0)
    return r


@triton.jit
def _chan_scatter_add(x, ptr, t0, seqlen, dstate, s_gl, s_gn, BL: tl.constexpr, NQ: tl.constexpr, BD: tl.constexpr,
                      NR: tl.constexpr, BDL: tl.constexpr, CHAN_AXIS: tl.constexpr, DETERMINISTIC: tl.constexpr):
    """ptr[t * s_gl + n * s_gn] += the sum of the 4-D tile x over its BD channels, for the steps
    t = t0 + [0, BL) before seqlen and the states n < dstate: the reduce-scatter above, over BDL channel lanes."""
    if CHAN_AXIS == 2:
        x = tl.permute(x, (0, 2, 1, 3))                           # [BL, BD, NQ, NR]: no data moves
    # channels d and d + BDL in one thread (BD // BDL of them): their sum first, in-thread
    x = tl.sum(tl.reshape(x, (BL, BD // BDL, BDL, NQ, NR)), axis=1)
    # J = BL * NR // BDL values stay in each lane: J consecutive steps (J <= BL, so BL = BH * J). Order a
    # lane's values as (step % J, step // J, state) so that the levels below, which split off the lowest
    # place bit each, take (state, step // J) from the lane and leave the J consecutive steps
    J: tl.constexpr = BL * NR // BDL
    BH: tl.constexpr = BL // J
    x = tl.reshape(tl.permute(x, (1, 2, 0, 3)), (BDL, NQ, BH, J, NR))
    s = tl.reshape(tl.permute(x, (0, 1, 3, 2, 4)), (BDL, NQ, BL * NR))
    lane = tl.arange(0, BDL)[:, None, None]
    for k in tl.static_range(5):
        if (1 << k) < BDL:
            s0, s1 = tl.split(tl.reshape(s, (BDL, NQ, (BL * NR) >> (k + 1), 2)))
            hi = ((lane >> k) & 1) == 1
            # a lane keeps the half its partner sends away (the odd or the even places, by bit k of its
            # channel lane) and adds the partner's copy of it
            s = tl.where(hi, s1, s0) + _lane_swap(tl.where(hi, s0, s1), lane, k, NQ << k)
    # channel lane i now holds state (i % NR) of the steps (i // NR) * J + [0, J)
    t = t0 + (lane // NR) * J + tl.arange(0, J)[None, None, :]
    n = tl.arange(0, NQ)[None, :, None] * NR + lane % NR
    off = t.to(tl.int64) * s_gl + n * s_gn
    msk = (t < seqlen) & (n < dstate)
    if DETERMINISTIC:
        tl.store(ptr + off, s, mask=msk)
    else:
        tl.atomic_add(ptr + off, s, mask=msk, sem="relaxed")


@triton.jit
def _bwd_chunk_loads(c, offs_l, seqlen, mask_d, mask_n3, u_base, dl_base, B_base, C_base, z_base, o_base,
                     yp_base, s_ul, s_dl, s_Bl, s_Cl, s_zl, s_ol, BL: tl.constexpr, HAS_Z: tl.constexpr,
                     HAS_YPRE: tl.constexpr):
    """_chunk_loads plus the output gradient's [BL, BD] tile and the saved pre-gate output's (a
    placeholder without it), for the backward."""
    u, dl, B, C, z = _chunk_loads(c, offs_l, seqlen, mask_d, mask_n3, u_base, dl_base, B_base, C_base, z_base,
                                  s_ul, s_dl, s_Bl, s_Cl, s_zl, BL, True, HAS_Z)
    t64 = (c * BL + offs_l).to(tl.int64)
    m2 = (t64 < seqlen)[:, None] & mask_d[None, :]
    dout = tl.load(o_base + t64[:, None] * s_ol, mask=m2, other=0.0)
    ypre = dout
    if HAS_YPRE:
        ypre = tl.load(yp_base + t64[:, None], mask=m2, other=0.0)
    return u, dl, B, C, z, dout, ypre


@triton.jit
def scan_bwd_t4_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, dout_ptr, dlast_ptr, ypre_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dinit_ptr, esum_ptr, ssum_ptr,
    dim, seqlen, dstate, per_group, nsaved, wpg,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    s_ob, s_od, s_ol,
    s_dub, s_dud, s_dul, s_ddb, s_ddd, s_ddl, s_dzb, s_dzd, s_dzl,
    s_gb, s_gk, s_gn, s_gl,
    BD: tl.constexpr, NP: tl.constexpr, BL: tl.constexpr, NR: tl.constexpr, WIN: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr, DETERMINISTIC: tl.constexpr, GROUPED: tl.constexpr, HAS_YPRE: tl.constexpr,
    CHAN_AXIS: tl.constexpr, BDL: tl.constexpr = 0,
):
    """Backward with the t4 forward's tiles [BL, NQ, BD, NR] and unrolled per-thread recurrences (v5).

    The training forward saved the state every WIN steps (nsaved windows). Windows are walked in
    reverse; a window of WIN steps is SUB = WIN // BL sub-chunks of BL steps (all unrolled). Pass A
    runs the window's first SUB - 1 sub-chunks forward from the saved state and keeps each
    sub-chunk's start state in registers ([SUB, NQ, BD, NR], picked like a step of a chunk). Pass B
    walks the sub-chunks in reverse: it recomputes the sub-chunk's states from its start state
    (h = a_t h + b_t, one FFMA per element, kept as the tile hs), then runs the reverse recurrence
    dh_t = dy_t C_t + a_{t+1} dh_{t+1} over the same steps, taking a_{t+1} from the same a tile;
    the later sub-chunk's first a and dh are carried in registers (no shifted exp, no second
    delta load). dL/dlast enters as the carry at the padded end (padded steps have a = 1 and no
    input, so it reaches step seqlen - 1 unchanged); dL/dh_{-1} = a_0 dh_0 is the final carry.
    Per-channel sums (du, ddelta, dz, dD, dA, ddelta_bias) stay in the program; dB and dC are
    reduced over its channels (with BDL > 0 by _chan_scatter_add's reduce-scatter over BDL channel
    lanes, else tl.sum) and added atomically (or stored per program in deterministic mode).

    Chunk-parallel mode (GROUPED, v6; few programs, e.g. batch 1 at 256K): grid axis 2 splits the
    windows into groups of ``wpg``. scan_bwd_t4_summary_kernel stored, for every group j but the
    first, its carry e_j = a_{t0} dL/dh_{t0} from a zero start (esum [G, batch, dim, dstate]) and its
    sum of delta (ssum [G, batch, dim]); the carry is linear in what enters the group's end, so group
    g starts from dL/dlast folded through the later groups, e = exp2(A2 * s_j) * e + e_j for j = G-1
    down to g+1, and runs as usual. Per-channel sums go to row (g * batch + b) of dA/dD/ddelta_bias
    (summed by the caller); only group 0 stores dL/dh_{-1}."""
    NQ: tl.constexpr = NP // NR
    SUB: tl.constexpr = WIN // BL
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_g = tl.program_id(2)
    nb = tl.num_programs(1)
    ng = tl.num_programs(2)
    offs_d, mask_d, offs_l, d64, g64, n4, d4, mask_dn4, n3, mask_n3 = _t4_indices(
        pid_d, dim, dstate, per_group, BD, NQ, NR, BL, CHAN_AXIS)

    u_base = u_ptr + pid_b * s_ub + d64[None, :] * s_ud
    dl_base = delta_ptr + pid_b * s_db + d64[None, :] * s_dd
    z_base = z_ptr + pid_b * s_zb + d64[None, :] * s_zd
    o_base = dout_ptr + pid_b * s_ob + d64[None, :] * s_od
    yp_base = ypre_ptr + (pid_b * dim + d64[None, :]) * seqlen       # contiguous (batch, dim, seqlen)
    du_base = du_ptr + pid_b * s_dub + d64[None, :] * s_dud
    ddl_base = ddelta_ptr + pid_b * s_ddb + d64[None, :] * s_ddd
    dz_base = dz_ptr + pid_b * s_dzb + d64[None, :] * s_dzd
    B_base = B_ptr + pid_b * s_Bb + g64 * s_Bg + n3 * s_Bn
    C_base = C_ptr + pid_b * s_Cb + g64 * s_Cg + n3 * s_Cn
    if DETERMINISTIC:
        k64 = pid_d.to(tl.int64)
    else:
        k64 = g64
    gB_base = dB_ptr + pid_b * s_gb + k64 * s_gk + n3 * s_gn
    gC_base = dC_ptr + pid_b * s_gb + k64 * s_gk + n3 * s_gn

    A, bias, Dv = _t4_channel_consts(A_ptr, bias_ptr, D_ptr, offs_d, mask_d, d4, n4, mask_dn4, dstate, HAS_BIAS, HAS_D)
    A2 = A * 1.4426950408889634
    row4 = (pid_b * dim + d4) * dstate + n4
    st_base = states_ptr + (pid_b * dim + d4) * nsaved * dstate + n4
    l4 = offs_l[:, None, None, None]
    nz = _zeros4(BL, NQ, BD, NR, CHAN_AXIS) * -1.0
    j4 = tl.arange(0, SUB)[:, None, None, None]
    nzs = _zeros4(SUB, NQ, BD, NR, CHAN_AXIS) * -1.0

    # dL/dh after the last step and the decay a of the step after it: padded steps pass it unchanged
    dh = _zeros4(1, NQ, BD, NR, CHAN_AXIS)
    if HAS_DLAST:
        dh = _to_f32(tl.load(dlast_ptr + row4, mask=mask_dn4, other=0.0))
    if GROUPED:
        for k in range(ng - 1 - pid_g):
            j = ng - 1 - k
            sj = tl.load(ssum_ptr + (j * nb + pid_b) * dim + d4, mask=_chan4(mask_d[None, :], CHAN_AXIS), other=0.0)
            ej = tl.load(esum_ptr + ((j * nb + pid_b) * dim + d4) * dstate + n4, mask=mask_dn4, other=0.0)
            dh = tl.exp2(A2 * sj) * dh + ej
    w_lo = pid_g * wpg
    w_hi = tl.minimum(w_lo + wpg, nsaved)
    a_next = _zeros4(1, NQ, BD, NR, CHAN_AXIS) + 1.0
    dA_acc = _zeros4(1, NQ, BD, NR, CHAN_AXIS)
    dD_acc = tl.zeros((BD,), tl.float32)
    db_acc = tl.zeros((BD,), tl.float32)
    # pass B's tiles are prefetched one sub-chunk ahead (in its reverse order), as in the forward
    nxt = _bwd_chunk_loads(w_hi * SUB - 1, offs_l, seqlen, mask_d, mask_n3, u_base, dl_base, B_base, C_base,
                           z_base, o_base, yp_base, s_ul, s_dl, s_Bl, s_Cl, s_zl, s_ol, BL, HAS_Z, HAS_YPRE)
    for i in range(w_hi - w_lo):
        w = w_hi - 1 - i
        h = tl.load(st_base + w * dstate, mask=mask_dn4, other=0.0)
        # pass A: the start state of every sub-chunk of the window
        hst = _zeros4(SUB, NQ, BD, NR, CHAN_AXIS)
        if SUB > 1:
            for j in range(SUB - 1):
                hst = tl.where(j4 == j, h, hst)
                t = w * WIN + j * BL + offs_l
                t64 = t.to(tl.int64)
                m2 = (t < seqlen)[:, None] & mask_d[None, :]
                u = _to_f32(tl.load(u_base + t64[:, None] * s_ul, mask=m2, other=0.0))
                _, dl = _delta_tile(tl.load(dl_base + t64[:, None] * s_dl, mask=m2, other=0.0), m2, bias, HAS_BIAS,
                                    SOFTPLUS)
                mnt = (t < seqlen)[:, None, None] & mask_n3
                Bt = _to_f32(tl.load(B_base + t64[:, None, None] * s_Bl, mask=mnt, other=0.0))
                a = tl.exp2(_chan4(dl, CHAN_AXIS) * A2)
                bx = _chan4(dl * u, CHAN_AXIS) * _state4(Bt, CHAN_AXIS)
                for s in tl.static_range(BL):
                    sel = l4 == s
                    h = _take(a, sel, nz) * h + _take(bx, sel, nz)
        hst = tl.where(j4 == SUB - 1, h, hst)
        # pass B: the sub-chunks in reverse
        for jj in range(SUB):
            jb = SUB - 1 - jj
            h = _take(hst, j4 == jb, nzs)
            h0 = h
            u_raw, pre_raw, B_raw, C_raw, z_raw, o_raw, yp_raw = nxt
            # the sub-chunk before this one in time (chunk 0 again at the very start: unused)
            nxt = _bwd_chunk_loads(tl.maximum(w * SUB + jb - 1, 0), offs_l, seqlen, mask_d, mask_n3, u_base,
                                   dl_base, B_base, C_base, z_base, o_base, yp_base, s_ul, s_dl, s_Bl, s_Cl, s_zl,
                                   s_ol, BL, HAS_Z, HAS_YPRE)
            t = w * WIN + jb * BL + offs_l
            t64 = t.to(tl.int64)
            m2 = (t < seqlen)[:, None] & mask_d[None, :]
            u = _to_f32(u_raw)
            pre, dl = _delta_tile(pre_raw, m2, bias, HAS_BIAS, SOFTPLUS)
            mnt = (t < seqlen)[:, None, None] & mask_n3
            B4 = _state4(B_raw, CHAN_AXIS).to(tl.float32)                  # B and C: see _to_f32
            C4 = _state4(C_raw, CHAN_AXIS).to(tl.float32)
            dout = _to_f32(o_raw)
            dlu = dl * u
            a = tl.exp2(_chan4(dl, CHAN_AXIS) * A2)                        # a 4-D tile over the BL steps
            bx = _chan4(dlu, CHAN_AXIS) * B4
            hs = _zeros4(BL, NQ, BD, NR, CHAN_AXIS)
            for s in tl.static_range(BL):
                sel = l4 == s
                h = _take(a, sel, nz) * h + _take(bx, sel, nz)
                hs = tl.where(sel, h, hs)
            if HAS_Z:
                zt = _to_f32(z_raw)
                if HAS_YPRE:
                    yv = _to_f32(yp_raw)                                    # y + D u before the gate
                else:
                    yv = _sum_states(hs * C4, CHAN_AXIS)                       # [BL, BD]
                    if HAS_D:
                        yv = yv + Dv[None, :] * u
                sz = _sigmoid(zt)
                dzt = dout * yv * sz * (1.0 + zt * (1.0 - sz))
                tl.store(dz_base + t64[:, None] * s_dzl, dzt.to(dz_ptr.dtype.element_ty), mask=m2)
                dy = dout * zt * sz
            else:
                dy = dout
            dy4 = _chan4(dy, CHAN_AXIS)
            dl4 = _chan4(dl, CHAN_AXIS)
            dhs = _zeros4(BL, NQ, BD, NR, CHAN_AXIS)
            dhhb = _zeros4(BL, NQ, BD, NR, CHAN_AXIS)
            for rs in tl.static_range(BL):
                sr = BL - 1 - rs
                sel = l4 == sr
                if sr == BL - 1:
                    dh = a_next * dh + _take(dy4, sel, nz) * _take(C4, sel, nz)
                else:
                    dh = _take(a, l4 == sr + 1, nz) * dh + _take(dy4, sel, nz) * _take(C4, sel, nz)
                if sr == 0:
                    hprev = h0
                else:
                    hprev = _take(hs, l4 == sr - 1, nz)
                hb = _take(a, sel, nz) * hprev                                # a_t h_{t-1}
                dA_acc += dh * hb * _take(dl4, sel, nz)
                dhs = tl.where(sel, dh, dhs)
                dhhb = tl.where(sel, dh * hb, dhhb)
            a_next = _take(a, l4 == 0, nz)

            dhB = _sum_states(dhs * B4, CHAN_AXIS)                          # [BL, BD]
            ddl = _sum_states(dhhb * A, CHAN_AXIS) + u * dhB
            dut = dl * dhB
            if HAS_D:
                dut = dut + dy * Dv[None, :]
                dD_acc += tl.sum(dy * u, axis=0)
            if SOFTPLUS:
                ddl = ddl * _sigmoid(pre)
            ddl = tl.where(m2, ddl, 0.0)
            db_acc += tl.sum(ddl, axis=0)
            tl.store(du_base + t64[:, None] * s_dul, dut.to(du_ptr.dtype.element_ty), mask=m2)
            tl.store(ddl_base + t64[:, None] * s_ddl, ddl.to(ddelta_ptr.dtype.element_ty), mask=m2)
            if BDL == 0:
                gB = tl.sum(dhs * _chan4(dlu, CHAN_AXIS), axis=CHAN_AXIS)  # [BL, NQ, NR], over the channels
                gC = tl.sum(hs * _chan4(dy, CHAN_AXIS), axis=CHAN_AXIS)
                if DETERMINISTIC:
                    tl.store(gB_base + t64[:, None, None] * s_gl, gB, mask=mnt)
                    tl.store(gC_base + t64[:, None, None] * s_gl, gC, mask=mnt)
                else:
                    tl.atomic_add(gB_base + t64[:, None, None] * s_gl, gB, mask=mnt, sem="relaxed")
                    tl.atomic_add(gC_base + t64[:, None, None] * s_gl, gC, mask=mnt, sem="relaxed")
            else:
                t0 = w * WIN + jb * BL
                row = pid_b * s_gb + k64 * s_gk
                _chan_scatter_add(dhs * _chan4(dlu, CHAN_AXIS), dB_ptr + row, t0, seqlen, dstate, s_gl, s_gn,
                                  BL, NQ, BD, NR, BDL, CHAN_AXIS, DETERMINISTIC)
                _chan_scatter_add(hs * _chan4(dy, CHAN_AXIS), dC_ptr + row, t0, seqlen, dstate, s_gl, s_gn,
                                  BL, NQ, BD, NR, BDL, CHAN_AXIS, DETERMINISTIC)

    if pid_g == 0:
        tl.store(dinit_ptr + row4, a_next * dh, mask=mask_dn4)
    prow = pid_g * nb + pid_b                      # per-group rows of the per-channel sums
    tl.store(dA_ptr + (prow * dim + d4) * dstate + n4, dA_acc, mask=mask_dn4)
    rowd = prow * dim + d64
    tl.store(dD_ptr + rowd, dD_acc, mask=mask_d)
    tl.store(dbias_ptr + rowd, db_acc, mask=mask_d)


@triton.jit
def scan_bwd_t4_summary_kernel(
    delta_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, dout_ptr, esum_ptr, ssum_ptr,
    dim, seqlen, dstate, per_group, nsaved, wpg,
    s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_Cb, s_Cg, s_Cn, s_Cl, s_ob, s_od, s_ol,
    BD: tl.constexpr, NP: tl.constexpr, BL: tl.constexpr, NR: tl.constexpr, WIN: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CHAN_AXIS: tl.constexpr,
):
    """Pass 1 of the chunk-parallel backward (v6): for sequence group j = program_id(2) + 1 (group 0
    needs none), the carry e = a_{t0} dL/dh_{t0} that the group's steps produce from a zero carry
    at its end, by the reverse recurrence e = a_t (e + dy_t C_t) (no states: dL/dh does not depend
    on h), and the group's sum of delta. Reads delta, z, dout and C only; one exp2 and ~2 FMAs per
    element against the full backward's ~64 instructions."""
    NQ: tl.constexpr = NP // NR
    SUB: tl.constexpr = WIN // BL
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_g = tl.program_id(2) + 1
    nb = tl.num_programs(1)
    offs_d, mask_d, offs_l, d64, g64, n4, d4, mask_dn4, n3, mask_n3 = _t4_indices(
        pid_d, dim, dstate, per_group, BD, NQ, NR, BL, CHAN_AXIS)
    dl_base = delta_ptr + pid_b * s_db + d64[None, :] * s_dd
    z_base = z_ptr + pid_b * s_zb + d64[None, :] * s_zd
    o_base = dout_ptr + pid_b * s_ob + d64[None, :] * s_od
    C_base = C_ptr + pid_b * s_Cb + g64 * s_Cg + n3 * s_Cn
    A, bias, _D = _t4_channel_consts(A_ptr, bias_ptr, A_ptr, offs_d, mask_d, d4, n4, mask_dn4, dstate, HAS_BIAS, False)
    A2 = A * 1.4426950408889634
    l4 = offs_l[:, None, None, None]
    nz = _zeros4(BL, NQ, BD, NR, CHAN_AXIS) * -1.0
    e = _zeros4(1, NQ, BD, NR, CHAN_AXIS)
    dsum = tl.zeros((BD,), tl.float32)
    c_lo = pid_g * wpg * SUB
    c_hi = tl.minimum(pid_g * wpg + wpg, nsaved) * SUB
    # the forward's chunk loads with dout in u's place and C in B's; the chunk before is loaded
    # ahead of this one's arithmetic, as in the forward (c_lo > 0: group 0 has no summary)
    nxt = _chunk_loads(c_hi - 1, offs_l, seqlen, mask_d, mask_n3, o_base, dl_base, C_base, C_base, z_base,
                       s_ol, s_dl, s_Cl, s_Cl, s_zl, BL, False, HAS_Z)
    for i in range(c_hi - c_lo):
        c = c_hi - 1 - i
        dy_raw, dl_raw, C_raw, _, z_raw = nxt
        nxt = _chunk_loads(c - 1, offs_l, seqlen, mask_d, mask_n3, o_base, dl_base, C_base, C_base, z_base,
                           s_ol, s_dl, s_Cl, s_Cl, s_zl, BL, False, HAS_Z)
        t = c * BL + offs_l
        m2 = (t < seqlen)[:, None] & mask_d[None, :]
        _, dl = _delta_tile(dl_raw, m2, bias, HAS_BIAS, SOFTPLUS)
        dsum += tl.sum(dl, axis=0)
        dy = _to_f32(dy_raw)
        if HAS_Z:
            zt = _to_f32(z_raw)
            dy = dy * zt * _sigmoid(zt)
        a = tl.exp2(_chan4(dl, CHAN_AXIS) * A2)
        g = _chan4(dy, CHAN_AXIS) * _state4(C_raw, CHAN_AXIS).to(tl.float32)     # see _to_f32
        for rs in tl.static_range(BL):
            sel = l4 == BL - 1 - rs
            e = _take(a, sel, nz) * (e + _take(g, sel, nz))
    tl.store(esum_ptr + ((pid_g * nb + pid_b) * dim + d4) * dstate + n4, e, mask=mask_dn4)
    tl.store(ssum_ptr + (pid_g * nb + pid_b) * dim + d64, dsum, mask=mask_d)
