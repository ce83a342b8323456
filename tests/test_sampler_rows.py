"""Samplers that run the output layer on the revealable rows only (docs/design.md §14.3) give
the tokens of plain loops written here from the published algorithms, which compute the logits
of every position and a float64 softmax over the whole vocabulary at every step: LLaDA
(tests/reference_llada.py), Fast-dLLM with each cache, MDLM's ancestral sampler (seeded) and
greedy ARM decoding. Tiny random `MDMForMaskedLM`s, several seeds."""

from __future__ import annotations

import pytest
import torch
from helpers import TORCH_MASK, tiny_config, tiny_model
from reference_llada import reference_llada_sample

from megatron_mdm.diffusion.arm_sampling import arm_sample, arm_sample_kv
from megatron_mdm.diffusion.fast_sampling import fast_sample
from megatron_mdm.diffusion.sampling import (
    llada_sample,
    masked_canvas,
    mdlm_sample,
    tokens_per_step,
    top_k_rows,
)
from megatron_mdm.inference.loading import SelectiveModel

MASK = TORCH_MASK
PROMPT = torch.tensor([[3, 9, 4, 1, 5], [2, 6, 5, 3, 5], [7, 7, 1, 2, 0]])
CPU = torch.device("cpu")


def selective(model) -> SelectiveModel:
    return SelectiveModel(model, CPU, hf=True)


def full(model):
    return lambda x: model(input_ids=x).logits


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cfg", [0.0, 1.0])
def test_llada_on_revealable_rows_equals_the_reference(seed, cfg):
    model = tiny_model(tiny_config(), seed=seed)
    kw = dict(gen_length=12, steps=12, block_length=4, cfg=cfg)
    want = reference_llada_sample(full(model), PROMPT, MASK, **kw)
    stats: dict = {}
    got = llada_sample(selective(model), PROMPT, MASK, stats=stats, **kw)
    assert torch.equal(got, want)
    assert stats["model_calls"] == 12


@torch.no_grad()
def plain_fast(model, prompt, gen_length, steps, block_length, cache, threshold):
    """Fast-dLLM's greedy loop written out: the logits of every covered position, float64
    softmax over the vocabulary, top-k per row, the threshold rule; a block ends when done."""
    x = masked_canvas(prompt, gen_length, MASK)
    plen, length = prompt.shape[1], x.shape[1]
    blocks = gen_length // block_length
    for b in range(blocks):
        start, end = plen + b * block_length, plen + (b + 1) * block_length
        schedule = tokens_per_step((x[:, start:end] == MASK).sum(1), steps // blocks)
        kv = None
        for i in range(steps // blocks):
            if not bool((x[:, start:end] == MASK).any()):
                break
            lo = 0 if i == 0 or cache == "none" else start
            if lo == 0:
                out = model(input_ids=x, use_cache=True)
                keep = start if cache == "prefix" else length
                kv = [(k[:, :, :keep], v[:, :, :keep]) for k, v in out.kv_cache]
            elif cache == "prefix":
                out = model(input_ids=x[:, start:], kv_cache=kv)
            else:
                out = model(input_ids=x[:, start:end], kv_cache=kv, replace_at=start)
            logits = out.logits
            x0 = logits.argmax(-1)
            probs = torch.softmax(logits.to(torch.float64), dim=-1)
            conf = probs.gather(-1, x0[..., None])[..., 0]
            view = x[:, lo : lo + logits.shape[1]]
            conf[:, end - lo :] = -torch.inf
            conf = torch.where(view == MASK, conf, -torch.inf)
            for row in range(x.shape[0]):
                k = int(schedule[row, i])
                if threshold is not None:
                    confident = int((conf[row] > threshold).sum())
                    k = min(max(k, confident, 1), int(torch.isfinite(conf[row]).sum()))
                if k:
                    idx = torch.topk(conf[row], k).indices
                    view[row, idx] = x0[row, idx]
    return x


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("threshold", [None, 0.2])
def test_fast_on_revealable_rows_equals_a_plain_loop(seed, cache, threshold):
    model = tiny_model(tiny_config(kv_heads=2, initializer_range=0.5), seed=seed)
    args = (12, 12, 4)
    want = plain_fast(model, PROMPT, *args, cache, threshold)
    got = fast_sample(
        selective(model),
        PROMPT,
        MASK,
        *args,
        threshold=threshold,
        cache=cache,
        cached_model=model if cache != "none" else None,
    )
    assert torch.equal(got, want)


@torch.no_grad()
def plain_mdlm(model_fn, prompt, gen_length, steps, generator, eps=1e-5):
    """MDLM's ancestral loop: full logits and float64 softmax at every step."""
    x = masked_canvas(prompt, gen_length, MASK)
    times = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64)
    for i in range(steps):
        t, s = times[i].item(), times[i + 1].item()
        probs = torch.softmax(model_fn(x).to(torch.float64), dim=-1)
        u_reveal = torch.rand(x.shape, generator=generator, dtype=torch.float64)
        u_token = torch.rand(probs.shape, generator=generator, dtype=torch.float64)
        sampled = (probs.log() - torch.log(-torch.log(u_token.clamp_min(1e-300)))).argmax(-1)
        reveal_prob = 1.0 if i == steps - 1 else (t - s) / t
        reveal = (x == MASK) & (u_reveal < reveal_prob)
        x = torch.where(reveal, sampled, x)
    return x


@pytest.mark.parametrize("seed", [0, 1])
def test_mdlm_on_masked_rows_equals_a_plain_loop(seed):
    model = tiny_model(tiny_config(), seed=seed)
    want = plain_mdlm(full(model), PROMPT, 10, 7, torch.Generator().manual_seed(seed))
    for cache in (True, False):
        generator = torch.Generator().manual_seed(seed)
        got = mdlm_sample(selective(model), PROMPT, MASK, 10, 7, cache=cache, generator=generator)
        assert torch.equal(got, want)


@pytest.mark.parametrize("seed", [0, 1])
def test_arm_on_the_last_row_equals_a_plain_loop(seed):
    model = tiny_model(tiny_config("arm", kv_heads=2), seed=seed)
    x = PROMPT
    with torch.no_grad():
        for _ in range(8):
            x = torch.cat([x, model(input_ids=x).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(arm_sample(selective(model), PROMPT, 8), x)
    assert torch.equal(arm_sample_kv(model, PROMPT, 8), x)


def test_vectorised_top_k_equals_per_row_top_k():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(6, 9, generator=g, dtype=torch.float64)
    scores[scores < 0.3] = -torch.inf
    k = torch.tensor([0, 1, 3, 9, 2, 5])
    want = torch.zeros_like(scores, dtype=torch.bool)
    for row in range(6):
        if k[row]:
            want[row, torch.topk(scores[row], int(k[row])).indices] = True
    assert torch.equal(top_k_rows(scores, k), want)
    assert not top_k_rows(scores, torch.zeros(6, dtype=torch.long)).any()


@pytest.mark.parametrize("shift", [False, True])
def test_output_positions_are_the_selected_rows_of_the_full_logits(shift):
    """Also for a shifted model (design §13.4): the rows are those of the shifted logits."""
    model = tiny_model(tiny_config(shift=shift))
    x = masked_canvas(PROMPT, 6, MASK)
    select = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.4
    with torch.no_grad():
        every = model(input_ids=x).logits
        rows = model(input_ids=x, output_positions=select).logits
    assert rows.shape == (int(select.sum()), every.shape[-1])
    torch.testing.assert_close(rows, every[select], rtol=0, atol=1e-5)


@pytest.mark.parametrize("shift", [False, True])
def test_megatron_model_output_positions_are_the_selected_rows(single_rank_world, shift):
    """`--ckpt` models (megatron-core's GPTModel) gather the selected hidden states before the
    output layer: the logits equal the full pass's rows, with [MASK]/padding still -inf (for a
    shifted model, the shifted full pass's rows)."""
    from helpers import TINY_MODEL

    from megatron_mdm.config import load_config
    from megatron_mdm.model.builder import build_model
    from megatron_mdm.model.vocab import VocabLayout

    cfg = load_config(None, [*TINY_MODEL, "model.objective=mdm", f"diffusion.shift={shift}"])
    vocab = VocabLayout.build(100, None, 64, 1)
    model = build_model(cfg, vocab, on_gpu=False).eval()
    x = torch.randint(0, 100, (3, 16), generator=torch.Generator().manual_seed(0))
    x[:, 8:] = vocab.mask_id
    select = x == vocab.mask_id
    select[1, 12:] = False
    with torch.no_grad():
        every = model(x)
        rows = SelectiveModel(model, CPU, hf=False).at(x, select)
    assert rows.shape == (int(select.sum()), every.shape[-1])
    torch.testing.assert_close(rows, every[select], rtol=0, atol=1e-5)
    assert torch.isneginf(rows[:, 100:]).all()
