"""`generate(model, prompt_ids, config) -> ids`: the one entry point to every sampler.

The samplers themselves are algorithms over a `model_fn` (docs/design.md §6, `diffusion/`):
`llada` (the block sampler with no cache and no threshold), `fast` (the same reveal step with
Fast-dLLM's approximate KV cache and confidence threshold), `mdlm` (ancestral, no-change cache),
`arm` (left to right with a KV cache; `cache="none"`: a full forward pass per token) and `block`
(block diffusion models: blocks left to right with an exact KV cache; `cache="none"`: the whole
prefix every step). This
module picks one from a `SamplingConfig` and the model's objective, seeds it, and turns text
into ids and back, so `mdm generate`, the evaluations and the benchmarks sample identically.
"""

from __future__ import annotations

import torch

from megatron_mdm.diffusion.arm_sampling import arm_sample, arm_sample_kv
from megatron_mdm.diffusion.block_sampling import block_diffusion_sample, steps_per_block
from megatron_mdm.diffusion.fast_sampling import fast_sample
from megatron_mdm.diffusion.sampling import Generators, block_schedule, mdlm_sample
from megatron_mdm.inference.loading import InferenceModel
from megatron_mdm.inference.sampling_config import SamplingConfig, SamplingError, pick_sampler

__all__ = ["complete", "cut_at_eos", "generate", "generate_ids"]


def _check(config: SamplingConfig, sampler: str, block_size: int | None) -> None:
    config.validate()
    if sampler == "block":
        if block_size is None:
            raise SamplingError("the block sampler needs a block diffusion model (no block size)")
        if config.block_length is not None and config.block_length != block_size:
            raise SamplingError(
                f"block: block_length {config.block_length} differs from the model's block size "
                f"{block_size} (leave it unset)"
            )
        try:
            steps_per_block(config.gen_length, config.steps, block_size)
        except ValueError as exc:
            raise SamplingError(str(exc)) from None
    if sampler in ("llada", "fast"):
        try:
            block_schedule(config.gen_length, config.steps, config.blocks, config.remasking)
        except ValueError as exc:
            raise SamplingError(str(exc)) from None
    thresholded = sampler in ("fast", "block") and config.threshold is not None
    if thresholded and config.remasking != "low_confidence":
        raise SamplingError("a confidence threshold needs remasking=low_confidence")


def _cached_model(model: InferenceModel) -> torch.nn.Module:
    if model.cached_model is None:
        raise SamplingError("this model has no key/value cache: use cache=none")
    return model.cached_model


def generate(
    model: InferenceModel,
    prompt_ids: torch.Tensor,
    config: SamplingConfig,
    stats: dict | None = None,
    row_seeds: list[int] | None = None,
) -> torch.Tensor:
    """Token ids [B, P] -> [B, P + n] (n = gen_length, or fewer for arm and block stopping at
    EOS). `row_seeds`: one generator per row seeded by it (a row then draws the same random
    numbers alone and in any batch, `inference.batching`); default one generator for the batch
    seeded by `config.seed`."""
    sampler = pick_sampler(config.sampler, model.objective)
    _check(config, sampler, model.block_size)
    c = config
    if sampler == "arm" and prompt_ids.shape[1] < 1:
        raise SamplingError("the arm sampler needs a prompt of at least one token")
    prompt_ids = prompt_ids.to(model.device)
    generator: Generators = torch.Generator(device=model.device).manual_seed(c.seed)
    if row_seeds is not None:
        if len(row_seeds) != prompt_ids.shape[0]:
            raise SamplingError(f"{len(row_seeds)} seeds for {prompt_ids.shape[0]} prompts")
        generator = [torch.Generator(device=model.device).manual_seed(s) for s in row_seeds]
    if sampler == "arm":
        eos = model.eos_id if c.stop_at_eos else None
        if c.cache == "none":
            fn = model.model_fn
            return arm_sample(fn, prompt_ids, c.gen_length, c.temperature, eos, generator, stats)
        kv = _cached_model(model)
        return arm_sample_kv(kv, prompt_ids, c.gen_length, c.temperature, eos, generator, stats)
    if sampler == "block":
        cached = c.cache != "none"
        assert model.block_size is not None  # _check
        return block_diffusion_sample(
            prompt_ids,
            model.mask_id,
            model.block_size,
            c.gen_length,
            c.steps,
            c.temperature,
            c.remasking,
            c.cfg,
            generator,
            threshold=c.threshold,
            eos_id=model.eos_id if c.stop_at_eos else None,
            cached_model=_cached_model(model) if cached else None,
            model_fn=None if cached else model.model_fn,
            stats=stats,
        )
    if sampler == "mdlm":
        return mdlm_sample(
            model.model_fn,
            prompt_ids,
            model.mask_id,
            c.gen_length,
            c.steps,
            generator=generator,
            stats=stats,
        )
    fast = sampler == "fast"
    cache = c.cache if fast else "none"
    return fast_sample(
        model.model_fn,
        prompt_ids,
        model.mask_id,
        c.gen_length,
        c.steps,
        c.blocks,
        c.temperature,
        c.remasking,
        c.cfg,
        generator,
        threshold=c.threshold if fast else None,
        cache=cache,
        cached_model=None if cache == "none" else _cached_model(model),
        stats=stats,
    )


def cut_at_eos(row: list[int], eos_id: int) -> list[int]:
    return row[: row.index(eos_id)] if eos_id in row else row


def generate_ids(
    model: InferenceModel, prompt_ids: list[int], config: SamplingConfig, num_samples: int = 1
) -> list[list[int]]:
    """`num_samples` continuations of `prompt_ids` as token ids, each cut at its first EOS
    (for prompts that are not text, e.g. a lone EOS: "start a new document")."""
    prompt = torch.tensor([list(prompt_ids)] * num_samples, dtype=torch.long)
    rows = generate(model, prompt, config)[:, len(prompt_ids) :].tolist()
    return [cut_at_eos(row, model.eos_id) for row in rows]


def complete(
    model: InferenceModel, prompt: str, config: SamplingConfig, num_samples: int = 1
) -> list[str]:
    """`num_samples` completions of `prompt` (the text after it, cut at the first EOS)."""
    ids = model.tokenizer.encode(prompt)
    return [model.tokenizer.decode(row) for row in generate_ids(model, ids, config, num_samples)]
