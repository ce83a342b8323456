"""The modeling code shipped inside exported checkpoints: it must load through transformers'
remote-code path and compute exactly the architecture megatron-mdm trains (checked against
tests/reference_llama.py, a re-computation written from the formulas, not from the module)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from eval_models import tiny_models
from helpers import TORCH_MASK, TORCH_VOCAB, tiny_config, tiny_model
from reference_llama import hf_logits
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from megatron_mdm.convert.hf_modeling import MODELING_FILES
from megatron_mdm.convert.hf_modeling.configuration_mdm import MDMConfig
from megatron_mdm.convert.hf_modeling.modeling_mdm import MDMForMaskedLM

VOCAB, MASK = TORCH_VOCAB, TORCH_MASK


def ids(batch=2, seq=9, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB - 1, (batch, seq), generator=g)
    x[:, ::3] = MASK
    return x


def export_folder(model: MDMForMaskedLM, path) -> None:
    model.save_pretrained(path)
    for f in MODELING_FILES:
        shutil.copy(f, path / f.name)


def test_remote_code_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    model = tiny_model(tiny_config(kv_heads=2))
    folder = tmp_path / "export"
    export_folder(model, folder)

    meta = json.loads((folder / "config.json").read_text())
    assert meta["model_type"] == "megatron_mdm"
    assert meta["auto_map"] == {
        "AutoConfig": "configuration_mdm.MDMConfig",
        "AutoModel": "modeling_mdm.MDMModel",
        "AutoModelForMaskedLM": "modeling_mdm.MDMForMaskedLM",
    }
    assert meta["objective"] == "mdm" and meta["invalid_output_ids"] == [MASK]

    cfg = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert cfg.num_key_value_heads == 2 and cfg.tie_word_embeddings is False
    loaded, info = AutoModelForMaskedLM.from_pretrained(
        folder, trust_remote_code=True, output_loading_info=True
    )
    # loaded through the copied files, not through the installed package
    assert not type(loaded).__module__.startswith("megatron_mdm")
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x).logits, model(x).logits, rtol=0, atol=0)

    body = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            body(x).last_hidden_state, model.model(x).last_hidden_state, rtol=0, atol=0
        )


@pytest.mark.parametrize("objective", ["mdm", "arm"])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_matches_independent_reference(objective, kv_heads):
    cfg = tiny_config(objective, kv_heads=kv_heads)
    model = tiny_model(cfg)
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (kv_heads * 8, 32)
    x = ids()
    with torch.no_grad():
        got = model(x).logits
    want = hf_logits(model.state_dict(), cfg.to_dict(), x, causal=objective == "arm")
    want[..., cfg.invalid_output_ids] = float("-inf")
    want = want.float()
    assert got.dtype == torch.float32 and got.shape == (2, 9, VOCAB)
    assert got.abs()[torch.isfinite(got)].max() > 1.0  # the comparison is not between ~zeros
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_state_dict_names():
    model = tiny_model(tiny_config(kv_heads=2))
    names = set(model.state_dict())
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(2):
        p = f"model.layers.{i}."
        expected |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        expected |= {p + f"self_attn.{n}_proj.weight" for n in "qkvo"}
        expected |= {p + f"mlp.{n}_proj.weight" for n in ("gate", "up", "down")}
    assert names == expected


@pytest.mark.parametrize("objective", ["mdm", "arm"])
def test_bidirectional_vs_causal(objective):
    model = tiny_model(tiny_config(objective))
    x = ids(batch=1)
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % (VOCAB - 1)
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    changed = not torch.equal(a[0, 0], b[0, 0])
    assert changed == (objective == "mdm")


def test_invalid_output_ids_and_labels():
    model = tiny_model(tiny_config(invalid_output_ids=[MASK, 3]))
    x = ids()
    labels = torch.full_like(x, -100)
    labels[:, 1] = 5
    labels[:, 4] = 7
    with torch.no_grad():
        out = model(x, labels=labels)
    logits = out.logits
    assert torch.isneginf(logits[..., [3, MASK]]).all()
    keep = [i for i in range(VOCAB) if i not in (3, MASK)]
    assert torch.isfinite(logits[..., keep]).all()
    picked = logits[labels != -100]
    want = torch.nn.functional.cross_entropy(picked, labels[labels != -100])
    torch.testing.assert_close(out.loss, want)


def test_default_invalid_ids_is_the_mask_id():
    cfg = MDMConfig(
        vocab_size=11,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    assert cfg.mask_token_id == 10 and cfg.invalid_output_ids == [10] and cfg.head_dim == 8
    with pytest.raises(ValueError):
        MDMConfig(objective="bert")
    with pytest.raises(ValueError):
        MDMConfig(num_attention_heads=4, num_key_value_heads=3, hidden_size=32)


@pytest.mark.parametrize("objective", ["mdm", "arm"])
def test_padding_mask_hides_padded_keys(objective):
    """Right padding with attention_mask gives the unpadded sequence's logits at real positions."""
    model = tiny_model(tiny_config(objective, kv_heads=2))
    x = ids(batch=1, seq=6)
    padded = torch.cat([x, torch.full((1, 3), 1)], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    with torch.no_grad():
        want = model(x).logits
        got = model(padded, attention_mask=mask).logits
        unmasked = model(padded).logits
    torch.testing.assert_close(got[:, :6], want, rtol=0, atol=1e-5)
    assert torch.isfinite(got[..., :MASK]).all()
    if objective == "mdm":
        assert not torch.allclose(unmasked[:, :6], want, atol=1e-5)


def stock_llama_config(config: dict) -> LlamaConfig:
    """transformers' own LlamaConfig mirroring an `hf` export's config.json."""
    return LlamaConfig(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"],
        num_key_value_heads=config["num_key_value_heads"],
        head_dim=config["head_dim"],
        max_position_embeddings=config["max_position_embeddings"],
        rope_theta=config["rope_theta"],
        rms_norm_eps=config["rms_norm_eps"],
        hidden_act="silu",
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        attn_implementation="eager",
    )


@pytest.mark.slow  # trains and exports (tests/eval_models.py, shared with the eval tests)
def test_arm_export_runs_in_stock_transformers_llama(tmp_path_factory, single_rank_world):
    """An ARM trained by our stack (megatron-core model, `model.objective=arm`, 2 steps) and
    exported by `mdm convert export --format hf`, strictly loaded into `transformers`'
    LlamaForCausalLM: its logits equal our training model's on the same input.

    This reference is code nobody here wrote: the stock Llama of `transformers` (its RMSNorm,
    rotate-half RoPE, GQA, SwiGLU, causal mask), built from a LlamaConfig that mirrors the
    export's config.json. Our training model is megatron-core's, loaded straight from the
    DeepSpeed model-states file of the run (TP=1, PP=1), not through the export mapping."""
    from megatron_mdm.checkpointing.run_dir import find_checkpoint, read_meta, vocab_from_meta
    from megatron_mdm.config import from_dict
    from megatron_mdm.model.builder import build_model

    models = tiny_models(tmp_path_factory.getbasetemp())
    config = json.loads((models.arm_hf / "config.json").read_text())
    assert config["objective"] == "arm" and config["tie_word_embeddings"] is False
    llama_config = stock_llama_config(config)
    rope = getattr(llama_config, "rope_parameters", None) or vars(llama_config)
    assert rope["rope_theta"] == config["rope_theta"]
    stock = LlamaForCausalLM(llama_config).eval()
    stock.load_state_dict(load_file(str(models.arm_hf / "model.safetensors")), strict=True)

    ckpt = find_checkpoint(models.arm)
    meta = read_meta(ckpt)
    assert (meta["parallel"]["tensor"], meta["parallel"]["pipeline"]) == (1, 1)
    vocab = vocab_from_meta(meta)
    ours = build_model(from_dict(meta["config"]), vocab, on_gpu=False).eval()
    states = torch.load(ckpt / "mp_rank_00_model_states.pt", weights_only=True)
    ours.load_state_dict(states["module"], strict=True)

    n_vocab = config["vocab_size"]
    real = [i for i in range(n_vocab) if i not in config["invalid_output_ids"]]
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(
        0, vocab.tokenizer_size, (2, config["max_position_embeddings"]), generator=gen
    )
    with torch.no_grad():
        want = ours(x)[..., :n_vocab]
        got = stock(input_ids=x).logits
    assert want.dtype == got.dtype == torch.float32 and got.shape == want.shape
    assert torch.isneginf(want[..., config["invalid_output_ids"]]).all()
    want, got = want[..., real], got[..., real]
    assert torch.isfinite(want).all()
    assert want.std() > 100 * 1e-5  # the tolerance is small against the logits' spread
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
