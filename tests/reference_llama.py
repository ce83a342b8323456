"""A Llama-style block stack written out plainly from the formulas: the one reference forward that
the exported state dicts of every layout (tests/test_layouts.py) and the shipped modeling code
(tests/test_hf_modeling.py) are checked against. It shares no code with the package: float64
throughout, RoPE in its pairwise (complex) form, one explicit softmax per query head.

The architecture (docs/design.md §2), per block, pre-norm with residuals:

    a = x + o(attention(rms(x; attn_norm)))        h = a + down(silu(gate(m)) * up(m)),
                                                   m = rms(a; mlp_norm)
    rms(x; w) = x / sqrt(mean(x^2) + eps) * w
    RoPE (rotate-half pairing): dims (i, i + hd/2) of each head rotate by pos * theta^(-2i/hd)
    GQA: query head j reads key/value head j // (heads / kv_heads)
    attention: softmax(q k^T / sqrt(hd)) v, bidirectional, or causal for the ARM

then logits = rms(h; final_norm) @ head^T. Layers are given as plain weight dicts (nn.Linear's
[out, in] convention), so each layout's test only has to say which tensor is which.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

LAYER_KEYS = ("attn_norm", "q", "k", "v", "o", "mlp_norm", "gate", "up", "down")


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def rope(x: Tensor, theta: float) -> Tensor:
    """x [B, T, heads, hd]: pair (i, i + hd/2) as one complex number, rotated by pos * freq_i."""
    t, hd = x.shape[1], x.shape[-1]
    half = hd // 2
    freqs = torch.tensor([theta ** (-2.0 * i / hd) for i in range(half)], dtype=torch.float64)
    angle = torch.arange(t, dtype=torch.float64)[:, None] * freqs[None, :]
    rot = torch.polar(torch.ones_like(angle), angle)[None, :, None, :]  # [1, T, 1, half]
    z = torch.complex(x[..., :half], x[..., half:]) * rot
    return torch.cat([z.real, z.imag], dim=-1)


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """q [B, T, H, hd], k/v [B, T, G, hd] -> [B, T, H * hd]; query head j reads group j // (H/G)."""
    t, n_heads, hd = q.shape[1], q.shape[2], q.shape[3]
    per_group = n_heads // k.shape[2]
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    heads = []
    for j in range(n_heads):
        g = j // per_group
        scores = torch.einsum("bqd,bkd->bqk", q[:, :, j], k[:, :, g]) / math.sqrt(hd)
        if causal:
            scores = scores.masked_fill(future, float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v[:, :, g])
    return torch.cat(heads, dim=-1)


def llama_logits(
    input_ids: Tensor,
    embed: Tensor,
    layers: Sequence[Mapping[str, Tensor]],
    final_norm: Tensor,
    head: Tensor,
    *,
    num_heads: int,
    num_kv_heads: int,
    eps: float,
    rope_theta: float,
    causal: bool = False,
) -> Tensor:
    """Logits [B, T, rows of `head`] in float64. `layers`: one dict per block with LAYER_KEYS."""
    h = embed.double()[input_ids]
    b, t, _ = h.shape
    for weights in layers:
        w = {key: weights[key].double() for key in LAYER_KEYS}
        hd = w["q"].shape[0] // num_heads
        x = rms_norm(h, w["attn_norm"], eps)
        q = rope((x @ w["q"].T).view(b, t, num_heads, hd), rope_theta)
        k = rope((x @ w["k"].T).view(b, t, num_kv_heads, hd), rope_theta)
        v = (x @ w["v"].T).view(b, t, num_kv_heads, hd)
        h = h + attention(q, k, v, causal) @ w["o"].T
        m = rms_norm(h, w["mlp_norm"], eps)
        gate = m @ w["gate"].T
        h = h + (gate * torch.sigmoid(gate) * (m @ w["up"].T)) @ w["down"].T
    return rms_norm(h, final_norm.double(), eps) @ head.double().T


def hf_logits(
    sd: Mapping[str, Tensor], config: Mapping, input_ids: Tensor, causal: bool = False
) -> Tensor:
    """The reference on a state dict with Llama's (`hf`) names and its config.json keys."""
    layers = []
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        layers.append(
            {
                "attn_norm": sd[p + "input_layernorm.weight"],
                "q": sd[p + "self_attn.q_proj.weight"],
                "k": sd[p + "self_attn.k_proj.weight"],
                "v": sd[p + "self_attn.v_proj.weight"],
                "o": sd[p + "self_attn.o_proj.weight"],
                "mlp_norm": sd[p + "post_attention_layernorm.weight"],
                "gate": sd[p + "mlp.gate_proj.weight"],
                "up": sd[p + "mlp.up_proj.weight"],
                "down": sd[p + "mlp.down_proj.weight"],
            }
        )
    return llama_logits(
        input_ids,
        sd["model.embed_tokens.weight"],
        layers,
        sd["model.norm.weight"],
        sd["lm_head.weight"],
        num_heads=config["num_attention_heads"],
        num_kv_heads=config["num_key_value_heads"],
        eps=config["rms_norm_eps"],
        rope_theta=config["rope_theta"],
        causal=causal,
    )
