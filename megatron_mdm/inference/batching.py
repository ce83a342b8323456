"""Batched, batch-invariant generation (docs/design.md §14.4): many prompts through one sampler.

`generate_many(model, prompts, config, batch_size)` returns, for every prompt (token ids), its
completion cut at the first EOS, in the order given. Prompts run in batches of up to
`batch_size` rows that share one canvas, so every sampler (llada, mdlm, fast with any cache, arm
with or without its KV cache, block) runs them unchanged:

- Rows of one batch have the same prompt length (prompts are grouped by length, in input order
  within a group): no padding, so no attention mask and no shifted RoPE positions are needed,
  and the key/value caches of `fast`, `arm` and `block` hold the rows side by side as they do
  for one row.
- A row's computation never reads another row: attention, the reveal schedule, the top-k and
  the EOS stop are per row, so a prompt's greedy completion is the same alone and inside any
  batch. (The only coupling is float rounding of a GEMM whose row count changes with the batch;
  it moves logits by an ulp, not the greedy tokens of the test models: `tests/test_batching.py`.)
- Random draws (temperature > 0, `remasking=random`, `mdlm`) come from one generator per row
  (`seeds[i]`, default `config.seed`), and a row that has nothing left to reveal in a block
  draws nothing, so a seeded sample is also the same alone and in any batch; per-item seeds
  (the evaluations) batch together.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from megatron_mdm.inference.generate import cut_at_eos, generate
from megatron_mdm.inference.loading import InferenceModel
from megatron_mdm.inference.sampling_config import SamplingConfig, SamplingError


@dataclass
class Completion:
    ids: list[int]  # generated ids, cut at the first EOS
    seconds: float  # wall time of the batch that produced it


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Prompt indices in batches of <= batch_size rows of one prompt length, each length's
    prompts in input order; lengths ordered by their first prompt."""
    if batch_size < 1:
        raise SamplingError(f"batch_size must be >= 1, not {batch_size}")
    groups: dict[int, list[int]] = {}
    for i, length in enumerate(lengths):
        groups.setdefault(length, []).append(i)
    return [
        members[first : first + batch_size]
        for members in groups.values()
        for first in range(0, len(members), batch_size)
    ]


def generate_many(
    model: InferenceModel,
    prompts: Sequence[Sequence[int]],
    config: SamplingConfig,
    batch_size: int = 8,
    seeds: Sequence[int] | None = None,
) -> list[Completion]:
    """Completions of `prompts` (token ids), in order; `seeds[i]` (default `config.seed`) seeds
    prompt i's own generator."""
    if seeds is not None and len(seeds) != len(prompts):
        raise SamplingError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    out: list[Completion | None] = [None] * len(prompts)
    for batch in plan_batches([len(p) for p in prompts], batch_size):
        ids = torch.tensor([list(prompts[i]) for i in batch], dtype=torch.long)
        row_seeds = [config.seed if seeds is None else int(seeds[i]) for i in batch]
        started = time.perf_counter()
        rows = generate(model, ids, config, row_seeds=row_seeds)[:, ids.shape[1] :].tolist()
        seconds = time.perf_counter() - started
        for i, row in zip(batch, rows):
            out[i] = Completion(cut_at_eos(row, model.eos_id), seconds)
    return [c for c in out if c is not None]


def complete_many(
    model: InferenceModel,
    prompts: Sequence[str],
    config: SamplingConfig,
    batch_size: int = 8,
    seeds: Sequence[int] | None = None,
) -> list[str]:
    """Text completions of text `prompts` (the text after each, cut at its first EOS)."""
    encoded = [model.tokenizer.encode(p) for p in prompts]
    done = generate_many(model, encoded, config, batch_size, seeds)
    return [model.tokenizer.decode(c.ids) for c in done]
