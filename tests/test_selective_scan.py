"""selective_scan (on CPU: the compiled numba path), selective_scan_chunked (the pure-PyTorch path
for non-CPU devices) and selective_scan_ref against an independent float64 recurrence.
More tests of the compiled path: tests/test_cpu_scan.py."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from longseq.kernels import selective_scan, selective_scan_chunked, selective_scan_ref


def recurrence64(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """The DESIGN §2 definition, written out element by element in float64 (independent of the package)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, dim, L = u.shape
    N = A.shape[1]
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    per = dim // B.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = torch.log1p(torch.exp(delta))
    group_of = torch.arange(dim) // per  # channel d reads B/C of group d // per
    Bd, Cd = B.double()[:, group_of], C.double()[:, group_of]  # (batch, dim, N, L)
    h = torch.zeros(batch, dim, N, dtype=torch.float64) if initial_state is None else initial_state.double().clone()
    y = torch.zeros(batch, dim, L, dtype=torch.float64)
    for t in range(L):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * Bd[..., t] * u[:, :, t, None]
        y[:, :, t] = (h * Cd[..., t]).sum(-1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        z = z.double()
        y = y * z * torch.sigmoid(z)
    return y, h


def make_inputs(batch, dim, dstate, seqlen, groups, options, dtype=torch.float32, seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    softplus = "softplus" in options
    delta = r(batch, dim, seqlen) * 0.5 - 1.0 if softplus else torch.rand(batch, dim, seqlen, generator=g, dtype=torch.float64) * 0.5
    bshape = (batch, dstate, seqlen) if groups is None else (batch, groups, dstate, seqlen)
    kw = dict(
        u=r(batch, dim, seqlen), delta=delta, A=-torch.exp(r(dim, dstate) * 0.5),
        B=r(*bshape), C=r(*bshape),
        D=r(dim) if "D" in options else None,
        z=r(batch, dim, seqlen) if "z" in options else None,
        delta_bias=r(dim) * 0.5 if "delta_bias" in options else None,
        delta_softplus=softplus,
        initial_state=r(batch, dim, dstate) if "initial_state" in options else None,
    )
    cast = {k: (v.to(dtype) if isinstance(v, torch.Tensor) and k != "A" else v) for k, v in kw.items()}
    cast["A"] = kw["A"].float() if dtype != torch.float64 else kw["A"]
    return cast


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()


ALL = ("D", "z", "delta_bias", "softplus", "initial_state")
SHAPES = list(itertools.product([1, 3], [1, 5, 64], [1, 16], [1, 7, 1000]))


@pytest.mark.parametrize("batch,dim,dstate,seqlen", SHAPES)
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("options", [(), ALL])
def test_scan_matches_float64_recurrence(batch, dim, dstate, seqlen, grouped, options):
    groups = ({1: 1, 5: 5, 64: 4}[dim]) if grouped else None
    kw = make_inputs(batch, dim, dstate, seqlen, groups, options)
    y_true, h_true = recurrence64(**kw)
    for fn in (selective_scan, selective_scan_chunked, selective_scan_ref):
        y, h = fn(**kw, return_last_state=True)
        assert y.dtype == torch.float32 and h.dtype == torch.float32
        assert y.shape == (batch, dim, seqlen) and h.shape == (batch, dim, dstate)
        assert rel(y, y_true) < 1e-5, fn.__name__
        assert rel(h, h_true) < 1e-5, fn.__name__


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_accumulate_in_float32(dtype):
    kw = make_inputs(2, 8, 4, 300, None, ALL, dtype=dtype)
    y_true, _ = recurrence64(**kw)
    y, h = selective_scan(**kw, return_last_state=True)
    assert y.dtype == dtype and h.dtype == torch.float32
    assert rel(y, y_true) < 1e-2


def test_large_decays_stay_finite():
    # |delta * A| summed over a chunk far beyond exp's range: the chunk must be split, not overflow.
    kw = make_inputs(2, 4, 3, 500, None, ("softplus", "delta_bias"))
    kw["delta"] = kw["delta"] + 5.0
    kw["A"] = kw["A"] * 40
    y_true, h_true = recurrence64(**kw)
    for fn in (selective_scan, selective_scan_chunked):
        y, h = fn(**kw, return_last_state=True)
        assert torch.isfinite(y).all()
        assert rel(y, y_true) < 1e-5 and rel(h, h_true) < 1e-5, fn.__name__


@pytest.mark.parametrize("fn", [selective_scan, selective_scan_ref])
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("split", [1, 37, 64, 199])
def test_two_pieces_equal_whole(fn, grouped, split):
    kw = make_inputs(2, 6, 5, 200, 3 if grouped else None, ALL)
    y_whole, h_whole = fn(**kw, return_last_state=True)
    first = {k: (v[..., :split] if k in ("u", "delta", "z", "B", "C") and v is not None else v) for k, v in kw.items()}
    second = {k: (v[..., split:] if k in ("u", "delta", "z", "B", "C") and v is not None else v) for k, v in kw.items()}
    y1, h1 = fn(**first, return_last_state=True)
    second["initial_state"] = h1
    y2, h2 = fn(**second, return_last_state=True)
    assert rel(torch.cat([y1, y2], -1), y_whole) < 1e-6
    assert rel(h2, h_whole) < 1e-6


GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("impl", ["chunked", "ref"])
def test_gradcheck_float64(grouped, impl):
    kw = make_inputs(2, 4, 3, 11, 2 if grouped else None, ALL, dtype=torch.float64, seed=0)
    names = [n for n in GRAD_NAMES if kw[n] is not None]
    base = {k: v for k, v in kw.items() if k not in names}

    def f(*tensors):
        args = dict(zip(names, tensors), **base)
        if impl == "chunked":
            return selective_scan_chunked(**args, return_last_state=True, chunk_size=4)
        return selective_scan_ref(**args, return_last_state=True)

    inputs = tuple(kw[n].detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_default_cpu_gradients_equal_reference_gradients_float32():
    kw = make_inputs(2, 16, 8, 300, None, ALL, seed=1)
    names = [n for n in GRAD_NAMES if kw[n] is not None]
    grads = []
    for fn in (selective_scan, selective_scan_ref):
        leaves = {n: kw[n].detach().clone().requires_grad_(True) for n in names}
        y, h = fn(**{**kw, **leaves}, return_last_state=True)
        (y.square().sum() + h.sum()).backward()
        grads.append({n: leaves[n].grad for n in names})
    for n in names:
        assert rel(grads[0][n], grads[1][n]) < 1e-4, n


def good_args():
    return make_inputs(2, 4, 3, 10, None, ALL, seed=2)


@pytest.mark.parametrize("name,bad,needle", [
    ("u", torch.zeros(2, 4), "'u'"),
    ("u", torch.zeros(2, 4, 10, dtype=torch.int64), "'u'"),
    ("delta", torch.zeros(2, 4, 9), "'delta'"),
    ("A", torch.zeros(5, 3), "'A'"),
    ("A", torch.zeros(4, 3, dtype=torch.complex64), "'A'"),
    ("B", torch.zeros(2, 3, 11), "'B'"),
    ("B", torch.zeros(2, 3, 3, 10), "'B'"),
    ("C", torch.zeros(2, 2, 10), "'C'"),
    ("D", torch.zeros(5), "'D'"),
    ("z", torch.zeros(2, 4, 11), "'z'"),
    ("delta_bias", torch.zeros(4, 1), "'delta_bias'"),
    ("initial_state", torch.zeros(2, 4, 4), "'initial_state'"),
    ("delta", torch.zeros(2, 4, 10, device="meta"), "device"),
])
@pytest.mark.parametrize("fn", [selective_scan, selective_scan_ref])
def test_bad_arguments_name_the_argument(fn, name, bad, needle):
    kw = good_args()
    kw[name] = bad
    with pytest.raises(ValueError, match=needle):
        fn(**kw)


def test_unknown_backend_and_env_override(monkeypatch):
    kw = good_args()
    with pytest.raises(ValueError, match="backend"):
        selective_scan(**kw, backend="cuda-magic")
    monkeypatch.setenv("LONGSEQ_SCAN_BACKEND", "reference")
    y = selective_scan(**kw)
    assert rel(y, recurrence64(**kw)[0]) < 1e-5


@pytest.mark.parametrize("limit", [0.5, 3.0])
def test_gradcheck_through_split_chunks(monkeypatch, limit):
    # A small exp limit forces the chunked path to split chunks, down to single steps.
    from longseq.kernels import reference
    monkeypatch.setattr(reference, "_EXP_LIMIT", limit)
    kw = make_inputs(2, 4, 3, 13, None, ALL, dtype=torch.float64, seed=3)
    names = [n for n in GRAD_NAMES if kw[n] is not None]
    base = {k: v for k, v in kw.items() if k not in names}

    def f(*tensors):
        return selective_scan_chunked(**dict(zip(names, tensors), **base), return_last_state=True, chunk_size=8)

    y_true, h_true = recurrence64(**kw)
    y, h = f(*(kw[n] for n in names))
    assert rel(y, y_true) < 1e-12 and rel(h, h_true) < 1e-12
    inputs = tuple(kw[n].detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
