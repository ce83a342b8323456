"""Left-to-right sampling for the ARM baseline, with and without a key/value cache.

`arm_sample_kv` runs the prompt once (prefill), then feeds one new token per step, attending to
the cached keys and values of everything before it: O(L) work per token instead of a full
forward pass over the sequence. The cache is exact for a causal model, so the cached sampler
must give the same tokens as `arm_sample` (a full forward pass per token, the reference).

`cached_model` is anything called like the shipped `MDMForMaskedLM` (convert/hf_modeling):
`cached_model(input_ids=..., kv_cache=..., use_cache=True)` -> `.logits`, `.kv_cache`.
The next token is `gumbel_argmax` of the last position's logits (float64 Gumbel-max at a
temperature, greedy at 0), the draw the diffusion samplers use. Rows that have produced EOS keep
emitting EOS; sampling stops early once every row has (`eos_id=None`: never, which gives
exactly `gen_length` tokens, as benchmarks at equal length need).
"""

from __future__ import annotations

import torch

from megatron_mdm.diffusion.sampling import Generators, ModelFn, gumbel_argmax, logits_at


def _next_token(
    logits: torch.Tensor,
    done: torch.Tensor,
    temperature: float,
    eos_id: int | None,
    generator: Generators,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(next token [B], updated done [B]) from last-position logits [B, V]."""
    token = gumbel_argmax(logits, temperature, generator)
    if eos_id is None:
        return token, done
    token = torch.where(done, torch.full_like(token, eos_id), token)
    return token, done | (token == eos_id)


def _check(prompt: torch.Tensor, gen_length: int) -> None:
    if prompt.shape[1] < 1:
        raise ValueError("the ARM sampler needs a prompt of at least one token")
    if gen_length < 1:
        raise ValueError(f"gen_length must be positive, not {gen_length}")


@torch.no_grad()
def arm_sample(
    model_fn: ModelFn,
    prompt: torch.Tensor,
    gen_length: int = 128,
    temperature: float = 0.0,
    eos_id: int | None = None,
    generator: Generators = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """prompt [B, P] -> [B, P + n], n <= gen_length; a full causal forward pass per token."""
    _check(prompt, gen_length)
    x = prompt
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    calls = 0
    for _ in range(gen_length):
        last = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
        last[:, -1] = True
        logits = logits_at(model_fn, x, last)  # the output layer on the last position only
        calls += 1
        token, done = _next_token(logits, done, temperature, eos_id, generator)
        x = torch.cat([x, token[:, None]], dim=1)
        if bool(done.all()):
            break
    if stats is not None:
        stats["model_calls"] = calls
    return x


@torch.no_grad()
def arm_sample_kv(
    cached_model,
    prompt: torch.Tensor,
    gen_length: int = 128,
    temperature: float = 0.0,
    eos_id: int | None = None,
    generator: Generators = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """prompt [B, P] -> [B, P + n], n <= gen_length; prefill once, then one token per call."""
    _check(prompt, gen_length)
    last = torch.zeros(prompt.shape, dtype=torch.bool, device=prompt.device)
    last[:, -1] = True
    out = cached_model(input_ids=prompt, use_cache=True, output_positions=last)
    calls = 1
    tokens = [prompt]
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    for i in range(gen_length):
        logits = out.logits if i == 0 else out.logits[:, -1]  # prefill: the last row only
        token, done = _next_token(logits, done, temperature, eos_id, generator)
        tokens.append(token[:, None])
        if i == gen_length - 1 or bool(done.all()):
            break
        out = cached_model(input_ids=token[:, None], kv_cache=out.kv_cache, use_cache=True)
        calls += 1
    if stats is not None:
        stats["model_calls"] = calls
    return torch.cat(tokens, dim=1)
