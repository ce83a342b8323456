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


def combine_guidance(
    cond_logits: torch.Tensor, uncond_logits: torch.Tensor, cfg: float
) -> torch.Tensor:
    """uncond + (w + 1) * (cond - uncond), with never-predicted ids kept at -inf."""
    guided = uncond_logits + (cfg + 1.0) * (cond_logits - uncond_logits)
    # Ids never predicted ([MASK], vocab padding) are -inf in both passes: -inf - -inf is nan,
    # which argmax would pick. They stay -inf.
    return guided.masked_fill(cond_logits.isneginf() | uncond_logits.isneginf(), -torch.inf)


def gumbel_argmax(logits: torch.Tensor, temperature: float, generator) -> torch.Tensor:
    """argmax(logits + T * Gumbel) in float64 (LLaDA's form: exp(l) / (-log u)^T); T = 0: argmax.

    float64 because low-precision Gumbel noise measurably degrades masked-diffusion samples."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.to(torch.float64)
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device=logits.device)
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


def reveal_step(
    view: torch.Tensor,
    logits: torch.Tensor,
    mask_id: int,
    counts: torch.Tensor,
    block_end: int,
    temperature: float,
    remasking: str,
    generator: torch.Generator | None,
    threshold: float | None = None,
) -> torch.Tensor:
    """One denoising step over `view` [B, n] (the positions `logits` [B, n, V] cover): predict
    every masked position (Gumbel-max at `temperature`), then reveal per row the `counts[row]`
    masked positions before `block_end` (an index into `view`) of highest confidence:
    `low_confidence` ranks by the float64 softmax probability of the predicted token, `random`
    by uniform draws. With a `threshold`, a row reveals max(count, positions above the threshold,
    1), never more than it has masked (Fast-dLLM's rule). Returns the new view."""
    masked = view == mask_id
    x0 = gumbel_argmax(logits, temperature, generator)
    if remasking == "low_confidence":
        probs = torch.softmax(logits.to(torch.float64), dim=-1)
        confidence = probs.gather(-1, x0[..., None])[..., 0]
    else:
        confidence = torch.rand(
            view.shape, generator=generator, dtype=torch.float64, device=view.device
        )
    confidence[:, block_end:] = -torch.inf  # never reveal past the current block
    confidence = torch.where(masked, confidence, -torch.inf)
    x0 = torch.where(masked, x0, view)
    reveal = torch.zeros_like(masked)
    for row in range(view.shape[0]):
        k = int(counts[row])
        if threshold is not None:
            confident = int((confidence[row] > threshold).sum())
            remaining = int(torch.isfinite(confidence[row]).sum())
            k = min(max(k, confident, 1), remaining)
        if k:
            reveal[row, torch.topk(confidence[row], k).indices] = True
    return torch.where(reveal, x0, view)


class FullLogits:
    """Block logits without a cache: the whole sequence (with guidance) at every step.
    `__call__(x, step)` -> (first position covered = 0, logits [B, L, V]), as the cached
    `fast_sampling.BlockLogits`; counts model calls and positions run."""

    def __init__(self, model_fn: ModelFn, prompt_index: torch.Tensor, cfg: float, mask_id: int):
        self.model_fn, self.prompt_index, self.cfg, self.mask_id = (
            model_fn,
            prompt_index,
            cfg,
            mask_id,
        )
        self.calls = 0
        self.positions = 0

    def __call__(self, x: torch.Tensor, step: int) -> tuple[int, torch.Tensor]:
        self.calls += 1
        self.positions += x.shape[1]
        return 0, guided_logits(self.model_fn, x, self.prompt_index, self.cfg, self.mask_id)


class StepLogits(Protocol):
    """What `block_sample` asks of one block's logits (`FullLogits`, `fast_sampling.BlockLogits`):
    `(x, step) -> (first position covered, logits)`, and counts of model calls and positions."""

    calls: int
    positions: int

    def __call__(self, x: torch.Tensor, step: int) -> tuple[int, torch.Tensor]: ...


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
    generator: torch.Generator | None,
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
            lo, logits = logits_of(x, i)
            hi = lo + logits.shape[1]
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
    generator: torch.Generator | None = None,
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
        _, logits = logits_of(x, i)
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
    generator: torch.Generator | None = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """MDLM ancestral sampling from t = 1 to eps; the last step reveals whatever is left.

    Random draws are made every step whether or not the cache is used, so `cache=True` and
    `cache=False` return the same tokens; `stats["model_calls"]` counts the forward passes."""
    x = masked_canvas(prompt, gen_length, mask_id)
    times = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64)
    probs = None
    calls = 0
    for i in range(steps):
        t, s = times[i].item(), times[i + 1].item()
        if probs is None or not cache:
            probs = torch.softmax(model_fn(x).to(torch.float64), dim=-1)
            calls += 1
        u_reveal = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=x.device)
        u_token = torch.rand(probs.shape, generator=generator, dtype=torch.float64, device=x.device)
        sampled = (probs.log() - torch.log(-torch.log(u_token.clamp_min(1e-300)))).argmax(-1)
        masked = x == mask_id
        reveal_prob = 1.0 if i == steps - 1 else (t - s) / t
        reveal = masked & (u_reveal < reveal_prob)
        if reveal.any():
            x = torch.where(reveal, sampled, x)
            probs = None  # the input changed: the next step needs a fresh forward pass
    if stats is not None:
        stats["model_calls"] = calls
    return x
