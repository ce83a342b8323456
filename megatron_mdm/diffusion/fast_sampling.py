"""Fast-dLLM decoding for masked diffusion LMs (Wu et al. 2025, "Fast-dLLM: training-free
acceleration of diffusion LLM by enabling KV cache and parallel decoding").

The LLaDA sampler (`sampling.llada_sample`) runs the whole sequence through the model at every
step. Two training-free shortcuts, switchable independently:

- Approximate KV cache per semi-autoregressive block (`cache`). At the first step of a block the
  whole sequence runs once and its keys/values are kept; the block's later steps recompute only
  some positions, attending to the kept keys/values for the rest:
  `prefix`: keep the prefix (prompt + finished blocks), recompute the block and everything after;
  `dual`: keep prefix and suffix (the later, still masked blocks), recompute only the block.
  Bidirectional keys depend on the whole sequence, so the kept ones go stale as the block's tokens
  are revealed; the paper's observation is that they change little within one block.
- Confidence-threshold parallel unmasking (`threshold`). Each step reveals, besides the tokens
  the fixed schedule asks for, every masked token of the block whose confidence (probability of
  its predicted token) exceeds `threshold`. With `steps == gen_length` the schedule asks for one
  token per step, which is the paper's rule ("at least the most confident one"); the block ends
  as soon as it has no mask left, so a confident model needs fewer steps.

With `cache="none"` and `threshold=None` every step is exactly a LLaDA step (same forward passes,
same random draws), so the two samplers give the same tokens. The cached modes need the model's
cache interface (`cached_model`, called like the shipped `MDMForMaskedLM`:
`cached_model(input_ids=..., kv_cache=..., replace_at=..., use_cache=True)`).

A model with shifted prediction (`cached_model.config.shift`, docs/design.md §13.4) takes the
logits of position i from its output at i - 1, which a call starting at the block does not
compute: its cached calls then start one position before the block (that position is finished,
never revealed again), so the block's logits are the shifted ones.
"""

from __future__ import annotations

import torch

from megatron_mdm.diffusion.sampling import (
    FullLogits,
    Generators,
    ModelFn,
    block_sample,
    combine_guidance,
)

CACHE_MODES = ("none", "prefix", "dual")


class BlockLogits:
    """Logits for one block's steps through the approximate KV cache (`prefix` or `dual`).
    `__call__(x, step, select)` returns (first and end position covered, logits [N, V] of the
    `select`ed positions); the covered positions include the block. (`sampling.FullLogits` is the uncached counterpart.)

    Classifier-free guidance batches the unconditional copy (prompt masked) with `x` (SMDM's
    form, `sampling.guided_logits`); with a cache both halves keep their own keys/values."""

    def __init__(self, cached_model, cache, prompt_index, cfg, mask_id, start, end):
        self.cached_model, self.cache = cached_model, cache
        self.prompt_index, self.cfg, self.mask_id = prompt_index, cfg, mask_id
        self.start, self.end = start, end
        shift = getattr(getattr(cached_model, "config", None), "shift", False)
        self.lo = max(start - 1, 0) if shift else start  # first position a cached call runs
        self.kv = None
        self.calls = 0
        self.positions = 0  # positions run through the model, summed over calls

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg == 0:
            return x
        return torch.cat([x, x.masked_fill(self.prompt_index, self.mask_id)])

    def _rows(self, select: torch.Tensor) -> torch.Tensor:
        return select if self.cfg == 0 else torch.cat([select, select])

    def _guided(self, logits: torch.Tensor) -> torch.Tensor:
        if self.cfg == 0:
            return logits
        cond, uncond = logits.chunk(2)
        return combine_guidance(cond, uncond, self.cfg)

    def __call__(
        self, x: torch.Tensor, step: int, select: torch.Tensor
    ) -> tuple[int, int, torch.Tensor]:
        """The output layer runs only on `select`ed positions (inside the covered ones)."""
        self.calls += 1
        inputs, rows = self._inputs(x), self._rows(select)
        length = x.shape[1]
        if step == 0:  # the whole sequence once; keep the keys/values this mode reuses
            self.positions += length
            out = self.cached_model(input_ids=inputs, use_cache=True, output_positions=rows)
            keep = self.lo if self.cache == "prefix" else length
            self.kv = tuple((k[:, :, :keep], v[:, :, :keep]) for k, v in out.kv_cache)
            return 0, length, self._guided(out.logits)
        lo = self.lo  # the block's start, or one before it for a shifted model
        if self.cache == "prefix":  # block and suffix, after the cached prefix
            hi, replace_at = length, None
        else:  # dual: the block only, between the cached prefix and suffix
            hi, replace_at = self.end, lo
        self.positions += hi - lo
        out = self.cached_model(
            input_ids=inputs[:, lo:hi],
            kv_cache=self.kv,
            replace_at=replace_at,
            output_positions=rows[:, lo:hi],
        )
        return lo, hi, self._guided(out.logits)


@torch.no_grad()
def fast_sample(
    model_fn: ModelFn | None,
    prompt: torch.Tensor,
    mask_id: int,
    gen_length: int = 128,
    steps: int = 128,
    block_length: int = 32,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg: float = 0.0,
    generator: Generators = None,
    threshold: float | None = None,
    cache: str = "none",
    cached_model=None,
    stats: dict | None = None,
) -> torch.Tensor:
    """prompt [B, P] -> [B, P + gen_length]; arguments as `llada_sample`, plus `threshold`
    (None: the fixed schedule only), `cache` (none | prefix | dual) and the `cached_model` the
    cached modes run. `stats` receives `model_calls` and `positions` (tokens run through the
    model, the work a cache saves)."""
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}, not {cache!r}")
    if cache != "none" and cached_model is None:
        raise ValueError(f"cache={cache} needs a model with a key/value cache")
    if cache == "none" and model_fn is None:
        raise ValueError("cache=none needs model_fn")
    if threshold is not None and remasking != "low_confidence":
        raise ValueError("a confidence threshold needs remasking=low_confidence")

    def logits_for_block(prompt_index: torch.Tensor, start: int, end: int):
        if cache == "none":
            assert model_fn is not None  # checked above
            return FullLogits(model_fn, prompt_index, cfg, mask_id)
        return BlockLogits(cached_model, cache, prompt_index, cfg, mask_id, start, end)

    return block_sample(
        prompt,
        mask_id,
        gen_length,
        steps,
        block_length,
        temperature,
        remasking,
        generator,
        logits_for_block,
        threshold=threshold,
        stats=stats,
    )
