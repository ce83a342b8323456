"""Samplers against a tiny deterministic fake-logits model (no training needed)."""

from __future__ import annotations

import pytest
import torch

from megatron_mdm.diffusion.sampling import (
    guided_logits,
    infill_sample,
    llada_sample,
    mdlm_sample,
    tokens_per_step,
)

V, MASK = 12, 12


class FakeModel:
    """Logits depend on position and on the sum of the visible tokens, so they change as tokens
    are revealed (which is what makes caching and remasking order observable). Records inputs."""

    def __init__(self):
        self.inputs = []

    def __call__(self, x):
        self.inputs.append(x.clone())
        b, length = x.shape
        visible = torch.where(x == MASK, torch.zeros_like(x), x).sum(1, keepdim=True)
        pos = torch.arange(length)[None, :, None]
        vocab = torch.arange(V + 1)[None, None, :]
        logits = torch.sin(0.7 * pos * (vocab + 1) + 0.3 * visible[..., None]).float() * 3
        logits[..., MASK] = float("-inf")
        return logits.expand(b, length, V + 1).clone()


def test_tokens_per_step_spreads_evenly():
    sched = tokens_per_step(torch.tensor([10, 3]), 4)
    assert sched.tolist() == [[3, 3, 2, 2], [1, 1, 1, 0]]


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_reveals_scheduled_count_in_block_order(remasking):
    model = FakeModel()
    prompt = torch.tensor([[1, 2, 3]])
    gen = torch.Generator().manual_seed(0)
    out = llada_sample(
        model,
        prompt,
        MASK,
        gen_length=8,
        steps=8,
        block_length=4,
        remasking=remasking,
        generator=gen,
    )
    assert (out != MASK).all() and torch.equal(out[:, :3], prompt)
    masks_before = [int((x == MASK).sum()) for x in model.inputs]
    assert masks_before == list(range(8, 0, -1))  # exactly one token per step
    for x in model.inputs[:4]:  # first block's steps: the second block stays fully masked
        assert (x[0, 7:] == MASK).all()
    for x in model.inputs[4:]:
        assert (x[0, 3:7] != MASK).all()


def test_temperature_zero_is_deterministic_and_sampling_is_seeded():
    prompt = torch.tensor([[4, 5]])
    a = llada_sample(FakeModel(), prompt, MASK, gen_length=6, steps=3, block_length=6)
    b = llada_sample(FakeModel(), prompt, MASK, gen_length=6, steps=3, block_length=6)
    assert torch.equal(a, b)
    hot = [
        llada_sample(
            FakeModel(),
            prompt,
            MASK,
            gen_length=6,
            steps=6,
            block_length=6,
            temperature=5.0,
            generator=torch.Generator().manual_seed(s),
        )
        for s in (1, 1, 2)
    ]
    assert torch.equal(hot[0], hot[1]) and not torch.equal(hot[0], hot[2])


def test_cfg_formula_and_unconditional_input():
    model = FakeModel()
    x = torch.tensor([[1, 2, MASK, MASK]])
    prompt_index = torch.tensor([[True, True, False, False]])
    out = guided_logits(model, x, prompt_index, 1.5, MASK)
    both = model.inputs[-1]
    assert torch.equal(both[0], x[0]) and torch.equal(both[1], torch.full((4,), MASK))
    cond, uncond = FakeModel()(x), FakeModel()(both[1:])
    expected = uncond + 2.5 * (cond - uncond)
    finite = torch.isfinite(expected)
    torch.testing.assert_close(out[finite], expected[finite])
    assert torch.equal(guided_logits(FakeModel(), x, prompt_index, 0.0, MASK), FakeModel()(x))


def test_mdlm_cache_gives_identical_samples_with_fewer_calls():
    prompt = torch.tensor([[1, 2], [3, 4]])
    runs = {}
    for cache in (False, True):
        stats = {}
        out = mdlm_sample(
            FakeModel(),
            prompt,
            MASK,
            gen_length=6,
            steps=64,
            cache=cache,
            generator=torch.Generator().manual_seed(7),
            stats=stats,
        )
        runs[cache] = (out, stats["model_calls"])
    assert torch.equal(runs[True][0], runs[False][0])
    assert (runs[True][0] != MASK).all()
    assert runs[False][1] == 64 and runs[True][1] < 64


def test_infill_fills_a_middle_span_in_place_one_token_per_step():
    """Masks between prompt tokens: only they change, one per step, each step's model input
    keeps the prompt on both sides; at temperature 0 each revealed token is the argmax the model
    gave at that step (checked against the recorded inputs)."""
    model = FakeModel()
    canvas = torch.tensor([[1, MASK, MASK, MASK, 4, 5], [MASK, MASK, 2, 3, MASK, 6]])
    out = infill_sample(model, canvas, MASK, steps=3)
    keep = canvas != MASK
    assert (out != MASK).all() and torch.equal(out[keep], canvas[keep])
    assert [int((x == MASK).sum()) for x in model.inputs] == [6, 4, 2]  # 1 per row per step
    for before, after in zip(model.inputs, model.inputs[1:] + [out], strict=True):
        changed = (before != after) & (before == MASK)
        assert changed.sum(1).tolist() == [1, 1]
        argmax = FakeModel()(before).argmax(-1)
        assert torch.equal(after[changed], argmax[changed])


def test_infill_of_a_tail_matches_llada_one_block():
    """A canvas masked after the prompt is llada_sample's one-block case, draw for draw."""
    prompt = torch.tensor([[3, 1, 4], [1, 5, 9]])
    for temperature, remasking in [
        (0.0, "low_confidence"),
        (1.0, "random"),
        (0.7, "low_confidence"),
    ]:
        ref = llada_sample(
            FakeModel(), prompt, MASK, gen_length=6, steps=3, block_length=6,
            temperature=temperature, remasking=remasking,
            generator=torch.Generator().manual_seed(4),
        )  # fmt: skip
        canvas = torch.cat([prompt, torch.full((2, 6), MASK)], 1)
        got = infill_sample(
            FakeModel(), canvas, MASK, steps=3, temperature=temperature, remasking=remasking,
            generator=torch.Generator().manual_seed(4),
        )  # fmt: skip
        assert torch.equal(got, ref)
    with pytest.raises(ValueError, match="remasking"):
        infill_sample(FakeModel(), canvas, MASK, remasking="top")
