"""Argument checks shared by every selective-scan backend.

Each check raises ``ValueError`` naming the argument, the shape it must have and the shape it
has, so that a user who swaps ``mamba_ssm.selective_scan_fn`` for ours sees what went wrong.
"""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def gradient_wanted(*tensors) -> bool:
    """Whether a backward can follow: grad mode on and some tensor requiring grad. Under
    ``torch.no_grad()`` a model's parameters still require grad (an autograd Function's
    ``needs_input_grad`` says so), but nothing will be differentiated; the scan backends then run
    their inference forward, without the states saved for a backward."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _fail(fn: str, name: str, expected: str, got) -> None:
    raise ValueError(f"{fn}: argument '{name}' must be {expected}; got {got}")


def check_tensor(fn: str, name: str, t, shape: tuple, device, dtypes=FLOAT_DTYPES, shape_doc: str = "") -> None:
    """Check that ``t`` is a tensor of ``shape`` on ``device`` with a dtype in ``dtypes``."""
    if not isinstance(t, torch.Tensor):
        _fail(fn, name, "a torch.Tensor", type(t).__name__)
    # (the messages are built only on failure: these checks run on every kernel call)
    if t.shape != tuple(shape):
        doc = f"{shape_doc} = {tuple(shape)}" if shape_doc else f"{tuple(shape)}"
        _fail(fn, name, f"of shape {doc}", f"shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        _fail(fn, name, f"one of dtypes {[str(d) for d in dtypes]}", t.dtype)
    if t.device != device:
        _fail(fn, name, f"on the same device as 'u' ({device})", f"device {t.device}")


def check_selective_scan_args(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
                              fn: str = "selective_scan") -> tuple[int, int, int, int, int]:
    """Validate selective-scan inputs; return (batch, dim, seqlen, dstate, groups)."""
    if not isinstance(u, torch.Tensor):
        _fail(fn, "u", "a torch.Tensor", type(u).__name__)
    if u.dim() != 3:
        _fail(fn, "u", "3-D (batch, dim, seqlen)", f"shape {tuple(u.shape)}")
    if u.dtype not in FLOAT_DTYPES:
        _fail(fn, "u", f"one of dtypes {[str(d) for d in FLOAT_DTYPES]}", u.dtype)
    batch, dim, seqlen = u.shape
    if seqlen < 1:
        _fail(fn, "u", "a sequence of length >= 1", f"seqlen {seqlen}")
    dev = u.device
    check_tensor(fn, "delta", delta, (batch, dim, seqlen), dev, shape_doc="(batch, dim, seqlen)")
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != dim:
        got = f"shape {tuple(A.shape)}" if isinstance(A, torch.Tensor) else type(A).__name__
        _fail(fn, "A", f"of shape (dim, dstate) with dim = {dim}", got)
    if A.is_complex():
        _fail(fn, "A", "real (complex A is not supported)", A.dtype)
    dstate = A.shape[1]
    check_tensor(fn, "A", A, (dim, dstate), dev, dtypes=(torch.float32, torch.float64), shape_doc="(dim, dstate)")
    if not isinstance(B, torch.Tensor) or B.dim() not in (3, 4):
        got = f"shape {tuple(B.shape)}" if isinstance(B, torch.Tensor) else type(B).__name__
        _fail(fn, "B", f"of shape (batch, dstate, seqlen) = {(batch, dstate, seqlen)} or (batch, groups, dstate, seqlen)", got)
    groups = 1 if B.dim() == 3 else B.shape[1]
    if groups < 1 or dim % groups:
        _fail(fn, "B", f"grouped with 'dim' ({dim}) divisible by groups", f"{groups} groups")
    for name, t in (("B", B), ("C", C)):
        if B.dim() == 3:
            check_tensor(fn, name, t, (batch, dstate, seqlen), dev, shape_doc="(batch, dstate, seqlen)")
        else:
            check_tensor(fn, name, t, (batch, groups, dstate, seqlen), dev,
                         shape_doc="(batch, groups, dstate, seqlen)")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            check_tensor(fn, name, t, (dim,), dev, shape_doc="(dim,)")
    if z is not None:
        check_tensor(fn, "z", z, (batch, dim, seqlen), dev, shape_doc="(batch, dim, seqlen)")
    if initial_state is not None:
        check_tensor(fn, "initial_state", initial_state, (batch, dim, dstate), dev,
                     shape_doc="(batch, dim, dstate)")
    return batch, dim, seqlen, dstate, groups


def check_conv_update_args(x, conv_state, weight, bias=None, activation=None,
                           fn: str = "causal_conv1d_update") -> tuple[int, int, int]:
    """Validate one decoding step of the causal conv; return (batch, dim, width)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        _fail(fn, "x", "2-D (batch, dim)", f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor)
              else type(x).__name__)
    batch, dim = x.shape
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != dim or weight.shape[1] < 1:
        _fail(fn, "weight", f"of shape (dim, width) with dim = {dim}",
              f"shape {tuple(weight.shape)}" if isinstance(weight, torch.Tensor) else type(weight).__name__)
    width = weight.shape[1]
    check_tensor(fn, "x", x, (batch, dim), x.device, shape_doc="(batch, dim)")
    check_tensor(fn, "weight", weight, (dim, width), x.device, shape_doc="(dim, width)")
    check_tensor(fn, "conv_state", conv_state, (batch, dim, width - 1), x.device,
                 shape_doc="(batch, dim, width - 1)")
    if bias is not None:
        check_tensor(fn, "bias", bias, (dim,), x.device, shape_doc="(dim,)")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"{fn}: argument 'activation' must be None, 'silu' or 'swish'; got {activation!r}")
    return batch, dim, width
