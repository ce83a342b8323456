"""Block diffusion sampling (`--sampler block`, docs/design.md §11.4) with an exact KV cache.

A block diffusion model (block size B) attends from block k to blocks <= k only, so finished
blocks never change their keys and values: they are cached exactly, as an ARM caches tokens, and
each block is still denoised in parallel.

- Blocks sit at absolute multiples of B from the start of the sequence, as in training. The
  prompt's complete blocks are prefilled once; its partial last block (if any) is completed by
  the first generated block, whose prompt positions stay fixed.
- Each block is denoised with the §6.1 reveal step: `steps * B / gen_length` steps per block,
  the LLaDA schedule (`k_i = n div s + [i < n mod s]` of the n masks a block starts with), or
  with a `threshold` every masked token above it (at least the schedule's count, §6.3). A block
  ends as soon as it has no mask left.
- A finished block is committed: one more forward pass of the clean block against the cache
  appends its keys and values (the x_0 stream of training; the keys computed while the block
  was noisy are dropped), as BD3-LM and SDAR do.
- Classifier-free guidance batches the unconditional copy (prompt positions masked) with the
  conditional one; each half keeps its own cache.
- With `eos_id`, generation stops at the end of the first block after which every row holds an
  EOS in its generated part.

`BlockPrefixLogits` is the reference without a cache: it runs the whole prefix (prompt, finished
blocks and the current block) at every step through `model_fn`, which must be the model's
block-causal forward; the cached sampler must produce the same tokens.
"""

from __future__ import annotations

import torch

from megatron_mdm.diffusion.sampling import (
    Generators,
    ModelFn,
    candidates,
    combine_guidance,
    guided_logits_at,
    masked_canvas,
    reveal_step,
    tokens_per_step,
)


def steps_per_block(gen_length: int, steps: int, block_size: int) -> int:
    """Reveal steps per block of B tokens, or ValueError naming the arguments at fault."""
    if min(gen_length, steps, block_size) < 1:
        raise ValueError(
            f"gen_length, steps and block size must be positive ({gen_length}, {steps}, "
            f"{block_size})"
        )
    if (steps * block_size) % gen_length:
        raise ValueError(
            f"block: steps * block size ({steps} * {block_size}) must be a multiple of "
            f"gen_length {gen_length} (steps per block = steps * block size / gen_length)"
        )
    return steps * block_size // gen_length


class BlockPrefixLogits:
    """No cache: logits of the current block from a forward pass over the whole prefix."""

    def __init__(self, model_fn: ModelFn, prompt_index: torch.Tensor, cfg: float, mask_id: int):
        self.model_fn, self.prompt_index, self.cfg, self.mask_id = (
            model_fn,
            prompt_index,
            cfg,
            mask_id,
        )
        self.calls = self.positions = 0

    def prefill(self, x: torch.Tensor, end: int) -> None:
        pass

    def __call__(self, x: torch.Tensor, start: int, end: int, select: torch.Tensor) -> torch.Tensor:
        """Logits [N, V] of the block's `select`ed positions (`select` [B, end - start])."""
        self.calls += 1
        self.positions += end
        index = self.prompt_index[:, :end]
        rows = torch.zeros(x.shape[0], end, dtype=torch.bool, device=x.device)
        rows[:, start:end] = select
        return guided_logits_at(self.model_fn, x[:, :end], rows, index, self.cfg, self.mask_id)

    def commit(self, x: torch.Tensor, start: int, end: int) -> None:
        pass


class BlockCachedLogits:
    """The exact KV cache: `cached_model` is called like the shipped `MDMForMaskedLM` (block
    objective), `cached_model(input_ids=..., kv_cache=..., use_cache=...)`."""

    def __init__(self, cached_model, prompt_index: torch.Tensor, cfg: float, mask_id: int):
        self.cached_model, self.prompt_index, self.cfg, self.mask_id = (
            cached_model,
            prompt_index,
            cfg,
            mask_id,
        )
        self.kv = None
        self.calls = self.positions = 0

    def _inputs(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        part = x[:, start:end]
        if self.cfg == 0:
            return part
        return torch.cat([part, part.masked_fill(self.prompt_index[:, start:end], self.mask_id)])

    def _run(self, x: torch.Tensor, start: int, end: int, keep: bool, select: torch.Tensor | None):
        self.calls += 1
        self.positions += end - start
        if select is None:  # a pass for the cache only: the output layer on no position
            select = torch.zeros(x.shape[0], end - start, dtype=torch.bool, device=x.device)
        rows = select if self.cfg == 0 else torch.cat([select, select])
        out = self.cached_model(
            input_ids=self._inputs(x, start, end),
            kv_cache=self.kv,
            use_cache=keep,
            output_positions=rows,
        )
        if keep:
            self.kv = out.kv_cache
        return out

    def prefill(self, x: torch.Tensor, end: int) -> None:
        """Cache the prompt's complete blocks, positions [0, end)."""
        if end > 0:
            self._run(x, 0, end, keep=True, select=None)

    def __call__(self, x: torch.Tensor, start: int, end: int, select: torch.Tensor) -> torch.Tensor:
        """Logits [N, V] of the block's `select`ed positions (`select` [B, end - start])."""
        logits = self._run(x, start, end, keep=False, select=select).logits
        if self.cfg == 0:
            return logits
        cond, uncond = logits.chunk(2)
        return combine_guidance(cond, uncond, self.cfg)

    def commit(self, x: torch.Tensor, start: int, end: int) -> None:
        """Append the finished (clean) block's keys and values."""
        self._run(x, start, end, keep=True, select=None)


@torch.no_grad()
def block_diffusion_sample(
    prompt: torch.Tensor,
    mask_id: int,
    block_size: int,
    gen_length: int = 128,
    steps: int = 128,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg: float = 0.0,
    generator: Generators = None,
    threshold: float | None = None,
    eos_id: int | None = None,
    cached_model=None,
    model_fn: ModelFn | None = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """prompt [B, P] -> [B, P + n]: n = gen_length, or fewer (a block boundary) when every row
    has produced `eos_id`. With `cached_model` the exact KV cache, else `model_fn` (a block-causal
    forward) over the whole prefix at every step. `stats`: `model_calls`, `positions`."""
    per_block = steps_per_block(gen_length, steps, block_size)
    if threshold is not None and remasking != "low_confidence":
        raise ValueError("a confidence threshold needs remasking=low_confidence")
    if (cached_model is None) == (model_fn is None):
        raise ValueError("give exactly one of cached_model (KV cache) or model_fn (no cache)")
    plen = prompt.shape[1]
    total = plen + gen_length
    x = masked_canvas(prompt, gen_length, mask_id)
    prompt_index = torch.zeros_like(x, dtype=torch.bool)
    prompt_index[:, :plen] = True
    source: BlockCachedLogits | BlockPrefixLogits
    if cached_model is not None:
        source = BlockCachedLogits(cached_model, prompt_index, cfg, mask_id)
    else:
        assert model_fn is not None  # checked above
        source = BlockPrefixLogits(model_fn, prompt_index, cfg, mask_id)
    start = (plen // block_size) * block_size
    source.prefill(x, start)
    while start < total:
        end = min(start + block_size, total)  # start is a multiple of the block size
        schedule = tokens_per_step((x[:, start:end] == mask_id).sum(1), per_block)
        for i in range(per_block):
            if not bool((x[:, start:end] == mask_id).any()):
                break
            select = candidates(x[:, start:end], mask_id, end - start)
            logits = source(x, start, end, select)
            x[:, start:end] = reveal_step(
                x[:, start:end],
                logits,
                mask_id,
                schedule[:, i],
                end - start,
                temperature,
                remasking,
                generator,
                threshold,
            )
        finished = eos_id is not None and bool((x[:, plen:end] == eos_id).any(1).all())
        if finished or end == total:
            x = x[:, :end]
            break
        source.commit(x, start, end)
        start = end
    if stats is not None:
        stats["model_calls"] = source.calls
        stats["positions"] = source.positions
    return x
