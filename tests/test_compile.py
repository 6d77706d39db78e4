"""torch.compile with the fused kernels: the custom operators of longseq.kernels.custom_ops.

On the CPU the Triton kernels run in the interpreter (TRITON_INTERPRET=1, set by conftest), and
``backend="aot_eager"`` traces with Dynamo and AOTAutograd as inductor would, without compiling C++.
``fullgraph=True`` makes any graph break an error. The GPU tests (inductor) are
tests/test_generation.py::test_compiled_decoding_step_on_cuda and
tests/test_gpu_kernels.py::test_compiled_training_step_on_cuda."""
import importlib.util
import os

import pytest
import torch

from longseq.kernels import custom_ops

INTERPRETED = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or importlib.util.find_spec("triton") is None,
    reason="needs triton, run by the interpreter")
OPS = torch.ops.longseq


def _rand(*shape, seed=[0]):
    seed[0] += 1
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed[0]))


def _grad(*ts):
    return [t.requires_grad_(True) for t in ts]


@INTERPRETED
def test_fake_states_shape_follows_the_kernels_save_stride():
    from longseq.kernels import triton_scan_op
    assert custom_ops.SAVE_CHUNK == triton_scan_op.SAVE_CHUNK


@INTERPRETED
@pytest.mark.parametrize("grouped,with_z,save", [(False, True, True), (True, False, True), (False, True, False)],
                         ids=["z", "grouped-no-z", "inference"])
def test_scan_operators_pass_opcheck(grouped, with_z, save):
    """Schema, fake shapes and strides against the real outputs, the autograd registration, and the
    forward and backward traced by AOTAutograd with dynamic shapes (torch.library.opcheck)."""
    b, d, L, n = 2, 5, 17, 3
    u, dl, D, bias, init = _grad(_rand(b, d, L), _rand(b, d, L), _rand(d), _rand(d), _rand(b, d, n))
    A = (-torch.rand(d, n)).requires_grad_(True)
    bc = (b, 1, n, L) if grouped else (b, n, L)
    B, C = _grad(_rand(*bc), _rand(*bc))
    z = _rand(b, d, L).requires_grad_(True) if with_z else None
    if not save:       # an inference call: no gradient is asked of it
        u, dl, A, B, C, D, z, bias, init = (t if t is None else t.detach() for t in (u, dl, A, B, C, D, z, bias, init))
    torch.library.opcheck(OPS.selective_scan_fwd.default, (u, dl, A, B, C, D, z, bias, True, init, save))


@INTERPRETED
@pytest.mark.parametrize("with_init,bias", [(True, True), (False, False)])
def test_conv_operators_pass_opcheck(with_init, bias):
    b, d, L, W = 2, 5, 9, 4
    x, w = _grad(_rand(b, d, L), _rand(d, W))
    bb = _rand(d).requires_grad_(True) if bias else None
    init = _rand(b, d, W - 1).requires_grad_(True) if with_init else None
    torch.library.opcheck(OPS.causal_conv1d_fwd.default, (x, w, bb, init, True))


@INTERPRETED
@pytest.mark.parametrize("residual,prenorm,fp32", [(True, True, True), (False, False, False), (True, False, False)])
def test_rms_norm_operators_pass_opcheck(residual, prenorm, fp32):
    x, w = _grad(_rand(2, 3, 40), _rand(40))
    res = _rand(2, 3, 40).requires_grad_(True) if residual else None
    torch.library.opcheck(OPS.rms_norm_fwd.default, (x, w, res, 1e-5, prenorm, fp32))


@INTERPRETED
def test_decoding_step_operators_pass_opcheck():
    b, d, n, W = 2, 6, 4, 4
    conv_state, x, w, bias = _rand(b, d, W - 1), _rand(b, d), _rand(d, W), _rand(d)
    torch.library.opcheck(OPS.causal_conv1d_update.default, (x, conv_state, w, bias, True))
    state, dt, z = _rand(b, d, n), _rand(b, d), _rand(b, d)
    A, B, C, D = -torch.rand(d, n), _rand(b, n), _rand(b, n), _rand(d)
    torch.library.opcheck(OPS.selective_state_update.default, (state, x, dt, A, B, C, D, z, _rand(d), True))


def _lm(monkeypatch):
    from longseq.heads import MambaLM
    from longseq.mamba import MambaConfig
    monkeypatch.setenv("LONGSEQ_SCAN_BACKEND", "triton")      # the fused kernels on CPU tensors
    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=6))


@INTERPRETED
def test_compiled_training_step_has_no_graph_break_and_matches_eager(monkeypatch):
    model = _lm(monkeypatch)
    ids = torch.randint(0, 6, (2, 41), generator=torch.Generator().manual_seed(1))

    def loss_of(fn):
        model.zero_grad()
        logits = fn(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 6), ids[:, 1:].reshape(-1))
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}

    eager_loss, eager_grads = loss_of(model)
    torch._dynamo.reset()
    compiled_loss, compiled_grads = loss_of(torch.compile(model, backend="aot_eager", fullgraph=True))
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for k in eager_grads:
        torch.testing.assert_close(compiled_grads[k], eager_grads[k], rtol=1e-4, atol=1e-6, msg=k)


@INTERPRETED
def test_compiled_decoding_step_has_no_graph_break_and_matches_eager(monkeypatch):
    """The step's kernels advance the cache in place: the compiled step must leave the same states."""
    model = _lm(monkeypatch).eval()
    from longseq.mamba import InferenceCache
    hidden_ids = torch.tensor([3, 1])
    caches = [model.allocate_inference_cache(2) for _ in range(2)]
    for first, second in zip(caches[0].layers, caches[1].layers):     # the same non-trivial start
        for a, b in ((first.conv_state, second.conv_state), (first.ssm_state, second.ssm_state)):
            a.copy_(_rand(*a.shape))
            b.copy_(a)
    torch._dynamo.reset()
    # as generation._compiled_step: the compiled function sees the per-layer states only
    step = torch.compile(lambda ids, layers: model.step(ids, InferenceCache(layers)), backend="aot_eager",
                         fullgraph=True)
    with torch.no_grad():
        want = model.step(hidden_ids, caches[0])
        got = step(hidden_ids, caches[1].layers)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(caches[0].layers, caches[1].layers):
        torch.testing.assert_close(b.conv_state, a.conv_state, rtol=0, atol=0)
        torch.testing.assert_close(b.ssm_state, a.ssm_state, rtol=1e-6, atol=1e-7)


def test_compiled_model_on_cpu_runs_the_numba_scan_eagerly():
    """The CPU scan (numba) cannot be traced: torch.compile runs it eagerly (one graph break) and
    the compiled model's loss and gradients are eager's."""
    from longseq.heads import MambaLM
    from longseq.mamba import MambaConfig
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=6))
    ids = torch.randint(0, 6, (1, 33), generator=torch.Generator().manual_seed(2))
    results = []
    for fn in (model, torch.compile(model, backend="aot_eager")):
        model.zero_grad()
        loss = fn(ids).logsumexp(-1).mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0])
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b)
