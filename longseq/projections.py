"""The Mamba mixer's linear maps, computed in the layouts its kernels read, with no transposing copy.

The residual stream is (batch, L, features), a row per token; the conv and scan kernels run on
(batch, channels, L), each channel's sequence contiguous. Written as ``nn.Linear`` on transposed
views, every change of layout costs PyTorch a copy: it folds the batch into the rows of one matrix
multiply, which needs the transposed view made contiguous, in the forward and again in the
backward. Those were five copies per layer, each slower than the scan's forward (PyTorch's generic
strided copy kernel: 11 ms for 512 channels at 2^20 tokens on an H100, half of a training step;
kernel notes v23). Here every product is a batched matrix multiply whose operands cuBLAS reads
transposed in place, and each output and gradient is allocated in the layout its consumer wants.

Mixed precision follows ``torch.autocast`` (the product runs in its dtype, as ``nn.Linear`` would).
"""
from __future__ import annotations

import torch

__all__ = ["rows_to_channels", "channels_to_channels", "channels_to_rows"]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    kind = x.device.type
    if torch.is_autocast_enabled(kind) and x.is_floating_point():
        return torch.get_autocast_dtype(kind)
    return x.dtype


def _bmm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """torch.bmm with a 2-D weight on either side broadcast over the other's batch (a stride-0 view);
    at batch 1 one torch.mm (cuBLAS picks its kernel for a plain product with less host time).
    With ``out``, adds the product to it in place, in the multiply itself (beta = 1)."""
    if (a.shape[0] if a.dim() == 3 else b.shape[0]) == 1:
        a, b = a[0] if a.dim() == 3 else a, b[0] if b.dim() == 3 else b
        return torch.mm(a, b).unsqueeze(0) if out is None else out[0].addmm_(a, b).unsqueeze(0)
    if a.dim() == 2:
        a = a.expand(b.shape[0], *a.shape)
    if b.dim() == 2:
        b = b.expand(a.shape[0], *b.shape)
    return torch.bmm(a, b) if out is None else out.baddbmm_(a, b)


class _ChannelLinear(torch.autograd.Function):
    """y = W @ X per batch, X (batch, k, L) the input seen channels-first: the input itself, or with
    ``rows_in`` the transpose of a (batch, L, k) input. The output is (batch, n, L), or (batch, L, n)
    with ``rows_out``; contiguous either way, as is the input's gradient in the input's layout. With
    ``parts`` > 1 (channels-first output only) the output comes as that many channel blocks, views of
    one buffer, and their gradients are taken block by block: no concatenation in the backward."""

    @staticmethod
    def forward(ctx, x, weight, rows_in: bool, rows_out: bool, parts: int):
        dtype = _compute_dtype(x)
        x, w = x.to(dtype), weight.to(dtype)
        xc = x.mT if rows_in else x                                   # (batch, k, L), a view
        out = _bmm(xc.mT, w.t()) if rows_out else _bmm(w, xc)
        ctx.save_for_backward(x, w)
        ctx.rows = (rows_in, rows_out)
        return out.chunk(parts, dim=1) if parts > 1 else out

    @staticmethod
    def backward(ctx, *grads):
        x, w = ctx.saved_tensors
        rows_in, rows_out = ctx.rows
        xc = x.mT if rows_in else x
        # (autograd materialises the gradient of a part that reached no loss as zeros: none is None)
        dx = None
        dw = torch.empty_like(w) if ctx.needs_input_grad[1] else None
        for i, (grad, wp) in enumerate(zip(grads, w.chunk(len(grads), dim=0))):   # each part's weight rows
            grad = grad.to(w.dtype)
            gc = grad.mT if rows_out else grad                        # (batch, n_p, L), a view
            if ctx.needs_input_grad[0]:
                a, b = (gc.mT, wp) if rows_in else (wp.t(), gc)
                dx = _bmm(a, b, out=dx)                               # the parts' sum in the GEMM
            if dw is not None:
                dw.chunk(len(grads), dim=0)[i].copy_((gc[0] @ xc[0].mT) if gc.shape[0] == 1 else _bmm(gc, xc.mT).sum(0))
        return dx, dw, None, None, None


def _check(name: str, x, weight, k_dim: int):
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"{name}: x must be a 3-D tensor; got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != x.shape[k_dim]:
        raise ValueError(f"{name}: weight must be (out_features, {x.shape[k_dim]}); got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")


def rows_to_channels(x: torch.Tensor, weight: torch.Tensor, parts: int = 1):
    """(batch, L, k) @ weight.T, returned as (batch, n, L) contiguous: the in-projection. With
    ``parts`` > 1, a tuple of that many channel blocks (the mixer's x and z), views of one buffer,
    whose gradients the backward takes separately (no concatenation of them)."""
    _check("rows_to_channels", x, weight, 2)
    if parts < 1 or weight.shape[0] % parts:
        raise ValueError(f"rows_to_channels: parts must divide the {weight.shape[0]} output channels; got {parts}")
    return _ChannelLinear.apply(x, weight, True, False, parts)


def channels_to_channels(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """weight @ x for x (batch, k, L) (any strides with one of the last two 1): (batch, n, L)
    contiguous. The x- and dt-projections of the scan's inputs."""
    _check("channels_to_channels", x, weight, 1)
    return _ChannelLinear.apply(x, weight, False, False, 1)


def channels_to_rows(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (batch, k, L) projected per token: (batch, L, n) contiguous, the out-projection."""
    _check("channels_to_rows", x, weight, 1)
    return _ChannelLinear.apply(x, weight, False, True, 1)
