"""Fast-dLLM decoding: exactly LLaDA when switched off, a cache that reproduces the full forward
pass where it is exact, and the confidence-threshold rule, on tiny random `MDMForMaskedLM`s."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_config, tiny_model
from reference_llada import reference_llada_sample

from megatron_mdm.diffusion.fast_sampling import BlockLogits, fast_sample
from megatron_mdm.diffusion.sampling import FullLogits, llada_sample

VOCAB, MASK = 37, 36
PROMPT = torch.tensor([[3, 9, 4, 1, 5], [2, 6, 5, 3, 5]])


def model_fn(model):
    return lambda x: model(input_ids=x).logits


def finite(t: torch.Tensor) -> torch.Tensor:
    return t[..., :MASK]


@pytest.mark.parametrize(
    "remasking,temperature,cfg",
    [("low_confidence", 0.0, 0.0), ("random", 1.0, 0.0), ("low_confidence", 0.7, 1.5)],
)
def test_no_cache_no_threshold_is_exactly_llada(remasking, temperature, cfg):
    """`llada` and `fast` without cache or threshold share one block loop and reveal step; both
    must reproduce the plain LLaDA loop written out in tests/reference_llada.py draw for draw."""
    model = tiny_model(tiny_config())
    kw = dict(
        gen_length=12,
        steps=8,
        block_length=6,
        temperature=temperature,
        remasking=remasking,
        cfg=cfg,
    )
    want = reference_llada_sample(
        model_fn(model), PROMPT, MASK, generator=torch.Generator().manual_seed(5), **kw
    )
    llada = llada_sample(
        model_fn(model), PROMPT, MASK, generator=torch.Generator().manual_seed(5), **kw
    )
    assert torch.equal(llada, want)
    stats = {}
    got = fast_sample(
        model_fn(model),
        PROMPT,
        MASK,
        generator=torch.Generator().manual_seed(5),
        stats=stats,
        **kw,
    )
    assert torch.equal(got, want) and (got != MASK).all()
    assert stats["model_calls"] == 8


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("cfg", [0.0, 1.0])
def test_cached_logits_equal_a_full_forward_while_nothing_changed(cache, cfg):
    """Block start: the whole sequence runs once; the next step, on the same tokens, recomputes
    only part of it from the kept keys/values and must give the full pass's logits there."""
    model = tiny_model(tiny_config(kv_heads=2))
    x = torch.cat([PROMPT, torch.full((2, 12), MASK)], dim=1)
    x[:, 5:9] = torch.tensor([[7, 8, 9, 10], [11, 12, 13, 14]])  # first block done
    x[:, 10] = 4  # one token revealed inside the current block [9, 13)
    prompt_index = torch.zeros_like(x, dtype=torch.bool)
    prompt_index[:, :5] = True
    exact = FullLogits(model_fn(model), prompt_index, cfg, MASK)
    cached = BlockLogits(model, cache, prompt_index, cfg, MASK, 9, 13)
    every = torch.ones_like(x, dtype=torch.bool)  # the logits of every covered position
    _, _, full = exact(x, 0, every)
    full = full.view(*x.shape, -1)
    lo, hi, first = cached(x, 0, every)
    assert (lo, hi) == (0, 17)
    torch.testing.assert_close(finite(first.view(*x.shape, -1)), finite(full), rtol=0, atol=1e-5)
    lo, hi, again = cached(x, 1, every)
    again = again.view(2, hi - lo, -1)
    assert lo == 9 and again.shape[1] == (13 - 9 if cache == "dual" else 17 - 9)
    assert finite(full).abs().max() > 1.0 and not again.isnan().any()
    torch.testing.assert_close(
        finite(again), finite(full[:, 9 : 9 + again.shape[1]]), atol=1e-5, rtol=0
    )
    assert cached.positions == 17 + again.shape[1]


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cache_is_exact_for_a_causal_model(cache):
    """Under a causal mask the prefix's keys never depend on later tokens and no query sees the
    suffix, so the kept keys/values are exact: the cached sampler must match LLaDA token for
    token, while running fewer positions through the model."""
    model = tiny_model(tiny_config("arm", kv_heads=2))
    kw = dict(gen_length=12, steps=12, block_length=4)
    want = reference_llada_sample(model_fn(model), PROMPT, MASK, **kw)
    stats = {}
    got = fast_sample(None, PROMPT, MASK, cache=cache, cached_model=model, stats=stats, **kw)
    assert torch.equal(got, want)
    # per block: one full pass of 17 positions, then 3 steps of block (+ suffix for prefix)
    suffix = {"prefix": [8, 4, 0], "dual": [0, 0, 0]}[cache]
    assert stats["positions"] == sum(17 + 3 * (4 + s) for s in suffix)
    assert stats["model_calls"] == 12


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_bidirectional_model_samples_every_position(cache):
    model = tiny_model(tiny_config())
    out = fast_sample(
        model_fn(model),
        PROMPT,
        MASK,
        gen_length=12,
        steps=12,
        block_length=4,
        threshold=0.5,
        cache=cache,
        cached_model=model,
    )
    assert out.shape == (2, 17) and (out != MASK).all() and torch.equal(out[:, :5], PROMPT)


class ConfidenceModel:
    """Logits whose softmax puts probability `conf[p]` on token `p % 7` at generated position p
    (the rest spread evenly), independent of the input: the threshold rule can be read off."""

    def __init__(self, conf):
        self.conf = torch.tensor(conf, dtype=torch.float64)
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        b, length = x.shape
        probs = torch.full((length, VOCAB), 0.0, dtype=torch.float64)
        for p in range(length):
            c = float(self.conf[p - 2]) if p >= 2 else 0.9
            probs[p, :MASK] = (1 - c) / (MASK - 1)
            probs[p, p % 7] = c
        logits = probs.log()
        logits[:, MASK] = -torch.inf
        return logits.expand(b, length, VOCAB).float()


def test_threshold_reveals_every_confident_token_and_at_least_one():
    conf = [0.5, 0.95, 0.2, 0.99, 0.3, 0.6]
    prompt = torch.tensor([[1, 2]])
    model = ConfidenceModel(conf)
    trace = []

    def record(x):
        trace.append(x.clone())
        return model(x)

    out = fast_sample(record, prompt, MASK, gen_length=6, steps=6, block_length=6, threshold=0.55)
    assert [int((x == MASK).sum()) for x in trace] == [6, 3, 2, 1]
    step1 = trace[1][0, 2:] != MASK  # confidences 0.95, 0.99, 0.6 are > 0.55
    assert step1.tolist() == [False, True, False, True, False, True]
    assert out[0, 2:].tolist() == [p % 7 for p in range(2, 8)]
    # at or above every confidence: one token a step, most confident first, like LLaDA
    model.calls = 0
    llada = llada_sample(model, prompt, MASK, gen_length=6, steps=6, block_length=6)
    fast = fast_sample(model, prompt, MASK, gen_length=6, steps=6, block_length=6, threshold=1.0)
    assert torch.equal(fast, llada) and model.calls == 12


def test_threshold_ends_a_block_early():
    model = ConfidenceModel([0.9] * 8)
    stats = {}
    fast_sample(model, torch.tensor([[1, 2]]), MASK, 8, 8, 4, threshold=0.5, stats=stats)
    assert stats["model_calls"] == 2  # one step per block


def test_bad_arguments():
    model = tiny_model(tiny_config())
    with pytest.raises(ValueError, match="low_confidence"):
        fast_sample(model_fn(model), PROMPT, MASK, 4, 4, 4, remasking="random", threshold=0.9)
    with pytest.raises(ValueError, match="cache"):
        fast_sample(model_fn(model), PROMPT, MASK, 4, 4, 4, cache="prefix")
    with pytest.raises(ValueError, match="cache must be"):
        fast_sample(model_fn(model), PROMPT, MASK, 4, 4, 4, cache="both", cached_model=model)
    with pytest.raises(ValueError, match="multiple"):
        fast_sample(model_fn(model), PROMPT, MASK, 6, 4, 4)
