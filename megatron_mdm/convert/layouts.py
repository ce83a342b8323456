"""Tensor names and layouts of the exported checkpoint formats, to and from the canonical form.

The canonical form is the full (TP=1, PP=1) state dict of megatron-core's GPTModel with the local
layer spec, `_extra_state` dropped. Gathering shards into it (and splitting it back for any TP/PP)
is `model/sharding.py`'s job; this module only renames and re-cuts whole tensors, so every format
is reachable from any parallel layout through one pivot.

Layouts (docs/design.md §8); every name ends in `.weight`. Per layer i: L = `decoder.layers.i`,
M = `model.layers.i`, B = `model.transformer.blocks.i`, H = `transformer.h.i`.

    canonical (megatron)         hf                          llada               smdm (lit-gpt)
    embedding.word_embeddings    model.embed_tokens          model.transformer.  transformer.wte
                                                               wte
    L.input_layernorm            M.input_layernorm           B.attn_norm         H.norm_1
    L.self_attention.linear_qkv  M.self_attn.{q,k,v}_proj    B.{q,k,v}_proj      H.attn.attn
                                   (split by group)            (split by group)    (verbatim)
    L.self_attention.linear_proj M.self_attn.o_proj          B.attn_out          H.attn.proj
    L.pre_mlp_layernorm          M.post_attention_layernorm  B.ff_norm           H.norm_2
    L.mlp.linear_fc1 [gate; up]  M.mlp.{gate,up}_proj        B.{ff_proj,up_proj} H.mlp.swiglu.w1/w2
    L.mlp.linear_fc2             M.mlp.down_proj             B.ff_out            H.mlp.swiglu.w3
    decoder.final_layernorm      model.norm                  model.transformer.  transformer.ln_f
                                                               ln_f
    output_layer                 lm_head                     model.transformer.  lm_head
                                                               ff_out

Why the QKV cuts are what they are:
- megatron's `linear_qkv` rows are grouped per query group: `[q heads of group 0, k_0, v_0,
  q heads of group 1, k_1, v_1, ...]` (SelfAttention.get_query_key_value_tensors views the output
  as `[.., g, (heads/g + 2) * hd]`), and query head `h` reads kv head `h // (heads/g)`.
- hf and LLaDA keep separate q/k/v projections, q ordered by head; their GQA repeats kv head `j`
  for query heads `j*heads/g ... (j+1)*heads/g - 1` (`repeat_kv` / `repeat_interleave`), the
  same grouping, so a split by group is all it takes.
- lit-gpt's `CausalSelfAttention` (SMDM is TinyLlama's lit-gpt) views `attn(x)` as
  `(B, T, n_query_groups, q_per_kv + 2, head_size)` and splits `(q_per_kv, 1, 1)` on that axis:
  per group `[q..., k, v]`, exactly megatron's layout, so `attn.attn` is `linear_qkv` unchanged.
- SMDM's `LLaMAMLP` is `xformers.ops.SwiGLU(..., _pack_weights=False)`, which computes
  `w3(silu(w1(x)) * w2(x))`: w1 = gate, w2 = up, w3 = down. LLaDA's block computes
  `ff_out(act(ff_proj(x)) * up_proj(x))`: ff_proj = gate, up_proj = up.

Vocabulary: megatron's rows beyond `n_vocab = max(tokenizer_size, mask_id + 1)` are TP padding
that no input embeds and no output predicts; exports drop them, imports append zero rows. The
`[MASK]` row is kept in every format because the model embeds `[MASK]` on input. Round trips are
bit-identical (pure data movement, no dtype change); padding rows come back as zeros.

Tensors returned by an export never share storage with each other (split pieces are copied), so
the dict can go straight to `safetensors.torch.save_file`; whole tensors may be views of the
input. Casting is the caller's business.

`llama` (transformers' Llama / Mistral / Qwen2 causal LMs, docs/design.md §13) has hf's names
plus Qwen2's `self_attn.{q,k,v}_proj.bias` (canonical `linear_qkv.bias`, grouped like the weight);
its export keeps the tokenizer's rows only (`Layout.keeps_mask_row`), and its import of a tied
model (no `lm_head.weight`) copies the embedding into the head.

`meta` for `config_json`: see `layout_configs.py` (`config_meta` builds it from an experiment
config).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from megatron_mdm.convert.hf_modeling import MODELING_FILES
from megatron_mdm.convert.layout_configs import (
    LayoutError,
    hf_config,
    llada_config,
    llama_config,
    smdm_config,
)

if TYPE_CHECKING:
    from megatron_mdm.config import ExperimentConfig, ModelConfig
    from megatron_mdm.model.vocab import VocabLayout

Tensor = torch.Tensor
StateDict = dict[str, Tensor]

FORMATS = ("hf", "llada", "smdm", "llama")
__all__ = ["FORMATS", "LAYOUTS", "Layout", "LayoutError", "ModelShape", "hf_config"]


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_groups: int
    ffn_size: int
    n_vocab: int  # rows kept on export: tokenizer ids and [MASK], no TP padding
    qkv_bias: bool = False  # a bias on the QKV projection (Qwen2)

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise LayoutError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.num_heads % self.num_kv_groups:
            raise LayoutError(
                f"num_heads {self.num_heads} is not divisible by num_kv_groups {self.num_kv_groups}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_groups

    @classmethod
    def from_config(cls, model: ModelConfig, vocab: VocabLayout) -> ModelShape:
        return cls(
            num_layers=model.num_layers,
            hidden_size=model.hidden_size,
            num_heads=model.num_attention_heads,
            num_kv_groups=model.kv_groups,
            ffn_size=model.ffn_size,
            n_vocab=max(vocab.tokenizer_size, vocab.mask_id + 1),
            qkv_bias=model.qkv_bias,
        )


def config_meta(cfg: ExperimentConfig, vocab: VocabLayout, **extra: Any) -> dict[str, Any]:
    """The `meta` that `config_json` reads, from the experiment that trained the model."""
    m = cfg.model
    meta = {
        "tokenizer_size": vocab.tokenizer_size,
        "mask_id": vocab.mask_id,
        "seq_length": m.seq_length,
        "rotary_base": m.rotary_base,
        "rope_scaling_factor": m.rope_scaling_factor,
        "norm_epsilon": m.norm_epsilon,
        "init_std": m.init_std,
        "objective": m.objective,
        "block_size": cfg.diffusion.block_size,
        "shift": cfg.diffusion.shift,
        "torch_dtype": "float32" if cfg.train.precision == "fp32" else "bfloat16",
    }
    meta.update(extra)
    return meta


# --------------------------------------------------------------------------- canonical names

EMBEDDING = "embedding.word_embeddings.weight"
OUTPUT = "output_layer.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
_L = "decoder.layers.{i}."
INPUT_NORM = _L + "input_layernorm.weight"
QKV = _L + "self_attention.linear_qkv.weight"
QKV_BIAS = _L + "self_attention.linear_qkv.bias"
PROJ = _L + "self_attention.linear_proj.weight"
MLP_NORM = _L + "pre_mlp_layernorm.weight"
FC1 = _L + "mlp.linear_fc1.weight"
FC2 = _L + "mlp.linear_fc2.weight"

# Transformer Engine fuses each pre-norm into the following linear, which then owns its weight.
_LOCAL_TO_TE = {
    re.compile(r"^(decoder\.layers\.\d+\.)input_layernorm\.weight$"): (
        r"\1self_attention.linear_qkv.layer_norm_weight"
    ),
    re.compile(r"^(decoder\.layers\.\d+\.)pre_mlp_layernorm\.weight$"): (
        r"\1mlp.linear_fc1.layer_norm_weight"
    ),
}
_TE_TO_LOCAL = {
    re.compile(r"^(decoder\.layers\.\d+\.)self_attention\.linear_qkv\.layer_norm_weight$"): (
        r"\1input_layernorm.weight"
    ),
    re.compile(r"^(decoder\.layers\.\d+\.)mlp\.linear_fc1\.layer_norm_weight$"): (
        r"\1pre_mlp_layernorm.weight"
    ),
}


def _rename(name: str, rules: dict[re.Pattern, str]) -> str:
    for pattern, repl in rules.items():
        new, hits = pattern.subn(repl, name)
        if hits:
            return new
    return name


def canonicalize_names(sd: Mapping[str, Any]) -> StateDict:
    """Local-spec names for a state dict of either spec, `_extra_state` dropped.

    The exporters speak only the local names, so a Transformer Engine model goes through here
    first. `_extra_state` (TE's FP8 scaling state, None for local modules) is no weight.
    """
    return {_rename(k, _TE_TO_LOCAL): v for k, v in sd.items() if not k.endswith("._extra_state")}


def to_te_names(sd: Mapping[str, Any]) -> StateDict:
    """Transformer Engine names for a canonical state dict.

    TE modules also expect `_extra_state` entries; load with `strict=False` or copy those from
    the target model's own state dict.
    """
    return {_rename(k, _LOCAL_TO_TE): v for k, v in sd.items()}


def canonical_shapes(shape: ModelShape, padded_vocab: int) -> dict[str, tuple[int, ...]]:
    d, hd = shape.hidden_size, shape.head_dim
    out: dict[str, tuple[int, ...]] = {EMBEDDING: (padded_vocab, d)}
    for i in range(shape.num_layers):
        out[INPUT_NORM.format(i=i)] = (d,)
        out[QKV.format(i=i)] = ((shape.num_heads + 2 * shape.num_kv_groups) * hd, d)
        if shape.qkv_bias:
            out[QKV_BIAS.format(i=i)] = ((shape.num_heads + 2 * shape.num_kv_groups) * hd,)
        out[PROJ.format(i=i)] = (d, shape.num_heads * hd)
        out[MLP_NORM.format(i=i)] = (d,)
        out[FC1.format(i=i)] = (2 * shape.ffn_size, d)
        out[FC2.format(i=i)] = (d, shape.ffn_size)
    out[FINAL_NORM] = (d,)
    out[OUTPUT] = (padded_vocab, d)
    return out


def check_state_dict(
    sd: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], what: str
) -> None:
    """Raise a one-line LayoutError on the first missing, unexpected or misshapen tensor.

    One line because it surfaces as a CLI error; the first problem in model order is usually the
    cause of the rest (a wrong layer count, a wrong size), so the count of others is enough.
    """

    def found(value) -> Any:
        return tuple(value.shape) if hasattr(value, "shape") else type(value).__name__

    problems = []
    for key, exp in expected.items():
        if key not in sd:
            problems.append(f"{key}: expected shape {exp}, found no such tensor")
        elif found(sd[key]) != tuple(exp):
            problems.append(f"{key}: expected shape {exp}, found {found(sd[key])}")
    for key in sorted(set(sd) - set(expected)):
        problems.append(f"{key}: unexpected tensor (expected none), found {found(sd[key])}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise LayoutError(f"{what}: {problems[0]}{more}")


def _check_canonical(c: Mapping[str, Tensor], shape: ModelShape) -> int:
    """Validate a canonical dict whatever its padding; returns its padded vocab size."""
    if EMBEDDING not in c:
        raise LayoutError(
            f"canonical state dict: {EMBEDDING}: expected shape (padded_vocab, "
            f"{shape.hidden_size}), found no such tensor"
        )
    padded = max(int(c[EMBEDDING].shape[0]), shape.n_vocab)
    check_state_dict(c, canonical_shapes(shape, padded), "canonical state dict")
    return padded


# --------------------------------------------------------------------------- re-cutting


def _own(t: Tensor) -> Tensor:
    """A contiguous copy: split pieces must not share storage (safetensors refuses aliasing)."""
    return t.clone(memory_format=torch.contiguous_format)


def split_qkv(qkv: Tensor, shape: ModelShape) -> tuple[Tensor, Tensor, Tensor]:
    """megatron's grouped `linear_qkv` -> q [heads*hd, d] (by head), k, v [groups*hd, d]."""
    g, qpg, hd = shape.num_kv_groups, shape.heads_per_group, shape.head_dim
    rest = tuple(qkv.shape[1:])  # (d,) for the weight, () for the bias
    w = qkv.view(g, qpg + 2, hd, *rest)
    q = _own(w[:, :qpg]).view(g * qpg * hd, *rest)
    k = _own(w[:, qpg]).view(g * hd, *rest)
    v = _own(w[:, qpg + 1]).view(g * hd, *rest)
    return q, k, v


def merge_qkv(q: Tensor, k: Tensor, v: Tensor, shape: ModelShape) -> Tensor:
    g, qpg, hd = shape.num_kv_groups, shape.heads_per_group, shape.head_dim
    rest = tuple(q.shape[1:])
    parts = [q.reshape(g, qpg * hd, *rest), k.reshape(g, hd, *rest), v.reshape(g, hd, *rest)]
    return torch.cat(parts, dim=1).reshape(-1, *rest)


def _split_fc1(fc1: Tensor) -> tuple[Tensor, Tensor]:
    gate, up = fc1.chunk(2, dim=0)
    return _own(gate), _own(up)


def _strip_vocab(t: Tensor, shape: ModelShape) -> Tensor:
    return t[: shape.n_vocab]


def _pad_vocab(t: Tensor, padded_vocab: int) -> Tensor:
    if padded_vocab == t.shape[0]:
        return t
    return torch.cat([t, t.new_zeros(padded_vocab - t.shape[0], *t.shape[1:])], dim=0)


# --------------------------------------------------------------------------- formats


@dataclass(frozen=True)
class _Names:
    """Where each canonical piece lives in a format; `qkv` set = packed, else q/k/v split."""

    embed: str
    final_norm: str
    head: str
    attn_norm: str
    o: str
    mlp_norm: str
    gate: str
    up: str
    down: str
    q: str = ""
    k: str = ""
    v: str = ""
    qkv: str = ""
    bias: str = ""  # "{p}" template of the q/k/v biases (`p` in q, k, v); "" = no QKV bias

    def check_bias(self, fmt: str, shape: ModelShape) -> None:
        if shape.qkv_bias and not self.bias:
            raise LayoutError(
                f"{fmt}: this format has no QKV bias and the model has one (model.qkv_bias); "
                "export it as llama"
            )


_HF = _Names(
    embed="model.embed_tokens.weight",
    final_norm="model.norm.weight",
    head="lm_head.weight",
    attn_norm="model.layers.{i}.input_layernorm.weight",
    q="model.layers.{i}.self_attn.q_proj.weight",
    k="model.layers.{i}.self_attn.k_proj.weight",
    v="model.layers.{i}.self_attn.v_proj.weight",
    o="model.layers.{i}.self_attn.o_proj.weight",
    mlp_norm="model.layers.{i}.post_attention_layernorm.weight",
    gate="model.layers.{i}.mlp.gate_proj.weight",
    up="model.layers.{i}.mlp.up_proj.weight",
    down="model.layers.{i}.mlp.down_proj.weight",
)

# Llama / Mistral / Qwen2 (transformers' *ForCausalLM): hf's names, plus Qwen2's q/k/v biases.
_LLAMA = _Names(**{**_HF.__dict__, "bias": "model.layers.{i}.self_attn.{p}_proj.bias"})

_LLADA = _Names(
    embed="model.transformer.wte.weight",
    final_norm="model.transformer.ln_f.weight",
    head="model.transformer.ff_out.weight",
    attn_norm="model.transformer.blocks.{i}.attn_norm.weight",
    q="model.transformer.blocks.{i}.q_proj.weight",
    k="model.transformer.blocks.{i}.k_proj.weight",
    v="model.transformer.blocks.{i}.v_proj.weight",
    o="model.transformer.blocks.{i}.attn_out.weight",
    mlp_norm="model.transformer.blocks.{i}.ff_norm.weight",
    gate="model.transformer.blocks.{i}.ff_proj.weight",
    up="model.transformer.blocks.{i}.up_proj.weight",
    down="model.transformer.blocks.{i}.ff_out.weight",
)

_SMDM = _Names(
    embed="transformer.wte.weight",
    final_norm="transformer.ln_f.weight",
    head="lm_head.weight",
    attn_norm="transformer.h.{i}.norm_1.weight",
    qkv="transformer.h.{i}.attn.attn.weight",
    o="transformer.h.{i}.attn.proj.weight",
    mlp_norm="transformer.h.{i}.norm_2.weight",
    gate="transformer.h.{i}.mlp.swiglu.w1.weight",
    up="transformer.h.{i}.mlp.swiglu.w2.weight",
    down="transformer.h.{i}.mlp.swiglu.w3.weight",
)


def _shapes(names: _Names, shape: ModelShape) -> dict[str, tuple[int, ...]]:
    d, hd, f = shape.hidden_size, shape.head_dim, shape.ffn_size
    out: dict[str, tuple[int, ...]] = {names.embed: (shape.n_vocab, d)}
    for i in range(shape.num_layers):
        out[names.attn_norm.format(i=i)] = (d,)
        if names.qkv:
            out[names.qkv.format(i=i)] = ((shape.num_heads + 2 * shape.num_kv_groups) * hd, d)
        else:
            out[names.q.format(i=i)] = (shape.num_heads * hd, d)
            out[names.k.format(i=i)] = (shape.num_kv_groups * hd, d)
            out[names.v.format(i=i)] = (shape.num_kv_groups * hd, d)
        if shape.qkv_bias and names.bias:
            out[names.bias.format(i=i, p="q")] = (shape.num_heads * hd,)
            out[names.bias.format(i=i, p="k")] = (shape.num_kv_groups * hd,)
            out[names.bias.format(i=i, p="v")] = (shape.num_kv_groups * hd,)
        out[names.o.format(i=i)] = (d, shape.num_heads * hd)
        out[names.mlp_norm.format(i=i)] = (d,)
        out[names.gate.format(i=i)] = (f, d)
        out[names.up.format(i=i)] = (f, d)
        out[names.down.format(i=i)] = (d, f)
    out[names.final_norm] = (d,)
    out[names.head] = (shape.n_vocab, d)
    return out


def _export(names: _Names, c: Mapping[str, Tensor], shape: ModelShape, fmt: str) -> StateDict:
    names.check_bias(fmt, shape)
    _check_canonical(c, shape)
    out = {names.embed: _strip_vocab(c[EMBEDDING], shape)}
    for i in range(shape.num_layers):
        out[names.attn_norm.format(i=i)] = c[INPUT_NORM.format(i=i)]
        qkv = c[QKV.format(i=i)]
        if names.qkv:
            out[names.qkv.format(i=i)] = qkv
        else:
            q, k, v = split_qkv(qkv, shape)
            out[names.q.format(i=i)] = q
            out[names.k.format(i=i)] = k
            out[names.v.format(i=i)] = v
        if shape.qkv_bias:
            for p, b in zip("qkv", split_qkv(c[QKV_BIAS.format(i=i)], shape), strict=True):
                out[names.bias.format(i=i, p=p)] = b
        out[names.o.format(i=i)] = c[PROJ.format(i=i)]
        out[names.mlp_norm.format(i=i)] = c[MLP_NORM.format(i=i)]
        gate, up = _split_fc1(c[FC1.format(i=i)])
        out[names.gate.format(i=i)] = gate
        out[names.up.format(i=i)] = up
        out[names.down.format(i=i)] = c[FC2.format(i=i)]
    out[names.final_norm] = c[FINAL_NORM]
    out[names.head] = _strip_vocab(c[OUTPUT], shape)
    return out


def _import(
    names: _Names, fmt: str, sd: Mapping[str, Tensor], shape: ModelShape, padded_vocab: int
) -> StateDict:
    if padded_vocab < shape.n_vocab:
        raise LayoutError(
            f"{fmt}: padded_vocab {padded_vocab} is smaller than the model vocabulary "
            f"{shape.n_vocab}"
        )
    names.check_bias(fmt, shape)
    check_state_dict(sd, _shapes(names, shape), f"{fmt} state dict")
    c = {EMBEDDING: _pad_vocab(sd[names.embed], padded_vocab)}
    for i in range(shape.num_layers):
        c[INPUT_NORM.format(i=i)] = sd[names.attn_norm.format(i=i)]
        if names.qkv:
            c[QKV.format(i=i)] = sd[names.qkv.format(i=i)]
        else:
            q, k, v = (sd[n.format(i=i)] for n in (names.q, names.k, names.v))
            c[QKV.format(i=i)] = merge_qkv(q, k, v, shape)
        if shape.qkv_bias:
            qb, kb, vb = (sd[names.bias.format(i=i, p=p)] for p in "qkv")
            c[QKV_BIAS.format(i=i)] = merge_qkv(qb, kb, vb, shape)
        c[PROJ.format(i=i)] = sd[names.o.format(i=i)]
        c[MLP_NORM.format(i=i)] = sd[names.mlp_norm.format(i=i)]
        gate, up = sd[names.gate.format(i=i)], sd[names.up.format(i=i)]
        c[FC1.format(i=i)] = torch.cat([gate, up], dim=0)
        c[FC2.format(i=i)] = sd[names.down.format(i=i)]
    c[FINAL_NORM] = sd[names.final_norm]
    c[OUTPUT] = _pad_vocab(sd[names.head], padded_vocab)
    return c


def to_hf(canonical: Mapping[str, Tensor], shape: ModelShape) -> StateDict:
    return _export(_HF, canonical, shape, "hf")


def from_hf(sd: Mapping[str, Tensor], shape: ModelShape, padded_vocab: int) -> StateDict:
    return _import(_HF, "hf", sd, shape, padded_vocab)


def to_llada(canonical: Mapping[str, Tensor], shape: ModelShape) -> StateDict:
    return _export(_LLADA, canonical, shape, "llada")


def from_llada(sd: Mapping[str, Tensor], shape: ModelShape, padded_vocab: int) -> StateDict:
    return _import(_LLADA, "llada", sd, shape, padded_vocab)


def to_smdm(canonical: Mapping[str, Tensor], shape: ModelShape) -> StateDict:
    return _export(_SMDM, canonical, shape, "smdm")


def from_smdm(sd: Mapping[str, Tensor], shape: ModelShape, padded_vocab: int) -> StateDict:
    return _import(_SMDM, "smdm", sd, shape, padded_vocab)


def to_llama(canonical: Mapping[str, Tensor], shape: ModelShape) -> StateDict:
    return _export(_LLAMA, canonical, shape, "llama")


def from_llama(sd: Mapping[str, Tensor], shape: ModelShape, padded_vocab: int) -> StateDict:
    """A causal LM's tensors; a tied model (no `lm_head.weight`) gets the embedding as its head
    (untied: the two train apart from here on)."""
    if _LLAMA.head not in sd and _LLAMA.embed in sd:
        sd = {**sd, _LLAMA.head: sd[_LLAMA.embed].clone()}
    return _import(_LLAMA, "llama", sd, shape, padded_vocab)


@dataclass(frozen=True)
class Layout:
    name: str
    export: Callable[[Mapping[str, Tensor], ModelShape], StateDict]
    import_: Callable[[Mapping[str, Tensor], ModelShape, int], StateDict]
    config_json: Callable[[ModelShape, Mapping[str, Any]], dict[str, Any]]
    shapes: Callable[[ModelShape], dict[str, tuple[int, ...]]]  # exported key -> shape
    # Python files the exporter copies next to config.json: exactly those its `auto_map` names.
    code_files: tuple[Path, ...] = ()
    # False: the export holds the tokenizer's rows only ([MASK] dropped when it is a row past
    # them): a causal LM never reads or predicts [MASK].
    keeps_mask_row: bool = True


LAYOUTS: dict[str, Layout] = {
    "hf": Layout("hf", to_hf, from_hf, hf_config, lambda s: _shapes(_HF, s), tuple(MODELING_FILES)),
    "llada": Layout("llada", to_llada, from_llada, llada_config, lambda s: _shapes(_LLADA, s)),
    "smdm": Layout("smdm", to_smdm, from_smdm, smdm_config, lambda s: _shapes(_SMDM, s)),
    "llama": Layout(
        "llama",
        to_llama,
        from_llama,
        llama_config,
        lambda s: _shapes(_LLAMA, s),
        keeps_mask_row=False,
    ),
}


def get_layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise LayoutError(
            f"unknown layout {name!r}; expected one of {', '.join(FORMATS)}"
        ) from None
