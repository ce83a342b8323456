"""Hugging Face model for megatron-mdm exports.

This file is copied verbatim into every exported folder and loaded with `trust_remote_code=True`,
so it imports only torch, transformers and its sibling `configuration_mdm`. The numerics follow
megatron-core's Llama-style GPT layer (RMSNorm in fp32, rotate-half RoPE with fp32 angles, SwiGLU,
no biases) so that an exported model reproduces the training model's logits.

Attention is bidirectional for `objective="mdm"`: a masked diffusion LM denoises every position
from the whole sequence. `objective="arm"` uses the same weights layout with a causal mask.
`objective="block"` (block diffusion, BD3-LM style, `block_size` B): block k = position div B
attends to blocks <= k; inside a block attention is bidirectional. Passing `clean_input_ids`
(x_0) beside `input_ids` (x_t) runs the training layout [x_t; x_0] (RoPE positions 0..L-1 for
both copies; x_t block k sees x_t block k and x_0 blocks < k, x_0 block k sees x_0 blocks <= k)
and returns x_t's logits: what the block-diffusion loss and ELBO score.

`shift=True` (Dream's shifted prediction, `objective="mdm"`): the output at position i predicts
token i + 1, so the logits of the positions a call runs are its outputs moved right by one, the
first position keeping its own output: over a whole sequence, position 0's logits are the output
at 0. A cached call over positions s..e gives s its own output, so a sampler that needs the
logits of s runs from s - 1 (`fast_sampling`).

Key/value cache (for samplers; training never uses it): `use_cache=True` returns, per layer, the
keys (after RoPE) and values attended to, `[B, kv_heads, S, head_dim]`, as `kv_cache`.
A later call with `kv_cache` computes only its `input_ids` positions and attends to the
cached keys plus its own: appended after them (ARM decoding: positions `S, S+1, ...`), or, with
`replace_at=s`, written over cached positions `s .. s+n-1` (a block in the middle of a cached
sequence, Fast-dLLM's dual cache). Queries see every key for `mdm` and keys at positions <= their
own for `arm`, and keys of blocks <= their own for `block`. A cache is exact for ARM, and for
`block` when it holds whole finished blocks computed clean (prefill the prompt's complete blocks,
denoise the next block against the cache, then commit the clean block with one more call); for
MDM it is an approximation whenever the tokens it was computed from have changed since
(bidirectional keys depend on the whole sequence).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput

from .configuration_mdm import MDMConfig

try:  # transformers >= 5: init functions that skip tensors already loaded from the checkpoint
    from transformers import initialization as _init
except ImportError:  # transformers 4.x
    from torch.nn import init as _init


class MDMRMSNorm(nn.Module):
    """RMSNorm computed in fp32 whatever the activation dtype, as megatron does, because bf16
    statistics would move the exported logits away from the training model's."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * self.weight.float()).to(x.dtype)


def rope_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B, 1, L, head_dim] in fp32. Recomputed per call (no buffer) so that loading on the
    meta device never leaves an uninitialised non-persistent buffer behind."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device)
    inv_freq = 1.0 / (theta ** (exponent / head_dim))
    angles = position_ids.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat((angles, angles), dim=-1)[:, None]
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # megatron casts cos/sin to the activation dtype before rotating; do the same for parity.
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


class MDMAttention(nn.Module):
    def __init__(self, config: MDMConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.causal = config.objective == "arm"
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=False)

    def forward(self, x, cos, sin, attn_mask=None, past_kv=None, replace_at=None):
        """-> (output, (keys, values) attended to, the cache for a later call)."""
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past_kv is not None:
            k, v = (merge_cached(old, new, replace_at) for old, new in zip(past_kv, (k, v)))
        present = (k, v)
        if self.num_kv_heads != self.num_heads:
            # megatron's query groups are contiguous: kv head j serves q heads j*g .. j*g+g-1.
            groups = self.num_heads // self.num_kv_heads
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            # with a cache the model passes the causal mask itself (SDPA's is_causal is aligned
            # to the first key, not to the query's position)
            is_causal=self.causal and attn_mask is None and past_kv is None,
            scale=1.0 / math.sqrt(self.head_dim),
        )
        out = self.o_proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))
        return out, present


def merge_cached(old: torch.Tensor, new: torch.Tensor, replace_at: int | None) -> torch.Tensor:
    """Cached [B, H, S, D] with the new positions [B, H, n, D] appended (`replace_at` None) or
    written over positions `replace_at .. replace_at+n-1` (the cached tensor is not modified)."""
    if replace_at is None:
        return torch.cat([old, new], dim=2)
    end = replace_at + new.shape[2]
    return torch.cat([old[:, :, :replace_at], new, old[:, :, end:]], dim=2)


class MDMMLP(nn.Module):
    def __init__(self, config: MDMConfig):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MDMDecoderLayer(nn.Module):
    def __init__(self, config: MDMConfig):
        super().__init__()
        self.input_layernorm = MDMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MDMAttention(config)
        self.post_attention_layernorm = MDMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MDMMLP(config)

    def forward(self, x, cos, sin, attn_mask=None, past_kv=None, replace_at=None, use_cache=False):
        """-> hidden states, or (hidden states, this layer's (keys, values)) with `use_cache`."""
        attn, present = self.self_attn(
            self.input_layernorm(x), cos, sin, attn_mask, past_kv, replace_at
        )
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return (x, present) if use_cache else x


def block_visible(
    query_positions: torch.Tensor, key_positions: torch.Tensor, block_size: int
) -> torch.Tensor:
    """[nq, nk] bool: key j is visible to query i iff block(key j) <= block(query i)."""
    return (key_positions[None, :] // block_size) <= (query_positions[:, None] // block_size)


def block_diffusion_attention_mask(length: int, block_size: int, device) -> torch.Tensor:
    """[2L, 2L] bool (True = attend) of the training layout [x_t; x_0] (module docstring)."""
    block = (torch.arange(2 * length, device=device) % length) // block_size
    noisy = torch.arange(2 * length, device=device) < length
    q_block, k_block = block[:, None], block[None, :]
    q_noisy, k_noisy = noisy[:, None], noisy[None, :]
    from_noisy = (k_noisy & (k_block == q_block)) | (~k_noisy & (k_block < q_block))
    return torch.where(q_noisy, from_noisy, ~k_noisy & (k_block <= q_block))


def build_attention_mask(
    attention_mask: torch.Tensor | None,
    causal: bool,
    seq_len: int,
    block_size: int | None = None,
) -> torch.Tensor | None:
    """Boolean SDPA mask (True = attend) from a [B, L] 1/0 padding mask, or None.

    None whenever nothing is padded and attention is plain (bidirectional, or causal through
    SDPA's `is_causal`), so SDPA can take its fused paths; block attention (`block_size`) always
    has a mask. Every query may attend to itself: a padded query (left padding under the causal
    mask) would otherwise see no key at all and SDPA would return NaN there; real queries are
    unaffected because their own position is never padding.
    """
    padded = attention_mask is not None and not bool(attention_mask.bool().all())
    device = attention_mask.device if attention_mask is not None else None
    structure = None
    if block_size is not None:
        positions = torch.arange(seq_len, device=device)
        structure = block_visible(positions, positions, block_size)
    elif causal and padded:
        structure = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
    if not padded:
        return structure
    keep = attention_mask.bool()[:, None, None, :]
    if structure is not None:
        keep = keep & structure
    return keep | torch.eye(seq_len, dtype=torch.bool, device=device)


def cached_causal_mask(
    offset: int, num_queries: int, num_keys: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean SDPA mask for queries at positions `offset ..` over `num_keys` cached + new keys:
    key j is visible to query i iff j <= offset + i. None when every key is visible (one query
    appended after the cache), so single-token ARM decoding takes SDPA's unmasked path."""
    if offset + num_queries == num_keys and num_queries == 1:
        return None
    queries = torch.arange(offset, offset + num_queries, device=device)
    return torch.arange(num_keys, device=device)[None, :] <= queries[:, None]


def cached_block_mask(
    offset: int, num_queries: int, num_keys: int, block_size: int, device: torch.device
) -> torch.Tensor | None:
    """`cached_causal_mask` for block attention: key j is visible to query i iff
    block(j) <= block(offset + i). None when every key is visible: one block denoised or
    committed against a cache of earlier blocks, the block sampler's every call."""
    queries = torch.arange(offset, offset + num_queries, device=device)
    visible = block_visible(queries, torch.arange(num_keys, device=device), block_size)
    return None if bool(visible.all()) else visible


# Own output classes with a `kv_cache` field: transformers renames `past_key_values` between
# versions (5.x calls it `cache` and expects a `Cache` object); a plain tuple under our own name
# reads the same under every version.
@dataclass
class MDMModelOutput(BaseModelOutput):
    """`BaseModelOutput` plus the per-layer (keys, values) when called with `use_cache=True`."""

    kv_cache: tuple | None = None


@dataclass
class MDMMaskedLMOutput(MaskedLMOutput):
    """`MaskedLMOutput` plus the per-layer (keys, values) when called with `use_cache=True`."""

    kv_cache: tuple | None = None


class MDMPreTrainedModel(PreTrainedModel):
    config_class = MDMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MDMDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module):
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            _init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, MDMRMSNorm):
            _init.ones_(module.weight)


class MDMModel(MDMPreTrainedModel):
    """The transformer body: embeddings, decoder layers and the final norm (no output layer)."""

    def __init__(self, config: MDMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [MDMDecoderLayer(config) for _ in range(config.num_hidden_layers)]
        )
        self.norm = MDMRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        kv_cache: tuple | list | None = None,
        replace_at: int | None = None,
        use_cache: bool | None = None,
        clean_input_ids: torch.LongTensor | None = None,
        **kwargs,
    ):
        """`attention_mask` [B, L] (1 = token, 0 = padding) only masks padded keys; training
        packs sequences without any mask, so leave it None to reproduce training numerics.
        `kv_cache`, `replace_at`, `use_cache`: the key/value cache (module docstring);
        without `position_ids` the new tokens sit at positions `replace_at ..` or right after
        the cache. `clean_input_ids` (block objective): the training layout, hidden states of
        all 2L positions [x_t; x_0]."""
        b, n = input_ids.shape
        causal = self.config.objective == "arm"
        block = self.config.block_size if self.config.objective == "block" else None
        if clean_input_ids is not None:
            return self._training_layout(input_ids, clean_input_ids, attention_mask, kv_cache)
        cached = 0 if kv_cache is None else kv_cache[0][0].shape[2]
        if replace_at is not None and not (kv_cache and 0 <= replace_at <= cached - n):
            raise ValueError(f"replace_at={replace_at} needs a cache covering it ({cached})")
        offset = cached if replace_at is None else replace_at
        if position_ids is None:
            position_ids = torch.arange(offset, offset + n, device=input_ids.device)
            position_ids = position_ids.unsqueeze(0).expand(b, -1)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        if kv_cache is None:
            mask = build_attention_mask(attention_mask, causal, n, block)
        else:
            if attention_mask is not None and not bool(attention_mask.bool().all()):
                raise ValueError("padding attention_mask is not supported with kv_cache")
            keys = cached + (n if replace_at is None else 0)
            mask = None
            if causal:
                mask = cached_causal_mask(offset, n, keys, input_ids.device)
            elif block is not None:
                mask = cached_block_mask(offset, n, keys, block, input_ids.device)
        return self._run(
            input_ids,
            cos,
            sin,
            mask,
            kv_cache,
            replace_at,
            use_cache,
            output_hidden_states,
            return_dict,
        )

    def _training_layout(self, input_ids, clean_input_ids, attention_mask, kv_cache):
        """[x_t; x_0] under the block-diffusion mask; hidden states of all 2L positions."""
        if self.config.objective != "block":
            raise ValueError("clean_input_ids is for objective 'block'")
        if kv_cache is not None or (attention_mask is not None and not attention_mask.all()):
            raise ValueError("clean_input_ids takes neither kv_cache nor padding")
        b, n = input_ids.shape
        ids = torch.cat([input_ids, clean_input_ids], dim=1)
        positions = torch.arange(n, device=ids.device).repeat(2).unsqueeze(0).expand(b, -1)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        mask = block_diffusion_attention_mask(n, self.config.block_size, ids.device)
        return self._run(ids, cos, sin, mask, None, None, False, False, None)

    def _run(
        self,
        input_ids,
        cos,
        sin,
        mask,
        kv_cache,
        replace_at,
        use_cache,
        output_hidden_states,
        return_dict,
    ):
        h = self.embed_tokens(input_ids)
        hidden_states = [] if output_hidden_states else None
        presents = [] if use_cache else None
        for i, layer in enumerate(self.layers):
            if hidden_states is not None:
                hidden_states.append(h)
            if self.gradient_checkpointing and self.training:
                h = self._gradient_checkpointing_func(layer.__call__, h, cos, sin, mask)
            elif kv_cache is not None or use_cache:
                past = None if kv_cache is None else kv_cache[i]
                h, present = layer(h, cos, sin, mask, past, replace_at, use_cache=True)
                if presents is not None:
                    presents.append(present)
            else:
                h = layer(h, cos, sin, mask)
        h = self.norm(h)
        if hidden_states is not None:
            hidden_states.append(h)
            hidden_states = tuple(hidden_states)
        out = MDMModelOutput(
            last_hidden_state=h,
            kv_cache=tuple(presents) if presents is not None else None,
            hidden_states=hidden_states,
        )
        return out.to_tuple() if return_dict is False else out


class MDMForMaskedLM(MDMPreTrainedModel):
    """Body + untied output layer. Logits are fp32 with `config.invalid_output_ids` at -inf, so a
    sampler can softmax them directly and never unmask to `[MASK]`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MDMConfig):
        super().__init__(config)
        self.model = MDMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        kv_cache: tuple | list | None = None,
        replace_at: int | None = None,
        use_cache: bool | None = None,
        clean_input_ids: torch.LongTensor | None = None,
        output_positions: torch.Tensor | None = None,
        **kwargs,
    ):
        """`output_positions` [B, n] (bool, over the positions the logits would cover): the
        output layer runs on those positions only and the logits are [N, V], row-major (a
        sampler needs the logits of the positions it may reveal, not all of them).
        `labels` [B, L]: plain cross-entropy over positions where labels != -100, with no shift
        (for ARM pass labels already aligned to the next token). This is a convenience for
        fine-tuning tools, not the diffusion loss: that one weights each masked token by 1/t and
        needs the masking ratio, which only the caller knows. The cache arguments are
        `MDMModel.forward`'s; the logits then cover only `input_ids`' positions, and with
        `clean_input_ids` (block objective) only x_t's."""
        body = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
            kv_cache=kv_cache,
            replace_at=replace_at,
            use_cache=use_cache,
            clean_input_ids=clean_input_ids,
        )
        hidden = body.last_hidden_state
        if clean_input_ids is not None:
            hidden = hidden[:, : input_ids.shape[1]]
        if getattr(self.config, "shift", False):  # position i reads output i - 1 (row-wise head)
            hidden = torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1)
        if output_positions is not None:
            if labels is not None:
                raise ValueError("output_positions and labels cannot be combined")
            hidden = hidden[output_positions.to(hidden.device)]
        logits = self.lm_head(hidden).float()
        invalid = self.config.invalid_output_ids
        if invalid:
            ids = torch.tensor(invalid, dtype=torch.long, device=logits.device)
            logits = logits.index_fill(-1, ids, float("-inf"))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.shape[-1]),
                labels.reshape(-1).to(logits.device),
                ignore_index=-100,
            )
        out = MDMMaskedLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=body.hidden_states,
            kv_cache=body.kv_cache,
        )
        return out.to_tuple() if return_dict is False else out


__all__ = ["MDMPreTrainedModel", "MDMModel", "MDMForMaskedLM"]
