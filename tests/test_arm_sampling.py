"""ARM sampler: the KV-cached decoder against a full forward pass per token, on a tiny random
causal `MDMForMaskedLM` (the model every cached sampler runs)."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_config, tiny_model

from megatron_mdm.diffusion.arm_sampling import arm_sample, arm_sample_kv

VOCAB, MASK = 37, 36


def prompt(batch=2, length=5, seed=3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB - 1, (batch, length), generator=g)


def finite(t: torch.Tensor) -> torch.Tensor:
    return t[..., :MASK]  # [MASK] logits are -inf


@pytest.mark.parametrize("kv_heads", [4, 1])
def test_cache_prefill_then_one_token_at_a_time_matches_full_forward(kv_heads):
    model = tiny_model(tiny_config("arm", kv_heads=kv_heads))
    x = prompt(length=11)
    with torch.no_grad():
        full = model(input_ids=x).logits
        out = model(input_ids=x[:, :4], use_cache=True)
        pieces = [out.logits]
        # a 2-token chunk (the cached causal mask), then one token at a time (no mask)
        for lo, hi in [(4, 6)] + [(t, t + 1) for t in range(6, 11)]:
            out = model(input_ids=x[:, lo:hi], kv_cache=out.kv_cache, use_cache=True)
            pieces.append(out.logits)
    assert out.kv_cache[0][0].shape == (2, kv_heads, 11, 8)
    torch.testing.assert_close(finite(torch.cat(pieces, 1)), finite(full), rtol=0, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 1.5])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_kv_cache_gives_identical_tokens_to_uncached(temperature, kv_heads):
    model = tiny_model(tiny_config("arm", kv_heads=kv_heads))
    runs, calls = [], []
    for cached in (False, True):
        stats = {}
        gen = torch.Generator().manual_seed(11)
        if cached:
            out = arm_sample_kv(model, prompt(), 24, temperature, generator=gen, stats=stats)
        else:
            fn = lambda x: model(input_ids=x).logits  # noqa: E731
            out = arm_sample(fn, prompt(), 24, temperature, generator=gen, stats=stats)
        runs.append(out)
        calls.append(stats["model_calls"])
    assert runs[0].shape == (2, 5 + 24)
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0][:, :5], prompt())
    assert calls == [24, 24]
    if temperature:  # the draw is really random: another seed gives other tokens
        other = arm_sample_kv(model, prompt(), 24, temperature, generator=torch.Generator())
        assert not torch.equal(other, runs[1])


def test_stops_at_eos_and_pads_finished_rows():
    model = tiny_model(tiny_config("arm"))
    free = arm_sample_kv(model, prompt(), 16)
    generated = free[:, 5:]
    # make the token row 0 produces at its 4th step the EOS; rows must stop there
    eos = int(generated[0, 3])
    first = [row.tolist().index(eos) if eos in row.tolist() else None for row in generated]
    stopped = arm_sample_kv(model, prompt(), 16, eos_id=eos)
    reference = arm_sample(lambda x: model(input_ids=x).logits, prompt(), 16, eos_id=eos)
    assert torch.equal(stopped, reference)
    ends = [f for f in first if f is not None]
    expected_len = 16 if None in first else max(ends) + 1
    assert stopped.shape[1] == 5 + expected_len
    for row, f in enumerate(first):
        got = stopped[row, 5:].tolist()
        if f is None:
            assert got == generated[row].tolist()
        else:
            assert got[: f + 1] == generated[row, : f + 1].tolist()
            assert all(t == eos for t in got[f:])


def test_empty_prompt_is_an_error():
    with pytest.raises(ValueError, match="prompt"):
        arm_sample_kv(tiny_model(tiny_config("arm")), torch.zeros(1, 0, dtype=torch.long), 4)
