"""``selective_scan`` on the fused Triton kernels: launch logic and the autograd Function."""
from __future__ import annotations

import functools
import json
import os
import re

import torch
import triton

from . import custom_ops, triton_tune
from .triton_launch import CHECK_FAILED, launch
from .triton_tune import cdiv, launch_options, minor_version, sm_count
from .checks import check_selective_scan_args, gradient_wanted
from .triton_scan import scan_bwd_t4_kernel, scan_bwd_t4_summary_kernel, scan_fwd_t4_kernel


def ascending_ties(version: str) -> bool:
    """Whether this Triton's coalescing pass breaks contiguity ties by ascending dim index (up to 3.6;
    later ones: descending). It decides which tile axis gets the lanes first (triton_scan._chan4)."""
    return minor_version(version) <= (3, 6)


_ASCENDING_TIES = ascending_ties(triton.__version__)


def chan_axis(kind: str, warps: int) -> int:
    """The axis of the channels in a scan kernel's 4-D tiles (triton_scan._chan4), so that the lanes go
    first to the state groups (NQ) or to the channels, whichever the kernel runs faster with (v19, H100):
    - Triton <= 3.6: 2 (state groups first) everywhere, as tuned since v5.
    - Later Tritons: 1 (state groups first) for the backward, its summary pass and the forward with
      several warps (backward t4:16:4:1 22-28% and t4:16:4:1:32 17-21% faster than with 2, the others
      level; multi-warp forward 3-15%); 2 (channels first) for the one-warp forward programs (4-13%
      faster than with 1).
    $LONGSEQ_SCAN_CHAN_AXIS (1 or 2) forces one axis everywhere, for measuring."""
    forced = os.environ.get("LONGSEQ_SCAN_CHAN_AXIS")
    if forced:
        if forced not in ("1", "2"):
            raise ValueError(f"LONGSEQ_SCAN_CHAN_AXIS must be 1 or 2, got {forced!r}")
        return int(forced)
    if _ASCENDING_TIES or (kind == "fwd" and warps == 1):
        return 2
    return 1


def scatter_lanes(bd: int, bl: int, warps: int, NP: int, axis: int) -> int:
    """The channel lanes over which the backward reduce-scatters dB and dC (triton_scan._chan_scatter_add),
    or 0 for a plain tl.sum. The exchange assumes the layout that the tiles' natural axis order (`axis`,
    chan_axis) gives: one warp, the NQ state groups on the lowest lane bits and the channels on the rest
    (shuffle_layouts_ok checks each compiled kernel); each lane then keeps J = BL * NR / lanes
    consecutive steps."""
    if axis != (2 if _ASCENDING_TIES else 1) and os.environ.get("TRITON_INTERPRET") != "1":
        return 0      # LONGSEQ_SCAN_CHAN_AXIS forced the other order: the channels take the low lane bits
    nr = min(4, NP)
    lanes = 32 // (NP // nr)          # 0 above 128 states: the state groups fill the warp
    if warps == 1 and 2 <= lanes <= bd and bd % lanes == 0 and 1 <= bl * nr // lanes <= bl:
        return lanes
    return 0


def shuffle_layouts_ok(ttgir: str, NP: int, bdl: int) -> bool:
    """Whether every lane exchange of the reduce-scatter in a compiled backward (its TritonGPU IR) runs on
    the lanes it was written for: lane bit b holds bit b of the state group below log2(NQ) and bit
    b - log2(NQ) of the channel lane above. Triton chooses the layouts; with some argument
    specialisations it moves these tiles to another layout (an offline compile with every integer
    argument unspecialised did, kernel notes v25), so the launcher checks each compiled backward once
    and falls back to tl.sum where this fails."""
    nq = NP // min(4, NP)
    want = [[0, 1 << b, 0] for b in range(nq.bit_length() - 1)] + [[1 << b, 0, 0] for b in range(bdl.bit_length() - 1)]
    shuffled = re.findall(r"shfl.sync.bfly.*?: tensor<(\d+)x(\d+)x(\d+)xf32, (#[a-z]+\d*)>", ttgir)
    if len(shuffled) != 2 * (bdl.bit_length() - 1):
        return False
    for *shape, name in shuffled:
        found = re.search("^" + name + r" = (#ttg\.\w+)<(.*)>$", ttgir, re.M)
        if found is None:
            return False
        kind, body = found.groups()
        if kind == "#ttg.linear":
            lanes = re.search(r"lane = (\[(?:\[[\d, ]*\](?:, )?)*\])", body)
            got = json.loads(lanes.group(1)) if lanes else None
        elif kind == "#ttg.blocked":    # the lane bits go to the dims in `order`, fastest first
            fields = [re.search(k + r" = (\[[\d, ]*\])", body) for k in ("sizePerThread", "threadsPerWarp", "order")]
            if not all(fields):
                return False
            spt, tpw, order = (json.loads(f.group(1)) for f in fields)
            got = [[(spt[d] << k) % int(shape[d]) if i == d else 0 for i in range(3)]
                   for d in order for k in range(tpw[d].bit_length() - 1)]
        else:
            return False
        if got != want:
            return False
    return True


@functools.lru_cache(maxsize=None)
def _layout_check(NP: int, bdl: int):
    """shuffle_layouts_ok as a predicate on a compiled kernel, one object per (NP, bdl) (launch memoises by it)."""
    return lambda compiled: shuffle_layouts_ok(compiled.asm["ttgir"], NP, bdl)


COMPILED = {}       # last compiled kernel per name (registers/spills for the benchmark's report)
SAVE_CHUNK = 32           # the training forward saves the state every SAVE_CHUNK steps; the backward walks
# these windows, each as SAVE_CHUNK / BL sub-chunks of BL steps (BL divides SAVE_CHUNK)


def _pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): block sizes and tile widths."""
    return 1 << max(0, (int(n) - 1).bit_length())


def _bd_ok(bd: int, dim: int, groups: int) -> bool:
    """A program's channels must share one B/C group."""
    if groups == 1:
        return bd <= max(1, _pow2(dim))
    return (dim // groups) % bd == 0


# Forward variants: how many chunks ahead the raw tiles are loaded (v13). The backward has "t4" only.
FWD_VARIANTS = {"t4": 1, "t4p2": 2}


def _for_dstate(cfg, NP):
    """A configuration of the lists below (tuned at dstate 16) for a padded dstate NP > 16. A program's
    tiles hold BD * NP states per step, so at a larger dstate most would spill (dstate 64 with BD = 32,
    16-step chunks: 336 bytes of stack on Triton 3.6; dstate 256: 13 KB): keep BD * NP as at 16 (fewer
    channels per program) and, where that leaves less than one channel, spread the channel over more
    warps (at most 8)."""
    scale = NP // 16
    if scale <= 1:
        return cfg
    variant, bd, bl, warps = cfg[:4]
    new_bd = max(1, bd // scale)
    warps = min(8, warps * max(1, scale * new_bd // bd))
    return (variant, new_bd, bl, warps) + tuple(cfg[4:])


def parse_cfg(text: str) -> tuple:
    """A configuration as LONGSEQ_SCAN_*_CFGS write it, "variant:BD:BL:warps[:per_sm]", as the tuple
    the launchers take: "t4:16:8:1:32" -> ("t4", 16, 8, 1, 32). Inverse: cfg_text."""
    f = text.split(":")
    return (f[0],) + tuple(int(x) for x in f[1:])


def cfg_text(cfg: tuple) -> str:
    """A configuration tuple as LONGSEQ_SCAN_*_CFGS write it: ("t4", 32, 16, 4) -> "t4:32:16:4"."""
    return ":".join(str(x) for x in cfg)


def _candidates(dim, groups, cfgs, kind, NP=16):
    """Valid (variant, BD, BL, num_warps[, programs per SM]) configurations to time, in order of
    preference, for a padded dstate NP (the built-in lists are scaled by _for_dstate).
    $LONGSEQ_SCAN_FWD_CFGS / _FWD_TRAIN_CFGS / _BWD_CFGS ("t4:8:16:1,...") replace the inference
    forward's / the training forward's / the backward's list, as given."""
    listed = os.environ.get({"fwd": "LONGSEQ_SCAN_FWD_CFGS", "fwd_train": "LONGSEQ_SCAN_FWD_TRAIN_CFGS",
                             "bwd": "LONGSEQ_SCAN_BWD_CFGS"}[kind])
    variants = ("t4",) if kind == "bwd" else tuple(FWD_VARIANTS)
    if not listed:
        # scaled first (no spills: the pick without tuning); up to dstate 64 the forward's tuned ones
        # as well, for the tuner (dstate 64 on the H100: t4:32:8:4 beats every scaled configuration by
        # 12-17%; the backward's spill and lose by 20% or more; kernel_notes v15)
        cfgs = [_for_dstate(c, NP) for c in cfgs] + (list(cfgs) if NP <= 64 and kind != "bwd" else [])
        if kind == "bwd" and NP > 16:
            # fewest states per warp first: the scaled 8-channel ones keep 8:8:1's registers and spill
            # at dstate 256 (t4:1:8:2: 104 bytes of stack on Triton 3.6; t4:1:8:4 none)
            cfgs.sort(key=lambda c: c[1] * NP / c[3])
    else:
        cfgs = [parse_cfg(c) for c in listed.split(",")]
        if any(c[0] not in variants or len(c) not in (4, 5) for c in cfgs):
            raise ValueError(f"scan configurations are {'|'.join(variants)}:BD:BL:warps[:programs_per_SM]; "
                             f"got {listed!r}")
    if os.environ.get("TRITON_INTERPRET") == "1":
        # the interpreter's cost is per operation, not per element: fewer, wider programs are faster
        # (the warps change no result there, but one warp selects the backward's reduce-scatter)
        variant, bl, warps = cfgs[0][0], cfgs[0][2], cfgs[0][3]
        cfgs = [(variant, bd, bl, warps) for bd in (16, 8, 4, 2, 1)]
    if kind != "fwd" and any(SAVE_CHUNK % c[2] for c in cfgs):
        # the training forward saves the state every SAVE_CHUNK // BL chunks, and the backward's
        # sub-chunks (BL) tile the SAVE_CHUNK-step windows between saved states
        raise ValueError(f"training forward and backward configurations need BL dividing {SAVE_CHUNK}: {cfgs}")
    out, seen = [], set()
    for c in cfgs:
        if _bd_ok(c[1], dim, groups) and c not in seen:
            out.append(c)
            seen.add(c)
    if not out:
        out = [(cfgs[0][0], 1, cfgs[0][2], 4)]
    return out


# Candidates, from sweeps on an H100 (docs/kernel_notes.md), fastest first. The 5th field, where
# given, makes the launch chunk-parallel when the (dim / BD) * batch programs are too few for the
# chip: it is the target in programs per SM (batch 1 at long lengths; _n_groups, _n_bwd_groups).
# Forward (v4-v8): wide programs at batch 8, the grouped ones at batch 1 (v10: two channels per
# thread, BL = 8, with more groups; v13: "t4p2", two chunks loaded ahead, for the configurations where
# it won in the sweep). Backward (v5-v8): one warp per program, 8-step sub-chunks; v10:
# 16 channels on one warp (two per thread) with 4-step sub-chunks, the H100's pick at every shape.
# The tuner times them per shape on first use; with LONGSEQ_AUTOTUNE=0 the first valid one is used.
FWD_CFGS = [("t4", 32, 16, 4), ("t4", 16, 16, 2), ("t4", 8, 16, 1), ("t4", 32, 8, 4), ("t4", 4, 16, 1),
            ("t4", 32, 16, 4, 4), ("t4", 32, 8, 4, 4), ("t4", 32, 16, 4, 8), ("t4", 32, 8, 4, 8),
            ("t4", 32, 8, 4, 12), ("t4", 32, 8, 4, 16), ("t4", 32, 16, 4, 16), ("t4", 16, 8, 1, 24),
            ("t4", 16, 8, 1, 32), ("t4", 32, 8, 2, 16),
            ("t4p2", 16, 16, 2), ("t4p2", 32, 16, 4, 16), ("t4p2", 16, 8, 1, 24)]
FWD_TRAIN_CFGS = [("t4", 16, 16, 2), ("t4", 32, 16, 4), ("t4", 8, 16, 1), ("t4", 32, 8, 4), ("t4", 4, 16, 1),
                  ("t4", 32, 16, 4, 4), ("t4", 32, 8, 4, 4), ("t4", 32, 8, 4, 8), ("t4", 32, 8, 4, 16),
                  ("t4", 8, 16, 1, 32), ("t4", 8, 16, 1, 48), ("t4", 16, 16, 2, 16),
                  ("t4p2", 8, 16, 1), ("t4p2", 32, 8, 4), ("t4p2", 8, 16, 1, 48), ("t4p2", 32, 8, 4, 16)]
# (8, 8, 1, 32), v18: the chunk-parallel pick on Triton 3.9 (where the 16-channel tiles lose their two
# channels per thread: kernel notes) and for fp32 on 3.6. v25: dB and dC reduce-scattered over the
# channel lanes (scatter_lanes) make (8, 8, 1) the fastest at batch 8 and (8, 8, 1, 32) at batch 1 (the
# chunk-parallel one first: at batch 8 it resolves to one group and drops out, so that without tuning
# each batch size gets its own).
BWD_CFGS = [("t4", 8, 8, 1, 32), ("t4", 8, 8, 1), ("t4", 8, 8, 1, 24), ("t4", 8, 8, 1, 48), ("t4", 16, 4, 1),
            ("t4", 16, 4, 1, 32), ("t4", 4, 8, 1), ("t4", 4, 8, 1, 16), ("t4", 4, 8, 1, 32), ("t4", 4, 8, 1, 64)]


# Knobs read by the candidate lists and group counts: part of the memo keys below, so a changed
# environment (tests, sweeps) gets fresh lists while repeated calls skip rebuilding them. Each list
# reads only its own (every environment read costs ~1 us of host time per call).
_FWD_KNOBS = ("LONGSEQ_SCAN_FWD_CFGS", "LONGSEQ_SCAN_FWD_TRAIN_CFGS", "TRITON_INTERPRET", "LONGSEQ_SCAN_GROUPS")
_BWD_KNOBS = ("LONGSEQ_SCAN_BWD_CFGS", "TRITON_INTERPRET", "LONGSEQ_SCAN_BWD_GROUPS")
_CANDS: dict = {}


def _fwd_candidates(batch, dim, seqlen, groups, dev, save_states, NP):
    key = ("fwd", batch, dim, seqlen, groups, dev, save_states, NP) + tuple(map(os.environ.get, _FWD_KNOBS))
    cands = _CANDS.get(key)
    if cands is None:
        if save_states:
            cands = _candidates(dim, groups, FWD_TRAIN_CFGS, "fwd_train", NP)
        else:
            cands = _candidates(dim, groups, FWD_CFGS, "fwd", NP)

        # a configuration with its own groups-per-SM target (5th field) that resolves to the same
        # group count as its 3-per-SM twin is a duplicate: not timed
        def _g(c):
            return _n_groups(batch * cdiv(dim, c[1]), cdiv(seqlen, c[2]), dev, c[4] if len(c) > 4 else 3)
        cands = _CANDS[key] = [c for c in cands if len(c) < 5 or _g(c) != _g(c[:4])] or cands
    return cands


def _bwd_candidates(batch, dim, nsaved, groups, dev, NP):
    key = ("bwd", batch, dim, nsaved, groups, dev, NP) + tuple(map(os.environ.get, _BWD_KNOBS))
    cands = _CANDS.get(key)
    if cands is None:
        cands = _candidates(dim, groups, BWD_CFGS, "bwd", NP)
        # a chunk-parallel configuration (5th field: programs per SM) that resolves to one group is a
        # duplicate of its plain one: not timed
        split = [c for c in cands if len(c) < 5 or _n_bwd_groups(batch * cdiv(dim, c[1]), nsaved, c[4], dev) > 1]
        cands = _CANDS[key] = split or cands
    return cands


def deterministic() -> bool:
    return torch.are_deterministic_algorithms_enabled() or os.environ.get("LONGSEQ_DETERMINISTIC") == "1"


def _strides3(t):
    return t.stride()     # a (batch, dim, seqlen) tensor's three strides, in one call


def _strides_bc(t, groups):
    if t.dim() == 3:      # (batch, dstate, L): one group, group stride unused
        return t.stride(0), 0, t.stride(1), t.stride(2)
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _sizes(u, A, B):
    """(batch, dim, seqlen, dstate, groups, channels per group, dstate padded to a power of two)."""
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    groups = 1 if B.dim() == 3 else B.shape[1]
    return batch, dim, seqlen, dstate, groups, dim // groups, max(2, _pow2(dstate))


def _fwd(u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, save_states):
    batch, dim, seqlen, dstate, groups, per, NP = _sizes(u, A, B)
    dev = u.device
    y = torch.empty((batch, dim, seqlen), device=dev, dtype=u.dtype)
    last = torch.empty((batch, dim, dstate), device=dev, dtype=torch.float32)
    A = A.float().contiguous()
    if initial_state is not None:
        initial_state = initial_state.float().contiguous()
    dummy = y
    cands = _fwd_candidates(batch, dim, seqlen, groups, dev, save_states, NP)
    states_holder = {}
    # the training forward with z also writes the output before the gate (read by the backward's dz)
    ypre = torch.empty_like(y) if (save_states and z is not None) else None

    def run(cfg):
        _, bd, bl, warps = cfg[:4]
        nchunks = cdiv(seqlen, bl)
        grid = (cdiv(dim, bd), batch)
        args_in = (u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
                   delta_bias if delta_bias is not None else dummy,
                   initial_state if initial_state is not None else dummy)
        strides = (*_strides3(u), *_strides3(delta), *(_strides3(z) if z is not None else (0, 0, 0)),
                   *_strides_bc(B, groups), *_strides_bc(C, groups), *_strides3(y))
        flags = dict(BD=bd, NP=NP, BL=bl, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                     SOFTPLUS=bool(softplus), HAS_INIT=initial_state is not None, **launch_options(warps))
        save_every = max(1, SAVE_CHUNK // bl) if save_states else 1
        if save_states:
            # the state is saved every SAVE_CHUNK steps whatever the chunk (BL divides SAVE_CHUNK)
            nsaved = cdiv(nchunks, save_every)
            states = states_holder.get(nsaved)
            if states is None:
                states = torch.empty((batch, dim, nsaved, dstate), device=dev, dtype=torch.float32)
                states_holder[nsaved] = states
        else:
            states = last
        name = "scan_fwd" + ("_train" if save_states else "")
        G = _n_groups(batch * grid[0], nchunks, dev, cfg[4] if len(cfg) > 4 else 3)
        cpp = cdiv(cdiv(nchunks, G), save_every) * save_every   # group edges on saved states
        G = cdiv(nchunks, cpp)
        t4 = dict(AHEAD=FWD_VARIANTS[cfg[0]], NR=min(4, NP), SAVE_EVERY=save_every, SAVE_STATES=save_states,
                  SAVE_YPRE=ypre is not None, CHAN_AXIS=chan_axis("fwd", warps), **flags)
        yp = ypre if ypre is not None else y
        hsum = ssum = last
        if G > 1:
            hsum = torch.empty((G, batch, dim, dstate), device=dev, dtype=torch.float32)
            ssum = torch.empty((G, batch, dim), device=dev, dtype=torch.float32)
            # the last group's summary is never read: pass 1 runs groups 0 .. G-2 only
            COMPILED[name + "_pass1"] = launch(scan_fwd_t4_kernel, grid + (G - 1,),
                *args_in, y, yp, states, last, hsum, ssum, dim, seqlen, dstate, per, nchunks, cpp, *strides,
                SUMMARY=True, GROUPED=False, **dict(t4, SAVE_STATES=False, SAVE_YPRE=False))
        COMPILED[name] = launch(scan_fwd_t4_kernel, grid + (G,),
            *args_in, y, yp, states, last, hsum, ssum, dim, seqlen, dstate, per, nchunks, cpp, *strides,
            SUMMARY=False, GROUPED=G > 1, **t4)
        return states, ypre

    key = (batch, dim, _bucket(seqlen), dstate, groups, str(u.dtype), D is not None, z is not None,
           delta_bias is not None, bool(softplus), initial_state is not None, save_states)
    cfg = triton_tune.pick("scan_fwd", key, cands, run, u)
    states, ypre = run(cfg)
    if not save_states:
        return y, last, None, None
    return y, last, states, ypre


def _n_groups(programs: int, nchunks: int, dev, per_sm: int = 3) -> int:
    """Sequence groups for the chunk-parallel t4 forward: 1 when (dim / BD) * batch programs fill the
    chip, else enough groups for ~per_sm programs per SM (3 unless the configuration's 5th field
    says otherwise), each group at least MIN_GROUP_CHUNKS chunks
    long (pass 1 re-reads u, delta and B, so short sequences are better off in one pass).
    $LONGSEQ_SCAN_GROUPS forces the count (tests)."""
    forced = os.environ.get("LONGSEQ_SCAN_GROUPS")
    if forced:
        return max(1, min(int(forced), nchunks))
    sms = sm_count(dev, cpu=132)
    if programs >= 2 * sms:
        return 1
    return max(1, min(cdiv(per_sm * sms, programs), nchunks // MIN_GROUP_CHUNKS))


MIN_GROUP_CHUNKS = 256
SUMMARY_BD, SUMMARY_BL = 8, 16   # the backward's summary pass (v12, docs/kernel_notes.md)
MIN_BWD_GROUP_WINDOWS = 32     # 1024 steps: the summary fold costs one load pair per later group


def _summary_tiles(bd: int) -> tuple[int, int]:
    """(channels, steps per chunk) of the backward's summary pass, at most the backward's channels;
    $LONGSEQ_SCAN_BWD_SUMMARY = "BD:BL" overrides the default (sweeps; kernel notes v22)."""
    forced = os.environ.get("LONGSEQ_SCAN_BWD_SUMMARY")
    if forced:
        sbd, sbl = (int(x) for x in forced.split(":"))
        if SAVE_CHUNK % sbl or sbl & (sbl - 1) or sbd & (sbd - 1):
            raise ValueError(f"LONGSEQ_SCAN_BWD_SUMMARY={forced!r}: BD a power of two, BL one dividing {SAVE_CHUNK}")
        return min(sbd, bd), sbl
    return min(SUMMARY_BD, bd), SUMMARY_BL


def _n_bwd_groups(programs: int, nsaved: int, per_sm: int, dev) -> int:
    """Sequence groups for the chunk-parallel backward (v6): enough for ~per_sm programs per SM when
    (dim / BD) * batch programs are fewer, each group at least MIN_BWD_GROUP_WINDOWS windows long;
    1 with per_sm = 0 (the configuration's 5th field). $LONGSEQ_SCAN_BWD_GROUPS forces the count."""
    forced = os.environ.get("LONGSEQ_SCAN_BWD_GROUPS")
    if forced:
        return max(1, min(int(forced), nsaved))
    if per_sm <= 0:
        return 1
    sms = sm_count(dev, cpu=132)
    if programs >= per_sm * sms:
        return 1
    return max(1, min(cdiv(per_sm * sms, programs), nsaved // MIN_BWD_GROUP_WINDOWS))


def _as(t, dtype):
    # t in dtype; skips the call when it already is (a no-op .to() still costs host time)
    return t if t.dtype == dtype else t.to(dtype)


def _bucket(n: int) -> int:
    return _pow2(n)


def _bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, softplus, states, need, ypre=None):
    batch, dim, seqlen, dstate, groups, per, NP = _sizes(u, A, B)
    dev = u.device
    nsaved = states.shape[2]
    det = deterministic()
    A = A.float().contiguous()
    du = torch.empty((batch, dim, seqlen), device=dev, dtype=u.dtype)
    ddelta = torch.empty((batch, dim, seqlen), device=dev, dtype=delta.dtype)
    dz = torch.empty((batch, dim, seqlen), device=dev, dtype=z.dtype) if z is not None else du
    dinit = torch.empty((batch, dim, dstate), device=dev, dtype=torch.float32)
    dummy = du
    if dlast is not None:
        dlast = dlast.float().contiguous()
    cands = _bwd_candidates(batch, dim, nsaved, groups, dev, NP)
    bufs = {}

    def run(cfg):
        _, bd, bl, warps = cfg[:4]
        G = _n_bwd_groups(batch * cdiv(dim, bd), nsaved, cfg[4] if len(cfg) > 4 else 0, dev)
        wpg = cdiv(nsaved, G)
        G = cdiv(nsaved, wpg)
        K = cdiv(dim, bd) if det else groups
        # dB and dC (per group; deterministic: per program, summed below) in one buffer, zeroed at
        # once for the atomic adds (fewer small torch calls: each costs host time)
        gBC = bufs.get(K)
        if gBC is None:
            gBC = bufs[K] = torch.empty((2, batch, K, dstate, seqlen), device=dev, dtype=torch.float32)
        if not det:
            gBC.zero_()
        gB, gC = gBC.unbind(0)
        # per-channel sums: one row per (sequence group, batch), summed below
        dA_p = torch.empty((G * batch, dim, dstate), device=dev, dtype=torch.float32)
        dD_p = torch.empty((G * batch, dim), device=dev, dtype=torch.float32)
        db_p = torch.empty((G * batch, dim), device=dev, dtype=torch.float32)
        esum = ssum = dA_p
        grid = (cdiv(dim, bd), batch, G)
        if G > 1:
            esum = torch.empty((G, batch, dim, dstate), device=dev, dtype=torch.float32)
            ssum = torch.empty((G, batch, dim), device=dev, dtype=torch.float32)
            # the summary pass has its own tiles: one channel per thread (at most 8 on one warp) and
            # 16-step chunks, whatever the backward's (its group edges are window edges, and it
            # needs none of the backward's dB/dC reduction over channels that picks those)
            sbd, sbl = _summary_tiles(bd)
            COMPILED["scan_bwd_pass1"] = launch(scan_bwd_t4_summary_kernel, (cdiv(dim, sbd), batch, G - 1),
                delta, A, C, z if z is not None else dummy, delta_bias if delta_bias is not None else dummy, dout,
                esum, ssum, dim, seqlen, dstate, per, nsaved, wpg,
                *_strides3(delta), *(_strides3(z) if z is not None else (0, 0, 0)), *_strides_bc(C, groups),
                *_strides3(dout),
                BD=sbd, NP=NP, BL=sbl, NR=min(4, NP), WIN=SAVE_CHUNK, HAS_Z=z is not None,
                HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(softplus), CHAN_AXIS=chan_axis("bwd", 1),
                **launch_options(1))
        args = (
            u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy, states, dout, dlast if dlast is not None else dummy,
            ypre if ypre is not None else dummy,
            du, ddelta, dz, gB, gC, dA_p, dD_p, db_p, dinit, esum, ssum,
            dim, seqlen, dstate, per, nsaved, wpg,
            *_strides3(u), *_strides3(delta), *(_strides3(z) if z is not None else (0, 0, 0)),
            *_strides_bc(B, groups), *_strides_bc(C, groups), *_strides3(dout),
            *_strides3(du), *_strides3(ddelta), *_strides3(dz),
            gB.stride(0), gB.stride(1), gB.stride(2), gB.stride(3))
        kw = dict(BD=bd, NP=NP, BL=bl, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                  SOFTPLUS=bool(softplus), HAS_DLAST=dlast is not None, DETERMINISTIC=det,
                  NR=min(4, NP), WIN=SAVE_CHUNK, GROUPED=G > 1, HAS_YPRE=ypre is not None,
                  CHAN_AXIS=chan_axis("bwd", warps), **launch_options(warps))
        bdl = scatter_lanes(bd, bl, warps, NP, kw["CHAN_AXIS"])
        compiled = CHECK_FAILED
        if bdl:
            compiled = launch(scan_bwd_t4_kernel, grid, *args, BDL=bdl, check=_layout_check(NP, bdl), **kw)
        if compiled is CHECK_FAILED:
            compiled = launch(scan_bwd_t4_kernel, grid, *args, **kw)
        COMPILED["scan_bwd"] = compiled
        return gB, gC, K, dA_p, dD_p, db_p

    key = (batch, dim, _bucket(seqlen), dstate, groups, str(u.dtype), D is not None, z is not None,
           delta_bias is not None, bool(softplus), dlast is not None, det)
    cfg = triton_tune.pick("scan_bwd", key, cands, run, u)
    gB, gC, K, dA_p, dD_p, db_p = run(cfg)
    if det and K != groups:
        # per-program partial sums -> per-group sums, in a fixed order
        if groups == 1:
            gB, gC = gB.sum(1, keepdim=True), gC.sum(1, keepdim=True)
        else:
            gB = gB.reshape(batch, groups, K // groups, dstate, seqlen).sum(2)
            gC = gC.reshape(batch, groups, K // groups, dstate, seqlen).sum(2)
    dB = _as(gB.reshape(B.shape), B.dtype) if need[3] else None
    dC = _as(gC.reshape(C.shape), C.dtype) if need[4] else None
    dA = dA_p.sum(0)
    dD = dD_p.sum(0) if D is not None else None
    dbias = db_p.sum(0) if delta_bias is not None else None
    return du, ddelta, dA, dB, dC, dD, (dz if z is not None else None), dbias, dinit


class SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state):
        # the training forward: selective_scan takes this Function only when a gradient can be asked for
        y, last, states, ypre = _fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, True)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states, ypre)
        ctx.softplus = delta_softplus
        ctx.has_init = initial_state is not None
        ctx.dtypes = (A.dtype, None if D is None else D.dtype,
                      None if delta_bias is None else delta_bias.dtype,
                      None if initial_state is None else initial_state.dtype)
        ctx.set_materialize_grads(False)
        if return_last_state:
            return y, last
        return y

    @staticmethod
    def backward(ctx, dy, dlast=None):
        u, delta, A, B, C, D, z, delta_bias, states, ypre = ctx.saved_tensors
        need = ctx.needs_input_grad
        if dy is None:
            dy = torch.zeros_like(u)
        du, ddelta, dA, dB, dC, dD, dz, dbias, dinit = _bwd(
            dy, dlast, u, delta, A, B, C, D, z, delta_bias, ctx.softplus, states, need, ypre)
        a_dt, d_dt, b_dt, i_dt = ctx.dtypes
        return (du, ddelta, _as(dA, a_dt), dB, dC,
                None if dD is None else _as(dD, d_dt), dz,
                None if dbias is None else _as(dbias, b_dt), None, None,
                _as(dinit, i_dt) if ctx.has_init else None)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_state=None):
    """Fused Triton selective scan; same contract as :func:`longseq.kernels.selective_scan`."""
    check_selective_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state, fn="selective_scan")
    # states and the pre-gate output for a backward only when one can follow (under no_grad they
    # would be 6 GB written for nothing at 1M tokens and width 1536)
    save = gradient_wanted(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if torch.compiler.is_compiling():
        # the custom operator (custom_ops), one node of the compiled graph
        y, last, _, _ = custom_ops.selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                                      initial_state, save)
        out = (y, last) if return_last_state else y
    elif save:
        out = SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                    bool(return_last_state), initial_state)
    else:
        y, last, _, _ = _fwd(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), initial_state, False)
        out = (y, last) if return_last_state else y
    if return_last_state:
        y, last = out
        if u.dtype == torch.float64:
            last = last.double()
        return y, last
    return out
