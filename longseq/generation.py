"""Sampling from a ``MambaLM`` on its recurrent step: prefill, then one token at a time.

The prompt is read by the parallel scan (``model(prompt, cache)`` leaves the recurrent state in
``cache``); every new token then costs one ``model.step`` (constant time and memory per token,
whatever the length so far). Sampling is graph-friendly: it draws categorical samples by the
Gumbel-max trick from uniform noise made in advance by a seeded ``torch.Generator``, so the same
seed gives the same tokens, and on CUDA a block of steps (model step + sampling) is captured once
as a CUDA graph and replayed, which removes the per-kernel launch cost that dominates small models.

Prompts of different lengths are handled without padding the state: the common part is
prefilled in parallel, and the rest of each longer prompt is fed through the step as forced tokens.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from .kernels import resolve_backend

__all__ = ["SamplingParams", "sample", "gumbel_", "generate", "naive_generate"]

PROGRESS_MIN_STEPS = 4096  # below this, a progress bar is only noise


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is drawn from the logits.

    ``temperature=0`` is greedy (argmax). ``top_k=0`` and ``top_p=1.0`` switch those filters off.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy); got {self.temperature!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off); got {self.top_k!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] (1 = off); got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def gumbel_(uniform: torch.Tensor) -> torch.Tensor:
    """Turn U(0, 1) noise into standard Gumbel noise, in place: -log(-log(u))."""
    tiny, eps = torch.finfo(torch.float32).tiny, torch.finfo(torch.float32).eps
    return uniform.clamp_(min=tiny, max=1 - eps).log_().neg_().log_().neg_()


def sample(logits: torch.Tensor, gumbel: torch.Tensor | None, params: SamplingParams,
           allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Draw one token per row of ``logits`` (batch, vocab) -> (batch,) int64.

    ``gumbel`` (batch, vocab) holds standard Gumbel noise (``gumbel_(torch.rand(...))``);
    argmax(logits/T + gumbel) is an exact sample of softmax(logits/T). ``allowed`` (vocab,) bool
    restricts the choice (e.g. to A C G T). Top-k keeps the k largest logits (ties at the k-th
    kept); top-p keeps the smallest set of most likely tokens whose probability reaches p.
    No host synchronisation, so it can be captured in a CUDA graph.
    """
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if params.greedy:
        return logits.argmax(-1)
    if params.temperature != 1:
        logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # probability mass of the strictly more likely tokens
        drop = (before >= params.top_p).scatter(-1, order, before >= params.top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return (logits + gumbel).argmax(-1)


def _compiled_step(model):
    """``model.step`` through torch.compile, which fuses the many small elementwise kernels of a step.

    The cache's Python-int position counter would be a guard that changes every call (one
    recompilation per token), so the compiled function sees the per-layer states only.
    """
    from .mamba import InferenceCache

    def step(token, layers):
        return model.step(token, InferenceCache(layers))

    compiled = torch.compile(step, dynamic=False)
    return lambda token, cache: compiled(token, cache.layers)


class _Decoder:
    """Runs ``block`` decoding steps at a time on static buffers; replays a CUDA graph when it can."""

    def __init__(self, model, cache, batch: int, block: int, vocab: int, params: SamplingParams,
                 allowed, device, cuda_graph: bool, compile: bool = False):
        self.model, self.cache, self.params, self.allowed, self.block = model, cache, params, allowed, block
        self.step_fn = _compiled_step(model) if compile else model.step
        # tokens[k] is step k's input and tokens[k + 1] its output, so no copy links the steps;
        # tokens[0] (``cur``) holds the last token of the previous block.
        self.tokens = torch.zeros(block + 1, batch, dtype=torch.long, device=device)
        self.cur, self.out = self.tokens[0], self.tokens[1:]
        self.noise = None if params.greedy else torch.empty(block, batch, vocab, device=device)
        self.forced = torch.zeros(block, batch, dtype=torch.long, device=device)
        self.force = torch.zeros(block, batch, dtype=torch.bool, device=device)
        # Plain sampling restricted to some tokens: put the restriction into the noise once per
        # block (-inf noise never wins the argmax) instead of masking the logits at every step.
        filtering = params.top_k or params.top_p < 1
        self.fold = allowed is not None and not params.greedy and not filtering
        # Plain sampling on CUDA: temperature, noise, argmax and forcing in one kernel.
        self.fused = (not params.greedy and not filtering and (allowed is None or self.fold)
                      and device.type == "cuda" and resolve_backend(None, self.tokens) == "triton")
        if self.fused:
            from .kernels.triton_sample import gumbel_argmax  # imports Triton: only when used
            self.gumbel_argmax = gumbel_argmax
        self.graph = self._capture() if cuda_graph else None

    def _steps(self, count: int | None = None):
        for k in range(self.block if count is None else count):
            logits = self.step_fn(self.tokens[k], self.cache)
            if self.fused:
                self.gumbel_argmax(logits, self.noise[k], self.params.temperature, self.force[k], self.forced[k],
                              out=self.tokens[k + 1])
            else:
                tok = sample(logits, None if self.noise is None else self.noise[k], self.params,
                             None if self.fold else self.allowed)
                torch.where(self.force[k], self.forced[k], tok, out=self.tokens[k + 1])
        if count is None:
            self.cur.copy_(self.tokens[self.block])

    def _capture(self):
        # Warm-up steps (Triton compilation, cuBLAS workspaces) must not advance the real state:
        # snapshot the cache and restore it afterwards. Every step of a block launches the same
        # kernels, so two warm-up steps do (not two whole blocks: at ~1 ms per eager step that
        # cost more than the graph saves on a short generation). Capturing executes nothing.
        saved = [(lc.conv_state.clone(), lc.ssm_state.clone()) for lc in self.cache.layers]
        cur, offset = self.cur.clone(), self.cache.seqlen_offset
        if self.noise is not None:
            self._fill_noise(None)
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._steps(count=2)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._steps()
        except Exception as e:  # capture is an optimisation: fall back to eager steps, loudly
            warnings.warn(f"CUDA graph capture of the decoding step failed ({type(e).__name__}: {e}); "
                          "decoding without graphs (slower)", RuntimeWarning, stacklevel=3)
            graph = None
        finally:
            for lc, (conv, ssm) in zip(self.cache.layers, saved):
                lc.conv_state.copy_(conv)
                lc.ssm_state.copy_(ssm)
            self.cur.copy_(cur)
            self.cache.seqlen_offset = offset
        return graph

    def _fill_noise(self, generator) -> None:
        gumbel_(self.noise.uniform_(generator=generator))
        if self.fold:
            self.noise.masked_fill_(~self.allowed, float("-inf"))

    def run(self, generator) -> torch.Tensor:
        """Decode one block; ``forced``/``force`` must be filled. Returns ``out`` (block, batch)."""
        if self.noise is not None:
            self._fill_noise(generator)
        if self.graph is not None:
            self.graph.replay()
            self.cache.seqlen_offset += self.block  # a replay does not run step's Python counter
        else:
            self._steps()
        return self.out


def _check_model(model) -> None:
    if not (hasattr(model, "step") and hasattr(model, "allocate_inference_cache")):
        raise TypeError(f"generate needs a causal language model with step() and allocate_inference_cache() "
                        f"(a longseq MambaLM); got {type(model).__name__}")


def _prompt_lengths(prompt_ids: torch.Tensor, prompt_lengths) -> torch.Tensor:
    if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dim() != 2 or prompt_ids.dtype != torch.long:
        raise ValueError("prompt_ids must be an int64 tensor of shape (batch, length); got "
                         + (f"{prompt_ids.dtype} {tuple(prompt_ids.shape)}" if isinstance(prompt_ids, torch.Tensor)
                            else type(prompt_ids).__name__))
    batch, width = prompt_ids.shape
    if batch < 1 or width < 1:
        raise ValueError(f"prompt_ids needs at least one sequence of at least one token; got shape {(batch, width)}")
    if prompt_lengths is None:
        return torch.full((batch,), width, dtype=torch.long)
    lengths = torch.as_tensor(prompt_lengths, dtype=torch.long).cpu()
    if lengths.shape != (batch,) or lengths.min() < 1 or lengths.max() > width:
        raise ValueError(f"prompt_lengths must hold {batch} lengths in [1, {width}]; got {lengths.tolist()}")
    return lengths


@torch.no_grad()
def generate(model, prompt_ids: torch.Tensor, n: int, *, prompt_lengths=None, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
             generator: torch.Generator | None = None, allowed_tokens=None,
             callback: Callable[[torch.Tensor], None] | None = None, progress: bool | None = None,
             cuda_graph: bool | None = None, block: int | None = None, compile: bool = False) -> torch.Tensor:
    """Continue each prompt by ``n`` tokens; returns the new tokens, (batch, n) int64 on the model's device.

    prompt_ids: (batch, length) int64, rows right-padded when ``prompt_lengths`` (batch,) is given.
    temperature / top_k / top_p: see ``SamplingParams`` (temperature 0 = greedy).
    seed or generator: the source of randomness (same seed, same device -> same tokens).
    allowed_tokens: ids that may be generated (others are never drawn), e.g. the four bases.
    callback: called with each new block of tokens (batch, k) as it is produced (streaming).
    progress: tqdm bar (None = only for long generations). cuda_graph: capture the decoding
    block as a CUDA graph (None = on CUDA). block: steps per graph replay / callback.
    compile: run the step through ``torch.compile``: inductor fuses the step's small PyTorch ops
    around the fused kernels (custom operators, no graph break). A few seconds of compilation; on an
    H100 the demo audio model's step was no faster than the default engine's (RTF 0.61 vs 0.57,
    docs/benchmarks/generate.md), so it is off by default.
    """
    _check_model(model)
    params = SamplingParams(float(temperature), top_k, float(top_p))
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n (tokens to generate) must be a positive integer; got {n!r}")
    lengths = _prompt_lengths(prompt_ids, prompt_lengths)
    param = next(model.parameters())
    device = param.device
    vocab = model.config.vocab_size
    prompt_ids = prompt_ids.to(device)
    if prompt_ids.min() < 0 or prompt_ids.max() >= vocab:
        raise ValueError(f"prompt ids must lie in [0, {vocab}); got range "
                         f"[{int(prompt_ids.min())}, {int(prompt_ids.max())}]")
    allowed = None
    if allowed_tokens is not None:
        allowed = torch.zeros(vocab, dtype=torch.bool, device=device)
        allowed[torch.as_tensor(list(allowed_tokens), dtype=torch.long, device=device)] = True
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
    use_graph = device.type == "cuda" if cuda_graph is None else bool(cuda_graph)
    if use_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs the model on a CUDA device; it is on {device}")
    batch = prompt_ids.shape[0]
    lmin, lmax = int(lengths.min()), int(lengths.max())
    total = lmax - lmin + n  # decoding steps: the longer prompts' tails are forced, then n sampled
    block = block or (32 if use_graph else 64)
    block = max(1, min(block, total))

    was_training = model.training
    model.eval()
    try:
        cache = model.allocate_inference_cache(batch, device=device, dtype=param.dtype)
        if lmin > 1:  # prefill by the parallel scan; the last common token goes through step
            model(prompt_ids[:, : lmin - 1], cache)
        seq = torch.zeros(batch, lmax + n, dtype=torch.long, device=device)
        seq[:, :lmax] = prompt_ids[:, :lmax]
        dec = _Decoder(model, cache, batch, block, vocab, params, allowed, device, use_graph, compile)
        dec.cur.copy_(prompt_ids[:, lmin - 1])
        positions = torch.arange(lmax + n, device=device)
        in_prompt = positions[None, :] < lengths.to(device)[:, None]  # (batch, lmax + n)
        pad = torch.zeros(batch, block, dtype=torch.long, device=device)
        seq_padded = torch.cat([seq, pad], 1)
        in_prompt = torch.cat([in_prompt, pad.bool()], 1)
        bar = tqdm(total=n * batch, unit="tok", desc="generating", leave=False,
                   disable=not (progress if progress is not None else n >= PROGRESS_MIN_STEPS))
        emitted = torch.zeros(batch, dtype=torch.long)  # new tokens handed to the callback so far
        for start in range(lmin, lmin + total, block):
            span = slice(start, start + block)
            dec.forced.copy_(seq_padded[:, span].t())
            dec.force.copy_(in_prompt[:, span].t())
            out = dec.run(generator)
            seq_padded[:, span] = torch.where(in_prompt[:, span], seq_padded[:, span], out.t())
            done = min(start + block, lmin + total) - start
            bar.update(int(((start + done - lengths).clamp(0, n) - (start - lengths).clamp(0, n)).sum()))
            if callback is not None:
                upto = (start + done - lengths).clamp(0, n)
                if bool((upto > emitted).any()):
                    # rows advance in step; rows with longer prompts start later, so hand over the
                    # tokens that every row has (the slowest row sets the pace).
                    lo, hi = int(emitted.min()), int(upto.min())
                    if hi > lo:
                        callback(_gather(seq_padded, lengths.to(device), lo, hi))
                        emitted[:] = hi
        bar.close()
        if callback is not None and int(emitted.min()) < n:
            callback(_gather(seq_padded, lengths.to(device), int(emitted.min()), n))
        return _gather(seq_padded, lengths.to(device), 0, n)
    finally:
        model.train(was_training)


def _gather(seq: torch.Tensor, lengths: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """New tokens lo..hi of each row (row i's new tokens start at its prompt length)."""
    idx = lengths[:, None] + torch.arange(lo, hi, device=seq.device)[None, :]
    return seq.gather(1, idx)


@torch.no_grad()
def naive_generate(model, prompt_ids: torch.Tensor, n: int, *, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0, seed: int | None = None, allowed_tokens=None) -> torch.Tensor:
    """The slow reference: re-run the full forward over the whole sequence for every new token.

    Same sampling rule and noise order as ``generate`` with ``block=1``, so greedy decoding must
    agree token for token; used by the tests and as the benchmark's baseline.
    """
    params = SamplingParams(float(temperature), top_k, float(top_p))
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    allowed = None
    if allowed_tokens is not None:
        allowed = torch.zeros(vocab, dtype=torch.bool, device=device)
        allowed[torch.as_tensor(list(allowed_tokens), dtype=torch.long, device=device)] = True
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else 0)
    seq = prompt_ids.to(device)
    was_training = model.training
    model.eval()
    try:
        for _ in range(n):
            logits = model(seq)[:, -1]
            noise = None if params.greedy else gumbel_(torch.rand(1, *logits.shape, generator=generator,
                                                                   device=device)[0])
            seq = torch.cat([seq, sample(logits, noise, params, allowed)[:, None]], 1)
    finally:
        model.train(was_training)
    return seq[:, prompt_ids.shape[1]:]
