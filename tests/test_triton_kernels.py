"""Every Triton kernel, forward and backward, against the float64 references (CPU interpreter).

Runs only under TRITON_INTERPRET=1 (tests/conftest.py sets it when there is no CUDA device); on a
GPU machine the same kernels are checked by tests/test_gpu_kernels.py instead. Sizes are small:
the interpreter costs ~0.2 ms per tile operation.
"""
import importlib.util
import os

import re

import pytest
import torch

from longseq.kernels import reference as R

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or importlib.util.find_spec("triton") is None,
    reason="needs triton and TRITON_INTERPRET=1 (CPU interpreter)")


def T():
    from longseq.kernels import triton_ops
    return triton_ops


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).detach().norm() / b.detach().norm().clamp_min(1e-30))


def scan_inputs(batch, dim, seqlen, dstate, groups, gen):
    r = lambda *s: torch.randn(*s, generator=gen)
    bc = (batch, groups, dstate, seqlen) if groups else (batch, dstate, seqlen)
    return dict(u=r(batch, dim, seqlen), delta=r(batch, dim, seqlen) * 0.5,
                A=-(torch.rand(dim, dstate, generator=gen) * 4 + 0.1), B=r(*bc), C=r(*bc), D=r(dim),
                z=r(batch, dim, seqlen), delta_bias=r(dim) * 0.3, initial_state=r(batch, dim, dstate))


FULL = dict(D=True, z=True, delta_bias=True, softplus=True, initial_state=True, last=True)
NONE = dict(D=False, z=False, delta_bias=False, softplus=False, initial_state=False, last=False)


def run_scan(fn, t, flags):
    y = fn(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"] if flags["D"] else None,
           z=t["z"] if flags["z"] else None, delta_bias=t["delta_bias"] if flags["delta_bias"] else None,
           delta_softplus=flags["softplus"], return_last_state=flags["last"],
           initial_state=t["initial_state"] if flags["initial_state"] else None)
    return y if isinstance(y, tuple) else (y,)


def grad_names(flags):
    """The scan's inputs that take part (and so get a gradient) with these flags."""
    return ["u", "delta", "A", "B", "C"] + [k for k in ("D", "z", "delta_bias", "initial_state") if flags[k]]


def scan_vs_reference(t, flags, gen, names):
    """The Triton scan and the float64 reference on copies of t (inputs in `names` requiring grad);
    when `names` is not empty, the same random output gradients are backpropagated through both.
    Returns (xs, xr, out, ref): the two input copies and the two outputs."""
    xs = {k: v.clone().requires_grad_(k in names) for k, v in t.items()}
    xr = {k: v.double().requires_grad_(k in names) for k, v in t.items()}
    out = run_scan(T().selective_scan, xs, flags)
    ref = run_scan(R.selective_scan_ref, xr, flags)
    if names:
        grads = [torch.randn(o.shape, generator=gen) for o in out]
        sum((o * g).sum() for o, g in zip(out, grads)).backward()
        sum((o * g.double()).sum() for o, g in zip(ref, grads)).backward()
    return xs, xr, out, ref


@pytest.mark.parametrize("batch,dim,seqlen,dstate,groups,flags", [
    (2, 1, 1, 3, None, FULL),
    (2, 5, 17, 4, None, FULL),
    (1, 40, 17, 16, 4, FULL),
    (1, 5, 17, 5, None, NONE),
    (1, 5, 65, 16, 5, FULL),          # crosses a 64-step chunk boundary by one step; per-group dim 1
    (1, 5, 300, 16, None, FULL),
    (1, 40, 300, 16, 2, dict(FULL, last=False)),
    (2, 5, 40, 64, None, FULL),
], ids=["L1-d1", "L17-d5", "L17-d40-grouped", "L17-d5-plain", "L65-d5-grouped", "L300-d5", "L300-d40-grouped",
        "L40-d5-N64"])
def test_selective_scan_matches_float64_reference(batch, dim, seqlen, dstate, groups, flags):
    gen = torch.Generator().manual_seed(seqlen * 100 + dim)
    t = scan_inputs(batch, dim, seqlen, dstate, groups, gen)
    names = grad_names(flags)
    xs, xr, out, ref = scan_vs_reference(t, flags, gen, names)
    assert out[0].dtype == torch.float32
    for o, r in zip(out, ref):
        assert o.shape == r.shape
        assert rel(o, r) < 1e-5
    for k in names:
        assert xs[k].grad is not None, k
        assert xs[k].grad.shape == t[k].shape, k
        assert rel(xs[k].grad, xr[k].grad) < 1e-4, (k, rel(xs[k].grad, xr[k].grad))


def test_configurations_for_larger_dstate_keep_the_states_per_thread(monkeypatch):
    """The tuned lists (dstate 16) scaled for a larger dstate: BD * dstate as at 16, more warps where a
    channel is all a program holds, every other field kept; as given when listed in the environment."""
    from longseq.kernels import triton_scan_op as op
    for cfgs in (op.FWD_CFGS, op.FWD_TRAIN_CFGS, op.BWD_CFGS):
        for c in cfgs:
            assert op._for_dstate(c, 16) == c
            for NP in (32, 64, 128, 256):
                s = op._for_dstate(c, NP)
                assert s[0] == c[0] and s[2] == c[2] and s[4:] == c[4:]
                assert s[1] >= 1 and s[1] * NP == max(c[1] * 16, NP), (c, NP, s)
                # states per thread (BD * NP / warps) never above the tuned configuration's
                assert s[1] * NP / s[3] <= max(c[1] * 16 / c[3], NP / 8), (c, NP, s)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for k in ("LONGSEQ_SCAN_FWD_CFGS", "LONGSEQ_SCAN_BWD_CFGS"):
        monkeypatch.delenv(k, raising=False)
    # scaled first (the pick without tuning); the tuned ones too up to dstate 64, not above
    fwd64 = op._candidates(1536, 1, op.FWD_CFGS, "fwd", 64)
    assert fwd64[0] == ("t4", 8, 16, 4) and set(op.FWD_CFGS) <= set(fwd64) and len(set(fwd64)) == len(fwd64)
    bwd256 = op._candidates(1536, 1, op.BWD_CFGS, "bwd", 256)
    assert bwd256[0] == ("t4", 1, 8, 4) and all(c[1] == 1 for c in bwd256)
    monkeypatch.setenv("LONGSEQ_SCAN_BWD_CFGS", "t4:4:8:1")
    assert op._candidates(1536, 1, op.BWD_CFGS, "bwd", 256) == [("t4", 4, 8, 1)]


def test_selective_scan_deterministic_mode_matches_atomic(monkeypatch):
    gen = torch.Generator().manual_seed(7)
    t = scan_inputs(1, 40, 20, 16, 2, gen)
    grads = []
    for det in ("0", "1"):
        monkeypatch.setenv("LONGSEQ_DETERMINISTIC", det)
        xs = {k: v.clone().requires_grad_() for k, v in t.items()}
        y = run_scan(T().selective_scan, xs, dict(FULL, last=False))[0]
        y.square().sum().backward()
        grads.append([xs[k].grad for k in ("B", "C", "u", "A")])
    for a, b in zip(*grads):
        assert rel(a, b) < 1e-6


def test_selective_scan_in_two_pieces_equals_whole():
    gen = torch.Generator().manual_seed(3)
    t = scan_inputs(1, 5, 150, 8, None, gen)
    f = T().selective_scan
    kw = dict(D=t["D"], delta_bias=t["delta_bias"], delta_softplus=True, return_last_state=True)
    y, last = f(t["u"], t["delta"], t["A"], t["B"], t["C"], z=t["z"], **kw)
    cut = 70
    sl = lambda x, a, b: x[..., a:b]
    y1, h1 = f(*(sl(t[k], 0, cut) for k in ("u", "delta")), t["A"], sl(t["B"], 0, cut), sl(t["C"], 0, cut),
               z=sl(t["z"], 0, cut), **kw)
    y2, h2 = f(*(sl(t[k], cut, None) for k in ("u", "delta")), t["A"], sl(t["B"], cut, None), sl(t["C"], cut, None),
               z=sl(t["z"], cut, None), initial_state=h1, **kw)
    assert rel(torch.cat([y1, y2], -1), y) < 1e-6
    assert rel(h2, last) < 1e-6


def test_selective_scan_bad_shape_raises_value_error():
    gen = torch.Generator().manual_seed(0)
    t = scan_inputs(1, 4, 8, 4, None, gen)
    with pytest.raises(ValueError, match="'B'"):
        T().selective_scan(t["u"], t["delta"], t["A"], t["B"][:, :3], t["C"])


# widths 1-6 (6: the window reaches past one fp32 vector, so a thread holds 8 steps), seqlen 2100:
# three backward chunks of 1024 steps (fp32), the last one partial
@pytest.mark.parametrize("batch,dim,seqlen,width", [(2, 1, 1, 4), (2, 5, 17, 4), (1, 40, 300, 4), (1, 5, 2, 3),
                                                    (2, 3, 40, 1), (1, 3, 45, 2), (1, 3, 300, 6), (1, 3, 2100, 4)])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_init", [False, True])
def test_causal_conv1d_matches_reference(batch, dim, seqlen, width, activation, with_init):
    gen = torch.Generator().manual_seed(seqlen + dim)
    ts = [torch.randn(batch, dim, seqlen, generator=gen), torch.randn(dim, width, generator=gen),
          torch.randn(dim, generator=gen), torch.randn(batch, dim, width - 1, generator=gen)]
    x = [v.clone().requires_grad_() for v in ts]
    xr = [v.double().requires_grad_() for v in ts]
    y, f = T().causal_conv1d(x[0], x[1], x[2], activation, x[3] if with_init else None, True)
    yr, fr = R.causal_conv1d_ref(xr[0], xr[1], xr[2], activation, xr[3] if with_init else None, True)
    assert rel(y, yr) < 1e-5 and torch.equal(f.double(), fr)
    gy, gf = torch.randn(y.shape, generator=gen), torch.randn(f.shape, generator=gen)
    ((y * gy).sum() + (f * gf).sum()).backward()
    ((yr * gy.double()).sum() + (fr * gf.double()).sum()).backward()
    with_dinit = with_init and width > 1   # a width-1 conv has an empty initial state
    for a, b in zip(x[:3] + (x[3:] if with_dinit else []), xr[:3] + (xr[3:] if with_dinit else [])):
        assert rel(a.grad, b.grad) < 1e-5


@pytest.mark.parametrize("width", [4, 9, 10])
def test_causal_conv1d_bf16_matches_reference(width):
    # bf16: 8 steps a thread (one 16-byte vector); width 10 needs 16 (two vectors a thread)
    gen = torch.Generator().manual_seed(width)
    ts = [torch.randn(2, 3, 600, generator=gen).bfloat16(), torch.randn(3, width, generator=gen) / width,
          torch.randn(3, generator=gen), torch.randn(2, 3, width - 1, generator=gen).bfloat16()]
    x = [v.clone().requires_grad_() for v in ts]
    xr = [v.double().requires_grad_() for v in ts]
    y = T().causal_conv1d(x[0], x[1], x[2], "silu", x[3])
    yr = R.causal_conv1d_ref(xr[0], xr[1], xr[2], "silu", xr[3])
    assert y.dtype == torch.bfloat16 and rel(y, yr) < 1e-2
    gy = torch.randn(y.shape, generator=gen).bfloat16()
    (y.float() * gy.float()).sum().backward()
    (yr * gy.double()).sum().backward()
    for a, b in zip(x, xr):
        assert rel(a.grad, b.grad) < 1e-2


@pytest.mark.parametrize("activation", [None, "silu"])
def test_causal_conv1d_takes_a_strided_time_axis_and_an_expanded_gradient(activation):
    # x a transposed view (time stride = dim: no vector loads, still right); y.sum()'s gradient
    # reaches the backward as an expanded tensor with all strides 0
    gen = torch.Generator().manual_seed(4)
    ts = [torch.randn(2, 300, 5, generator=gen), torch.randn(5, 4, generator=gen),
          torch.randn(5, generator=gen), torch.randn(2, 5, 3, generator=gen)]
    x = [t.clone().requires_grad_() for t in ts]
    xr = [t.double().requires_grad_() for t in ts]
    y = T().causal_conv1d(x[0].transpose(1, 2), x[1], x[2], activation, x[3])
    yr = R.causal_conv1d_ref(xr[0].transpose(1, 2), xr[1], xr[2], activation, xr[3])
    assert rel(y, yr) < 1e-5
    y.sum().backward()
    yr.sum().backward()
    for a, b in zip(x, xr):
        assert rel(a.grad, b.grad) < 1e-5


@pytest.mark.parametrize("with_init", [False, True])
def test_causal_conv1d_takes_a_channel_view_without_bias(with_init):
    # the mixer passes x as the first half of the in-projection's (batch, 2*dim, L) buffer
    gen = torch.Generator().manual_seed(3)
    buf = torch.randn(2, 14, 150, generator=gen)
    w, init = torch.randn(7, 4, generator=gen), torch.randn(2, 7, 3, generator=gen)
    x = [t.clone().requires_grad_() for t in (buf, w, init)]
    xr = [t.double().requires_grad_() for t in (buf, w, init)]
    y = T().causal_conv1d(x[0][:, :7], x[1], None, "silu", x[2] if with_init else None)
    yr = R.causal_conv1d_ref(xr[0][:, :7], xr[1], None, "silu", xr[2] if with_init else None)
    assert rel(y, yr) < 1e-5
    g = torch.randn(y.shape, generator=gen)
    (y * g).sum().backward()
    (yr * g.double()).sum().backward()
    for a, b in zip(x if with_init else x[:2], xr if with_init else xr[:2]):
        assert rel(a.grad, b.grad) < 1e-5


@pytest.mark.parametrize("batch,dim,seqlen,width", [(2, 1, 1, 4), (1, 5, 17, 4), (2, 3, 300, 4), (1, 3, 2100, 4),
                                                    (1, 3, 45, 2)])
@pytest.mark.parametrize("with_init", [False, True])
def test_causal_conv1d_with_two_readers_adds_their_gradients(batch, dim, seqlen, width, with_init):
    # readers=2 (the mixer: x-projection and scan): the output twice, and the backward kernel adds
    # the two gradients (one of them strided, as a transposed view's) as it reads them
    from longseq.kernels import causal_conv1d
    gen = torch.Generator().manual_seed(7 * seqlen + dim)
    ts = [torch.randn(batch, dim, seqlen, generator=gen), torch.randn(dim, width, generator=gen),
          torch.randn(dim, generator=gen), torch.randn(batch, dim, width - 1, generator=gen)]
    x = [v.clone().requires_grad_() for v in ts]
    xr = [v.double().requires_grad_() for v in ts]
    init, init_r = (x[3], xr[3]) if with_init else (None, None)
    y1, y2, f = causal_conv1d(x[0], x[1], x[2], "silu", init, True, backend="triton", readers=2)
    yr, fr = R.causal_conv1d_ref(xr[0], xr[1], xr[2], "silu", init_r, True)
    assert torch.equal(y1, y2) and y2._base is y1 and rel(y1, yr) < 1e-5 and torch.equal(f.double(), fr)
    g1 = torch.randn(y1.shape, generator=gen)
    g2 = torch.randn(batch, seqlen, dim, generator=gen).transpose(1, 2)
    ((y1 * g1).sum() + (y2 * g2).sum()).backward()
    (yr * (g1 + g2).double()).sum().backward()
    used = x[:3] + (x[3:] if with_init and width > 1 else [])
    for a, b in zip(used, xr):
        assert rel(a.grad, b.grad) < 1e-5
    # one reader reaching no loss: its gradient is not read (none is made), the other's is used alone
    for which in (0, 1):
        for v in x + xr:
            v.grad = None
        ys = causal_conv1d(x[0], x[1], x[2], "silu", init, backend="triton", readers=2)
        (ys[which] * g1).sum().backward()
        (R.causal_conv1d_ref(xr[0], xr[1], xr[2], "silu", init_r) * g1.double()).sum().backward()
        for a, b in zip(used, xr):
            assert rel(a.grad, b.grad) < 1e-5
    with pytest.raises(ValueError, match="'readers' must be 1 or 2; got 3"):
        causal_conv1d(x[0], x[1], readers=3)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("dim", [1, 5, 40])
def test_selective_state_update_matches_reference(grouped, dim):
    gen = torch.Generator().manual_seed(dim)
    batch, n = 3, 16
    groups = 5 if (grouped and dim % 5 == 0) else 1
    r = lambda *s: torch.randn(*s, generator=gen)
    st, x, dt, z = r(batch, dim, n), r(batch, dim), r(batch, dim), r(batch, dim)
    A = -torch.rand(dim, n, generator=gen) * 4
    B = r(batch, groups, n) if grouped else r(batch, n)
    C = r(*B.shape)
    D, bias = r(dim), r(dim)
    s1, s2 = st.clone(), st.double()
    y = T().selective_state_update(s1, x, dt, A, B, C, D, z, bias, True)
    yr = R.selective_state_update_ref(s2, x.double(), dt.double(), A.double(), B.double(), C.double(),
                                      D.double(), z.double(), bias.double(), True)
    assert rel(y, yr) < 1e-5 and rel(s1, s2) < 1e-5
    # one step equals the scan over a length-1 sequence
    s3 = st.clone()
    y3 = T().selective_state_update(s3, x, dt, A, B, C)
    Bs = B.unsqueeze(-1)
    ys, last = R.selective_scan_ref(x.unsqueeze(-1).double(), dt.unsqueeze(-1).double(), A.double(), Bs.double(),
                                    C.unsqueeze(-1).double(), return_last_state=True, initial_state=st.double())
    assert rel(y3, ys.squeeze(-1)) < 1e-5 and rel(s3, last) < 1e-5


@pytest.mark.parametrize("shape,with_res,prenorm,res_fp32", [
    ((2, 3, 10), True, True, True), ((7, 33), False, False, False), ((5, 64), True, False, False),
    ((4, 16), False, True, False), ((1, 1, 40), True, True, False),
    # blocks of rows: a partial last block, and more blocks than backward programs (8 on the CPU)
    ((3, 37, 24), True, True, True), ((300, 200), True, False, True)])
def test_rms_norm_matches_reference(shape, with_res, prenorm, res_fp32):
    gen = torch.Generator().manual_seed(shape[-1])
    ts = [torch.randn(shape, generator=gen), torch.randn(shape[-1], generator=gen), torch.randn(shape, generator=gen)]
    x = [v.clone().requires_grad_() for v in ts]
    xr = [v.double().requires_grad_() for v in ts]
    o = T().rms_norm(x[0], x[1], x[2] if with_res else None, 1e-5, prenorm, res_fp32)
    orf = R.rms_norm_ref(xr[0], xr[1], xr[2] if with_res else None, 1e-5, prenorm, res_fp32)
    o, orf = (o, orf) if prenorm else ((o,), (orf,))
    for a, b in zip(o, orf):
        assert a.shape == b.shape and rel(a, b) < 1e-5
    if prenorm:
        assert o[1].dtype == (torch.float32 if res_fp32 else x[0].dtype)
    gs = [torch.randn(a.shape, generator=gen) for a in o]
    sum((a * g).sum() for a, g in zip(o, gs)).backward()
    sum((a * g.double()).sum() for a, g in zip(orf, gs)).backward()
    n = 3 if with_res else 2
    for a, b in zip(x[:n], xr[:n]):
        assert rel(a.grad, b.grad) < 1e-5


def test_dispatch_routes_to_triton_under_interpreter():
    from longseq.kernels import selective_scan
    gen = torch.Generator().manual_seed(1)
    t = scan_inputs(1, 3, 9, 4, None, gen)
    y_t = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], backend="triton")
    y_r = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], backend="reference")
    assert rel(y_t, y_r) < 1e-5


@pytest.mark.parametrize("train_cfg", ["t4:4:8:4", "t4:4:16:4", "t4:4:32:4"])
def test_selective_scan_training_forward_chunks(monkeypatch, train_cfg):
    """The training forward at every chunk length it may run (8, 16, 32 steps: it saves every 4th,
    2nd or every state for the backward) feeding the backward."""
    monkeypatch.setenv("LONGSEQ_SCAN_FWD_TRAIN_CFGS", train_cfg)
    gen = torch.Generator().manual_seed(11)
    t = scan_inputs(2, 5, 70, 16, None, gen)
    names = list(t)
    xs, xr, out, ref = scan_vs_reference(t, FULL, gen, names)
    for o, r in zip(out, ref):
        assert rel(o, r) < 1e-5
    for k in names:
        assert rel(xs[k].grad, xr[k].grad) < 1e-4, k


@pytest.mark.parametrize("bwd_cfg", ["t4:4:32:4", "t4:4:16:4", "t4:4:4:4"])
def test_selective_scan_backward_sub_chunks(monkeypatch, bwd_cfg):
    """The backward's 32-step windows (between saved states) as 1, 2 or 8 sub-chunks."""
    monkeypatch.setenv("LONGSEQ_SCAN_BWD_CFGS", bwd_cfg)
    gen = torch.Generator().manual_seed(12)
    t = scan_inputs(1, 5, 150, 16, None, gen)
    xs, xr, _, _ = scan_vs_reference(t, FULL, gen, list(t))
    for k in xs:
        assert rel(xs[k].grad, xr[k].grad) < 1e-4, k


def test_selective_scan_backward_rejects_bad_config(monkeypatch):
    monkeypatch.setenv("LONGSEQ_SCAN_BWD_CFGS", "t4:4:64:4")
    gen = torch.Generator().manual_seed(0)
    t = scan_inputs(1, 4, 8, 4, None, gen)
    u = t["u"].clone().requires_grad_()
    y = T().selective_scan(u, t["delta"], t["A"], t["B"], t["C"])
    with pytest.raises(ValueError, match="BL dividing"):
        y.sum().backward()


@pytest.mark.parametrize("train", [False, True])
def test_selective_scan_chunk_parallel_forward(monkeypatch, train):
    """The t4 forward split into 3 sequence groups (pass 1: group summaries, pass 2: each group
    starts from the folded summaries), with an initial state; in training mode the saved states
    feed the backward."""
    monkeypatch.setenv("LONGSEQ_SCAN_GROUPS", "3")
    gen = torch.Generator().manual_seed(13)
    check_forward_and_grads(scan_inputs(2, 5, 300, 16, None, gen), gen, train)


def check_forward_and_grads(t, gen, train):
    """Outputs vs float64 (and, for the training forward, every gradient through the backward)."""
    xs, xr, out, ref = scan_vs_reference(t, FULL, gen, list(t) if train else [])
    for o, r in zip(out, ref):
        assert rel(o, r) < 1e-5
    if train:
        for k in xs:
            assert rel(xs[k].grad, xr[k].grad) < 1e-4, k


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("seq_groups", [None, "3"])
@pytest.mark.parametrize("seqlen", [1, 17, 300])
def test_selective_scan_forward_two_chunks_ahead(monkeypatch, train, seq_groups, seqlen):
    """The "t4p2" forward (the next two chunks' tiles loaded ahead of the arithmetic), whole and in
    3 sequence groups, at lengths of one step, a partial chunk and many chunks."""
    monkeypatch.setenv("LONGSEQ_SCAN_FWD_TRAIN_CFGS" if train else "LONGSEQ_SCAN_FWD_CFGS", "t4p2:4:8:4")
    if seq_groups:
        monkeypatch.setenv("LONGSEQ_SCAN_GROUPS", seq_groups)
    gen = torch.Generator().manual_seed(14 + seqlen)
    check_forward_and_grads(scan_inputs(2, 5, seqlen, 16, None, gen), gen, train)


def test_selective_scan_rejects_unknown_variant(monkeypatch):
    """The backward has no "t4p2" variant; a misspelt configuration names the accepted ones."""
    gen = torch.Generator().manual_seed(0)
    t = scan_inputs(1, 4, 8, 4, None, gen)
    monkeypatch.setenv("LONGSEQ_SCAN_BWD_CFGS", "t4p2:4:8:4")
    u = t["u"].clone().requires_grad_()
    y = T().selective_scan(u, t["delta"], t["A"], t["B"], t["C"])
    with pytest.raises(ValueError, match="t4:BD:BL:warps"):
        y.sum().backward()
    monkeypatch.setenv("LONGSEQ_SCAN_FWD_CFGS", "t5:4:8:4")
    with pytest.raises(ValueError, match=re.escape("t4|t4p2:BD:BL:warps")):
        T().selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"])


T4_SHAPES = [(2, 1, 1, 3, None), (2, 5, 17, 4, None), (1, 40, 17, 16, 4), (1, 5, 300, 16, None),
             (2, 5, 64, 16, 5)]


@pytest.mark.parametrize("bl", [8, 32])
@pytest.mark.parametrize("flags", [FULL, NONE, dict(FULL, z=False, last=False), dict(NONE, D=True, softplus=True, last=True),
                                   dict(NONE, delta_bias=True, softplus=True, initial_state=True, z=True)],
                         ids=["full", "none", "no-z", "D-softplus-last", "bias-softplus-init-z"])
@pytest.mark.parametrize("batch,dim,seqlen,dstate,groups", T4_SHAPES,
                         ids=["L1-d1", "L17-d5", "L17-d40-g4", "L300-d5", "L64-d5-g5"])
def test_selective_scan_t4_backward(monkeypatch, batch, dim, seqlen, dstate, groups, flags, bl):
    """The t4 backward (v5: 32-step windows of BL-step sub-chunks, unrolled recurrences) against the
    float64 reference: awkward lengths (1, 17, 64, 300), dims (1, 5, 40), states (3, 4, 16), grouped
    B/C (per-group dim 10 and 1) and each option on and off; every gradient, the initial state's and
    dL/dlast's paths included (softplus off only where delta stays small: without it a negative delta
    makes exp(delta A) > 1 and the float64 reference itself grows to ~1e68 over 300 steps)."""
    monkeypatch.setenv("LONGSEQ_SCAN_BWD_CFGS", f"t4:4:{bl}:4")
    gen = torch.Generator().manual_seed(seqlen * 100 + dim + bl)
    t = scan_inputs(batch, dim, seqlen, dstate, groups, gen)
    names = grad_names(flags)
    xs, xr, _, _ = scan_vs_reference(t, flags, gen, names)
    for k in names:
        assert xs[k].grad is not None and xs[k].grad.shape == t[k].shape, k
        assert rel(xs[k].grad, xr[k].grad) < 1e-4, (k, rel(xs[k].grad, xr[k].grad))


@pytest.mark.parametrize("groups", [None, 2])
def test_selective_scan_backward_deterministic_matches_atomic_grouped(monkeypatch, groups):
    """Per-program dB/dC stores summed afterwards (deterministic) equal the atomics."""
    monkeypatch.setenv("LONGSEQ_SCAN_BWD_CFGS", "t4:4:8:4")
    gen = torch.Generator().manual_seed(17)
    t = scan_inputs(1, 40, 45, 16, groups, gen)
    grads = []
    for det in ("0", "1"):
        monkeypatch.setenv("LONGSEQ_DETERMINISTIC", det)
        xs = {k: v.clone().requires_grad_() for k, v in t.items()}
        y, last = run_scan(T().selective_scan, xs, FULL)
        (y.square().sum() + last.sum()).backward()
        grads.append([xs[k].grad for k in xs])
    for a, b in zip(*grads):
        assert rel(a, b) < 1e-6


@pytest.mark.parametrize("bwd_groups,batch,seqlen,groups,flags,det", [
    ("3", 2, 300, None, FULL, "0"), ("2", 1, 45, 2, dict(NONE, z=True, softplus=True, last=True), "1"),
    ("4", 1, 97, None, dict(FULL, initial_state=False), "0")],
    ids=["g3-L300-full", "g2-L45-grouped-z-last-deterministic", "g4-L97-no-init"])
def test_selective_scan_chunk_parallel_backward(monkeypatch, bwd_groups, batch, seqlen, groups, flags, det):
    """The chunk-parallel backward (v6): the 32-step windows split into sequence groups (pass 1:
    each later group's dL/dh carry from a zero start and its delta sum; pass 2: each group starts
    from dL/dlast folded through the later groups), at awkward lengths whose last group is short or
    padded, grouped B/C, with and without z/dL/dlast/initial state, atomics and deterministic dB/dC;
    every gradient vs float64."""
    monkeypatch.setenv("LONGSEQ_SCAN_BWD_CFGS", "t4:2:8:4")
    monkeypatch.setenv("LONGSEQ_DETERMINISTIC", det)
    monkeypatch.setenv("LONGSEQ_SCAN_BWD_GROUPS", bwd_groups)
    gen = torch.Generator().manual_seed(seqlen + batch)
    t = scan_inputs(batch, 4, seqlen, 16, groups, gen)
    names = grad_names(flags)
    xs, xr, _, _ = scan_vs_reference(t, flags, gen, names)
    for k in names:
        assert rel(xs[k].grad, xr[k].grad) < 1e-4, (k, rel(xs[k].grad, xr[k].grad))


@pytest.mark.parametrize("cfg,batch,dim,seqlen,dstate,groups,det,bwd_groups", [
    ("t4:16:4:1", 2, 40, 75, 16, None, "0", None),      # 3 channel blocks, the last one partial
    ("t4:8:8:1", 1, 16, 300, 16, 2, "0", None),         # grouped B/C
    ("t4:16:4:1", 1, 16, 97, 13, None, "1", "3"),       # padded states, deterministic, chunk-parallel
    ("t4:16:4:1", 2, 20, 33, 8, None, "0", None),       # dstate 8: 16 channel lanes, one step per lane
    ("t4:8:32:1", 1, 8, 70, 16, None, "0", "2")],       # 16 steps per lane
    ids=["16x4-partial-block", "8x8-grouped", "16x4-states13-det-3groups", "16x4-dstate8", "8x32-2groups"])
@pytest.mark.parametrize("chan_axis", ["1", "2"])
def test_backward_reduce_scatter_of_dB_dC(monkeypatch, cfg, batch, dim, seqlen, dstate, groups, det, bwd_groups,
                                          chan_axis):
    """One-warp backward configurations with at least 32 / NQ channels sum dB and dC over the channels by
    a reduce-scatter over the channel lanes (triton_scan._chan_scatter_add; here its lane exchange runs as
    a gather along the channel axis): every gradient vs float64, with either tile axis order, atomics and
    deterministic stores, whole and chunk-parallel."""
    from longseq.kernels import triton_scan_op as op
    _, bd, bl, warps = op.parse_cfg(cfg)[:4]
    assert op.scatter_lanes(bd, bl, warps, 16 if dstate > 8 else 8, op.chan_axis("bwd", 1)) > 0
    monkeypatch.setenv("LONGSEQ_SCAN_BWD_CFGS", cfg)
    monkeypatch.setenv("LONGSEQ_SCAN_CHAN_AXIS", chan_axis)
    monkeypatch.setenv("LONGSEQ_DETERMINISTIC", det)
    if bwd_groups:
        monkeypatch.setenv("LONGSEQ_SCAN_BWD_GROUPS", bwd_groups)
    gen = torch.Generator().manual_seed(seqlen + dim)
    t = scan_inputs(batch, dim, seqlen, dstate, groups, gen)
    names = grad_names(FULL)
    xs, xr, _, _ = scan_vs_reference(t, FULL, gen, names)
    for k in names:
        assert rel(xs[k].grad, xr[k].grad) < 1e-4, (k, rel(xs[k].grad, xr[k].grad))


def test_scatter_lanes_only_where_the_exchange_fits(monkeypatch):
    """The reduce-scatter needs one warp, whole channel-lane groups in the program, at least one step
    per lane and, on a GPU, the tiles' natural axis order; everything else sums with tl.sum."""
    from longseq.kernels.triton_scan_op import _ASCENDING_TIES, scatter_lanes
    a = 2 if _ASCENDING_TIES else 1
    assert scatter_lanes(16, 4, 1, 16, a) == 8 and scatter_lanes(8, 8, 1, 16, a) == 8
    assert scatter_lanes(16, 4, 1, 8, a) == 16 and scatter_lanes(4, 8, 1, 64, a) == 0   # dstate 64: 2 lanes, J > BL
    assert scatter_lanes(1, 8, 1, 256, a) == 0 and scatter_lanes(2, 8, 1, 128, a) == 0
    assert scatter_lanes(4, 8, 1, 16, a) == 0 and scatter_lanes(16, 4, 2, 16, a) == 0
    assert scatter_lanes(16, 1, 1, 16, a) == 0
    assert scatter_lanes(16, 4, 1, 16, 3 - a) == 8            # the interpreter has no lanes
    monkeypatch.delenv("TRITON_INTERPRET")
    assert scatter_lanes(16, 4, 1, 16, 3 - a) == 0            # compiled: LONGSEQ_SCAN_CHAN_AXIS forced the other order


_LAYOUT_CHECK = """
import inspect, re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from longseq.kernels import triton_scan
from longseq.kernels.triton_scan_op import chan_axis, scatter_lanes, shuffle_layouts_ok


def ttgir_of(fn, const, f32, dt, unaligned):
    # one-warp sm_90 build, as a contiguous call specialises it: unit time strides (in const), the other
    # integers (but `unaligned`) and pointers 16-aligned; f32: the float32 pointers, dt: the others' type
    names = list(inspect.signature(fn.fn).parameters)
    sig = {n: "constexpr" if n in const else ("*fp32" if n in f32 else "*" + dt) if n.endswith("_ptr") else "i32"
           for n in names}
    aligned = [i for i, n in enumerate(names) if n not in const and n not in unaligned]
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in const.items()},
                    attrs={(i,): [["tt.divisibility", 16]] for i in aligned})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=1)).asm["ttgir"]


f32 = {"A_ptr", "D_ptr", "bias_ptr", "states_ptr", "dlast_ptr", "dB_ptr", "dC_ptr", "dA_ptr", "dD_ptr",
       "dbias_ptr", "dinit_ptr", "esum_ptr", "ssum_ptr"}
unit = {"s_ul", "s_dl", "s_zl", "s_Bl", "s_Cl", "s_ol", "s_dul", "s_ddl", "s_dzl", "s_gl"}
for bd, bl, np_, dt in ((16, 4, 16, "bf16"), (8, 8, 16, "bf16"), (8, 8, 16, "fp32"), (16, 4, 8, "fp32")):
    bdl = scatter_lanes(bd, bl, 1, np_, chan_axis("bwd", 1))
    const = dict(BD=bd, NP=np_, BL=bl, NR=4, WIN=32, HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True,
                 HAS_DLAST=False, DETERMINISTIC=False, GROUPED=False, HAS_YPRE=True,
                 CHAN_AXIS=chan_axis("bwd", 1), BDL=bdl, **{n: 1 for n in unit})
    ttgir = ttgir_of(triton_scan.scan_bwd_t4_kernel, const, f32, dt, ("wpg", "nsaved"))
    assert shuffle_layouts_ok(ttgir, np_, bdl), (bd, bl, np_, dt)
    if dt == "bf16":   # pass B's B and C reach the channels' lanes still as bf16 (widened after: v11, v26)
        assert ttgir.count("-> tensor<%dx4x4xbf16, #ttg.slice" % bl) >= 2, (bd, bl, "B/C broadcast in float32")
    # the same IR with the last two lane bits exchanged in every layout must fail the check
    def swap(m):
        bases = m.group(1).split("], [")
        return "lane = [" + "], [".join(bases[:-2] + bases[-1:] + bases[-2:-1]) + "]]"
    moved = re.sub(r"lane = \\[(\\[.*?\\])\\]", swap, ttgir)
    moved = re.sub(r"threadsPerWarp = \\[(\\d+), (\\d+), (\\d+)\\]", r"threadsPerWarp = [\\3, \\2, \\1]", moved)
    assert moved != ttgir and not shuffle_layouts_ok(moved, np_, bdl), (bd, bl, np_, dt)
# the one-warp training forward, bf16: B and C reach the channels' lanes as bf16 too
const = dict(BD=8, NP=16, BL=16, NR=4, SAVE_EVERY=2, HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True,
             HAS_INIT=False, SAVE_STATES=True, SUMMARY=False, GROUPED=False, SAVE_YPRE=True,
             CHAN_AXIS=chan_axis("fwd", 1), AHEAD=1, **{n: 1 for n in ("s_ul", "s_dl", "s_zl", "s_Bl", "s_Cl", "s_yl")})
f32 = {"A_ptr", "D_ptr", "bias_ptr", "init_ptr", "states_ptr", "last_ptr", "hsum_ptr", "ssum_ptr"}
ttgir = ttgir_of(triton_scan.scan_fwd_t4_kernel, const, f32, "bf16", ("cpp", "nchunks"))
assert ttgir.count("-> tensor<16x4x4xbf16, #ttg.slice") >= 2, "forward: B/C broadcast in float32"
print("ok", triton.__version__)
"""


def test_reduce_scatter_lanes_match_the_compiled_layout():
    """The reduce-scatter's lane exchanges (triton_scan._lane_swap) assume the layout that the launcher
    checks on every compiled backward (triton_scan_op.shuffle_layouts_ok; it falls back to tl.sum where the
    check fails). Compiled for sm_90 with the installed Triton (no GPU needed; in a process without the
    interpreter, which would not compile the exchanges) and the specialisation of contiguous tensors, the
    one-warp backwards pass the check, and the same IR with two lane bits exchanged does not. At bf16, B and
    C are converted to the broadcast layout as bf16 in the backward and the forward (Triton 3.7+ converted
    float32 when they were widened first: twice the shared-memory traffic, 7-10% of the backward on 3.9;
    kernel notes v26)."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _LAYOUT_CHECK], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-3000:]


def test_no_grad_takes_the_inference_forward(monkeypatch):
    """Under torch.no_grad() (and inference_mode) the parameters still require grad, but nothing will be
    differentiated: the scan runs its inference forward (no states or pre-gate output saved for a
    backward) and gives the same outputs; with grad enabled, the training forward."""
    from longseq.kernels import reference as R
    from longseq.kernels import triton_scan_op as op
    fwd, saved = op._fwd, []

    def spy(*args):
        saved.append(args[-1])
        return fwd(*args)
    monkeypatch.setattr(op, "_fwd", spy)
    gen = torch.Generator().manual_seed(23)
    t = scan_inputs(1, 6, 40, 16, None, gen)
    for k in ("A", "D", "delta_bias"):            # the block's parameters
        t[k].requires_grad_()
    with torch.no_grad():
        y0, last0 = run_scan(T().selective_scan, t, FULL)
    with torch.inference_mode():
        y1, last1 = run_scan(T().selective_scan, t, FULL)
    y2, last2 = run_scan(T().selective_scan, t, FULL)
    assert saved == [False, False, True]
    assert not y0.requires_grad and y2.requires_grad
    yr, lr = run_scan(R.selective_scan_ref, {k: v.detach().double() for k, v in t.items()}, FULL)
    for y, last in ((y0, last0), (y1, last1), (y2, last2)):
        assert rel(y, yr) < 1e-5 and rel(last, lr) < 1e-5


@pytest.mark.parametrize("summary,bwd_groups,seqlen", [("2:8", "3", 300), ("1:32", "4", 97)],
                         ids=["8-step", "32-step-from-chunk-1"])
def test_chunk_parallel_backward_summary_tiles(monkeypatch, summary, bwd_groups, seqlen):
    """The backward's summary pass on other tiles than its default ($LONGSEQ_SCAN_BWD_SUMMARY:
    channels, steps per chunk), down to a group that starts at chunk 1; every gradient vs float64."""
    monkeypatch.setenv("LONGSEQ_SCAN_BWD_CFGS", "t4:2:8:4")
    monkeypatch.setenv("LONGSEQ_SCAN_BWD_GROUPS", bwd_groups)
    monkeypatch.setenv("LONGSEQ_SCAN_BWD_SUMMARY", summary)
    gen = torch.Generator().manual_seed(seqlen + 5)
    t = scan_inputs(1, 4, seqlen, 16, 2, gen)
    names = grad_names(FULL)
    xs, xr, _, _ = scan_vs_reference(t, FULL, gen, names)
    for k in names:
        assert rel(xs[k].grad, xr[k].grad) < 1e-4, (k, rel(xs[k].grad, xr[k].grad))


@pytest.mark.parametrize("chan_axis", ["1", "2"])
@pytest.mark.parametrize("case", ["whole", "chunk-parallel"])
def test_selective_scan_both_tile_axis_orders(monkeypatch, chan_axis, case):
    """The scan kernels with the channels on either axis of their 4-D tiles (triton_scan_op.chan_axis
    picks per kernel and Triton version; the tests above run its picks, this one each axis everywhere):
    forward, training forward and every gradient vs float64. Four channels per program, so that the
    sums over the channels (dB, dC) cover a tile axis; 5 states (a padded, masked state axis) or
    grouped B/C; 75 steps (a partial chunk and window); whole, or split into 3 sequence groups in
    both directions."""
    monkeypatch.setenv("LONGSEQ_SCAN_CHAN_AXIS", chan_axis)
    for knob in ("LONGSEQ_SCAN_FWD_CFGS", "LONGSEQ_SCAN_FWD_TRAIN_CFGS", "LONGSEQ_SCAN_BWD_CFGS"):
        monkeypatch.setenv(knob, "t4:4:8:4")
    gen = torch.Generator().manual_seed(19 + int(chan_axis))
    if case == "whole":
        t = scan_inputs(2, 5, 75, 5, None, gen)
    else:
        monkeypatch.setenv("LONGSEQ_SCAN_GROUPS", "3")
        monkeypatch.setenv("LONGSEQ_SCAN_BWD_GROUPS", "3")
        t = scan_inputs(1, 8, 75, 16, 2, gen)
    check_forward_and_grads(t, gen, train=False)
    check_forward_and_grads(t, gen, train=True)


def test_chan_axis_follows_the_triton_version(monkeypatch):
    """Ascending contiguity ties up to Triton 3.6, descending after; the channels' axis per kernel
    under each rule, and the override checked."""
    from longseq.kernels import triton_scan_op as op
    for version, ascending in (("3.6.0", True), ("3.5.1", True), ("3.7.1", False), ("3.9.0", False),
                               ("3.10.0", False), ("4.0.0+git1234", False)):
        assert op.ascending_ties(version) is ascending, version
    monkeypatch.delenv("LONGSEQ_SCAN_CHAN_AXIS", raising=False)
    monkeypatch.setattr(op, "_ASCENDING_TIES", True)
    assert {op.chan_axis(k, w) for k in ("fwd", "bwd") for w in (1, 4)} == {2}
    monkeypatch.setattr(op, "_ASCENDING_TIES", False)
    assert [op.chan_axis("fwd", 1), op.chan_axis("fwd", 4), op.chan_axis("bwd", 1), op.chan_axis("bwd", 4)] == [2, 1, 1, 1]
    monkeypatch.setenv("LONGSEQ_SCAN_CHAN_AXIS", "2")
    assert op.chan_axis("bwd", 1) == 2
    monkeypatch.setenv("LONGSEQ_SCAN_CHAN_AXIS", "3")
    with pytest.raises(ValueError, match="LONGSEQ_SCAN_CHAN_AXIS"):
        op.chan_axis("fwd", 1)


def test_every_kernel_launch_asks_for_fp_fusion():
    """Triton 3.10 turns FP fusion off by default: each launch in longseq must pass launch_options
    (num_warps with enable_fp_fusion=True) rather than num_warps alone."""
    import pathlib
    import re

    from longseq.kernels.triton_tune import launch_options

    assert launch_options(2) == {"num_warps": 2, "enable_fp_fusion": True}
    root = pathlib.Path(__file__).resolve().parents[1] / "longseq"
    bare = [f"{p.relative_to(root.parent)}:{i}" for p in root.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\bnum_warps\s*=", line)]
    assert bare == [], f"kernel launches with num_warps= but not launch_options(...): {bare}"
    launches = sum(p.read_text().count("**launch_options(") for p in root.rglob("*.py"))
    assert launches >= 10   # scan (forward, backward summary, backward), conv (3), state update, RMSNorm (2), sampler
