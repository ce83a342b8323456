"""kernels/chunked_ce.py against its plain-torch oracle (kernels/chunked_ce_reference.py) on random
inputs: loss and the gradients w.r.t. hidden and weight, under an arbitrary upstream gradient,
for chunkings that leave a short last chunk, one row per chunk, a chunk larger than the rows and
no rows at all, targets in the padded vocabulary tail, and a -inf logit bias (ids the model never
predicts). Vocab-parallel (TP=2) is covered by test_masked_logits_parallel.py."""

from __future__ import annotations

import math

import pytest
import torch
from megatron_mdm.kernels.chunked_ce import chunked_linear_cross_entropy
from megatron_mdm.kernels.chunked_ce_reference import linear_cross_entropy_reference

REAL_VOCAB, PADDED_VOCAB, HIDDEN = 50, 64, 24


def data(rows, dtype=torch.float32, seed=0, tail_targets=False):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, HIDDEN, generator=gen).to(dtype)
    w = (0.3 * torch.randn(PADDED_VOCAB, HIDDEN, generator=gen)).to(dtype)
    high = PADDED_VOCAB if tail_targets else REAL_VOCAB
    t = torch.randint(0, high, (rows,), generator=gen)
    if tail_targets and rows:
        t[0] = PADDED_VOCAB - 1  # at least one target in the padded tail
    dloss = torch.rand(rows, generator=gen) + 0.5
    return h, w, t, dloss


def run(fn, h, w, t, dloss, **kw):
    h, w = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    loss = fn(h, w, t, **kw)
    (loss * dloss).sum().backward()
    return loss.detach(), h.grad, w.grad


def assert_close(got, want, rel):
    assert got.shape == want.shape and got.dtype == want.dtype
    both_inf = torch.isinf(got) & torch.isinf(want) & (got.sign() == want.sign())
    scale = want[torch.isfinite(want)].abs().max() if torch.isfinite(want).any() else 1.0
    err = torch.where(both_inf, 0.0, (got.float() - want.float()).abs())
    assert float(err.max() if err.numel() else 0.0) <= rel * float(scale) + 1e-30


@pytest.mark.parametrize("rows,chunk", [(37, 8), (37, 1), (37, 37), (10, 1000), (0, 4)])
@pytest.mark.parametrize("tail", [False, True])
def test_chunked_matches_reference_fp32(rows, chunk, tail):
    h, w, t, dloss = data(rows, tail_targets=tail, seed=rows + chunk)
    want = run(linear_cross_entropy_reference, h, w, t, dloss)
    got = run(chunked_linear_cross_entropy, h, w, t, dloss, chunk_rows=chunk)
    for g, r in zip(got, want):
        assert_close(g, r, 1e-5)
    assert got[0].shape == (rows,)


@pytest.mark.parametrize("chunk", [5, 64])
def test_minus_inf_bias_and_targets_in_the_padded_tail(chunk):
    """The model's logit bias is -inf past the real vocabulary (and at [MASK]): a target there
    has infinite loss in both, and finite gradients equal to the oracle's."""
    h, w, t, dloss = data(21, tail_targets=True, seed=3)
    bias = torch.zeros(PADDED_VOCAB)
    bias[REAL_VOCAB:] = float("-inf")
    want = run(linear_cross_entropy_reference, h, w, t, dloss, bias=bias)
    got = run(chunked_linear_cross_entropy, h, w, t, dloss, chunk_rows=chunk, bias=bias)
    assert (
        torch.isinf(got[0][t >= REAL_VOCAB]).all() and torch.isfinite(got[0][t < REAL_VOCAB]).all()
    )
    for g, r in zip(got, want):
        assert_close(g, r, 1e-5)
    assert torch.isfinite(got[1]).all() and torch.isfinite(got[2]).all()


def test_bf16_matches_reference_up_to_rounding():
    h, w, t, dloss = data(33, dtype=torch.bfloat16, seed=5)
    want = run(linear_cross_entropy_reference, h, w, t, dloss)
    got = run(chunked_linear_cross_entropy, h, w, t, dloss, chunk_rows=8)
    assert_close(got[0], want[0], 1e-6)  # same bf16 logits, CE in fp32
    assert_close(got[1], want[1], 1e-2)
    assert_close(got[2], want[2], 1e-2)  # the kernel sums dW over chunks in fp32


def test_bad_arguments():
    h, w, t, _ = data(4)
    with pytest.raises(ValueError, match="chunk_rows"):
        chunked_linear_cross_entropy(h, w, t, 0)
    with pytest.raises(ValueError, match="targets"):
        chunked_linear_cross_entropy(h, w, t[:3], 2)
    assert math.isfinite(float(chunked_linear_cross_entropy(h, w, t, 2).sum()))
