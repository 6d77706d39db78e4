"""The Mamba backbone: config, mixer block, residual stack and the recurrent inference cache.

Follows ``mamba_ssm`` (``Mamba`` simple block, ``MixerModel``) in structure, parameter names and
initialisation, so its users find what they expect. Every kernel call goes through
``longseq.kernels``, which picks the fused Triton kernels on CUDA and pure PyTorch elsewhere.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kernels import causal_conv1d, causal_conv1d_update, rms_norm, selective_scan, selective_state_update
from .projections import channels_to_channels, channels_to_rows, rows_to_channels

__all__ = ["MambaConfig", "Mamba", "Block", "MambaBackbone", "InferenceCache"]


@dataclass
class MambaConfig:
    """Hyper-parameters of a Mamba model (``mamba_ssm`` defaults).

    ``d_inner = expand * d_model``; ``dt_rank="auto"`` means ``ceil(d_model / 16)``. The vocabulary
    is padded up to a multiple of ``pad_vocab_size_multiple`` for the embedding and head.
    ``bidirectional=True`` runs a second mixer over the reversed sequence and adds the two
    outputs (for classification; such a model has no recurrent ``step``).
    """

    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    rms_norm: bool = True
    residual_in_fp32: bool = True
    fused_add_norm: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    bidirectional: bool = False

    def __post_init__(self):
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "pad_vocab_size_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MambaConfig.{name} must be a positive integer; got {value!r}")
        if self.dt_rank != "auto" and (not isinstance(self.dt_rank, int) or self.dt_rank < 1):
            raise ValueError(f"MambaConfig.dt_rank must be 'auto' or a positive integer; got {self.dt_rank!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"MambaConfig needs 0 < dt_min <= dt_max; got {self.dt_min}, {self.dt_max}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def dt_rank_value(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MambaConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown MambaConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)


@dataclass
class LayerCache:
    """Recurrent state of one mixer: the last d_conv-1 conv inputs and the SSM state (float32)."""

    conv_state: torch.Tensor  # (batch, d_inner, d_conv - 1)
    ssm_state: torch.Tensor   # (batch, d_inner, d_state), float32


@dataclass
class InferenceCache:
    """Per-layer recurrent state, filled by a forward pass or advanced one token at a time by ``step``."""

    layers: list[LayerCache] = field(default_factory=list)
    seqlen_offset: int = 0


def _weight_only(proj: nn.Module) -> bool:
    """Whether a projection is a bare nn.Linear (no hooks): then its weight defines it, and the mixer
    applies the weight in its own layout (projections.py). A wrapped or replaced one (a LoRA
    adapter, a quantised layer) or one with hooks is called as a module, as nn.Linear on transposed
    views, at the price of the layout copies."""
    return type(proj) is nn.Linear and not proj._forward_hooks and not proj._forward_pre_hooks


class Mamba(nn.Module):
    """The Mamba mixer: in_proj -> causal depthwise conv + SiLU -> selective scan (gated by z) -> out_proj."""

    def __init__(self, config: MambaConfig, layer_idx: int = 0):
        super().__init__()
        c = config
        self.d_model, self.d_state, self.d_conv = c.d_model, c.d_state, c.d_conv
        self.d_inner, self.dt_rank = c.d_inner, c.dt_rank_value
        self.layer_idx = layer_idx
        self.in_proj = nn.Linear(c.d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, c.d_conv, groups=self.d_inner,
                                padding=c.d_conv - 1, bias=True)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * c.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, c.d_model, bias=False)
        # S4D-real initialisation: A = -[1..d_state] for every channel, stored as log(-A).
        A = torch.arange(1, c.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self._A_cache: tuple | None = None
        self._init_dt(c)

    def _init_dt(self, c: MambaConfig) -> None:
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        # dt log-uniform in [dt_min, dt_max]; the bias is its inverse softplus, so softplus(bias) = dt.
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min))
        dt = dt.clamp(min=c.dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True

    def _A_for_decoding(self) -> torch.Tensor:
        """-exp(A_log) for the recurrent step, recomputed only when A_log changes.

        A decoding step at batch 1 is a few dozen tiny kernels and their number sets its time, so
        the two kernels of -exp(A_log) are not launched per token. The key holds A_log's version
        counter (it moves with every in-place update, e.g. an optimiser step) and storage. With
        gradients enabled A is computed afresh, so training through ``step`` still reaches A_log.
        """
        if torch.is_grad_enabled() or torch.compiler.is_compiling():   # compiled: fused into the step
            return -torch.exp(self.A_log.float())
        key = (self.A_log._version, self.A_log.data_ptr(), self.A_log.device)
        if self._A_cache is None or self._A_cache[0] != key:
            self._A_cache = (key, -torch.exp(self.A_log.detach().float()))
        return self._A_cache[1]

    def _ssm_inputs(self, x: torch.Tensor):
        """x: (batch, d_inner, L) after conv -> delta (batch, d_inner, L), B, C (batch, d_state, L),
        and the bias the scan adds to delta (None when delta has it already). (``step`` has its own,
        on rows.)

        B and C are views of the x-projection's output (time contiguous; the scan takes strides)."""
        if _weight_only(self.x_proj):
            x_dbl = channels_to_channels(x, self.x_proj.weight)  # (batch, dt_rank + 2*d_state, L)
        else:
            x_dbl = self.x_proj(x.transpose(1, 2)).transpose(1, 2).contiguous()
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
        if _weight_only(self.dt_proj):
            # the bias is added inside the scan (with softplus), in float32
            return channels_to_channels(dt, self.dt_proj.weight), B, C, self.dt_proj.bias.float()
        return self.dt_proj(dt.transpose(1, 2)).transpose(1, 2).contiguous(), B, C, None

    def forward(self, hidden: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """hidden (batch, L, d_model) -> (batch, L, d_model).

        With ``cache``, the conv and scan start from its state and the cache is updated to the
        state after the last position, so a long input can be processed in consecutive pieces.
        """
        # every tensor of the mixer is (batch, channels, L) with time contiguous; x and z are views
        # of one buffer (the kernels take strides), and no layout change copies (projections.py)
        if _weight_only(self.in_proj):
            x, z = rows_to_channels(hidden, self.in_proj.weight, parts=2)  # (batch, d_inner, L) each
        else:
            x, z = (t.contiguous() for t in self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1))
        weight = self.conv1d.weight.squeeze(1)
        conv_init = None if cache is None else cache.conv_state.to(x.dtype)
        # the conv output is read by the x-projection and by the scan; its backward adds their gradients
        x, u, conv_final = causal_conv1d(x, weight, self.conv1d.bias, activation="silu",
                                         initial_state=conv_init, return_final_state=True, readers=2)
        delta, B, C, delta_bias = self._ssm_inputs(x)
        A = -torch.exp(self.A_log.float())
        y, last = selective_scan(u, delta, A, B, C, self.D.float(), z=z,
                                 delta_bias=delta_bias, delta_softplus=True,
                                 return_last_state=True,
                                 initial_state=None if cache is None else cache.ssm_state)
        if cache is not None:
            cache.conv_state.copy_(conv_final.detach())
            cache.ssm_state.copy_(last.detach())
        if _weight_only(self.out_proj):
            return channels_to_rows(y, self.out_proj.weight)
        return self.out_proj(y.transpose(1, 2))

    def allocate_cache(self, batch: int, device=None, dtype=None) -> LayerCache:
        device = device or self.A_log.device
        dtype = dtype or self.in_proj.weight.dtype
        return LayerCache(torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
                          torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=torch.float32))

    def step(self, hidden: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """One token: hidden (batch, d_model) -> (batch, d_model); advances ``cache`` in place."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (batch, d_inner) each, strided views
        # At batch 1 a step is a few dozen tiny kernels and their number sets its time: the conv
        # step is one kernel that also advances the cached inputs in place (no copies).
        x = causal_conv1d_update(x, cache.conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                 activation="silu")
        # one token's tensors are rows (batch, features): the projections run as modules, and B and
        # C reach the kernel as strided views of the x-projection's row
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        if _weight_only(self.dt_proj):      # the bias is added inside the kernel (with softplus)
            delta, dt_bias = F.linear(dt, self.dt_proj.weight), self.dt_proj.bias.float()
        else:
            delta, dt_bias = self.dt_proj(dt), None
        y = selective_state_update(cache.ssm_state, x, delta, self._A_for_decoding(), B, C,
                                   self.D.float(), z=z, dt_bias=dt_bias, dt_softplus=True)
        return self.out_proj(y)


class BiMamba(nn.Module):
    """Two mixers: one over the sequence, one over its reverse; outputs added position-wise."""

    def __init__(self, config: MambaConfig, layer_idx: int = 0):
        super().__init__()
        self.fwd = Mamba(config, layer_idx)
        self.rev = Mamba(config, layer_idx)

    def forward(self, hidden: torch.Tensor, cache=None) -> torch.Tensor:
        if cache is not None:
            raise ValueError("a bidirectional model reads the whole sequence: it has no recurrent cache")
        return self.fwd(hidden) + self.rev(hidden.flip(1)).flip(1)


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale; the fused residual add lives in ``longseq.kernels.rms_norm``."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return rms_norm(x, self.weight, residual=residual, eps=self.eps, prenorm=prenorm,
                        residual_in_fp32=residual_in_fp32)


class LayerNorm(nn.LayerNorm):
    """LayerNorm with the same (x, residual, prenorm) interface as RMSNorm, for rms_norm=False."""

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        s = x if residual is None else x + residual
        s = s.float() if residual_in_fp32 else s
        y = super().forward(s.to(self.weight.dtype)).to(x.dtype)
        return (y, s) if prenorm else y


class Block(nn.Module):
    """Pre-norm residual block: residual <- hidden + residual; hidden <- mixer(norm(residual))."""

    def __init__(self, config: MambaConfig, layer_idx: int):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        norm_cls = RMSNorm if config.rms_norm else LayerNorm
        self.norm = norm_cls(config.d_model, eps=1e-5)
        self.mixer = (BiMamba if config.bidirectional else Mamba)(config, layer_idx)

    def forward(self, hidden, residual=None, cache: LayerCache | None = None):
        hidden, residual = self.norm(hidden, residual=residual, prenorm=True, residual_in_fp32=self.residual_in_fp32)
        return self.mixer(hidden, cache), residual

    def step(self, hidden, residual, cache: LayerCache):
        hidden, residual = self.norm(hidden, residual=residual, prenorm=True, residual_in_fp32=self.residual_in_fp32)
        return self.mixer.step(hidden, cache), residual


def _init_weights(module: nn.Module, n_layer: int) -> None:
    """mamba_ssm's initialisation: zero biases (except dt_proj), N(0, 0.02) embeddings, and
    out_proj scaled by 1/sqrt(n_layer) (GPT-2's rescaling of residual-branch outputs)."""
    if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, "_no_reinit", False):
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    for name, p in module.named_parameters(recurse=False):
        if name == "weight" and isinstance(module, nn.Linear) and getattr(module, "_is_out_proj", False):
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            with torch.no_grad():
                p /= math.sqrt(n_layer)


class MambaBackbone(nn.Module):
    """Embedding, ``n_layer`` residual Mamba blocks and a final norm: input_ids -> hidden states."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = (RMSNorm if config.rms_norm else LayerNorm)(config.d_model, eps=1e-5)
        for m in self.modules():
            if isinstance(m, Mamba):
                m.out_proj._is_out_proj = True
        self.apply(lambda m: _init_weights(m, config.n_layer))

    def _check_ids(self, input_ids: torch.Tensor) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor; got "
                             f"{input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__}")

    def forward(self, input_ids: torch.Tensor, cache: InferenceCache | None = None) -> torch.Tensor:
        """input_ids (batch, L) -> hidden (batch, L, d_model).

        With ``cache`` (from ``allocate_inference_cache``), the pass continues from the cached
        state and leaves the state after the last token in it: prefill for generation, or
        chunked processing of inputs too long for one pass.
        """
        self._check_ids(input_ids)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seqlen); got {tuple(input_ids.shape)}")
        hidden, residual = self.embedding(input_ids), None
        for i, layer in enumerate(self.layers):
            hidden, residual = layer(hidden, residual, None if cache is None else cache.layers[i])
        if cache is not None:
            cache.seqlen_offset += input_ids.shape[1]
        return self.norm_f(hidden, residual=residual, prenorm=False)

    def allocate_inference_cache(self, batch: int, device=None, dtype=None) -> InferenceCache:
        """A zero state for ``batch`` sequences (conv inputs in the model dtype, SSM state float32)."""
        if self.config.bidirectional:
            raise ValueError("a bidirectional model reads the whole sequence: it has no recurrent cache")
        return InferenceCache([layer.mixer.allocate_cache(batch, device, dtype) for layer in self.layers])

    def step(self, token: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """One token per sequence: token (batch,) -> hidden (batch, d_model); advances ``cache``."""
        self._check_ids(token)
        if token.dim() != 1:
            raise ValueError(f"token must have shape (batch,); got {tuple(token.shape)}")
        hidden, residual = self.embedding(token), None
        for layer, layer_cache in zip(self.layers, cache.layers):
            hidden, residual = layer.step(hidden, residual, layer_cache)
        cache.seqlen_offset += 1
        return self.norm_f(hidden, residual=residual, prenorm=False)
