"""causal_conv1d_update (one decoding step of the causal conv, in place on the cached inputs):
the PyTorch path and the Triton kernel (CPU interpreter, or the GPU) against a float64 recurrence
written here, and against the parallel conv run one input at a time."""
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

from longseq.kernels import causal_conv1d_ref, causal_conv1d_update, causal_conv1d_update_ref

HAS_TRITON = importlib.util.find_spec("triton") is not None
TRITON_HERE = HAS_TRITON and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def expected(xs, state0, weight, bias, silu):
    """float64 loop: y_t = act(b + sum_k w[k] window_t[k]), window = last W inputs incl. x_t."""
    W = weight.shape[1]
    window = state0.double().clone()
    ys = []
    for x in xs:
        full = torch.cat([window, x.double().unsqueeze(-1)], -1)  # (batch, dim, W)
        y = (full * weight.double()).sum(-1) + (0 if bias is None else bias.double())
        ys.append(F.silu(y) if silu else y)
        window = full[..., 1:] if W > 1 else full[..., :0]
    return ys, window


def run(fn, xs, state, weight, bias, silu):
    return [fn(x, state, weight, bias, "silu" if silu else None) for x in xs]


backends = [pytest.param("reference", id="reference"),
            pytest.param("triton", id="triton", marks=pytest.mark.skipif(not TRITON_HERE, reason="needs triton"))]


@pytest.mark.parametrize("backend", backends)
@pytest.mark.parametrize("batch,dim,width", [(1, 1, 4), (3, 5, 4), (2, 40, 4), (1, 7, 1), (2, 6, 2), (1, 3, 3)])
@pytest.mark.parametrize("bias,silu", [(True, True), (False, False)])
def test_update_matches_float64_recurrence(backend, batch, dim, width, bias, silu):
    g = torch.Generator().manual_seed(batch * 100 + dim * 10 + width)
    steps = 6
    # x as a strided view (every other column of a wider tensor), as Mamba.step passes it
    xz = torch.randn(steps, batch, 2 * dim, generator=g)
    xs = [xz[t, :, :dim] for t in range(steps)]
    weight = torch.randn(dim, width, generator=g)
    b = torch.randn(dim, generator=g) if bias else None
    state0 = torch.randn(batch, dim, width - 1, generator=g)
    want, want_state = expected(xs, state0, weight, b, silu)
    state = state0.clone().to(DEV)
    dev = lambda t: None if t is None else t.to(DEV)
    fn = causal_conv1d_update_ref if backend == "reference" else (
        lambda *a: causal_conv1d_update(*a, backend="triton"))
    got = run(fn, [x.to(DEV) for x in xs], state, dev(weight), dev(b), silu)
    for y, w in zip(got, want):
        assert y.shape == (batch, dim) and y.dtype == torch.float32
        torch.testing.assert_close(y.double().cpu(), w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.double().cpu(), want_state, rtol=0, atol=0)   # a pure shift: exact


@pytest.mark.parametrize("backend", backends)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_steps_equal_the_parallel_conv(backend, dtype):
    """Feeding a sequence one input at a time gives the parallel conv's outputs and final state."""
    g = torch.Generator().manual_seed(3)
    batch, dim, width, L = 2, 9, 4, 11
    x = torch.randn(batch, dim, L, generator=g).to(dtype)
    weight, bias = torch.randn(dim, width, generator=g), torch.randn(dim, generator=g)
    init = torch.randn(batch, dim, width - 1, generator=g).to(dtype)
    y_par, final = causal_conv1d_ref(x.float(), weight, bias, "silu", init.float(), return_final_state=True)
    state = init.clone().to(DEV)
    ys = [causal_conv1d_update(x[..., t].to(DEV), state, weight.to(DEV), bias.to(DEV), "silu", backend=backend)
          for t in range(L)]
    y_step = torch.stack(ys, -1).float().cpu()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(y_step, y_par, **tol)
    torch.testing.assert_close(state.cpu(), final.to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("backend", backends)
def test_bad_arguments_name_the_argument(backend):
    x, state, w = torch.randn(2, 5), torch.zeros(2, 5, 3), torch.randn(5, 4)
    call = lambda *a, **k: causal_conv1d_update(*a, backend=backend, **k)
    with pytest.raises(ValueError, match="'x'"):
        call(torch.randn(2, 5, 1), state, w)
    with pytest.raises(ValueError, match="'weight'"):
        call(x, state, torch.randn(6, 4))
    with pytest.raises(ValueError, match="'conv_state'"):
        call(x, torch.zeros(2, 5, 4), w)
    with pytest.raises(ValueError, match="'bias'"):
        call(x, state, w, torch.randn(4))
    with pytest.raises(ValueError, match="'activation'"):
        call(x, state, w, None, "relu")
