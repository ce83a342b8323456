"""Core attention through `torch.nn.functional.scaled_dot_product_attention` for the local spec.

megatron-core's local `DotProductAttention` materialises the [b, heads, s, s] score matrix; SDPA
dispatches to flash / memory-efficient kernels on GPUs (and a fused CPU kernel), which is what a
cluster without Transformer Engine needs at sequence 2048-4096. It subclasses
DotProductAttention to keep its TP bookkeeping (heads per partition, softmax scale).
"""

from __future__ import annotations

import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


class SDPAttention(DotProductAttention):
    def forward(
        self,
        query,
        key,
        value,
        attention_mask,
        attn_mask_type=None,
        attention_bias=None,
        packed_seq_params=None,
    ):
        """q [sq, b, heads, d], k/v [sk, b, groups, d] -> [sq, b, heads * d] (megatron layout)."""
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("SDPAttention supports neither packed sequences nor biases")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, h, s, d]
        groups = self.num_attention_heads_per_partition // self.num_query_groups_per_partition
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        mask = None
        if attention_mask is not None:  # megatron: True = masked out; SDPA: True = attend
            mask = ~attention_mask.bool()
        context = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.config.attention_dropout if self.training else 0.0,
            is_causal=mask is None and mask_type == AttnMaskType.causal,
            scale=self.softmax_scale,
        )
        sq, b = query.shape[0], query.shape[1]
        return context.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)
