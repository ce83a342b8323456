"""Block diffusion training (docs/design.md §11): the masks against a brute-force construction
from the definition, the two limits (B = L is the MDM, B = 1 an ARM) on the same weights and
data, the per-block t draws, flex_attention against SDPA, the schedule, and config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL

from megatron_mdm.config import ConfigError, load_config
from megatron_mdm.data.batches import build_micro_batch
from megatron_mdm.model.attention_masks import (
    block_causal_mask,
    block_diffusion_mask,
)
from megatron_mdm.model.vocab import VocabLayout

SEQ = 16  # TINY_MODEL's seq_length


def brute_force_training_mask(length: int, block: int) -> torch.Tensor:
    """True = attend, straight from the definition, one (query, key) pair at a time."""
    allowed = torch.zeros(2 * length, 2 * length, dtype=torch.bool)
    for i in range(2 * length):
        for j in range(2 * length):
            qi_noisy, kj_noisy = i < length, j < length
            qb, kb = (i % length) // block, (j % length) // block
            if qi_noisy:
                allowed[i, j] = (kj_noisy and kb == qb) or (not kj_noisy and kb < qb)
            else:
                allowed[i, j] = not kj_noisy and kb <= qb
    return allowed


@pytest.mark.parametrize("length,block", [(8, 1), (8, 2), (8, 8), (12, 4), (10, 4), (6, 3)])
def test_masks_equal_brute_force_definition(length, block):
    got = block_diffusion_mask(length, block, "cpu")
    assert got.shape == (1, 1, 2 * length, 2 * length) and got.dtype == torch.bool
    assert torch.equal(~got[0, 0], brute_force_training_mask(length, block))
    causal = ~block_causal_mask(length, block, "cpu")[0, 0]
    want = torch.tensor([[j // block <= i // block for j in range(length)] for i in range(length)])
    assert torch.equal(causal, want)
    assert block_diffusion_mask(length, block, "cpu") is got  # built once per (L, B)


def _cfg(*overrides):
    base = ["diffusion.var_len_prob=0", "train.micro_batch_size=1", "train.global_batch_size=8"]
    return load_config(None, [*TINY_MODEL, *base, *overrides])


def _build(cfg, vocab):
    from megatron_mdm.model.builder import build_model

    return build_model(cfg, vocab, on_gpu=False).eval()


class Tokens:
    """A sample source of seq_length + 1 random token ids per index (keyed by index)."""

    def __init__(self, vocab_size: int, seq: int):
        self.vocab_size, self.seq = vocab_size, seq

    def sample(self, i: int) -> np.ndarray:
        gen = torch.Generator().manual_seed(1000 + i)
        return torch.randint(0, self.vocab_size, (self.seq + 1,), generator=gen).numpy()


def _loss(cfg, model, mb):
    from megatron_mdm.training.objective import loss_for

    with torch.no_grad():
        logits = model(mb.inputs, **mb.model_kwargs())
        return loss_for(cfg, "pretrain")(logits, mb).item()


@pytest.mark.parametrize("t_sampling", ["uniform", "stratified"])
@pytest.mark.parametrize("block_t", ["sequence", "block"])
def test_block_size_L_is_the_mdm_loss(single_rank_world, t_sampling, block_t):
    vocab = VocabLayout.build(100, None, 64, 1)
    common = [f"diffusion.t_sampling={t_sampling}", "train.global_batch_size=4"]
    mdm = _cfg(*common)
    block = _cfg(
        *common,
        "model.objective=block",
        f"diffusion.block_size={SEQ}",
        f"diffusion.block_t_sampling={block_t}",
    )
    source = Tokens(100, SEQ)
    mb_mdm = build_micro_batch(mdm, source, vocab.mask_id, 3, 0, [0, 1, 2, 3])
    mb_block = build_micro_batch(block, source, vocab.mask_id, 3, 0, [0, 1, 2, 3])
    assert torch.equal(mb_mdm.masked, mb_block.masked)  # one block: the same keyed draws
    assert mb_block.model_length == 2 * SEQ
    want = _loss(mdm, _build(mdm, vocab), mb_mdm)
    got = _loss(block, _build(block, vocab), mb_block)
    assert got == pytest.approx(want, abs=1e-6, rel=1e-6)


def test_block_size_1_is_an_arm(single_rank_world):
    """B = 1: (a) one block-causal copy is exactly the `arm` objective's causal model, so the
    logits and the ARM loss agree; (b) the training loss predicts token b from x_<b only: x_t
    position b (a [MASK] at RoPE position b) sees x_0 positions < b and itself, i.e. the causal
    model's last position on x_<b ++ [MASK]; recomputed that way in a plain loop."""
    from megatron_mdm.diffusion.loss import arm_loss

    vocab = VocabLayout.build(100, None, 64, 1)
    arm_cfg = _cfg("model.objective=arm")
    block_cfg = _cfg("model.objective=block", "diffusion.block_size=1", "diffusion.eps=0.4")
    arm, block = _build(arm_cfg, vocab), _build(block_cfg, vocab)
    x = torch.from_numpy(np.stack([Tokens(100, SEQ).sample(i) for i in range(2)]))
    with torch.no_grad():
        want = arm(x[:, :SEQ])
        got = block(x[:, :SEQ])
    assert torch.equal(got.isneginf(), want.isneginf())
    assert (got - want)[..., :100].abs().max().item() < 1e-6
    assert arm_loss(got.clone(), x[:, 1:]).item() == pytest.approx(
        arm_loss(want.clone(), x[:, 1:]).item(), abs=1e-6
    )

    mb = build_micro_batch(block_cfg, Tokens(100, SEQ), vocab.mask_id, 5, 0, [0, 1])
    assert mb.masked.any() and not mb.masked.all()
    total = 0.0
    with torch.no_grad():
        for j in range(2):
            for b in range(SEQ):
                if mb.masked[j, b]:
                    query = torch.cat([mb.targets[j, :b], torch.tensor([vocab.mask_id])])
                    logp = torch.log_softmax(arm(query[None])[0, -1].double(), -1)
                    total += -logp[mb.targets[j, b]].item() / mb.p_mask[j, b].item()
    assert _loss(block_cfg, block, mb) == pytest.approx(total / (2 * SEQ), abs=1e-6)


def test_noisy_block_sees_only_its_block_and_clean_past(single_rank_world):
    vocab = VocabLayout.build(100, None, 64, 1)
    cfg = _cfg("model.objective=block", "diffusion.block_size=4")
    model = _build(cfg, vocab)
    gen = torch.Generator().manual_seed(0)
    xt, x0 = (torch.randint(0, 100, (1, SEQ), generator=gen) for _ in range(2))
    with torch.no_grad():
        base = model(xt, clean_input_ids=x0)[..., :100]
        assert base.shape[1] == SEQ
        xt2, x02 = xt.clone(), x0.clone()
        xt2[0, 9], x02[0, 8] = (xt2[0, 9] + 1) % 100, (x02[0, 8] + 1) % 100  # both in block 2
        moved = (model(xt2, clean_input_ids=x02)[..., :100] - base).abs().amax(-1)[0]
    assert moved[:8].max() == 0  # blocks 0, 1 see neither
    assert moved[8:12].min() > 1e-5  # block 2 sees its noisy token 9
    assert moved[12:].min() > 1e-5  # block 3 sees clean token 8
    with torch.no_grad():
        x03 = x0.clone()
        x03[0, 13] = (x03[0, 13] + 1) % 100  # clean copy of block 3: seen by no noisy token
        assert torch.equal(model(xt, clean_input_ids=x03)[..., :100], base)


def test_per_block_t_draws():
    from megatron_mdm.diffusion.masking import block_t, sample_t

    t = block_t(3, 7, [0, 1, 5], 8, "uniform", 4, per_block=True)
    assert t.shape == (3, 4) and len(set(t.flatten().tolist())) == 12
    assert torch.equal(t[:, 0], sample_t(3, 7, [0, 1, 5], 8, "uniform"))
    shared = block_t(3, 7, [0, 1, 5], 8, "uniform", 4, per_block=False)
    assert torch.equal(shared, t[:, :1].expand(-1, 4))
    spread = block_t(3, 7, list(range(8)), 8, "stratified", 4, per_block=True)
    gaps = torch.sort(spread.flatten()).values.diff()
    assert torch.allclose(gaps, torch.full_like(gaps, 1 / 32))  # evenly spread over G * n
    assert torch.equal(spread[:, 0], block_t(3, 7, list(range(8)), 8, "stratified", 1, True)[:, 0])


def test_block_masks_have_one_rate_per_block():
    cfg = _cfg("model.objective=block", "diffusion.block_size=4", "train.global_batch_size=2")
    mb = build_micro_batch(cfg, Tokens(100, SEQ), 100, 11, 0, [0, 1])
    p = mb.p_mask.view(2, 4, 4)
    assert torch.equal(p, p[:, :, :1].expand(-1, -1, 4))
    assert len(set(p[:, :, 0].flatten().tolist())) == 8
    assert mb.block_size == 4 and mb.model_kwargs()["clean_input_ids"] is mb.targets


@pytest.mark.parametrize("groups", [4, 2])
def test_flex_attention_matches_sdpa(groups):
    from megatron_mdm.model.sdpa_attention import masked_attention

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 24, 8, generator=gen)
    k, v = (torch.randn(2, groups, 24, 8, generator=gen) for _ in range(2))
    mask = block_diffusion_mask(12, 4, "cpu")
    dense = masked_attention(q, k, v, mask, 0.3, backend="sdpa")
    flex = masked_attention(q, k, v, mask, 0.3, backend="flex_eager")
    assert (dense - flex).abs().max().item() < 1e-5


def test_block_size_schedule_is_piecewise_constant():
    cfg = _cfg(
        "model.objective=block",
        "diffusion.block_size=4",
        "diffusion.block_size_schedule=[[0, 1], [3, 16], [5, 4]]",
    )
    sizes = [cfg.diffusion.block_size_at(s) for s in range(7)]
    assert sizes == [1, 1, 1, 16, 16, 4, 4]
    mb = build_micro_batch(cfg, Tokens(100, SEQ), 100, 4, 0, [0, 1, 2, 3, 4, 5, 6, 7])
    assert mb.block_size == 16
    valid = build_micro_batch(cfg, Tokens(100, SEQ), 100, ("valid", 0), 0, [0])
    assert valid.block_size == 4


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["model.objective=block"], "diffusion.block_size"),
        (["model.objective=block", "diffusion.block_size=5"], "diffusion.block_size"),
        (["diffusion.block_size=4"], "diffusion.block_size"),
        (
            ["model.objective=block", "diffusion.block_size=4", "diffusion.block_size_schedule=[]"],
            "diffusion.block_size_schedule",
        ),
        (
            [
                "model.objective=block",
                "diffusion.block_size=4",
                "diffusion.block_size_schedule=[[1, 4]]",
            ],
            "diffusion.block_size_schedule",
        ),
        (
            [
                "model.objective=block",
                "diffusion.block_size=4",
                "diffusion.block_size_schedule=[[0, 3], [5, 4]]",
            ],
            "diffusion.block_size_schedule",
        ),
        (
            [
                "model.objective=block",
                "diffusion.block_size=4",
                "diffusion.block_size_schedule=[[0, 4], [5, 8]]",
            ],
            "diffusion.block_size_schedule",
        ),
        (
            [
                "model.objective=block",
                "diffusion.block_size=4",
                "diffusion.block_size_schedule=[[0, 4], [0, 4]]",
            ],
            "diffusion.block_size_schedule",
        ),
    ],
)
def test_block_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        _cfg(*overrides)
    assert err.value.key == key
    assert "\n" not in str(err.value)
