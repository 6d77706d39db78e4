"""The mixer's layout-keeping projections (longseq/projections.py): values and gradients against
nn.Linear, the layouts they promise, autocast, bad input, and a mixer without transposing copies."""
import importlib.util
import os
import traceback

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from longseq import MambaConfig
from longseq.kernels import causal_conv1d, selective_scan
from longseq.mamba import Mamba
from longseq.projections import channels_to_channels, channels_to_rows, rows_to_channels

F64 = dict(dtype=torch.float64)


@pytest.mark.parametrize("batch", [1, 3])
def test_values_gradients_and_layouts_match_linear(batch):
    g = torch.Generator().manual_seed(batch)
    W = torch.randn(6, 5, generator=g, **F64).requires_grad_()
    rows = torch.randn(batch, 7, 5, generator=g, **F64).requires_grad_()    # (batch, L, k)
    chans = torch.randn(batch, 5, 7, generator=g, **F64).requires_grad_()   # (batch, k, L)
    cases = [(rows_to_channels, rows, lambda x, w: F.linear(x, w).mT),
             (channels_to_channels, chans, lambda x, w: F.linear(x.mT, w).mT),
             (channels_to_rows, chans, lambda x, w: F.linear(x.mT, w))]
    for fn, x, ref in cases:
        torch.autograd.gradcheck(fn, (x, W))
        out = fn(x, W)
        assert out.is_contiguous(), fn.__name__
        torch.testing.assert_close(out, ref(x, W), rtol=1e-12, atol=1e-12)
        grad = torch.randn(out.shape, generator=g, **F64)
        dx, dw = torch.autograd.grad(out, (x, W), grad)
        rx, rw = torch.autograd.grad(ref(x, W), (x, W), grad)
        torch.testing.assert_close(dx, rx, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(dw, rw, rtol=1e-12, atol=1e-12)
        assert dx.is_contiguous(), fn.__name__                # the input's layout, no strided view


@pytest.mark.parametrize("batch", [1, 3])
def test_parts_are_the_chunks_and_take_their_gradients_apart(batch):
    g = torch.Generator().manual_seed(10 + batch)
    x = torch.randn(batch, 7, 5, generator=g, **F64).requires_grad_()
    W = torch.randn(6, 5, generator=g, **F64).requires_grad_()
    torch.autograd.gradcheck(lambda x, w: rows_to_channels(x, w, parts=2), (x, W))
    torch.autograd.gradcheck(lambda x, w: rows_to_channels(x, w, parts=3)[1], (x, W))   # two unused parts
    a, b = rows_to_channels(x, W, parts=2)
    ra, rb = F.linear(x, W).mT.chunk(2, dim=1)
    torch.testing.assert_close(a, ra, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b, rb, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="parts must divide the 6 output channels"):
        rows_to_channels(x, W, parts=4)


def test_strided_channel_views_are_taken_as_they_are():
    # the mixer passes views of one buffer (x and z halves; dt rows of the x-projection)
    g = torch.Generator().manual_seed(0)
    buf = torch.randn(2, 9, 11, generator=g, **F64).requires_grad_()
    W = torch.randn(4, 3, generator=g, **F64).requires_grad_()
    torch.autograd.gradcheck(lambda b, w: channels_to_channels(b[:, 2:5], w), (buf, W))
    torch.autograd.gradcheck(lambda b, w: channels_to_rows(b[:, 6:], w), (buf, W))


def test_autocast_runs_in_its_dtype_like_linear():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 8, generator=g).requires_grad_()
    W = torch.randn(12, 8, generator=g).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rows_to_channels(x, W)
        ref = F.linear(x, W).mT
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    out.float().square().sum().backward()
    assert x.grad.dtype == torch.float32 and W.grad.dtype == torch.float32


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="x must be a 3-D tensor"):
        rows_to_channels(torch.zeros(4, 5), torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"weight must be \(out_features, 5\)"):
        channels_to_rows(torch.zeros(1, 5, 7), torch.zeros(3, 4))


def _mixer_reference(m: Mamba, hidden, bias_in_scan: bool = True):
    """The mixer written with its projections called as modules on transposed views and the
    reference kernels. ``bias_in_scan``: the dt bias added inside the scan in float32, as the mixer
    does for a bare dt_proj; otherwise dt_proj (an adapter) adds its own."""
    xz = m.in_proj(hidden).transpose(1, 2)
    x, z = xz.chunk(2, dim=1)
    x = causal_conv1d(x.contiguous(), m.conv1d.weight.squeeze(1), m.conv1d.bias, activation="silu",
                      backend="reference")
    x_dbl = m.x_proj(x.transpose(1, 2))
    dt, B, C = torch.split(x_dbl, [m.dt_rank, m.d_state, m.d_state], dim=-1)
    if bias_in_scan:
        delta, bias = F.linear(dt, m.dt_proj.weight).transpose(1, 2), m.dt_proj.bias.float()
    else:
        delta, bias = m.dt_proj(dt).transpose(1, 2), None
    # A and D in float32, as the mixer passes them
    y = selective_scan(x, delta.contiguous(), -torch.exp(m.A_log.float()), B.transpose(1, 2).contiguous(),
                       C.transpose(1, 2).contiguous(), m.D.float(), z=z.contiguous(), delta_bias=bias,
                       delta_softplus=True, backend="reference")
    return m.out_proj(y.transpose(1, 2))


@pytest.mark.parametrize("batch", [1, 2])
def test_mixer_matches_the_linear_layer_formulation(batch):
    torch.manual_seed(batch)
    m = Mamba(MambaConfig(d_model=12, n_layer=1, vocab_size=8, d_state=4)).double()
    hidden = torch.randn(batch, 37, 12, **F64).requires_grad_()
    out = m(hidden)
    grads = torch.autograd.grad(out.square().sum(), [hidden, *m.parameters()])
    ref = _mixer_reference(m, hidden)
    ref_grads = torch.autograd.grad(ref.square().sum(), [hidden, *m.parameters()])
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    for (name, _), a, b in zip([("hidden", None), *m.named_parameters()], grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=lambda s: f"{name}: {s}")


class _LowRank(nn.Module):
    """A LoRA-style wrapper: the base layer plus a low-rank term (what adapter libraries put in place
    of an nn.Linear)."""

    def __init__(self, base: nn.Linear, rank: int = 2):
        super().__init__()
        self.base = base
        self.down = nn.Parameter(torch.randn(rank, base.in_features, dtype=base.weight.dtype) * 0.1)
        self.up = nn.Parameter(torch.randn(base.out_features, rank, dtype=base.weight.dtype) * 0.1)

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.down), self.up)


def test_wrapped_or_hooked_projections_are_called_as_modules():
    # an adapter or a hook must take effect: such projections go through their modules
    torch.manual_seed(5)
    m = Mamba(MambaConfig(d_model=12, n_layer=1, vocab_size=8, d_state=4)).double()
    m.x_proj, m.dt_proj, m.out_proj = _LowRank(m.x_proj), _LowRank(m.dt_proj), _LowRank(m.out_proj)
    calls = []
    m.in_proj.register_forward_hook(lambda mod, inp, out: calls.append(out.shape))
    hidden = torch.randn(2, 23, 12, **F64).requires_grad_()
    out = m(hidden)
    assert calls == [(2, 23, 2 * m.d_inner)]
    ref = _mixer_reference(m, hidden, bias_in_scan=False)   # the dt bias inside the adapted dt_proj
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    params = [m.x_proj.up, m.dt_proj.down, m.out_proj.up, m.in_proj.weight]
    for a, b in zip(torch.autograd.grad(out.sum(), params), torch.autograd.grad(ref.sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    # and a recurrent step reads the adapted projections as well
    cache = m.allocate_cache(2)
    steps = torch.stack([m.step(hidden[:, t].detach(), cache) for t in range(hidden.shape[1])], 1)
    torch.testing.assert_close(steps, out.detach(), rtol=1e-6, atol=1e-8)


class _BigCopies(TorchDispatchMode):
    """Records every copy (clone, dtype or layout change, copy_, concatenation) and every addition
    of at least ``numel`` elements, except those the Triton interpreter makes to run a kernel on the
    CPU."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.seen = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if name.split(".")[0] in ("clone", "_to_copy", "copy_", "contiguous", "cat", "add", "add_") and \
                max(o.numel() for o in outs) >= self.numel:
            stack = traceback.extract_stack()
            if not any("interpreter" in f.filename and "triton" in f.filename for f in stack):
                self.seen.append((name, tuple(out.shape), [f"{f.name}:{f.lineno}" for f in stack[-6:-1]]))
        return out


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" or importlib.util.find_spec("triton") is None,
                    reason="the kernels' path needs triton under TRITON_INTERPRET=1")
def test_mixer_forward_and_backward_make_no_large_copy(monkeypatch):
    # the GPU path (Triton kernels, here interpreted): no (batch, d_inner, L)-sized tensor is copied,
    # concatenated or added, in the forward or the backward (there were five transposing copies per
    # layer, the x and z gradients were concatenated, and the conv output's two gradients, from the
    # x-projection and the scan, were added by autograd)
    monkeypatch.setenv("LONGSEQ_SCAN_BACKEND", "triton")
    monkeypatch.setenv("LONGSEQ_AUTOTUNE", "0")
    torch.manual_seed(0)
    # d_state 4: the x-projection's small output (dt_rank + 2 d_state = 9 channels, concatenated in its
    # backward as in any model) stays below the size counted here
    m = Mamba(MambaConfig(d_model=16, n_layer=1, vocab_size=8, d_state=4))
    batch, L = 2, 64
    hidden = torch.randn(batch, L, 16, requires_grad=True)
    with _BigCopies(batch * m.d_inner * L // 2) as spy:
        m(hidden).sum().backward()
    assert spy.seen == []
