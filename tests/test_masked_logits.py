"""model.logits=masked and model.ce_chunk_tokens (docs/design.md §14): the loss and every
parameter gradient equal those of model.logits=all (every position through the output layer,
megatron's vocab-parallel cross-entropy on the whole logits), in one process (TP=PP=1, fp32).
The multi-process layouts (TP=2, PP=2, ZeRO-3) are in test_masked_logits_parallel.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL

from megatron_mdm.config import ConfigError, load_config
from megatron_mdm.data.batches import build_micro_batch
from megatron_mdm.data.sft import SFTExample, build_sft_micro_batch
from megatron_mdm.model.vocab import VocabLayout
from megatron_mdm.training.objective import loss_for

VOCAB = 100


class Tokens:
    def __init__(self, seq: int):
        self.seq = seq

    def sample(self, i: int) -> np.ndarray:
        gen = torch.Generator().manual_seed(1000 + i)
        return torch.randint(0, VOCAB, (self.seq + 1,), generator=gen).numpy()


def _cfg(*overrides):
    base = ["diffusion.var_len_prob=0", "train.micro_batch_size=3", "train.global_batch_size=3"]
    return load_config(None, [*TINY_MODEL, *base, *overrides])


def _with(cfg, **model):
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model))


def loss_and_grads(cfg, model, mb, kind="pretrain"):
    model.zero_grad(set_to_none=True)
    model.ce_chunk_tokens = cfg.model.ce_chunk_tokens
    loss_fn = loss_for(cfg, kind)
    out = model(mb.inputs, **mb.model_kwargs(), **loss_fn.model_kwargs(mb))
    loss = loss_fn(out, mb)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return loss.item(), grads, out


def assert_same(want, got, where):
    (want_loss, want_grads, _), (got_loss, got_grads, _) = want, got
    assert got_loss == pytest.approx(want_loss, rel=1e-5), where
    assert want_grads.keys() == got_grads.keys()
    for name, w in want_grads.items():
        scale = w.abs().max().clamp_min(1e-30)
        err = (got_grads[name] - w).abs().max() / scale
        assert err < 1e-5, (where, name, float(err))
    assert any(g.abs().max() > 0 for n, g in want_grads.items() if "output_layer" in n)


def _model(cfg, vocab):
    from megatron_mdm.model.builder import build_model

    return build_model(cfg, vocab, on_gpu=False)


CASES = {
    "mdm_smdm": [],
    "mdm_mdlm": ["diffusion.loss=mdlm"],
    "mdm_shift": ["diffusion.shift=true"],  # position i reads output i - 1 (design §13.4)
    "block": ["model.objective=block", "diffusion.block_size=4"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_masked_logits_equal_all_logits(single_rank_world, case):
    cfg = _cfg(*CASES[case])
    vocab = VocabLayout.build(VOCAB, None, 64, 1)
    model = _model(cfg, vocab)
    mb = build_micro_batch(cfg, Tokens(cfg.model.seq_length), vocab.mask_id, 7, 0, [0, 1, 2])
    assert 0 < int(mb.masked.sum()) < mb.masked.numel()
    want = loss_and_grads(_with(cfg, logits="all"), model, mb)
    assert want[2].dim() == 3  # logits
    for chunk in (0, 1, 5, 10_000):
        got = loss_and_grads(_with(cfg, logits="masked", ce_chunk_tokens=chunk), model, mb)
        ce = got[2]
        assert ce.shape == mb.targets.shape and torch.all(ce[~mb.masked] == 0)
        assert_same(want, got, (case, chunk))
    # chunking alone: every row through the chunked kernel
    assert_same(want, loss_and_grads(_with(cfg, logits="all", ce_chunk_tokens=7), model, mb), case)


def test_sft_masked_logits_equal_all_logits(single_rank_world):
    cfg = _cfg()
    vocab = VocabLayout.build(VOCAB, None, 64, 1)
    model = _model(cfg, vocab)
    gen = torch.Generator().manual_seed(3)

    def ids(n):
        return torch.randint(0, VOCAB, (n,), generator=gen).tolist()

    examples = [SFTExample(ids(5), ids(4)), SFTExample(ids(9), ids(3)), SFTExample(ids(2), ids(8))]
    mb = build_sft_micro_batch(examples, 16, "max", 1, vocab.mask_id, 0, 5, [0, 1, 2])
    for normalize in ("sequence", "token"):
        base = dataclasses.replace(cfg, sft=dataclasses.replace(cfg.sft, normalize=normalize))
        want = loss_and_grads(_with(base, logits="all"), model, mb, "sft")
        for chunk in (0, 4):
            got = loss_and_grads(_with(base, ce_chunk_tokens=chunk), model, mb, "sft")
            assert_same(want, got, (normalize, chunk))


def test_arm_ignores_logits_masked(single_rank_world):
    cfg = _cfg("model.objective=arm")
    assert cfg.model.logits == "masked"  # the default, ignored for arm
    assert loss_for(cfg, "pretrain").model_kwargs(None) == {}


def test_logits_keys_are_checked():
    with pytest.raises(ConfigError, match="model.logits"):
        _cfg("model.logits=some")
    with pytest.raises(ConfigError, match="model.ce_chunk_tokens"):
        _cfg("model.ce_chunk_tokens=-1")


def test_bf16_masked_logits_close_to_all_logits(single_rank_world):
    """bf16 parameters: the output layer runs in bf16 on either path, the CE in fp32; the same
    rows give the same loss up to bf16 summation order, chunked or not."""
    cfg = _cfg("train.precision=bf16")
    vocab = VocabLayout.build(VOCAB, None, 64, 1)
    model = _model(cfg, vocab)
    assert model.output_layer.weight.dtype == torch.bfloat16
    mb = build_micro_batch(cfg, Tokens(cfg.model.seq_length), vocab.mask_id, 7, 0, [0, 1, 2])
    want = loss_and_grads(_with(cfg, logits="all"), model, mb)
    for chunk in (0, 5):
        got = loss_and_grads(_with(cfg, logits="masked", ce_chunk_tokens=chunk), model, mb)
        assert got[2].dtype == torch.float32
        assert got[0] == pytest.approx(want[0], rel=1e-2)
        w, g = want[1]["output_layer.weight"].float(), got[1]["output_layer.weight"].float()
        assert (g - w).abs().max() <= 2e-2 * w.abs().max()


def test_memory_estimate_counts_the_logit_rows_alive():
    from megatron_mdm.model.memory import estimate_memory

    base = ["model.seq_length=1024", "train.micro_batch_size=4", "train.global_batch_size=4"]

    def logits(*overrides):
        return estimate_memory(load_config(None, [*base, *overrides]), 126464, 1).logits

    full = logits("model.logits=all")
    assert full == 6.0 * 4096 * 126464
    assert logits("model.logits=masked") == full / 2
    assert logits("model.ce_chunk_tokens=1024") == full / 4
    assert logits("model.objective=arm") == full  # arm: every position carries loss


@pytest.mark.parametrize("chunk", [0, 4])
def test_micro_batch_without_masked_tokens(single_rank_world, chunk):
    """No loss rows at all (possible at small p and short crops): zero loss, zero gradients."""
    cfg = _cfg()
    vocab = VocabLayout.build(VOCAB, None, 64, 1)
    model = _model(cfg, vocab)
    mb = build_micro_batch(cfg, Tokens(cfg.model.seq_length), vocab.mask_id, 7, 0, [0, 1, 2])
    mb = dataclasses.replace(mb, inputs=mb.targets, masked=torch.zeros_like(mb.masked))
    want = loss_and_grads(_with(cfg, logits="all"), model, mb)
    got = loss_and_grads(_with(cfg, ce_chunk_tokens=chunk), model, mb)
    assert got[0] == want[0] == 0.0
    assert all(torch.equal(g, torch.zeros_like(g)) for g in got[1].values())
