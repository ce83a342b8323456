"""Checkpoint layouts: exported names and shapes (docs/design.md §8), bit-identical round trips,
and logits of each exported state dict, run through the plain reference forward
(tests/reference_llama.py) with each format's own reading of its tensors, equal to the training
model's logits."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_MODEL
from reference_llama import hf_logits, llama_logits

from megatron_mdm.config import load_config
from megatron_mdm.convert import layouts
from megatron_mdm.convert.layouts import LAYOUTS, LayoutError, ModelShape
from megatron_mdm.model.vocab import VocabLayout

TINY = TINY_MODEL
SHAPE = ModelShape(
    num_layers=2, hidden_size=64, num_heads=4, num_kv_groups=2, ffn_size=128, n_vocab=101
)
PADDED = 128
HD = 16


# --------------------------------------------------------------------------- expected names


def expected_names(fmt: str) -> dict[str, tuple[int, ...]]:
    """Written out from docs/design.md §8, independently of the module's own tables."""
    v, d, f = 101, 64, 128
    q, kv = 4 * HD, 2 * HD
    if fmt == "hf":
        top = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
        top["lm_head.weight"] = (v, d)
        layer = {
            "model.layers.{i}.input_layernorm.weight": (d,),
            "model.layers.{i}.self_attn.q_proj.weight": (q, d),
            "model.layers.{i}.self_attn.k_proj.weight": (kv, d),
            "model.layers.{i}.self_attn.v_proj.weight": (kv, d),
            "model.layers.{i}.self_attn.o_proj.weight": (d, q),
            "model.layers.{i}.post_attention_layernorm.weight": (d,),
            "model.layers.{i}.mlp.gate_proj.weight": (f, d),
            "model.layers.{i}.mlp.up_proj.weight": (f, d),
            "model.layers.{i}.mlp.down_proj.weight": (d, f),
        }
    elif fmt == "llada":
        top = {
            "model.transformer.wte.weight": (v, d),
            "model.transformer.ln_f.weight": (d,),
            "model.transformer.ff_out.weight": (v, d),
        }
        b = "model.transformer.blocks.{i}."
        layer = {
            b + "attn_norm.weight": (d,),
            b + "q_proj.weight": (q, d),
            b + "k_proj.weight": (kv, d),
            b + "v_proj.weight": (kv, d),
            b + "attn_out.weight": (d, q),
            b + "ff_norm.weight": (d,),
            b + "ff_proj.weight": (f, d),
            b + "up_proj.weight": (f, d),
            b + "ff_out.weight": (d, f),
        }
    else:
        top = {
            "transformer.wte.weight": (v, d),
            "transformer.ln_f.weight": (d,),
            "lm_head.weight": (v, d),
        }
        h = "transformer.h.{i}."
        layer = {
            h + "norm_1.weight": (d,),
            h + "attn.attn.weight": (q + 2 * kv, d),
            h + "attn.proj.weight": (d, q),
            h + "norm_2.weight": (d,),
            h + "mlp.swiglu.w1.weight": (f, d),
            h + "mlp.swiglu.w2.weight": (f, d),
            h + "mlp.swiglu.w3.weight": (d, f),
        }
    out = dict(top)
    for i in range(2):
        out.update({k.format(i=i): s for k, s in layer.items()})
    return out


def random_canonical(dtype=torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Canonical dict with distinct values everywhere and zero padding rows (which the formats
    drop), so any misplaced row or column shows."""
    gen = torch.Generator().manual_seed(seed)
    c = {
        k: torch.randn(s, generator=gen).to(dtype)
        for k, s in layouts.canonical_shapes(SHAPE, PADDED).items()
    }
    for key in (layouts.EMBEDDING, layouts.OUTPUT):
        c[key][SHAPE.n_vocab :] = 0
    return c


@pytest.mark.parametrize("fmt", ["hf", "llada", "smdm"])
def test_export_names_and_shapes(fmt):
    exported = LAYOUTS[fmt].export(random_canonical(), SHAPE)
    got = {k: tuple(t.shape) for k, t in exported.items()}
    assert got == expected_names(fmt)
    assert LAYOUTS[fmt].shapes(SHAPE) == expected_names(fmt)


def test_qkv_and_fc1_cut_by_group():
    """Rows tagged by (group, slot): hf/llada q must be heads in order, k/v one block per group;
    smdm keeps megatron's packing; gate/up are fc1's halves."""
    c = random_canonical()
    qpg = 2
    tags = torch.zeros(8 * HD, 64)
    for g in range(2):
        for slot in range(qpg + 2):
            start = (g * (qpg + 2) + slot) * HD
            tags[start : start + HD] = 10 * g + slot
    c["decoder.layers.0.self_attention.linear_qkv.weight"] = tags
    hf = layouts.to_hf(c, SHAPE)
    q = hf["model.layers.0.self_attn.q_proj.weight"][::HD, 0].tolist()
    k = hf["model.layers.0.self_attn.k_proj.weight"][::HD, 0].tolist()
    v = hf["model.layers.0.self_attn.v_proj.weight"][::HD, 0].tolist()
    assert q == [0, 1, 10, 11] and k == [2, 12] and v == [3, 13]
    smdm = layouts.to_smdm(c, SHAPE)
    assert torch.equal(smdm["transformer.h.0.attn.attn.weight"], tags)
    fc1 = c["decoder.layers.1.mlp.linear_fc1.weight"]
    llada = layouts.to_llada(c, SHAPE)
    assert torch.equal(llada["model.transformer.blocks.1.ff_proj.weight"], fc1[:128])
    assert torch.equal(llada["model.transformer.blocks.1.up_proj.weight"], fc1[128:])


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fmt", ["hf", "llada", "smdm"])
def test_round_trip_bit_identical(fmt, dtype):
    c = random_canonical(dtype)
    layout = LAYOUTS[fmt]
    exported = layout.export(c, SHAPE)
    assert all(t.dtype == dtype for t in exported.values())
    back = layout.import_(exported, SHAPE, PADDED)
    assert back.keys() == c.keys()
    for key in c:
        assert back[key].dtype == dtype, key
        assert torch.equal(back[key], c[key]), key


@pytest.mark.parametrize("fmt", ["hf", "llada", "smdm"])
def test_round_trip_through_safetensors(tmp_path, fmt):
    """The exported dict is what save_file accepts (no aliasing, contiguous) and loads back."""
    from safetensors.torch import load_file, save_file

    c = random_canonical()
    exported = LAYOUTS[fmt].export(c, SHAPE)
    save_file(exported, str(tmp_path / "model.safetensors"))
    back = LAYOUTS[fmt].import_(load_file(str(tmp_path / "model.safetensors")), SHAPE, PADDED)
    assert all(torch.equal(back[k], c[k]) for k in c)


def test_transformer_engine_names():
    c = random_canonical()
    te = layouts.to_te_names(c)
    assert "decoder.layers.1.self_attention.linear_qkv.layer_norm_weight" in te
    assert "decoder.layers.1.mlp.linear_fc1.layer_norm_weight" in te
    assert not any(k.endswith(("input_layernorm.weight", "pre_mlp_layernorm.weight")) for k in te)
    te["decoder.layers.0.self_attention.linear_qkv._extra_state"] = None
    back = layouts.canonicalize_names(te)
    assert back.keys() == c.keys()
    assert all(back[k] is c[k] for k in c)
    with pytest.raises(LayoutError, match="input_layernorm"):
        layouts.to_smdm(layouts.to_te_names(c), SHAPE)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fmt", ["hf", "llada", "smdm"])
def test_missing_key_is_one_line_naming_it(fmt):
    exported = LAYOUTS[fmt].export(random_canonical(), SHAPE)
    key = sorted(k for k in exported if ".1." in k)[0]
    del exported[key]
    with pytest.raises(LayoutError) as err:
        LAYOUTS[fmt].import_(exported, SHAPE, PADDED)
    msg = str(err.value)
    assert "\n" not in msg and key in msg and "no such tensor" in msg


@pytest.mark.parametrize("fmt", ["hf", "llada", "smdm"])
def test_wrong_shape_is_one_line_naming_key_and_shapes(fmt):
    exported = LAYOUTS[fmt].export(random_canonical(), SHAPE)
    key = [k for k in exported if k.endswith(("w3.weight", "down_proj.weight", "ff_out.weight"))]
    key = key[0]
    expected = tuple(exported[key].shape)
    exported[key] = exported[key][:, :-1]
    with pytest.raises(LayoutError) as err:
        LAYOUTS[fmt].import_(exported, SHAPE, PADDED)
    msg = str(err.value)
    assert "\n" not in msg and key in msg
    assert str(expected) in msg and str((expected[0], expected[1] - 1)) in msg


@pytest.mark.parametrize("fmt", ["hf", "llada", "smdm"])
def test_unexpected_key_and_vocab_mismatch(fmt):
    exported = LAYOUTS[fmt].export(random_canonical(), SHAPE)
    exported["rotary_emb.inv_freq"] = torch.zeros(8)
    with pytest.raises(LayoutError, match=r"rotary_emb\.inv_freq: unexpected"):
        LAYOUTS[fmt].import_(exported, SHAPE, PADDED)
    del exported["rotary_emb.inv_freq"]
    with pytest.raises(LayoutError, match="padded_vocab 64"):
        LAYOUTS[fmt].import_(exported, SHAPE, 64)
    wrong_vocab = ModelShape(2, 64, 4, 2, 128, n_vocab=100)
    with pytest.raises(LayoutError, match=r"expected shape \(100, 64\), found \(101, 64\)"):
        LAYOUTS[fmt].import_(exported, wrong_vocab, PADDED)


# --------------------------------------------------------------------------- config.json


def test_config_json_fields():
    meta = {"tokenizer_size": 100, "mask_id": 100, "seq_length": 16, "rotary_base": 10000}
    smdm = LAYOUTS["smdm"].config_json(SHAPE, meta)
    lit_gpt_fields = {
        "org", "name", "block_size", "vocab_size", "padding_multiple", "padded_vocab_size",
        "n_layer", "n_head", "n_embd", "rotary_percentage", "parallel_residual", "bias",
        "n_query_groups", "shared_attention_norm", "_norm_class", "norm_eps", "_mlp_class",
        "intermediate_size", "condense_ratio",
    }  # fmt: skip
    assert set(smdm) == lit_gpt_fields
    assert (smdm["vocab_size"], smdm["padded_vocab_size"], smdm["n_query_groups"]) == (100, 101, 2)
    llada = LAYOUTS["llada"].config_json(SHAPE, {**meta, "rotary_base": 500000})
    assert llada["rope_theta"] == 500000.0 and llada["mask_token_id"] == 100
    assert (llada["vocab_size"], llada["embedding_size"], llada["n_kv_heads"]) == (101, 101, 2)
    assert llada["weight_tying"] is False and llada["block_type"] == "llama"
    hf = LAYOUTS["hf"].config_json(SHAPE, meta)
    assert hf["invalid_output_ids"] == [100] and hf["num_key_value_heads"] == 2
    with pytest.raises(LayoutError, match="rotary_base 500000"):
        LAYOUTS["smdm"].config_json(SHAPE, {**meta, "rotary_base": 500000})
    with pytest.raises(LayoutError, match="101"):
        LAYOUTS["hf"].config_json(SHAPE, {"tokenizer_size": 90, "mask_id": 90})


# --------------------------------------------------------------------------- reference forwards


def llada_forward(sd, cfg, x):
    """LLaDA's "llama" block: ff_out(silu(ff_proj(x)) * up_proj(x)), head = transformer.ff_out."""
    layers = []
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        layers.append(
            {
                "attn_norm": sd[p + "attn_norm.weight"],
                "q": sd[p + "q_proj.weight"],
                "k": sd[p + "k_proj.weight"],
                "v": sd[p + "v_proj.weight"],
                "o": sd[p + "attn_out.weight"],
                "mlp_norm": sd[p + "ff_norm.weight"],
                "gate": sd[p + "ff_proj.weight"],
                "up": sd[p + "up_proj.weight"],
                "down": sd[p + "ff_out.weight"],
            }
        )
    return llama_logits(
        x,
        sd["model.transformer.wte.weight"],
        layers,
        sd["model.transformer.ln_f.weight"],
        sd["model.transformer.ff_out.weight"],
        num_heads=cfg["n_heads"],
        num_kv_heads=cfg["n_kv_heads"],
        eps=cfg["rms_norm_eps"],
        rope_theta=cfg["rope_theta"],
    )


def lit_gpt_qkv(w, n_head, n_query_groups):
    """lit-gpt's CausalSelfAttention views attn(x) as (B, T, groups, q_per_kv + 2, hs) and splits
    (q_per_kv, 1, 1) along that axis; the same cut of the weight's output rows gives q, k, v."""
    q_per_kv = n_head // n_query_groups
    hs = w.shape[1] // n_head
    rows = w.view(n_query_groups, q_per_kv + 2, hs, w.shape[1])
    q, k, v = rows.split((q_per_kv, 1, 1), dim=1)
    return tuple(t.reshape(-1, w.shape[1]) for t in (q, k, v))


def smdm_forward(sd, cfg, x):
    """SMDM's TransEncoder: lit-gpt blocks, xformers SwiGLU w3(silu(w1 x) * w2 x), RoPE base
    10000 (hard-coded in lit-gpt's build_rope_cache)."""
    layers = []
    for i in range(cfg["n_layer"]):
        p = f"transformer.h.{i}."
        q, k, v = lit_gpt_qkv(sd[p + "attn.attn.weight"], cfg["n_head"], cfg["n_query_groups"])
        layers.append(
            {
                "attn_norm": sd[p + "norm_1.weight"],
                "q": q,
                "k": k,
                "v": v,
                "o": sd[p + "attn.proj.weight"],
                "mlp_norm": sd[p + "norm_2.weight"],
                "gate": sd[p + "mlp.swiglu.w1.weight"],
                "up": sd[p + "mlp.swiglu.w2.weight"],
                "down": sd[p + "mlp.swiglu.w3.weight"],
            }
        )
    return llama_logits(
        x,
        sd["transformer.wte.weight"],
        layers,
        sd["transformer.ln_f.weight"],
        sd["lm_head.weight"],
        num_heads=cfg["n_head"],
        num_kv_heads=cfg["n_query_groups"],
        eps=cfg["norm_eps"],
        rope_theta=10000.0,
    )


REFERENCE = {"hf": hf_logits, "llada": llada_forward, "smdm": smdm_forward}


@pytest.fixture(scope="module", params=[10000, 500000], ids=["base1e4", "base5e5"])
def trained_like_model(request, single_rank_world):
    """The real training model (as tests/test_model.py builds it) with non-trivial norm weights,
    so that swapping two norms or misplacing a row changes the logits."""
    from megatron_mdm.model.builder import build_model

    cfg = load_config(None, [*TINY, f"model.rotary_base={request.param}", "model.objective=mdm"])
    vocab = VocabLayout.build(100, None, 64, 1)
    model = build_model(cfg, vocab, on_gpu=False).eval()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=gen))
    return cfg, vocab, model


@pytest.mark.parametrize("fmt", ["hf", "llada", "smdm"])
def test_exported_logits_match_training_model(trained_like_model, fmt):
    cfg, vocab, model = trained_like_model
    if fmt == "smdm" and cfg.model.rotary_base != 10000:
        pytest.skip("lit-gpt's RoPE base is fixed at 10000")
    shape = ModelShape.from_config(cfg.model, vocab)
    assert shape == SHAPE
    canonical = layouts.canonicalize_names(model.state_dict())
    exported = LAYOUTS[fmt].export(canonical, shape)
    config = LAYOUTS[fmt].config_json(shape, layouts.config_meta(cfg, vocab))

    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 100, (2, 16), generator=gen)
    x[torch.rand(x.shape, generator=gen) < 0.4] = vocab.mask_id  # the [MASK] row is used
    with torch.no_grad():
        ours = model(x)[..., : shape.n_vocab]
        ref = REFERENCE[fmt](exported, config, x).float()
    valid = torch.isfinite(ours)
    assert valid.any() and not valid[..., vocab.mask_id].any()
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(ref[valid], ours[valid], atol=1e-5, rtol=1e-5)

    back = LAYOUTS[fmt].import_(exported, shape, vocab.padded_size)
    for key, value in canonical.items():
        if key in (layouts.EMBEDDING, layouts.OUTPUT):
            assert torch.equal(back[key][: shape.n_vocab], value[: shape.n_vocab]), key
            assert not back[key][shape.n_vocab :].any(), key
        else:
            assert torch.equal(back[key], value), key
