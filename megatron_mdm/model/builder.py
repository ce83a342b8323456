"""Experiment config -> megatron-core TransformerConfig -> MaskedDiffusionLM on this rank's stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_mdm.config import ExperimentConfig
from megatron_mdm.model.init import initialize_parameters
from megatron_mdm.model.mdm_model import MaskedDiffusionLM
from megatron_mdm.model.spec import layer_spec
from megatron_mdm.model.vocab import VocabLayout

PARAMS_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8": torch.bfloat16}


def recompute_settings(recompute: str) -> dict:
    """Activation checkpointing: `full` recomputes each layer in backward (uniform, 1 layer per
    chunk); `selective` recomputes only core attention, the memory-heavy, FLOP-light part."""
    if recompute == "full":
        return {
            "recompute_granularity": "full",
            "recompute_method": "uniform",
            "recompute_num_layers": 1,
        }
    if recompute == "selective":
        return {"recompute_granularity": "selective", "recompute_modules": ["core_attn"]}
    return {}


def fp8_settings(cfg: ExperimentConfig) -> dict:
    """Transformer Engine FP8 only: `hybrid` (E4M3 forward, E5M2 gradients) or `e4m3` throughout
    (train.fp8_grad_format), delayed scaling (default) or per-tensor current scaling. The local
    spec's FP8 lives in its linear layers (`local_fp8_grad_format`), not in TransformerConfig,
    whose fp8 fields make megatron-core enter TE's fp8 autocast."""
    t = cfg.train
    if t.precision != "fp8" or cfg.model.transformer_impl != "transformer_engine":
        return {}
    recipe = {"delayed": "delayed", "current": "tensorwise"}[t.fp8_recipe or "delayed"]
    return {"fp8": {"e5m2": "hybrid", "e4m3": "e4m3"}[t.fp8_grad_format], "fp8_recipe": recipe}


def local_fp8_grad_format(cfg: ExperimentConfig) -> str | None:
    """Gradient format of the local spec's FP8 linear layers; None: no FP8 layers."""
    if cfg.train.precision == "fp8" and cfg.model.transformer_impl == "local":
        return cfg.train.fp8_grad_format
    return None


def transformer_config(cfg: ExperimentConfig, on_gpu: bool) -> TransformerConfig:
    m, par = cfg.model, cfg.parallel
    dtype = PARAMS_DTYPE[cfg.train.precision]
    tconfig = TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.kv_groups,
        ffn_hidden_size=m.ffn_size,
        kv_channels=m.hidden_size // m.num_attention_heads,
        add_bias_linear=False,
        add_qkv_bias=m.qkv_bias,
        gated_linear_unit=True,
        activation_func=F.silu,
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_epsilon,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.init_std,
        tensor_model_parallel_size=par.tensor,
        pipeline_model_parallel_size=par.pipeline,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=cfg.train.precision != "fp32",
        # Without CUDA: no fused kernels, CPU init, and unbatched p2p (batched p2p syncs CUDA).
        use_cpu_initialization=True,
        perform_initialization=False,
        masked_softmax_fusion=on_gpu,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        gradient_accumulation_fusion=False,
        apply_rope_fusion=False,
        batch_p2p_comm=on_gpu,
        sequence_parallel=m.sequence_parallel,
        # No CUDA graphs here; an explicit empty scope (= whole layer, megatron's new spelling)
        # instead of the default "full", which megatron-core warns is deprecated on every build.
        cuda_graph_scope=[],
        **recompute_settings(m.recompute),
        **fp8_settings(cfg),
    )
    # Cropped micro-batches (diffusion.var_len_prob) change the sequence length, so pipeline
    # stages must exchange shapes. Set after __post_init__, whose check of this flag concerns only
    # the MoE token dispatcher (this model has no experts).
    tconfig.variable_seq_lengths = par.pipeline > 1 and cfg.diffusion.var_len_prob > 0
    return tconfig


def build_model(cfg: ExperimentConfig, vocab: VocabLayout, on_gpu: bool) -> MaskedDiffusionLM:
    tconfig = transformer_config(cfg, on_gpu)
    model = MaskedDiffusionLM(
        config=tconfig,
        transformer_layer_spec=layer_spec(
            cfg.model.transformer_impl,
            cfg.model.objective,
            cfg.model.attention_backend,
            fp8_grad_format=local_fp8_grad_format(cfg),
            arbitrary_mask=cfg.diffusion.attention_anneal_steps > 0,
        ),
        vocab=vocab,
        objective=cfg.model.objective,
        block_size=cfg.diffusion.block_size,
        shift=cfg.diffusion.shift,
        ce_chunk_tokens=cfg.model.ce_chunk_tokens,
        max_sequence_length=cfg.model.seq_length,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
        rotary_base=cfg.model.rotary_base,
        rope_scaling=cfg.model.rope_scaling_factor is not None,
        rope_scaling_factor=cfg.model.rope_scaling_factor or 8.0,
        parallel_output=True,
    )
    layers_per_stage = cfg.model.num_layers // cfg.parallel.pipeline
    initialize_parameters(
        model,
        seed=cfg.train.seed,
        std=cfg.model.init_std,
        num_layers=cfg.model.num_layers,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        tp_size=parallel_state.get_tensor_model_parallel_world_size(),
        layer_offset=parallel_state.get_pipeline_model_parallel_rank() * layers_per_stage,
    )
    return model
