"""Parameter counts and model FLOPs per token (for MFU, config summaries and scaling budgets).

Training FLOPs per token = 6 * N + 12 * n_layers * d * L, where N counts the parameters that do
matrix multiplies per token (transformer layers and the output layer; the input embedding is a
lookup) and the second term is attention scores and weighted values (QK^T and AV, forward and
backward) over the full L x L attention, since the MDM attends bidirectionally. The ARM baseline
is counted the same way (as PaLM and Megatron do), so MDM/ARM MFU compare like for like.

Block diffusion (docs/design.md §11) runs the 2L sequence [x_t; x_0] per sample of L training
tokens: the layers run twice the positions, the output layer only x_t's, and attention is counted
as the dense 2L x 2L product that SDPA and Transformer Engine compute (flex_attention skips the
masked tiles, so this overstates its work by up to ~2.7x at small B):
    6 * (2 * N_nonemb + V * d) + 12 * n_layers * d * 4L   per x_t token.
"""

from __future__ import annotations

from megatron_mdm.config import ModelConfig


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
    """Training FLOPs per token of a sequence of `seq_length` tokens (default model.seq_length);
    for block diffusion per x_t token, the x_0 copy included."""
    seq = m.seq_length if seq_length is None else seq_length
    copies = 2 if m.objective == "block" else 1
    matmul_params = copies * non_embedding_params(m) + padded_vocab * m.hidden_size
    return 6.0 * matmul_params + 12.0 * m.num_layers * m.hidden_size * copies * copies * seq
