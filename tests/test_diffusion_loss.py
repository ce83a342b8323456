"""The training losses against independent re-computations of docs/design.md §3, and the masking
contract: masks depend only on (seed, step, position in the global batch)."""

from __future__ import annotations

import pytest
import torch

from megatron_mdm.config import load_config
from megatron_mdm.data.batches import build_micro_batch, micro_batch_positions
from megatron_mdm.diffusion.masking import crop_length, forward_mask, sample_t

V, MASK = 50, 50


def logits_with_mask_row(b, seq, gen):
    logits = torch.randn(b, seq, V + 14, generator=gen)
    logits[..., V:] = float("-inf")
    return logits


def reference_smdm(logits, x0, masked, p):
    """Loops straight from the formula: sum m * CE / p over (B * L)."""
    total = 0.0
    b_size, seq = x0.shape
    for b in range(b_size):
        for i in range(seq):
            if masked[b, i]:
                logp = torch.log_softmax(logits[b, i].double(), dim=-1)[x0[b, i]]
                total += -logp.item() / p[b].item()
    return total / (b_size * seq)


def test_smdm_loss_matches_formula(single_rank_world):
    from megatron_mdm.diffusion.loss import smdm_loss

    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, V, (3, 20), generator=gen)
    mb = forward_mask(x0, 7, 3, [0, 1, 2], 3, MASK, 1e-3, "uniform")
    logits = logits_with_mask_row(3, 20, gen)
    got = smdm_loss(logits.clone(), mb.x0, mb.masked, mb.p_mask).item()
    assert got == pytest.approx(reference_smdm(logits, mb.x0, mb.masked, mb.p_mask), rel=1e-5)


def test_mdlm_loss_weights_by_inverse_t(single_rank_world):
    from megatron_mdm.diffusion.loss import mdlm_loss

    gen = torch.Generator().manual_seed(1)
    eps = 1e-3
    x0 = torch.randint(0, V, (2, 12), generator=gen)
    mb = forward_mask(x0, 1, 0, [0, 1], 2, MASK, eps, "uniform")
    logits = logits_with_mask_row(2, 12, gen)
    # The schedule's time t is the one whose masking rate 1 - exp(-sigma(t)) is the rate the masks
    # were drawn at: solve it numerically (bisection), not with the module's closed form.
    p = mb.p_mask.double()
    lo, hi = torch.zeros_like(p), torch.full_like(p, 1.0 / (1 - eps))
    for _ in range(200):
        mid = (lo + hi) / 2
        rate = -torch.expm1(torch.log1p(-(1 - eps) * mid))
        lo, hi = torch.where(rate < p, mid, lo), torch.where(rate < p, hi, mid)
    t = (lo + hi) / 2
    # sigma(t) = -log(1-(1-eps)t): weight sigma'(t) / expm1(sigma(t)), computed numerically.
    sigma = -torch.log1p(-(1 - eps) * t.double())
    dsigma = (1 - eps) / (1 - (1 - eps) * t.double())
    weight = dsigma / torch.expm1(sigma)
    ce = -torch.log_softmax(logits.double(), -1).gather(-1, x0[..., None])[..., 0]
    expected = (ce * mb.masked * weight[:, None]).sum() / x0.numel()
    got = mdlm_loss(logits.clone(), mb.x0, mb.masked, mb.p_mask, eps)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_arm_loss_is_mean_next_token_ce(single_rank_world):
    from megatron_mdm.diffusion.loss import arm_loss

    gen = torch.Generator().manual_seed(2)
    logits = logits_with_mask_row(2, 9, gen)
    targets = torch.randint(0, V, (2, 9), generator=gen)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, V + 14), targets.reshape(-1))
    assert arm_loss(logits.clone(), targets).item() == pytest.approx(expected.item(), rel=1e-6)


def test_forward_mask_probability_and_replacement():
    x0 = torch.randint(0, V, (4, 4000), generator=torch.Generator().manual_seed(3))
    mb = forward_mask(x0, 11, 5, [0, 1, 2, 3], 4, MASK, 1e-3, "uniform")
    assert torch.equal(mb.xt[mb.masked], torch.full_like(mb.xt[mb.masked], MASK))
    assert torch.equal(mb.xt[~mb.masked], x0[~mb.masked])
    rate = mb.masked.float().mean(1)
    sigma = torch.sqrt(mb.p_mask * (1 - mb.p_mask) / 4000)
    assert ((rate - mb.p_mask).abs() < 5 * sigma + 1e-3).all()
    assert ((mb.p_mask >= 1e-3) & (mb.p_mask <= 1)).all()


def test_stratified_t_spreads_evenly():
    t = sample_t(5, 9, list(range(8)), 8, "stratified")
    gaps = torch.diff(torch.sort(t).values)
    assert torch.allclose(gaps, torch.full_like(gaps, 1 / 8), atol=1e-12)


def test_masks_are_pure_functions_of_seed_step_position():
    x0 = torch.randint(0, V, (2, 30), generator=torch.Generator().manual_seed(4))
    a = forward_mask(x0, 1, 2, [4, 5], 8, MASK, 1e-3, "uniform")
    b = forward_mask(x0, 1, 2, [4, 5], 8, MASK, 1e-3, "uniform")
    c = forward_mask(x0, 1, 3, [4, 5], 8, MASK, 1e-3, "uniform")
    assert torch.equal(a.masked, b.masked) and not torch.equal(a.masked, c.masked)
    # One sample's mask does not depend on which other samples share its micro-batch.
    alone = forward_mask(x0[1:], 1, 2, [5], 8, MASK, 1e-3, "uniform")
    assert torch.equal(alone.masked[0], a.masked[1])


def test_crop_length():
    assert crop_length(1, 1, 0, 64, 0.0) == 64
    lengths = {crop_length(1, s, 0, 64, 1.0) for s in range(200)}
    assert min(lengths) >= 1 and max(lengths) <= 64 and len(lengths) > 20
    frac = sum(crop_length(1, s, 0, 64, 0.25) < 64 for s in range(2000)) / 2000
    assert abs(frac - 0.25 * 63 / 64) < 0.04


class ArraySource:
    def __init__(self, rows):
        self.rows = rows

    def sample(self, index):
        return self.rows[index].numpy()


@pytest.mark.parametrize("objective", ["mdm", "arm"])
def test_global_batch_independent_of_data_parallel_size(objective):
    cfg = load_config(
        None,
        [
            "model.seq_length=16",
            "train.micro_batch_size=2",
            "train.global_batch_size=8",
            "diffusion.var_len_prob=0.5",
            f"model.objective={objective}",
        ],
    )
    data = ArraySource(torch.randint(0, V, (200, 17), generator=torch.Generator().manual_seed(3)))

    def global_batch(dp: int, step: int):
        gas = 8 // (2 * dp)
        per_rank = [
            [
                build_micro_batch(
                    cfg, data, MASK, step, 8 * step, micro_batch_positions(m, r, 2, dp)
                )
                for m in range(gas)
            ]
            for r in range(dp)
        ]
        # Interleave back into global order: chunk m holds rank 0's micro-batch, then rank 1's.
        return [per_rank[r][m] for m in range(gas) for r in range(dp)]

    for step in range(3):
        one, four = global_batch(1, step), global_batch(4, step)
        for a, b in zip(one, four):
            assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
            if objective == "mdm":
                assert torch.equal(a.masked, b.masked) and torch.equal(a.p_mask, b.p_mask)
