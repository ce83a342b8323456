"""Transformer Engine core attention for arbitrary (block-diffusion) masks (docs/design.md §11).

megatron-core's `TEDotProductAttention` hands `attn_mask_type="arbitrary"` and the boolean mask
(True = masked out) to TE's `DotProductAttention`, whose arbitrary-mask backends take the mask
per sample, `[batch, 1, sq, skv]`. Our masks are built once per shape as `[1, 1, S, S]`
(`model.attention_masks`); this subclass expands the batch dimension as a view (no copy) right
before TE. An annealed MDM (docs/design.md §13.5) passes no mask once attention is bidirectional:
that runs as `no_mask`. Transformer Engine is optional, so the class is made on first use.
"""

from __future__ import annotations

import functools


@functools.cache
def te_arbitrary_mask_attention():
    """The TEDotProductAttention subclass for `AttnMaskType.arbitrary` (imports TE)."""
    from megatron.core.extensions.transformer_engine import TEDotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    class TEArbitraryMaskAttention(TEDotProductAttention):
        def forward(self, query, key, value, attention_mask, attn_mask_type, *args, **kwargs):
            if attention_mask is None:
                attn_mask_type = AttnMaskType.no_mask
            if attention_mask is not None and attention_mask.shape[0] == 1:
                batch = query.shape[1]  # megatron's sbhd layout: [s, b, heads, d]
                attention_mask = attention_mask.expand(batch, *attention_mask.shape[1:])
            return super().forward(
                query, key, value, attention_mask, attn_mask_type, *args, **kwargs
            )

    return TEArbitraryMaskAttention
