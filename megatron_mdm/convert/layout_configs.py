"""config.json of each exported format, from the model's shape and a `meta` dict.

`meta` (every key optional; `layouts.config_meta` builds it from an experiment config):
tokenizer_size, mask_id, seq_length, rotary_base, rope_scaling_factor, norm_epsilon, init_std,
objective, block_size (objective block), torch_dtype ("float32" | "bfloat16" | ...), bos_token_id,
eos_token_id, pad_token_id, name. Split out of layouts.py (which holds the tensor tables and
imports these builders into its LAYOUTS table).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from megatron_mdm.convert.hf_modeling.configuration_mdm import AUTO_MAP
from megatron_mdm.utils import MDMError

if TYPE_CHECKING:
    from megatron_mdm.convert.layouts import ModelShape


class LayoutError(MDMError):
    """One line naming the tensor at fault, its expected and its found shape."""


def _vocab_ids(shape: ModelShape, meta: Mapping[str, Any]) -> tuple[int, int]:
    """(tokenizer_size, mask_id); without meta, our default: [MASK] right after the tokenizer."""
    mask_id = meta.get("mask_id")
    tokenizer_size = meta.get("tokenizer_size")
    if tokenizer_size is None:
        last = mask_id is None or mask_id == shape.n_vocab - 1
        tokenizer_size = shape.n_vocab - 1 if last else shape.n_vocab
    if mask_id is None:
        mask_id = tokenizer_size
    if max(tokenizer_size, mask_id + 1) != shape.n_vocab:
        raise LayoutError(
            f"meta: tokenizer_size {tokenizer_size} and mask_id {mask_id} give "
            f"{max(tokenizer_size, mask_id + 1)} vocabulary rows, the model has {shape.n_vocab}"
        )
    return tokenizer_size, mask_id


def _special_ids(meta: Mapping[str, Any]) -> dict[str, int]:
    keys = ("bos_token_id", "eos_token_id", "pad_token_id")
    return {k: meta[k] for k in keys if meta.get(k) is not None}


def hf_config(shape: ModelShape, meta: Mapping[str, Any]) -> dict[str, Any]:
    """`MDMConfig` fields (convert/hf_modeling/configuration_mdm.py), loadable by AutoConfig."""

    tokenizer_size, mask_id = _vocab_ids(shape, meta)
    invalid = sorted({mask_id, *range(tokenizer_size, shape.n_vocab)})
    return {
        "architectures": ["MDMForMaskedLM"],
        "model_type": "megatron_mdm",
        "auto_map": dict(AUTO_MAP),
        "vocab_size": shape.n_vocab,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.ffn_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_groups,
        "head_dim": shape.head_dim,
        "max_position_embeddings": meta.get("seq_length", 2048),
        "rope_theta": float(meta.get("rotary_base", 10000.0)),
        "rms_norm_eps": meta.get("norm_epsilon", 1e-5),
        "objective": meta.get("objective", "mdm"),
        **({"block_size": meta["block_size"]} if meta.get("objective") == "block" else {}),
        **({"shift": True} if meta.get("shift") else {}),
        "mask_token_id": mask_id,
        "invalid_output_ids": invalid,
        "initializer_range": meta.get("init_std", 0.02),
        "tie_word_embeddings": False,
        "torch_dtype": meta.get("torch_dtype", "float32"),
        **_special_ids(meta),
    }


_LLADA_PRECISION = {"bfloat16": "amp_bf16", "float16": "amp_fp16"}


def _unshifted(fmt: str, meta: Mapping[str, Any]) -> None:
    if meta.get("shift"):
        raise LayoutError(f"{fmt}: no shifted prediction (diffusion.shift) there; export as hf")


def llada_config(shape: ModelShape, meta: Mapping[str, Any]) -> dict[str, Any]:
    """LLaDA-8B's config.json keys (OLMo-derived `LLaDAConfig`) with this model's values.

    Keys kept at LLaDA-8B's values because they describe what this stack also computes: no
    biases, RMSNorm with affine weight and no bias, rotary on (full precision), no ALiBi, no
    qk-norm, untied head, "llama" block (separate q/k/v, SwiGLU as ff_proj/up_proj/ff_out).
    `vocab_size` and `embedding_size` are both the exported row count (padding stripped): LLaDA
    sizes wte/ff_out by `embedding_size`. `init_*` only matter for training from scratch.
    No `auto_map`: LLaDA's modeling code (configuration_llada.py, modeling_llada.py) is not
    ours to ship, and a config must not name files that are not in the folder. To run the export
    with LLaDA's code, copy those two files from a LLaDA release into the folder and add
    `"auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel":
    "modeling_llada.LLaDAModelLM"}` to config.json; `mdm convert import --format llada` and
    `train.init_from` read the tensors and this config without any modeling code.
    """
    if meta.get("objective", "mdm") != "mdm":
        raise LayoutError("llada: the LLaDA layout holds masked diffusion models only (objective)")
    _unshifted("llada", meta)
    _, mask_id = _vocab_ids(shape, meta)
    dtype = meta.get("torch_dtype", "float32")
    return {
        "architectures": ["LLaDAModelLM"],
        "model_type": "llada",
        "activation_type": "silu",
        "alibi": False,
        "alibi_bias_max": 8.0,
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": shape.hidden_size,
        "embedding_dropout": 0.0,
        "embedding_size": shape.n_vocab,
        "flash_attention": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_cutoff_factor": None,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": meta.get("init_std", 0.02),
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "mask_token_id": mask_id,
        "max_sequence_length": meta.get("seq_length", 4096),
        "mlp_hidden_size": shape.ffn_size,
        "mlp_ratio": max(1, round(shape.ffn_size / shape.hidden_size)),
        "multi_query_attention": None,
        "n_heads": shape.num_heads,
        "n_kv_heads": shape.num_kv_groups,
        "n_layers": shape.num_layers,
        "precision": _LLADA_PRECISION.get(dtype, "fp32"),
        "residual_dropout": 0.0,
        "rms_norm_eps": meta.get("norm_epsilon", 1e-5),
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": float(meta.get("rotary_base", 10000.0)),
        "scale_logits": False,
        "torch_dtype": dtype,
        "use_cache": False,
        "vocab_size": shape.n_vocab,
        "weight_tying": False,
        **_special_ids(meta),
    }


def smdm_config(shape: ModelShape, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Exactly the fields of SMDM's lit-gpt `Config`, so `Config(**json.load(f))` works.

    Block-diffusion models are refused: lit-gpt's MDM attends bidirectionally.
    lit-gpt sizes wte/lm_head by `padded_vocab_size` (= the exported rows here) and SMDM's
    scripts take `[MASK]` = `vocab_size`, which holds for our default mask id (right after the
    tokenizer). Its RoPE base is hard-coded to 10000, so other bases cannot be expressed.
    """
    if meta.get("objective", "mdm") == "block":
        raise LayoutError("smdm: lit-gpt's MDM attends bidirectionally; export a block model as hf")
    _unshifted("smdm", meta)
    base = float(meta.get("rotary_base", 10000.0))
    if base != 10000.0:
        raise LayoutError(
            f"smdm: lit-gpt's RoPE base is fixed at 10000, this model uses rotary_base {base:g}"
        )
    tokenizer_size, _ = _vocab_ids(shape, meta)
    return {
        "org": "megatron-mdm",
        "name": meta.get("name", "megatron-mdm"),
        "block_size": meta.get("seq_length", 2048),
        "vocab_size": tokenizer_size,
        "padding_multiple": 64,
        "padded_vocab_size": shape.n_vocab,
        "n_layer": shape.num_layers,
        "n_head": shape.num_heads,
        "n_embd": shape.hidden_size,
        "rotary_percentage": 1.0,
        "parallel_residual": False,
        "bias": False,
        "n_query_groups": shape.num_kv_groups,
        "shared_attention_norm": False,
        "_norm_class": "FusedRMSNorm",
        "norm_eps": meta.get("norm_epsilon", 1e-5),
        "_mlp_class": "LLaMAMLP",
        "intermediate_size": shape.ffn_size,
        "condense_ratio": 1,
    }


# megatron-core's RoPE scaling (RotaryEmbedding._apply_scaling) is Llama 3's with these constants
# fixed; only the factor is a setting (model.rope_scaling_factor).
LLAMA3_ROPE = {
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def llama_config(shape: ModelShape, meta: Mapping[str, Any]) -> dict[str, Any]:
    """A stock `LlamaForCausalLM` config (`Qwen2ForCausalLM` when the model has QKV biases),
    loadable by `AutoConfig` without custom code. Causal LMs only (objective arm): an MDM's
    bidirectional attention and [MASK] input are not what these classes compute."""
    objective = meta.get("objective", "mdm")
    if objective != "arm":
        raise LayoutError(
            f"llama: a LlamaForCausalLM/Qwen2ForCausalLM export needs a causal model "
            f"(model.objective=arm), this one is {objective}; export it as hf"
        )
    factor = meta.get("rope_scaling_factor")
    config: dict[str, Any] = {
        "vocab_size": shape.n_vocab,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.ffn_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_groups,
        "hidden_act": "silu",
        "max_position_embeddings": meta.get("seq_length", 2048),
        "rope_theta": float(meta.get("rotary_base", 10000.0)),
        "rope_scaling": None
        if factor is None
        else {"rope_type": "llama3", "factor": float(factor), **LLAMA3_ROPE},
        "rms_norm_eps": meta.get("norm_epsilon", 1e-5),
        "initializer_range": meta.get("init_std", 0.02),
        "tie_word_embeddings": False,
        "use_cache": True,
        "attention_dropout": 0.0,
        "torch_dtype": meta.get("torch_dtype", "float32"),
        **_special_ids(meta),
    }
    if shape.qkv_bias:
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": shape.num_layers,
            **config,
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "head_dim": shape.head_dim,
        "attention_bias": False,
        "mlp_bias": False,
        "pretraining_tp": 1,
        **config,
    }
