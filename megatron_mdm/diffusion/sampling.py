"""Samplers for masked diffusion LMs (docs/design.md §5-§6), over any `model_fn(x) -> logits`.

`model_fn` maps token ids [B, L] to logits [B, L, V] (a training model on one rank, an exported
`transformers` model, or a fake in tests), so the samplers know nothing of parallelism. Every
random draw comes from the caller's `torch.Generator`, so a seed reproduces a sample exactly.

- `llada_sample`: semi-autoregressive blocks, a fixed number of tokens revealed per step (the
  block's masks spread evenly over its steps), `low_confidence` or `random` remasking order,
  Gumbel-max sampling in float64 at a temperature, classifier-free guidance. Its block loop
  (`block_sample`) and reveal step (`reveal_step`) are the only ones: Fast-dLLM decoding
  (`fast_sampling.py`) runs the same loop with cached logits and a confidence threshold.
- `infill_sample`: the same reveal step over a canvas whose masks may sit anywhere (a masked
  span between prompt tokens is filled in place), with the fixed reveal schedule.
- `mdlm_sample`: MDLM's ancestral sampler: at each step from t to s every masked token is revealed
  with probability (t - s) / t; with `cache=True` the model is not called again while no token has
  changed (its output would be the same), which gives identical samples with fewer calls.

Fast-dLLM decoding (approximate KV cache, confidence-threshold unmasking) is in
`fast_sampling.py`, the ARM baseline's sampler in `arm_sampling.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

ModelFn = Callable[[torch.Tensor], torch.Tensor]
# One generator for the whole batch, or one per row (batch-invariant draws: row b's numbers come
# from generator[b] alone, so a row draws the same numbers alone and inside any batch).
Generators = torch.Generator | list[torch.Generator] | None


def uniform(
    shape: tuple[int, ...] | torch.Size,
    generator: Generators,
    device: torch.device,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """float64 U[0, 1) draws of `shape` (rows along dim 0). With one generator per row, row b
    draws `shape[1:]` numbers from `generator[b]`; rows where `rows` [B] is False draw nothing
    (their values are 0.5), so a row that has finished does not advance its stream."""
    if not isinstance(generator, list):
        return torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]} rows")
    out = torch.full(tuple(shape), 0.5, dtype=torch.float64, device=device)
    for b, g in enumerate(generator):
        if rows is None or bool(rows[b]):
            out[b] = torch.rand(tuple(shape[1:]), generator=g, dtype=torch.float64, device=device)
    return out


def logits_at(model_fn: ModelFn, x: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    """Logits [N, V] of the positions `select` [B, L] marks, in row-major order: the one place
    where a sampler's logits are produced for positions. A `model_fn` with an `at(x, select)`
    method (`inference.loading.SelectiveModel`) runs the output layer on those rows only; any
    other callable runs in full and is indexed."""
    at = getattr(model_fn, "at", None)
    if at is not None:
        return at(x, select)
    return model_fn(x)[select]


def guided_logits(
    model_fn: ModelFn, x: torch.Tensor, prompt_index: torch.Tensor, cfg: float, mask_id: int
) -> torch.Tensor:
    """Unsupervised classifier-free guidance (SMDM): the unconditional input is `x` with every
    prompt position masked; both run in one batch; uncond + (w + 1) * (cond - uncond)."""
    if cfg == 0:
        return model_fn(x)
    uncond = x.masked_fill(prompt_index, mask_id)
    cond_logits, uncond_logits = model_fn(torch.cat([x, uncond])).chunk(2)
    return combine_guidance(cond_logits, uncond_logits, cfg)


def guided_logits_at(
    model_fn: ModelFn,
    x: torch.Tensor,
    select: torch.Tensor,
    prompt_index: torch.Tensor,
    cfg: float,
    mask_id: int,
) -> torch.Tensor:
    """`guided_logits` of the selected positions only ([N, V], `logits_at`)."""
    if cfg == 0:
        return logits_at(model_fn, x, select)
    uncond = x.masked_fill(prompt_index, mask_id)
    both = logits_at(model_fn, torch.cat([x, uncond]), torch.cat([select, select]))
    cond_logits, uncond_logits = both.chunk(2)
    return combine_guidance(cond_logits, uncond_logits, cfg)


def combine_guidance(
    cond_logits: torch.Tensor, uncond_logits: torch.Tensor, cfg: float
) -> torch.Tensor:
    """uncond + (w + 1) * (cond - uncond), with never-predicted ids kept at -inf."""
    guided = uncond_logits + (cfg + 1.0) * (cond_logits - uncond_logits)
    # Ids never predicted ([MASK], vocab padding) are -inf in both passes: -inf - -inf is nan,
    # which argmax would pick. They stay -inf.
    return guided.masked_fill(cond_logits.isneginf() | uncond_logits.isneginf(), -torch.inf)


def gumbel_argmax(
    logits: torch.Tensor,
    temperature: float,
    generator: Generators,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """argmax(logits + T * Gumbel) in float64 (LLaDA's form: exp(l) / (-log u)^T); T = 0: argmax.
    `rows`: with per-row generators, the rows that draw (see `uniform`).

    float64 because low-precision Gumbel noise measurably degrades masked-diffusion samples."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.to(torch.float64)
    u = uniform(logits.shape, generator, logits.device, rows)
    u = u.clamp_min(torch.finfo(torch.float64).tiny)
    return (logits.exp() / (-torch.log(u)) ** temperature).argmax(-1)


def tokens_per_step(masked_count: torch.Tensor, steps: int) -> torch.Tensor:
    """[B] mask counts -> [B, steps] tokens to reveal at each step, spread as evenly as possible
    (the remainder goes to the first steps), summing to each row's count."""
    base = masked_count // steps
    remainder = masked_count % steps
    schedule = base[:, None].repeat(1, steps)
    schedule += (torch.arange(steps, device=masked_count.device)[None] < remainder[:, None]).long()
    return schedule


def masked_canvas(prompt: torch.Tensor, gen_length: int, mask_id: int) -> torch.Tensor:
    """The sampling state: the prompt followed by `gen_length` `[MASK]` tokens."""
    batch, plen = prompt.shape
    x = torch.full((batch, plen + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :plen] = prompt
    return x


def block_schedule(
    gen_length: int, steps: int, block_length: int, remasking: str
) -> tuple[int, int]:
    """(number of blocks, steps per block), or ValueError naming the argument at fault."""
    if min(gen_length, steps, block_length) < 1:
        raise ValueError(
            f"gen_length, steps and block_length must be positive "
            f"({gen_length}, {steps}, {block_length})"
        )
    if gen_length % block_length:
        raise ValueError(
            f"gen_length {gen_length} is not a multiple of block_length {block_length}"
        )
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"steps {steps} is not a multiple of the number of blocks {num_blocks}")
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"remasking must be low_confidence or random, not {remasking!r}")
    return num_blocks, steps // num_blocks


def candidates(view: torch.Tensor, mask_id: int, block_end: int) -> torch.Tensor:
    """[B, n] the positions a step may reveal: masked, before `block_end` (an index into
    `view`). The logits a reveal step needs are those of these positions only."""
    select = view == mask_id
    select[:, block_end:] = False
    return select


def gumbel_from_uniform(logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
    """`gumbel_argmax` with its uniforms `u` (same shape as `logits`) drawn by the caller."""
    u = u.clamp_min(torch.finfo(torch.float64).tiny)
    return (logits.to(torch.float64).exp() / (-torch.log(u)) ** temperature).argmax(-1)


def top_k_rows(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[B, n] bool: the `k[b]` highest `scores[b]` of every row, in one `topk` for the batch
    (the largest k, then each row keeps its first k[b] picks; equals a per-row `topk(k[b])`)."""
    reveal = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    kmax = int(k.max()) if k.numel() else 0
    if kmax == 0:
        return reveal
    picks = scores.topk(kmax, dim=1).indices
    keep = torch.arange(kmax, device=scores.device)[None, :] < k[:, None].to(scores.device)
    return reveal.scatter_(1, picks, keep)


def reveal_step(
    view: torch.Tensor,
    logits: torch.Tensor,
    mask_id: int,
    counts: torch.Tensor,
    block_end: int,
    temperature: float,
    remasking: str,
    generator: Generators,
    threshold: float | None = None,
) -> torch.Tensor:
    """One denoising step over `view` [B, n]. `logits` [N, V] are those of its `candidates`
    (masked positions before `block_end`), row-major. Predict each candidate (Gumbel-max at
    `temperature`), then reveal per row the `counts[row]` candidates of highest confidence:
    `low_confidence` ranks by the float64 softmax probability of the predicted token (computed
    on the candidate rows only), `random` by uniform draws. With a `threshold`, a row reveals
    max(count, candidates above the threshold, 1), never more than it has (Fast-dLLM's rule).
    Random draws keep the shapes of a full [B, n, V] pass (the same numbers as LLaDA's loop);
    with per-row generators a row without candidates draws nothing. Returns the new view."""
    select = candidates(view, mask_id, block_end)
    active = select.any(1)
    if temperature == 0:
        picked = logits.argmax(-1)
    else:
        shape = (*view.shape, logits.shape[-1])
        u = uniform(shape, generator, view.device, active)[select]
        picked = gumbel_from_uniform(logits, u, temperature)
    if remasking == "low_confidence":
        probs = torch.softmax(logits.to(torch.float64), dim=-1)
        confidence = torch.full(view.shape, -torch.inf, dtype=torch.float64, device=view.device)
        confidence[select] = probs.gather(-1, picked[:, None])[:, 0]
    else:
        confidence = uniform(view.shape, generator, view.device, active)
        confidence = confidence.masked_fill(~select, -torch.inf)
    x0 = view.clone()
    x0[select] = picked
    k = counts.to(view.device)
    if threshold is not None:
        confident = (confidence > threshold).sum(1)
        k = torch.minimum(torch.maximum(k, confident).clamp_min(1), select.sum(1))
    return torch.where(top_k_rows(confidence, k), x0, view)


class FullLogits:
    """Block logits without a cache: the whole sequence (with guidance) at every step.
    `__call__(x, step, select)` -> (first and end position covered = 0 and L, logits [N, V] of
    the `select`ed positions), as the cached `fast_sampling.BlockLogits`; counts model calls and
    positions run."""

    def __init__(self, model_fn: ModelFn, prompt_index: torch.Tensor, cfg: float, mask_id: int):
        self.model_fn, self.prompt_index, self.cfg, self.mask_id = (
            model_fn,
            prompt_index,
            cfg,
            mask_id,
        )
        self.calls = 0
        self.positions = 0

    def __call__(
        self, x: torch.Tensor, step: int, select: torch.Tensor
    ) -> tuple[int, int, torch.Tensor]:
        self.calls += 1
        self.positions += x.shape[1]
        logits = guided_logits_at(
            self.model_fn, x, select, self.prompt_index, self.cfg, self.mask_id
        )
        return 0, x.shape[1], logits


class StepLogits(Protocol):
    """What `block_sample` asks of one block's logits (`FullLogits`, `fast_sampling.BlockLogits`):
    `(x, step, select) -> (first position covered, end of the covered positions, logits [N, V]
    of the positions `select` [B, L] marks)`, and counts of model calls and positions."""

    calls: int
    positions: int

    def __call__(
        self, x: torch.Tensor, step: int, select: torch.Tensor
    ) -> tuple[int, int, torch.Tensor]: ...


# (prompt_index, block start, block end) -> the block's StepLogits
BlockLogitsFactory = Callable[[torch.Tensor, int, int], StepLogits]


def block_sample(
    prompt: torch.Tensor,
    mask_id: int,
    gen_length: int,
    steps: int,
    block_length: int,
    temperature: float,
    remasking: str,
    generator: Generators,
    block_logits: BlockLogitsFactory,
    threshold: float | None = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """The semi-autoregressive block loop every diffusion block sampler shares: blocks left to
    right, each with steps/num_blocks reveal steps (`reveal_step`) of the logits
    `block_logits(prompt_index, start, end)` provides. A block whose masks are all revealed
    ends early when that changes nothing else: with a threshold (it reveals ahead of the
    schedule), or when the step would draw no random numbers (greedy, low_confidence);
    otherwise the remaining zero-reveal steps run, as LLaDA's loop does, so seeded samples match
    it draw for draw."""
    num_blocks, steps_per_block = block_schedule(gen_length, steps, block_length, remasking)
    plen = prompt.shape[1]
    x = masked_canvas(prompt, gen_length, mask_id)
    prompt_index = torch.zeros_like(x, dtype=torch.bool)
    prompt_index[:, :plen] = True
    stop_when_done = threshold is not None or (temperature == 0 and remasking == "low_confidence")
    calls = positions = 0
    for block in range(num_blocks):
        start, end = plen + block * block_length, plen + (block + 1) * block_length
        schedule = tokens_per_step((x[:, start:end] == mask_id).sum(1), steps_per_block)
        logits_of = block_logits(prompt_index, start, end)
        for i in range(steps_per_block):
            if stop_when_done and not bool((x[:, start:end] == mask_id).any()):
                break
            lo, hi, logits = logits_of(x, i, candidates(x, mask_id, end))
            x[:, lo:hi] = reveal_step(
                x[:, lo:hi],
                logits,
                mask_id,
                schedule[:, i],
                end - lo,
                temperature,
                remasking,
                generator,
                threshold,
            )
        calls += logits_of.calls
        positions += logits_of.positions
    if stats is not None:
        stats["model_calls"] = calls
        stats["positions"] = positions
    return x


@torch.no_grad()
def llada_sample(
    model_fn: ModelFn,
    prompt: torch.Tensor,
    mask_id: int,
    gen_length: int = 128,
    steps: int = 128,
    block_length: int = 128,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg: float = 0.0,
    generator: Generators = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """prompt [B, P] -> [B, P + gen_length] with every generated position revealed: the block
    loop with full-sequence logits at every step and the fixed reveal schedule."""

    def full(prompt_index: torch.Tensor, start: int, end: int) -> FullLogits:
        return FullLogits(model_fn, prompt_index, cfg, mask_id)

    return block_sample(
        prompt,
        mask_id,
        gen_length,
        steps,
        block_length,
        temperature,
        remasking,
        generator,
        full,
        stats=stats,
    )


@torch.no_grad()
def infill_sample(
    model_fn: ModelFn,
    canvas: torch.Tensor,
    mask_id: int,
    steps: int | None = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """canvas [B, L] with `[MASK]` anywhere (a span between prompt tokens, several spans) ->
    the canvas with every mask revealed in place, by `reveal_step` over the whole canvas with
    full-sequence logits: `steps` (default: the most masks of a row) steps, the masks of each
    row spread evenly over them (`tokens_per_step`). The unmasked positions are the prompt (what
    guidance masks for its unconditional pass). A canvas whose masks are the tail after the
    prompt gives `llada_sample`'s one-block result."""
    x = canvas.clone()
    prompt_index = x != mask_id
    masked_count = (~prompt_index).sum(1)
    steps = int(masked_count.max()) if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be positive, not {steps}")
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"remasking must be low_confidence or random, not {remasking!r}")
    schedule = tokens_per_step(masked_count, steps)
    logits_of = FullLogits(model_fn, prompt_index, cfg, mask_id)
    for i in range(steps):
        if not bool((x == mask_id).any()):
            break
        _, _, logits = logits_of(x, i, candidates(x, mask_id, x.shape[1]))
        x = reveal_step(
            x, logits, mask_id, schedule[:, i], x.shape[1], temperature, remasking, generator
        )
    return x


@torch.no_grad()
def mdlm_sample(
    model_fn: ModelFn,
    prompt: torch.Tensor,
    mask_id: int,
    gen_length: int = 128,
    steps: int = 128,
    eps: float = 1e-5,
    cache: bool = True,
    generator: Generators = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """MDLM ancestral sampling from t = 1 to eps; the last step reveals whatever is left.

    Random draws are made every step whether or not the cache is used, so `cache=True` and
    `cache=False` return the same tokens; `stats["model_calls"]` counts the forward passes."""
    x = masked_canvas(prompt, gen_length, mask_id)
    times = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64)
    probs = None  # [N, V] of the masked positions, row-major
    calls = 0
    for i in range(steps):
        t, s = times[i].item(), times[i + 1].item()
        masked = x == mask_id
        if probs is None or not cache:
            # the output layer and the float64 softmax run on the masked positions only
            probs = torch.softmax(logits_at(model_fn, x, masked).to(torch.float64), dim=-1)
            calls += 1
        # the draws keep the shapes of a full [B, L, V] pass, so seeded samples do not change
        u_reveal = uniform(x.shape, generator, x.device)
        u_token = uniform((*x.shape, probs.shape[-1]), generator, x.device)[masked]
        sampled = (probs.log() - torch.log(-torch.log(u_token.clamp_min(1e-300)))).argmax(-1)
        reveal_prob = 1.0 if i == steps - 1 else (t - s) / t
        reveal = masked & (u_reveal < reveal_prob)
        if reveal.any():
            proposal = x.clone()
            proposal[masked] = sampled
            x = torch.where(reveal, proposal, x)
            probs = None  # the input changed: the next step needs a fresh forward pass
    if stats is not None:
        stats["model_calls"] = calls
    return x
