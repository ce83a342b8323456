"""Core attention for the local spec: torch SDPA, or flex_attention for arbitrary masks on GPU.

megatron-core's local `DotProductAttention` materialises the [b, heads, s, s] score matrix; SDPA
dispatches to flash / memory-efficient kernels on GPUs (and a fused CPU kernel), which is what a
cluster without Transformer Engine needs at sequence 2048-4096. It subclasses
DotProductAttention to keep its TP bookkeeping (heads per partition, softmax scale).

Arbitrary boolean masks (`AttnMaskType.arbitrary`, block diffusion, docs/design.md §11) take
one of two paths, with the same result: SDPA with the dense boolean mask (CPU, and the reference),
or on GPU `torch.nn.attention.flex_attention` with a `BlockMask` (built once per mask,
`model.attention_masks`; the compiled kernel is built once per shape), which skips the fully
masked tiles that dominate a block-diffusion mask.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

from megatron_mdm.model.attention_masks import attend_view, flex_block_mask


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def masked_attention(q, k, v, mask, scale: float, backend: str = "auto") -> torch.Tensor:
    """q [b, h, s, d], k/v [b, groups, s, d], megatron mask (True = masked out) -> [b, h, s, d].

    backend: `sdpa` (dense boolean mask), `flex` (compiled flex_attention with a BlockMask),
    `flex_eager` (the same without torch.compile: runs on CPU, for tests) or `auto` (flex on
    GPU when available, else sdpa)."""
    if backend == "auto":
        backend = "flex" if q.is_cuda and flex_available() else "sdpa"
    if backend == "sdpa":
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attend_view(mask), scale=scale)
    from torch.nn.attention.flex_attention import flex_attention

    run = _compiled_flex() if backend == "flex" else flex_attention
    gqa = q.shape[1] != k.shape[1]
    return run(q, k, v, block_mask=flex_block_mask(mask), scale=scale, enable_gqa=gqa)


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
        sq, b = query.shape[0], query.shape[1]
        if attention_mask is not None and mask_type == AttnMaskType.arbitrary:
            context = masked_attention(q, k, v, attention_mask, self.softmax_scale)
            return context.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)
        groups = self.num_attention_heads_per_partition // self.num_query_groups_per_partition
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        mask = None
        if attention_mask is not None:  # megatron: True = masked out; SDPA: True = attend
            mask = attend_view(attention_mask)
        context = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.config.attention_dropout if self.training else 0.0,
            is_causal=mask is None and mask_type == AttnMaskType.causal,
            scale=self.softmax_scale,
        )
        return context.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)
