"""Compiled CPU selective scan (numba): the default backend for CPU tensors.

Same function as :func:`longseq.kernels.selective_scan_ref` (DESIGN §2), in one pass over the
data: each channel (batch row, dim) keeps its dstate values in a small buffer and walks the
sequence once, so nothing of size (batch, dim, dstate, seqlen) is ever built.

Layout of the work. Channels are split into tasks of (batch row, group, block of channels);
a task walks time in tiles of ``CHECKPOINT`` steps and, inside a tile, its channels one after
the other, so the tile of B and C it reads stays in L1 for all of them. Inside a tile:
  * delta + delta_bias and softplus for the tile's steps (a loop over time the compiler vectorises),
  * the recurrence, vectorised over dstate (``exp(delta*A)`` is a branch-free polynomial exp,
    ``_exp``, because libm's exp would not vectorise), giving <h_t, C_t>,
  * D*u and the silu(z) gate (vectorised over time).
Everything is computed in float64 whatever the input dtype (``_exp`` and ``_softplus`` are
accurate to a few float64 ulps); outputs are written in float32 (float64 for float64 inputs).

Backward. The forward saves the state at the start of every tile (float64, batch*dim*dstate*
seqlen/CHECKPOINT values: 2 bytes per (batch, dim, token) at dstate 16). The backward walks the
tiles in reverse: it recomputes the tile's states from its checkpoint into a per-task buffer,
then runs the adjoint recurrence lam_t = dL/dh_t = a_{t+1} lam_{t+1} + gy_t C_t backwards through
the tile. Per-channel gradients (u, delta, z) are written directly; those summed over channels
(B, C: over the channels of a group) go to one float64 buffer per channel block, summed at the
end, so no two threads ever add into the same element (and results do not depend on timing).

Compilation. The kernels compile on first use, per input dtype (float32 or float64): ~5 s for
the forward and ~9 s for the backward on the 2-vCPU machine. They are cached on disk (numba
``cache=True``: in ``$NUMBA_CACHE_DIR`` when set, else ``__pycache__`` next to this file, else
numba's user cache directory); where no cache location is writable they are compiled in memory
in each process instead of failing.

Threads. Each call runs on ``torch.get_num_threads()`` threads (at most numba's pool size).
Calls are serialised by a lock: numba's default pool must not be entered by two threads at
once. Unless the user chose a numba threading layer, a fork-safe one is asked for, since
PyTorch DataLoader workers are forked on Linux and GNU OpenMP does not survive a fork.
"""
from __future__ import annotations

import math
import os
import threading

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import prange
from numba.core import types
from numba.extending import intrinsic

from .checks import check_selective_scan_args, gradient_wanted

__all__ = ["selective_scan_cpu", "CHECKPOINT"]

# Time steps between the states saved for the backward; also the tile length of the kernels.
CHECKPOINT = 64

# Bytes the backward may use for the per-block B and C gradient buffers beyond one copy of each.
_PARTIAL_BUDGET = 256 << 20

# "reassoc" lets LLVM vectorise the sums over dstate, "contract" lets it fuse multiply-adds.
# No "nnan"/"ninf": inf and NaN inputs behave as in the float64 reference. error_model="numpy":
# x / 0 gives inf as in numpy instead of raising, so divisions need no branch (and vectorise).
_FASTMATH = {"reassoc", "contract"}

if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "forksafe"

_LOCK = threading.Lock()


def _jit(**options):
    """numba.njit with an on-disk cache when a writable cache location exists, in memory otherwise."""
    def decorate(fn):
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available" (read-only install)
            return numba.njit(cache=False, **options)(fn)
    return decorate


@intrinsic
def _as_int64(typingctx, x):
    """The bits of a float64 as an int64 (a no-op reinterpretation)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


@intrinsic
def _as_float64(typingctx, x):
    """The bits of an int64 as a float64."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238      # ln 2 with the low 32 mantissa bits zero: k * _LN2_HI is exact
_LN2_LO = 1.9082149292705877e-10  # ln 2 - _LN2_HI
_ROUND = 6755399441055744.0       # 1.5 * 2**52: adding it leaves an integer-valued float in the low bits


@numba.njit(inline="always", error_model="numpy")
def _exp(x):
    """exp(x) in float64 without branches or calls, so that loops over it vectorise.

    exp(x) = 2**k * exp(r), k = round(x / ln 2), |r| <= ln(2)/2, exp(r) = 1 + r + r^2 q(r) with
    q of degree 9 fitted to Chebyshev nodes (max relative error 2.2e-16 over the interval, i.e.
    rounding). The polynomial is evaluated times 2 (exactly: the coefficients are doubled) and
    scaled by 2**(k-1), so that k = 1024 stays finite. Below -708 it returns 0 (libm returns
    subnormals down to -745: below 4e-308 either way); above 709.78 inf (exp(709.78) =
    1.795e308 is the last finite value to 4 digits); NaN stays NaN (through r). Out of that
    range k and the scale are garbage, which the two selects at the end replace.
    """
    k = np.floor(x * _LOG2E + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = 2.0 * 2.5100375832561234e-08
    p = p * r + 2.0 * 2.7620075879983367e-07
    p = p * r + 2.0 * 2.7557268480310024e-06
    p = p * r + 2.0 * 2.4801521322368692e-05
    p = p * r + 2.0 * 0.00019841269863040545
    p = p * r + 2.0 * 0.0013888888917196719
    p = p * r + 2.0 * 0.008333333333330065
    p = p * r + 2.0 * 0.041666666666624164
    p = p * r + 2.0 * 0.16666666666666669
    p = p * r + 2.0 * 0.5000000000000001
    p = p * r + 2.0 * 1.0
    p = p * r + 2.0 * 1.0
    ki = _as_int64(k + _ROUND) - _as_int64(_ROUND)  # k as an integer, exactly (|k| < 2**51)
    res = p * _as_float64((ki + 1022) << 52)
    res = 0.0 if x < -708.0 else res
    return math.inf if x > 709.78 else res


@numba.njit(inline="always", error_model="numpy")
def _log1p_unit(w):
    """log(1 + w) for 0 <= w <= 1, accurate for tiny w.

    Above sqrt(2) - 1 it uses 1 + w = 2 (1 + v), v = (w - 1) / 2; then log(1 + v) = 2 atanh(s),
    s = v / (2 + v), |s| <= 0.1716, by its series to s^21 (truncation < 1e-18 relative).
    """
    big = w > 0.41421356237309503
    v = (w - 1.0) * 0.5 if big else w
    s = v / (2.0 + v)
    s2 = s * s
    p = 1.0 / 21.0
    p = p * s2 + 1.0 / 19.0
    p = p * s2 + 1.0 / 17.0
    p = p * s2 + 1.0 / 15.0
    p = p * s2 + 1.0 / 13.0
    p = p * s2 + 1.0 / 11.0
    p = p * s2 + 1.0 / 9.0
    p = p * s2 + 1.0 / 7.0
    p = p * s2 + 1.0 / 5.0
    p = p * s2 + 1.0 / 3.0
    p = p * s2 + 1.0
    return 2.0 * s * p + (0.6931471805599453 if big else 0.0)


@numba.njit(inline="always", error_model="numpy")
def _softplus(x):
    """log(1 + exp(x)), = x above 20 as in torch.nn.functional.softplus."""
    v = max(x, 0.0) + _log1p_unit(_exp(-abs(x)))
    return x if x > 20.0 else v


@numba.njit(inline="always", error_model="numpy")
def _sigmoid(x):
    return 1.0 / (1.0 + _exp(-x))


@numba.njit(inline="always")
def _task_channels(task, nblk, G, dim):
    """Task -> (batch row, group, channel block, first channel, channel count): tasks run over
    (batch, group, channel block), each block ceil(dim / G / nblk) channels of its group (the last
    one shorter or empty)."""
    per = dim // G
    bs = (per + nblk - 1) // nblk
    blk = task % nblk
    g = (task // nblk) % G
    b = task // (nblk * G)
    d0 = g * per + blk * bs
    return b, g, blk, d0, max(min(d0 + bs, (g + 1) * per) - d0, 0)


@_jit(parallel=True, fastmath=_FASTMATH, error_model="numpy")
def _forward_kernel(u, delta, A, B, C, Dv, bias, z, h0, softplus, has_z, K, nblk, save, y, hlast, ckpt):
    """u, delta, z, y: (batch, dim, L); A: (dim, N); B, C: (batch, G, N, L); Dv, bias: (dim,);
    h0, hlast: (batch, dim, N); ckpt: (batch, dim, ceil(L / K), N), written when ``save``."""
    batch, dim, L = u.shape
    G = B.shape[1]
    N = A.shape[1]
    ntiles = (L + K - 1) // K
    for task in prange(batch * G * nblk):
        b, g, blk, d0, nd = _task_channels(task, nblk, G, dim)
        h = np.empty((nd, N))
        for i in range(nd):
            for n in range(N):
                h[i, n] = h0[b, d0 + i, n]
        Bk = np.empty((K, N))  # the tile of B and C, time-major, float64: read by all nd channels
        Ck = np.empty((K, N))
        dtb = np.empty(K)
        sb = np.empty(K)
        for k in range(ntiles if nd > 0 else 0):
            t0 = k * K
            T = min(K, L - t0)
            for n in range(N):
                for j in range(T):
                    Bk[j, n] = B[b, g, n, t0 + j]
                    Ck[j, n] = C[b, g, n, t0 + j]
            for i in range(nd):
                d = d0 + i
                hd = h[i]
                Ad = A[d]
                if save:
                    for n in range(N):
                        ckpt[b, d, k, n] = hd[n]
                if softplus:
                    for j in range(T):
                        dtb[j] = _softplus(delta[b, d, t0 + j] + bias[d])
                else:
                    for j in range(T):
                        dtb[j] = delta[b, d, t0 + j] + bias[d]
                for j in range(T):
                    dt = dtb[j]
                    dtu = dt * u[b, d, t0 + j]
                    Bj = Bk[j]
                    Cj = Ck[j]
                    acc = 0.0
                    for n in range(N):
                        hn = _exp(dt * Ad[n]) * hd[n] + dtu * Bj[n]
                        hd[n] = hn
                        acc += hn * Cj[n]
                    sb[j] = acc
                if has_z:
                    for j in range(T):
                        zj = z[b, d, t0 + j]
                        y[b, d, t0 + j] = (sb[j] + Dv[d] * u[b, d, t0 + j]) * zj * _sigmoid(zj)
                else:
                    for j in range(T):
                        y[b, d, t0 + j] = sb[j] + Dv[d] * u[b, d, t0 + j]
        for i in range(nd):
            for n in range(N):
                hlast[b, d0 + i, n] = h[i, n]


@_jit(parallel=True, fastmath=_FASTMATH, error_model="numpy")
def _backward_kernel(u, delta, A, B, C, Dv, bias, z, softplus, has_z, K, nblk, ckpt, gy, glast,
                     du, ddelta, dz, dA, dD, dbias, dh0, dB, dC):
    """Shapes as in _forward_kernel; gy: (batch, dim, L); glast: (batch, dim, N).

    Writes du, ddelta, dz (batch, dim, L); dA (batch, dim, N), dD and dbias (batch, dim) per
    batch row; dh0 (batch, dim, N); dB, dC (nblk, batch, G, N, L) per channel block. The caller
    sums over the leading axes.
    """
    batch, dim, L = u.shape
    G = B.shape[1]
    N = A.shape[1]
    ntiles = (L + K - 1) // K
    for task in prange(batch * G * nblk):
        b, g, blk, d0, nd = _task_channels(task, nblk, G, dim)
        carry = np.empty((nd, N))     # dL/dh_t from the steps after t, per channel
        dAacc = np.zeros((nd, N))
        dDacc = np.zeros(nd)
        dbacc = np.zeros(nd)
        for i in range(nd):
            for n in range(N):
                carry[i, n] = glast[b, d0 + i, n]
        Bk = np.empty((K, N))
        Ck = np.empty((K, N))
        dBk = np.empty((K, N))        # this block's dB and dC for the tile, summed over its channels
        dCk = np.empty((K, N))
        hbuf = np.empty((K + 1, N))   # the tile's states for one channel: h_{t0-1} .. h_{t0+T-1}
        abuf = np.empty((K, N))       # and its decays exp(delta_t A)
        dtb = np.empty(K)
        sgb = np.empty(K)             # d delta_t / d (delta + bias)
        gsb = np.empty(K)             # dL / d<h_t, C_t>
        ddtb = np.empty(K)
        dub = np.empty(K)
        syb = np.empty(K)
        for k in range(ntiles - 1 if nd > 0 else -1, -1, -1):
            t0 = k * K
            T = min(K, L - t0)
            for n in range(N):
                for j in range(T):
                    Bk[j, n] = B[b, g, n, t0 + j]
                    Ck[j, n] = C[b, g, n, t0 + j]
                    dBk[j, n] = 0.0
                    dCk[j, n] = 0.0
            for i in range(nd):
                d = d0 + i
                Ad = A[d]
                cd = carry[i]
                dAd = dAacc[i]
                if softplus:
                    for j in range(T):
                        x = delta[b, d, t0 + j] + bias[d]
                        dtb[j] = _softplus(x)
                        sgb[j] = _sigmoid(x)
                else:
                    for j in range(T):
                        dtb[j] = delta[b, d, t0 + j] + bias[d]
                        sgb[j] = 1.0
                if has_z:
                    for j in range(T):
                        zj = z[b, d, t0 + j]
                        gsb[j] = gy[b, d, t0 + j] * zj * _sigmoid(zj)
                else:
                    for j in range(T):
                        gsb[j] = gy[b, d, t0 + j]
                for n in range(N):
                    hbuf[0, n] = ckpt[b, d, k, n]
                for j in range(T):
                    dt = dtb[j]
                    dtu = dt * u[b, d, t0 + j]
                    Bj = Bk[j]
                    hp = hbuf[j]
                    hj = hbuf[j + 1]
                    aj = abuf[j]
                    for n in range(N):
                        a = _exp(dt * Ad[n])
                        aj[n] = a
                        hj[n] = a * hp[n] + dtu * Bj[n]
                for j in range(T - 1, -1, -1):
                    dt = dtb[j]
                    uu = u[b, d, t0 + j]
                    dtu = dt * uu
                    gs = gsb[j]
                    Bj = Bk[j]
                    Cj = Ck[j]
                    dBj = dBk[j]
                    dCj = dCk[j]
                    hp = hbuf[j]
                    hj = hbuf[j + 1]
                    aj = abuf[j]
                    s_ddt = 0.0
                    s_du = 0.0
                    s_y = 0.0
                    for n in range(N):
                        lam = cd[n] + gs * Cj[n]  # dL/dh_t
                        lah = lam * aj[n] * hp[n]
                        dCj[n] += gs * hj[n]
                        dBj[n] += lam * dtu
                        s_ddt += Ad[n] * lah
                        s_du += lam * Bj[n]
                        s_y += hj[n] * Cj[n]
                        dAd[n] += dt * lah
                        cd[n] = aj[n] * lam
                    ddtb[j] = s_ddt + uu * s_du
                    dub[j] = dt * s_du
                    syb[j] = s_y
                sD = 0.0
                sbias = 0.0
                for j in range(T):
                    uu = u[b, d, t0 + j]
                    gd = ddtb[j] * sgb[j]
                    ddelta[b, d, t0 + j] = gd
                    sbias += gd
                    du[b, d, t0 + j] = dub[j] + gsb[j] * Dv[d]
                    sD += gsb[j] * uu
                if has_z:
                    for j in range(T):
                        zj = z[b, d, t0 + j]
                        sg = _sigmoid(zj)
                        yc = syb[j] + Dv[d] * u[b, d, t0 + j]
                        dz[b, d, t0 + j] = gy[b, d, t0 + j] * yc * sg * (1.0 + zj * (1.0 - sg))
                dDacc[i] += sD
                dbacc[i] += sbias
            for n in range(N):
                for j in range(T):
                    dB[blk, b, g, n, t0 + j] = dBk[j, n]
                    dC[blk, b, g, n, t0 + j] = dCk[j, n]
        for i in range(nd):
            d = d0 + i
            dD[b, d] = dDacc[i]
            dbias[b, d] = dbacc[i]
            for n in range(N):
                dh0[b, d, n] = carry[i, n]
                dA[b, d, n] = dAacc[i, n]


def _threads() -> int:
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def _blocks(batch: int, groups: int, per: int, threads: int) -> int:
    """Channel blocks per (batch row, group): enough tasks for every thread, and a multiple of
    the thread count where possible (numba splits the tasks evenly among its threads)."""
    return max(1, min(per, threads // math.gcd(batch * groups, threads)))


def _backward_blocks(batch: int, groups: int, per: int, seqlen: int, dstate: int, threads: int) -> int:
    """As _blocks, but each block beyond the first costs a float64 copy of dB and dC: at most
    _PARTIAL_BUDGET bytes of them."""
    each = 2 * batch * groups * seqlen * dstate * 8
    return max(1, min(_blocks(batch, groups, per, threads), 1 + _PARTIAL_BUDGET // each))


def _io_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _arrays(u, delta, A, B, C, D, z, delta_bias, groups):
    """numpy arrays for the kernels: the (batch, dim, seqlen) ones and B, C, as
    (batch, groups, dstate, seqlen), in float32 (float64 for float64 u); the small ones in float64."""
    io = _io_dtype(u)
    batch, dim, L = u.shape
    N = A.shape[1]

    def big(t):
        return t.detach().to(io).contiguous().numpy()

    def small(t):
        return np.zeros(dim) if t is None else t.detach().to(torch.float64).contiguous().numpy()

    zz = big(z) if z is not None else np.zeros((1, 1, 1), dtype=np.float64 if io == torch.float64 else np.float32)
    return (big(u), big(delta), small(A), big(B.reshape(batch, groups, N, L)), big(C.reshape(batch, groups, N, L)),
            small(D), small(delta_bias), zz)


def _forward(u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, groups, save):
    batch, dim, L = u.shape
    N = A.shape[1]
    K = CHECKPOINT
    arrs = _arrays(u, delta, A, B, C, D, z, delta_bias, groups)
    h0 = (np.zeros((batch, dim, N)) if initial_state is None
          else initial_state.detach().to(torch.float64).contiguous().numpy())
    y = torch.empty(batch, dim, L, dtype=_io_dtype(u))
    hlast = torch.empty(batch, dim, N, dtype=torch.float64)
    ckpt = torch.empty((batch, dim, (L + K - 1) // K, N) if save else (1, 1, 1, N), dtype=torch.float64)
    threads = _threads()
    nblk = _blocks(batch, groups, dim // groups, threads)
    with _LOCK:
        numba.set_num_threads(threads)
        _forward_kernel(*arrs, h0, bool(softplus), z is not None, K, nblk, bool(save),
                        y.numpy(), hlast.numpy(), ckpt.numpy())
    return y, hlast, ckpt


class _SelectiveScanCPU(torch.autograd.Function):
    """The compiled scan under autograd: the forward saves tile checkpoints, the backward recomputes."""

    @staticmethod
    def forward(ctx, softplus, u, delta, A, B, C, D, z, delta_bias, initial_state):
        groups = 1 if B.dim() == 3 else B.shape[1]
        y, hlast, ckpt = _forward(u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, groups, True)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, ckpt)
        ctx.softplus, ctx.groups, ctx.K = softplus, groups, CHECKPOINT
        return y, hlast

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, glast):
        u, delta, A, B, C, D, z, delta_bias, initial_state, ckpt = ctx.saved_tensors
        batch, dim, L = u.shape
        N, G = A.shape[1], ctx.groups
        io = _io_dtype(u)
        arrs = _arrays(u, delta, A, B, C, D, z, delta_bias, G)
        threads = _threads()
        nblk = _backward_blocks(batch, G, dim // G, L, N, threads)
        f64 = dict(dtype=torch.float64)
        g = dict(du=torch.empty(batch, dim, L, dtype=io), ddelta=torch.empty(batch, dim, L, dtype=io),
                 dz=torch.empty(batch, dim, L, dtype=io) if z is not None else torch.empty(1, 1, 1, dtype=io),
                 dA=torch.empty(batch, dim, N, **f64), dD=torch.empty(batch, dim, **f64),
                 dbias=torch.empty(batch, dim, **f64), dh0=torch.empty(batch, dim, N, **f64),
                 dB=torch.empty(nblk, batch, G, N, L, **f64), dC=torch.empty(nblk, batch, G, N, L, **f64))
        gy = gy.detach().to(io).contiguous()
        glast = glast.detach().to(torch.float64).contiguous()
        with _LOCK:
            numba.set_num_threads(threads)
            _backward_kernel(*arrs, bool(ctx.softplus), z is not None, ctx.K, nblk, ckpt.numpy(),
                             gy.numpy(), glast.numpy(), *(t.numpy() for t in g.values()))
        return (None, g["du"].to(u.dtype), g["ddelta"].to(delta.dtype), g["dA"].sum(0).to(A.dtype),
                g["dB"].sum(0).reshape(B.shape).to(B.dtype), g["dC"].sum(0).reshape(C.shape).to(C.dtype),
                None if D is None else g["dD"].sum(0).to(D.dtype),
                None if z is None else g["dz"].to(z.dtype),
                None if delta_bias is None else g["dbias"].sum(0).to(delta_bias.dtype),
                None if initial_state is None else g["dh0"].to(initial_state.dtype))


# torch.compile cannot trace numba kernels (Dynamo fails inside this autograd Function): a
# compiled model runs the CPU scan eagerly, with one graph break around it
@torch.compiler.disable
def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None):
    """The selective scan on CPU tensors with the compiled kernels; arguments as ``selective_scan``.

    Returns y in u's dtype (computed in float64, rounded once), and with ``return_last_state``
    the last state in float32 (float64 for float64 u). Differentiable in every tensor argument.
    """
    check_selective_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state, fn="selective_scan")
    if u.device.type != "cpu":
        raise ValueError(f"selective_scan_cpu: argument 'u' must be on the CPU; got device {u.device}")
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    if gradient_wanted(*tensors):
        y, hlast = _SelectiveScanCPU.apply(bool(delta_softplus), *tensors)
    else:
        groups = 1 if B.dim() == 3 else B.shape[1]
        y, hlast, _ = _forward(*tensors, delta_softplus, groups, False)
    y = y.to(u.dtype)
    if return_last_state:
        return y, hlast.to(torch.float64 if u.dtype == torch.float64 else torch.float32)
    return y
