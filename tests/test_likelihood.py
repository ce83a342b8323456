"""Likelihood estimators (docs/design.md §7) against brute-force references on a toy model small
enough that every mask pattern (and every answer) can be enumerated.

The toy `model_fn` is a plain torch function of the whole input (bidirectional: every logit depends
on every position, so the CE of a masked token depends on which other tokens are masked), with
`[MASK]` never predicted, as the real model. The estimators only see `model_fn`."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from megatron_mdm.data.byte_tokenizer import ByteTokenizer
from megatron_mdm.eval.likelihood import (
    arm_log_likelihood,
    bernoulli_samples,
    chain_rule_log_likelihood,
    encode_pair,
    estimate_log_likelihood,
    mc_samples,
    mdm_greedy_matches,
    stratified_mask_counts,
    summarize_samples,
)

VOCAB = 4  # real tokens 0..3
MASK = 4
PROMPT = [1, 3]
ANSWER = [2, 0, 3, 1]


class ToyModel:
    """ids [B, L] -> logits [B, L, VOCAB + 1]; causal=True makes position i see only x[:i+1]."""

    def __init__(self, causal: bool = False, seed: int = 0, width: int = 8):
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(VOCAB + 1, width, generator=g, dtype=torch.float64)
        self.pos = torch.randn(16, width, generator=g, dtype=torch.float64)
        self.mix = torch.randn(width, width, generator=g, dtype=torch.float64)
        self.out = 2.0 * torch.randn(width, VOCAB + 1, generator=g, dtype=torch.float64)
        self.causal = causal

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb[x] + self.pos[: x.shape[1]]
        if self.causal:
            context = h.cumsum(1) / torch.arange(1, x.shape[1] + 1, dtype=h.dtype)[None, :, None]
        else:
            context = h.mean(1, keepdim=True)
        logits = torch.tanh(h + context @ self.mix) @ self.out
        logits[..., MASK] = -torch.inf
        return logits.float()


def reference_log_probs(model, x: list[int]) -> torch.Tensor:
    """log softmax of one unbatched sequence, in float64."""
    return torch.log_softmax(model(torch.tensor([x]))[0].double(), -1)


def guided(model, w: float, prompt_len: int):
    """CFG written out: two separate forward passes (cond, prompt-masked uncond)."""

    def fn(x):
        uncond = x.clone()
        uncond[:, :prompt_len] = MASK
        cond_logits, uncond_logits = model(x), model(uncond)
        out = uncond_logits + (w + 1.0) * (cond_logits - uncond_logits)
        out[..., MASK] = -torch.inf  # never predicted, in either pass
        return out

    return fn


def exact_elbo(model, prompt, answer) -> float:
    """sum_l P(l) sum_{|S|=l} P(S|l) * -(A/l) * sum_{i in S} CE: every l, every subset."""
    a_len, p_len = len(answer), len(prompt)
    total = 0.0
    for size in range(1, a_len + 1):
        for subset in itertools.combinations(range(a_len), size):
            x = prompt + [MASK if i in subset else t for i, t in enumerate(answer)]
            logp = reference_log_probs(model, x)
            ce = -sum(logp[p_len + i, answer[i]].item() for i in subset)
            total += (1 / a_len) * (1 / math.comb(a_len, size)) * -(a_len / size) * ce
    return total


def reference_chain_rule(model, prompt, answer) -> float:
    total = 0.0
    for i in range(len(answer)):
        x = prompt + answer[:i] + [MASK] * (len(answer) - i)
        total += reference_log_probs(model, x)[len(prompt) + i, answer[i]].item()
    return total


def tensors(prompt, answer):
    return torch.tensor(prompt), torch.tensor(answer)


@pytest.mark.parametrize("cfg", [0.0, 1.5])
def test_mc_estimator_mean_is_the_enumerated_elbo(cfg):
    model = ToyModel()
    reference_fn = guided(model, cfg, len(PROMPT)) if cfg else model
    exact = exact_elbo(reference_fn, PROMPT, ANSWER)
    samples = mc_samples(
        model,
        *tensors(PROMPT, ANSWER),
        MASK,
        mc_num=512,
        batch_size=8,
        cfg=cfg,
        generator=torch.Generator().manual_seed(1),
    )
    estimate = summarize_samples(samples, 8, "mc")
    assert 0 < estimate.stderr < 0.1 * abs(exact)
    assert abs(estimate.log_likelihood - exact) < 3 * estimate.stderr


def test_mc_estimator_has_lower_variance_than_per_token_masking():
    model = ToyModel()
    prompt, answer = tensors(PROMPT, ANSWER)
    exact = exact_elbo(model, PROMPT, ANSWER)

    def draw(estimator, batch_size: int, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return estimator(
            model,
            prompt,
            answer,
            MASK,
            mc_num=1024,
            batch_size=batch_size,
            cfg=0.0,
            generator=generator,
        )

    # Single samples, no stratification: the choice of l alone beats t-masking with 1/t weights.
    mc1, bern1 = draw(mc_samples, 1, 2), draw(bernoulli_samples, 1, 2)
    assert mc1.var() < bern1.var()
    # Both are unbiased for the same ELBO: the Bernoulli mean is only noisier.
    assert abs(mc1.mean().item() - exact) < 3 * mc1.std().item() / math.sqrt(len(mc1))
    # Stratified batches: the variance of the batch means (what the final estimate carries).
    mc8, bern8 = draw(mc_samples, 8, 3), draw(bernoulli_samples, 8, 3)
    assert mc8.view(-1, 8).mean(1).var() < bern8.view(-1, 8).mean(1).var()
    assert mc8.view(-1, 8).mean(1).var() < mc1.view(-1, 8).mean(1).var()


def test_stratified_counts_cover_every_length_and_are_uniform():
    g = torch.Generator().manual_seed(0)
    batch = stratified_mask_counts(5, 10, g)
    assert sorted(batch.tolist()) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    draws = torch.cat([stratified_mask_counts(5, 3, g) for _ in range(4000)])
    freq = torch.bincount(draws, minlength=6)[1:].double() / len(draws)
    assert torch.allclose(freq, torch.full((5,), 0.2, dtype=torch.float64), atol=0.02)


@pytest.mark.parametrize("cfg", [0.0, 0.7])
def test_chain_rule_matches_a_left_to_right_loop(cfg):
    model = ToyModel(seed=4)
    reference_fn = guided(model, cfg, len(PROMPT)) if cfg else model
    expected = reference_chain_rule(reference_fn, PROMPT, ANSWER)
    for batch in (1, 3, 32):
        got = chain_rule_log_likelihood(model, *tensors(PROMPT, ANSWER), MASK, batch, cfg)
        assert got == pytest.approx(expected, abs=1e-5)


def test_chain_rule_is_normalised_and_the_elbo_bounds_it_in_total():
    """The chain rule is a distribution over answers: probabilities of all V^A answers sum to 1.
    The ELBO is an average over decoding orders of such log-probabilities, so by Jensen its
    exponentials sum to at most 1."""
    model = ToyModel(seed=5)
    prompt = [2]
    answers = [list(a) for a in itertools.product(range(VOCAB), repeat=3)]
    chain = [chain_rule_log_likelihood(model, *tensors(prompt, a), MASK) for a in answers]
    assert sum(math.exp(v) for v in chain) == pytest.approx(1.0, abs=1e-4)
    elbo = [exact_elbo(model, prompt, a) for a in answers]
    assert sum(math.exp(v) for v in elbo) < 1.0


def test_arm_likelihood_is_the_exact_next_token_probability():
    model = ToyModel(causal=True, seed=6)
    bos = 3

    def loop(prompt, answer):  # one forward per answer token, over its prefix only
        context = prompt or [bos]
        total = 0.0
        for i, token in enumerate(answer):
            total += reference_log_probs(model, context + answer[:i])[-1, token].item()
        return total

    for prompt in (PROMPT, []):
        got, _ = arm_log_likelihood(model, *tensors(prompt, ANSWER), bos)
        assert got == pytest.approx(loop(prompt, ANSWER), abs=1e-5)
    answers = [list(a) for a in itertools.product(range(VOCAB), repeat=3)]
    total = sum(math.exp(arm_log_likelihood(model, *tensors(PROMPT, a), bos)[0]) for a in answers)
    assert total == pytest.approx(1.0, abs=1e-4)
    greedy = [max(range(VOCAB + 1), key=lambda v: reference_log_probs(model, PROMPT)[-1, v])]
    for _ in range(2):
        greedy.append(int(reference_log_probs(model, PROMPT + greedy)[-1].argmax()))
    assert arm_log_likelihood(model, *tensors(PROMPT, greedy), bos)[1]
    other = greedy[:-1] + [(greedy[-1] + 1) % VOCAB]
    assert not arm_log_likelihood(model, *tensors(PROMPT, other), bos)[1]


def test_mdm_greedy_check_follows_one_token_per_step_decoding():
    model = ToyModel(seed=7)
    x = PROMPT + [MASK] * 3
    while MASK in x:  # reveal the single most confident (position, token) each step
        logp = reference_log_probs(model, x)
        masked = [i for i, t in enumerate(x) if t == MASK]
        best = max(masked, key=lambda i: logp[i].max().item())
        x[best] = int(logp[best].argmax())
    greedy = x[len(PROMPT) :]
    assert mdm_greedy_matches(model, *tensors(PROMPT, greedy), MASK)
    wrong = greedy[:-1] + [(greedy[-1] + 1) % VOCAB]
    assert not mdm_greedy_matches(model, *tensors(PROMPT, wrong), MASK)


def test_estimate_is_keyed_by_seed_and_pair_and_checks_options():
    model = ToyModel()
    kw = dict(mask_id=MASK, mc_num=16, batch_size=8)
    a = estimate_log_likelihood(model, PROMPT, ANSWER, seed=1, **kw)
    b = estimate_log_likelihood(model, PROMPT, ANSWER, seed=1, **kw)
    c = estimate_log_likelihood(model, PROMPT, ANSWER, seed=2, **kw)
    assert a.log_likelihood == b.log_likelihood != c.log_likelihood
    assert a.num_tokens == 4 and a.num_samples == 16
    exact = estimate_log_likelihood(model, PROMPT, ANSWER, estimator="chain_rule", **kw)
    assert exact.stderr == 0 and exact.log_likelihood == pytest.approx(
        reference_chain_rule(model, PROMPT, ANSWER), abs=1e-5
    )
    with pytest.raises(ValueError, match="multiple"):
        estimate_log_likelihood(model, PROMPT, ANSWER, mask_id=MASK, mc_num=12, batch_size=8)
    with pytest.raises(ValueError, match="estimator"):
        estimate_log_likelihood(model, PROMPT, ANSWER, mask_id=MASK, estimator="nope")
    with pytest.raises(ValueError, match="cfg"):
        estimate_log_likelihood(
            model, PROMPT, ANSWER, mask_id=MASK, objective="arm", cfg=1.0, bos_id=0
        )


def test_encode_pair_moves_trailing_space_into_the_answer():
    tok = ByteTokenizer()
    assert encode_pair(tok, "Q: a ", "b") == (list(b"Q: a"), list(b" b"))
    assert encode_pair(tok, "", "xy") == ([], list(b"xy"))
