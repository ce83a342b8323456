"""Model FLOPs per token and MFU.

Training FLOPs per token = 6 * N + 12 * n_layers * d * L, where N counts the parameters that do
matrix multiplies per token (transformer layers and the output layer; the input embedding is a
lookup) and the second term is attention scores and weighted values (QK^T and AV, forward and
backward) over the full L x L attention, since the MDM attends bidirectionally. The ARM baseline
is counted the same way (as PaLM and Megatron do), so MDM/ARM MFU compare like for like.
"""

from __future__ import annotations

import os

from megatron_mdm.config import ModelConfig

# Dense BF16 peak (no sparsity), TFLOP/s per device.
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0}


def non_embedding_params(m: ModelConfig) -> int:
    """Transformer layers + final norm (the SMDM/Chinchilla "non-embedding" count)."""
    d, heads, groups = m.hidden_size, m.num_attention_heads, m.kv_groups
    head_dim = d // heads
    attn = d * (heads + 2 * groups) * head_dim + heads * head_dim * d
    mlp = 3 * d * m.ffn_size
    return m.num_layers * (attn + mlp + 2 * d) + d


def total_params(m: ModelConfig, padded_vocab: int) -> int:
    return non_embedding_params(m) + 2 * padded_vocab * m.hidden_size


def flops_per_token(m: ModelConfig, padded_vocab: int, seq_length: int | None = None) -> float:
    seq = m.seq_length if seq_length is None else seq_length
    matmul_params = non_embedding_params(m) + padded_vocab * m.hidden_size
    return 6.0 * matmul_params + 12.0 * m.num_layers * m.hidden_size * seq


def peak_tflops_per_device(configured: float | None) -> float:
    """Configured value, else a table lookup for the GPU, else a CPU estimate (cores x 32 FP32
    FLOP/cycle (2 AVX2 FMA units) x 2.5 GHz), good enough to compare CPU runs with each other."""
    if configured:
        return configured
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in GPU_PEAK_TFLOPS.items():
            if key in name:
                return value
        return 312.0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) * 32 * 2.5e9 / 1e12
