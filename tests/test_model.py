"""Model structure: bidirectional vs causal attention, never predicting [MASK]/padding, sharding
layouts and layout-independent initialisation."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_MODEL

from megatron_mdm.config import load_config
from megatron_mdm.model import sharding
from megatron_mdm.model.vocab import VocabLayout

TINY = TINY_MODEL


def build(objective: str, seed: int = 1234):
    from megatron_mdm.model.builder import build_model

    cfg = load_config(None, [*TINY, f"model.objective={objective}", f"train.seed={seed}"])
    vocab = VocabLayout.build(100, None, 64, 1)
    return build_model(cfg, vocab, on_gpu=False).eval(), vocab


@pytest.mark.parametrize("objective", ["mdm", "arm"])
def test_attention_direction(single_rank_world, objective):
    model, _ = build(objective)
    x = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    x2 = x.clone()
    x2[:, -1] = (x2[:, -1] + 1) % 100
    with torch.no_grad():
        first = model(x)[:, 0, :100]
        first_changed = model(x2)[:, 0, :100]
    moved = (first - first_changed).abs().max().item()
    if objective == "mdm":
        assert moved > 1e-4, "changing the last token must move position 0 (bidirectional)"
    else:
        assert moved == 0.0, "the ARM must not see future tokens"


def test_mask_and_padding_never_predicted(single_rank_world):
    model, vocab = build("mdm")
    assert vocab.padded_size == 128 and vocab.mask_id == 100
    with torch.no_grad():
        logits = model(torch.randint(0, 100, (1, 16)))
    assert torch.isneginf(logits[..., 100:]).all()
    assert torch.isfinite(logits[..., :100]).all()
    probs = logits.softmax(-1)
    assert probs[..., 100:].sum().item() == 0.0


def test_init_depends_on_seed_only(single_rank_world):
    a, _ = build("mdm", seed=1)
    b, _ = build("arm", seed=1)
    c, _ = build("mdm", seed=2)
    for (name, pa), (_, pb), (_, pc) in zip(
        a.named_parameters(), b.named_parameters(), c.named_parameters()
    ):
        assert torch.equal(pa, pb), name
        if pa.dim() > 1:
            assert not torch.equal(pa, pc), name


def test_tensor_parallel_attributes_marked(single_rank_world):
    model, _ = build("mdm")
    for name, param in model.named_parameters():
        expected = sharding.partition_dim(name) is not None
        assert getattr(param, "tensor_model_parallel", None) is expected, name


@pytest.mark.parametrize(
    "name,shape",
    [
        ("embedding.word_embeddings.weight", (8, 4)),
        ("decoder.layers.0.self_attention.linear_qkv.weight", (12, 4)),
        ("decoder.layers.0.self_attention.linear_proj.weight", (4, 8)),
        ("decoder.layers.0.mlp.linear_fc1.weight", (8, 4)),
        ("decoder.layers.0.mlp.linear_fc2.weight", (4, 8)),
        ("decoder.final_layernorm.weight", (4,)),
    ],
)
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_shard_unshard_round_trip(name, shape, tp):
    full = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
    shards = [sharding.shard(name, full, r, tp) for r in range(tp)]
    assert torch.equal(sharding.unshard(name, shards), full)
    assert sharding.full_shape(name, shards[0].shape, tp) == tuple(shape)


def test_gated_fc1_shards_hold_gate_and_up_halves():
    gate = torch.arange(8.0).reshape(4, 2)
    up = 100 + torch.arange(8.0).reshape(4, 2)
    full = torch.cat([gate, up])
    rank1 = sharding.shard("decoder.layers.0.mlp.linear_fc1.weight", full, 1, 2)
    assert torch.equal(rank1, torch.cat([gate[2:], up[2:]]))


def test_global_layer_names():
    assert sharding.global_name("decoder.layers.1.mlp.linear_fc1.weight", 2) == (
        "decoder.layers.3.mlp.linear_fc1.weight"
    )
    assert sharding.global_name("output_layer.weight", 2) == "output_layer.weight"


def test_vocab_padding_independent_of_tp():
    sizes = {VocabLayout.build(259, None, 128, tp).padded_size for tp in (1, 2, 4, 8)}
    assert sizes == {384}
    llada_like = VocabLayout.build(126464, 126336, 128, 8)
    assert llada_like.mask_id == 126336 and 126336 in llada_like.invalid_output_ids()


@pytest.mark.parametrize("objective", ["mdm", "arm"])
def test_sdpa_attention_matches_megatron_unfused_attention(single_rank_world, objective):
    from megatron_mdm.model.builder import build_model

    x = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(5))
    logits = {}
    for backend in ("sdpa", "unfused"):
        cfg = load_config(
            None, [*TINY, f"model.objective={objective}", f"model.attention_backend={backend}"]
        )
        model = build_model(cfg, VocabLayout.build(100, None, 64, 1), on_gpu=False).eval()
        with torch.no_grad():
            logits[backend] = model(x)[..., :100]
    torch.testing.assert_close(logits["sdpa"], logits["unfused"], rtol=1e-5, atol=1e-5)
