"""Block diffusion inference (docs/design.md §11): the shipped modeling file's block mask, training
layout and exact KV cache against recomputations without them, and `--sampler block`'s cached
output against the no-cache reference that re-runs the whole prefix every step."""

from __future__ import annotations

import pytest
import torch
from helpers import TORCH_MASK, TORCH_VOCAB, tiny_config, tiny_model

from megatron_mdm.diffusion.block_sampling import block_diffusion_sample, steps_per_block

B = 4


@pytest.fixture(scope="module")
def model():
    return tiny_model(tiny_config("block", block_size=B), seed=3)


def ids(*shape, seed=0):
    return torch.randint(0, TORCH_VOCAB - 1, shape, generator=torch.Generator().manual_seed(seed))


def test_block_causal_forward_sees_earlier_blocks_only(model):
    x = ids(1, 12)
    with torch.no_grad():
        base = model(input_ids=x).logits
        x2 = x.clone()
        x2[0, 5] = (x2[0, 5] + 1) % (TORCH_VOCAB - 1)  # block 1
        moved = (model(input_ids=x2).logits - base)[..., :TORCH_MASK].abs().amax(-1)[0]
    assert moved[:4].max() == 0 and moved[4:].min() > 1e-6


def test_training_layout_equals_one_forward_per_block(model):
    """x_t block k under [x_t; x_0] = the block-causal forward of x_0's blocks < k followed by
    x_t's block k, at the same positions (the definition of the mask, run independently)."""
    xt, x0 = ids(2, 10, seed=1), ids(2, 10, seed=2)
    with torch.no_grad():
        got = model(input_ids=xt, clean_input_ids=x0).logits
        assert got.shape == (2, 10, TORCH_VOCAB)
        for start in range(0, 10, B):
            end = min(start + B, 10)
            prefix = torch.cat([x0[:, :start], xt[:, start:end]], dim=1)
            want = model(input_ids=prefix).logits[:, start:end]
            assert (got[:, start:end] - want)[..., :TORCH_MASK].abs().max() < 1e-5


def test_kv_cache_is_exact_for_committed_blocks(model):
    x = ids(2, 11, seed=4)
    with torch.no_grad():
        full = model(input_ids=x).logits
        out = model(input_ids=x[:, :8], use_cache=True)
        tail = model(input_ids=x[:, 8:], kv_cache=out.kv_cache).logits
    assert (tail - full[:, 8:])[..., :TORCH_MASK].abs().max() < 1e-5


def _both(model, prompt, **kw):
    stats_cached, stats_plain = {}, {}
    cached = block_diffusion_sample(
        prompt, TORCH_MASK, B, cached_model=model, stats=stats_cached, **kw
    )
    plain = block_diffusion_sample(
        prompt,
        TORCH_MASK,
        B,
        model_fn=lambda x: model(input_ids=x).logits,
        stats=stats_plain,
        **kw,
    )
    return cached, plain, stats_cached, stats_plain


@pytest.mark.parametrize("prompt_length", [4, 6, 1])
@pytest.mark.parametrize("cfg", [0.0, 1.5])
@pytest.mark.parametrize("threshold", [None, 0.05])
def test_cached_sampler_equals_no_cache_reference(model, prompt_length, cfg, threshold):
    prompt = ids(2, prompt_length, seed=prompt_length)
    cached, plain, sc, sp = _both(
        model, prompt, gen_length=12, steps=6, cfg=cfg, threshold=threshold
    )
    assert torch.equal(cached, plain)
    assert cached.shape == (2, prompt_length + 12) and not (cached == TORCH_MASK).any()
    assert torch.equal(cached[:, :prompt_length], prompt)
    assert sc["positions"] < sp["positions"]
    blocks = -(-(prompt_length % B + 12) // B)  # the first block completes the prompt's
    assert sc["model_calls"] == sp["model_calls"] + (prompt_length >= B) + blocks - 1


def test_temperature_draws_agree_with_and_without_cache(model):
    prompt = ids(1, 5, seed=9)
    kw = dict(gen_length=8, steps=8, temperature=0.8, generator=None)
    outs = []
    for cached in (True, False):
        kw["generator"] = torch.Generator().manual_seed(7)
        fn = (
            {"cached_model": model} if cached else {"model_fn": lambda x: model(input_ids=x).logits}
        )
        outs.append(block_diffusion_sample(prompt, TORCH_MASK, B, **kw, **fn))
    assert torch.equal(*outs)


def test_eos_stops_at_a_block_boundary(model):
    prompt = ids(1, 4, seed=5)
    full = block_diffusion_sample(prompt, TORCH_MASK, B, 12, 12, cached_model=model)
    generated = full[0, 4:].tolist()
    eos = generated[5]  # pretend the token at generated position 5 (block 2) is EOS
    first = generated.index(eos)
    stopped = block_diffusion_sample(prompt, TORCH_MASK, B, 12, 12, eos_id=eos, cached_model=model)
    assert stopped.shape[1] == 4 + (first // B + 1) * B
    assert torch.equal(stopped, full[:, : stopped.shape[1]])


def test_steps_per_block_rule():
    assert steps_per_block(64, 64, 16) == 16 and steps_per_block(128, 32, 32) == 8
    with pytest.raises(ValueError, match="multiple of gen_length"):
        steps_per_block(12, 5, 4)


# ------------------------------------------------------------------ the block ELBO


def _exact_block_elbo(model, prompt, answer, block_size):
    """Sum over answer blocks of the exact ELBO, every subset of the block enumerated, each
    scored by a block-causal forward of the clean prefix and the noised block."""
    from itertools import combinations

    from megatron_mdm.eval.likelihood import answer_blocks

    x0 = torch.cat([prompt, answer])
    p_len, total = len(prompt), 0.0
    for start, end in answer_blocks(p_len, len(answer), block_size):
        n = end - start
        for count in range(1, n + 1):
            subsets = list(combinations(range(start, end), count))
            for subset in subsets:
                x = x0[: p_len + end].clone()
                for i in subset:
                    x[p_len + i] = TORCH_MASK
                with torch.no_grad():
                    logp = torch.log_softmax(model(input_ids=x[None]).logits[0].double(), -1)
                ll = sum(logp[p_len + i, answer[i]].item() for i in subset)
                total += (n / count) * ll / (n * len(subsets))
    return total


def test_block_elbo_at_block_size_1_is_exact():
    from megatron_mdm.eval.likelihood import estimate_log_likelihood

    model = tiny_model(tiny_config("block", block_size=1), seed=4)
    prompt, answer = ids(3, seed=1), ids(5, seed=2)
    est = estimate_log_likelihood(
        lambda x: model(input_ids=x).logits,
        prompt.tolist(),
        answer.tolist(),
        mask_id=TORCH_MASK,
        objective="block",
        mc_num=8,
        batch_size=4,
        block_fn=lambda xt, x0: model(input_ids=xt, clean_input_ids=x0).logits,
        block_size=1,
    )
    assert est.stderr == pytest.approx(0.0, abs=1e-9)
    assert est.log_likelihood == pytest.approx(_exact_block_elbo(model, prompt, answer, 1), 1e-5)


@pytest.mark.parametrize("estimator", ["mc", "bernoulli"])
def test_block_elbo_estimators_are_unbiased(model, estimator):
    from megatron_mdm.eval.likelihood import estimate_log_likelihood

    prompt, answer = ids(2, seed=5), ids(6, seed=6)  # blocks: 2 + 4 answer tokens
    est = estimate_log_likelihood(
        lambda x: model(input_ids=x).logits,
        prompt.tolist(),
        answer.tolist(),
        mask_id=TORCH_MASK,
        objective="block",
        estimator=estimator,
        mc_num=512,
        batch_size=32,
        block_fn=lambda xt, x0: model(input_ids=xt, clean_input_ids=x0).logits,
        block_size=B,
    )
    exact = _exact_block_elbo(model, prompt, answer, B)
    assert abs(est.log_likelihood - exact) < 4 * est.stderr + 1e-6, (est, exact)


def test_answer_blocks_follow_absolute_block_boundaries():
    from megatron_mdm.eval.likelihood import answer_blocks

    assert answer_blocks(0, 8, 4) == [(0, 4), (4, 8)]
    assert answer_blocks(3, 7, 4) == [(0, 1), (1, 5), (5, 7)]
    assert answer_blocks(5, 2, 1) == [(0, 1), (1, 2)]


# ------------------------------------------------------------------ generate() and its checks


def _inference_model(model):
    from megatron_mdm.inference.loading import InferenceModel

    return InferenceModel(
        model_fn=lambda x: model(input_ids=x).logits,
        tokenizer=None,
        mask_id=TORCH_MASK,
        eos_id=1,
        objective="block",
        device=torch.device("cpu"),
        load_cached_model=lambda: model,
        block_size=B,
        block_fn=lambda xt, x0: model(input_ids=xt, clean_input_ids=x0).logits,
    )


def test_generate_defaults_to_the_block_sampler_and_checks_its_options(model):
    from megatron_mdm.inference.generate import generate
    from megatron_mdm.inference.sampling_config import SamplingConfig, SamplingError

    m = _inference_model(model)
    prompt = ids(1, 6, seed=8)
    config = SamplingConfig(gen_length=8, steps=8, threshold=None, stop_at_eos=False)
    cached, plain = generate(m, prompt, config), generate(m, prompt, config.replace(cache="none"))
    want = block_diffusion_sample(prompt, TORCH_MASK, B, 8, 8, cached_model=model)
    assert torch.equal(cached, want) and torch.equal(plain, want)
    for bad, message in (
        (config.replace(block_length=8), "differs from the model's block size 4"),
        (config.replace(steps=3), "multiple of gen_length"),
        (config.replace(sampler="llada"), "this is a block diffusion model"),
        (config.replace(remasking="random", threshold=0.9), "needs remasking=low_confidence"),
    ):
        with pytest.raises(SamplingError, match=message):
            generate(m, prompt, bad)


@pytest.mark.parametrize(
    "requested,objective", [("block", "mdm"), ("block", "arm"), ("fast", "block"), ("arm", "block")]
)
def test_block_sampler_and_block_models_go_together(requested, objective):
    from megatron_mdm.inference.sampling_config import SamplingError, pick_sampler

    assert pick_sampler(None, "block") == "block" and pick_sampler("block", "block") == "block"
    with pytest.raises(SamplingError, match=f"--sampler {requested} needs"):
        pick_sampler(requested, objective)


def test_perplexity_of_a_block_model_is_the_sum_of_window_elbos():
    import math

    from megatron_mdm.eval.ppl import perplexity_bound

    model = tiny_model(tiny_config("block", block_size=1), seed=4)
    m = _inference_model(model)
    m.block_size = 1
    tokens = ids(11, seed=12).numpy()
    result = perplexity_bound(m, tokens, 6, mc_num=4, batch_size=2, progress=False)
    windows = [torch.as_tensor(tokens[:6]), torch.as_tensor(tokens[6:])]
    empty = torch.zeros(0, dtype=torch.long)
    exact = sum(_exact_block_elbo(model, empty, w, 1) for w in windows)
    assert result.bound and result.windows == 2 and result.tokens == 11
    assert result.nll_per_token == pytest.approx(-exact / 11, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(-exact / 11), rel=1e-5)
