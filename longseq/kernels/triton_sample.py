"""Plain sampling as one Triton kernel: the last few kernels of a decoding step fused.

For each row: token = argmax(logits / temperature + gumbel) (an exact draw from
softmax(logits / temperature)), replaced by ``forced`` where ``force`` is set (prompt tokens that
are teacher-forced), written to ``out``. In PyTorch this is a division, an add, an argmax and a
``where``: four launches per token, which at batch 1 cost more than the arithmetic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_launch import launch
from .triton_tune import launch_options


@triton.jit
def gumbel_argmax_kernel(logits_ptr, noise_ptr, force_ptr, forced_ptr, out_ptr, vocab, s_lb, s_nb,
                         temperature, VP: tl.constexpr, HAS_T: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, VP)
    mask = offs < vocab
    x = tl.load(logits_ptr + row * s_lb + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_T:
        x = tl.math.div_rn(x, temperature)   # IEEE division, as torch's logits / temperature
    x = x + tl.load(noise_ptr + row * s_nb + offs, mask=mask, other=0.0)
    x = tl.where(mask, x, float("-inf"))
    token = tl.argmax(x, axis=0, tie_break_left=True).to(tl.int64)  # first maximum, as torch.argmax
    forced = tl.load(forced_ptr + row)
    token = tl.where(tl.load(force_ptr + row) != 0, forced, token)
    tl.store(out_ptr + row, token)


def gumbel_argmax(logits: torch.Tensor, noise: torch.Tensor, temperature: float, force: torch.Tensor,
                  forced: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[i] = forced[i] if force[i] else argmax(logits[i] / temperature + noise[i]).

    logits (batch, vocab) any float dtype, last dim contiguous; noise (batch, vocab) float32;
    force (batch,) bool; forced, out (batch,) int64 contiguous. Returns ``out``.
    """
    batch, vocab = logits.shape
    if logits.stride(-1) != 1 or noise.stride(-1) != 1 or noise.dtype != torch.float32:
        raise ValueError("gumbel_argmax: logits and noise need a contiguous last dim; noise must be float32")
    if not (force.is_contiguous() and forced.is_contiguous() and out.is_contiguous()):
        raise ValueError("gumbel_argmax: force, forced and out must be contiguous")
    launch(gumbel_argmax_kernel, (batch,),
        logits, noise, force, forced, out, vocab, logits.stride(0), noise.stride(0), float(temperature),
        VP=triton.next_power_of_2(max(vocab, 2)), HAS_T=temperature != 1, **launch_options(4))
    return out
