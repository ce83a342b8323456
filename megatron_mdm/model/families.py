"""The SMDM scaling family (Nie et al., "Scaling up Masked Diffusion Models on Text").

Sizes are SMDM's own `Diff_LLaMA_{N}M` entries of `lit_gpt/config.py`, so that a scaling-law
fit here can be compared point by point with the published MDM and ARM curves. Every member is
a Llama block with MHA (one KV head per query head), SwiGLU FFN of width 4 * hidden, RoPE base
10000, sequence length 2048 and SMDM's 32000-token Llama-2 tokenizer. The `N` of a name is the
non-embedding parameter count (transformer layers + final norm) rounded to the nearest million;
`megatron_mdm.model.accounting.non_embedding_params` reproduces SMDM's own `model_para_config`
numbers exactly (e.g. 1028M -> 1,027,677,952).

`configs/smdm/` holds one generated MDM and one ARM config per member (`write_family_configs`,
run by `tools/generate_configs.py`); a test keeps them in step with this table.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path

from megatron_mdm.config import COMPARED_OBJECTIVES as OBJECTIVES
from megatron_mdm.config import ModelConfig
from megatron_mdm.model.accounting import non_embedding_params

__all__ = [
    "FAMILY",
    "FamilyMember",
    "experiment_dict",
    "member",
    "render_family_configs",
    "write_family_configs",
]

# name -> (layers, hidden, heads), in SMDM's order. 75M is SMDM's one off-pattern member: a
# deeper, narrower model with FFN 1600 (2.5 * hidden); its 4th entry is that FFN width.
_TABLE: dict[str, tuple[int, ...]] = {
    "6M": (6, 256, 4),
    "19M": (8, 384, 6),
    "34M": (8, 512, 8),
    "48M": (9, 576, 9),
    "66M": (10, 640, 10),
    "85M": (13, 640, 10),
    "75M": (16, 640, 8, 1600),
    "113M": (12, 768, 12),
    "142M": (15, 768, 12),
    "170M": (18, 768, 12),
    "180M": (14, 896, 14),
    "206M": (16, 896, 14),
    "231M": (18, 896, 14),
    "268M": (16, 1024, 16),
    "302M": (18, 1024, 16),
    "336M": (20, 1024, 16),
    "472M": (18, 1280, 10),
    "551M": (21, 1280, 10),
    "571M": (18, 1408, 11),
    "629M": (24, 1280, 10),
    "666M": (21, 1408, 11),
    "717M": (19, 1536, 12),
    "761M": (24, 1408, 11),
    "831M": (22, 1536, 12),
    "944M": (25, 1536, 12),
    "1028M": (20, 1792, 14),
    "1233M": (24, 1792, 14),
    "1476M": (22, 2048, 16),
    "1678M": (25, 2048, 16),
    "2121M": (28, 2176, 17),
}

SEQ_LENGTH = 2048
ROTARY_BASE = 10000
# SMDM trains with TinyLlama's copy of the Llama-2 sentencepiece model; [MASK] is id 32000.
VOCAB_SIZE = 32000
TOKENIZER_MODEL = "tokenizers/llama-32k.model"  # placeholder: where you put that file
DATA_PREFIX = "data/slimpajama/train_text_document"  # placeholder: output of `mdm preprocess`
GLOBAL_BATCH = 256  # sequences per step in SMDM's scaling runs (pretrain/train_mdm.py)
TOKENS_PER_PARAM = 20  # default budget when none is given: Chinchilla's 20 tokens per parameter


@dataclass(frozen=True)
class FamilyMember:
    name: str  # "1028M": SMDM's label, non-embedding parameters in millions
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    ffn_hidden_size: int

    @property
    def millions(self) -> int:
        return int(self.name[:-1])

    @property
    def slug(self) -> str:
        """File-name form, "1028m"."""
        return self.name.lower()

    @property
    def micro_batch_size(self) -> int:
        """SMDM's per-GPU micro-batch by size: 32 / 16 / 8 / 4, i.e. 1 / 2 / 4 / 8 accumulation
        steps for 256 sequences on 8 GPUs, small enough for an 80 GB GPU without recomputation."""
        n = self.millions
        return 32 if n <= 20 else 16 if n <= 50 else 8 if n <= 1000 else 4

    def model_config(self) -> ModelConfig:
        return ModelConfig(**_model_section(self, "mdm"))


def _member_from_row(name: str, row: tuple[int, ...]) -> FamilyMember:
    layers, hidden, heads = row[:3]
    ffn = row[3] if len(row) > 3 else 4 * hidden
    return FamilyMember(name, layers, hidden, heads, ffn)


FAMILY: dict[str, FamilyMember] = {
    name: _member_from_row(name, row) for name, row in _TABLE.items()
}


def member(name: str) -> FamilyMember:
    """Look up a member by any of the spellings people use: "1028M", "1028m", "1028",
    "smdm-1028m", "arm-1028m" or SMDM's "Diff_LLaMA_1028M"."""
    match = re.fullmatch(r"(?:diff_llama_|smdm-|arm-)?(\d+)m?", str(name).strip().lower())
    key = f"{match.group(1)}M" if match else None
    if key not in FAMILY:
        known = ", ".join(FAMILY)
        raise KeyError(f"no SMDM family member {name!r}; known: {known}")
    return FAMILY[key]


def _model_section(m: FamilyMember, objective: str) -> dict:
    return {
        "num_layers": m.num_layers,
        "hidden_size": m.hidden_size,
        "num_attention_heads": m.num_attention_heads,
        "num_query_groups": m.num_attention_heads,
        "ffn_hidden_size": m.ffn_hidden_size,
        "seq_length": SEQ_LENGTH,
        "objective": objective,
        "rotary_base": ROTARY_BASE,
        "vocab_size": VOCAB_SIZE,
    }


def _max_steps(m: FamilyMember, budget_flops: float | None) -> int:
    """Steps for the budget in SMDM's accounting, C = 6 * N_nonembedding * tokens (as SMDM's
    `max_step`), at GLOBAL_BATCH x SEQ_LENGTH tokens per step."""

    n = non_embedding_params(m.model_config())
    tokens = TOKENS_PER_PARAM * n if budget_flops is None else budget_flops / (6 * n)
    return max(1, math.ceil(tokens / (GLOBAL_BATCH * SEQ_LENGTH)))


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def experiment_dict(
    name: str, objective: str = "mdm", *, budget_flops: float | None = None, **overrides: dict
) -> dict:
    """A config dict (for `megatron_mdm.config.from_dict`) training family member `name` with
    SMDM's recipe on one 8-GPU node.

    `budget_flops` sets the run length by compute (an isoFLOP sweep gives every size the same
    budget); by default each member gets 20 tokens per non-embedding parameter. `overrides` are
    sections merged key by key, e.g. ``train={"max_steps": 10}, parallel={"zero_stage": 2}``.
    Warmup is 1% of the steps (docs/design.md §10); SMDM's script also floors it at 100 steps, which
    would be most of a short run, so that floor is left out.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be mdm or arm, got {objective!r}")
    m = member(name)
    steps = _max_steps(m, budget_flops)
    prefix = "smdm" if objective == "mdm" else "arm"
    d: dict = {"model": _model_section(m, objective)}
    if objective == "mdm":
        d["diffusion"] = {"eps": 1.0e-3, "var_len_prob": 0.01, "t_sampling": "uniform"}
    d["parallel"] = {"tensor": 1, "pipeline": 1, "zero_stage": 1}
    d["train"] = {
        "micro_batch_size": m.micro_batch_size,
        "global_batch_size": GLOBAL_BATCH,
        "max_steps": steps,
        "lr": 2.0e-4,
        "min_lr": 2.0e-5,
        "warmup_steps": 0,  # set below, from the final max_steps
        "weight_decay": 0.1,
        "grad_clip": 1.0,
        "adam_beta1": 0.9,
        "adam_beta2": 0.95,
        "precision": "bf16",
        "output_dir": f"runs/{prefix}-{m.slug}",
    }
    d["checkpoint"] = {"save_interval": 5000, "keep_last": 2, "resume": "auto"}
    d["logging"] = {"interval": 10}
    d["data"] = {
        "blend": [1.0, DATA_PREFIX],
        "split": "969,30,1",
        "tokenizer": {"type": "sentencepiece", "model": TOKENIZER_MODEL},
    }
    _merge(d, overrides)
    if "warmup_steps" not in overrides.get("train", {}):  # 1% of the run, whatever sets its length
        d["train"]["warmup_steps"] = max(1, d["train"]["max_steps"] // 100)
    return d


_GENERATED = "# GENERATED"


def _header(m: FamilyMember, objective: str) -> str:
    kind = "masked diffusion (SMDM loss)" if objective == "mdm" else "autoregressive baseline"
    return (
        f"{_GENERATED} by tools/generate_configs.py from megatron_mdm/model/families.py; edit\n"
        "# the table there and regenerate rather than editing this file.\n"
        f"# SMDM Diff_LLaMA_{m.name}: {m.num_layers} layers, hidden {m.hidden_size}, "
        f"{m.num_attention_heads} heads, FFN {m.ffn_hidden_size};\n# {kind}.\n"
        f"# Run length: {TOKENS_PER_PARAM} tokens per non-embedding parameter; set\n"
        "# train.max_steps for an isoFLOP budget (`mdm config show` prints the run's FLOPs).\n"
        "# Placeholders: data.blend (a `mdm preprocess` output prefix) and\n"
        "# data.tokenizer.model (SMDM's Llama-2 32k sentencepiece model).\n"
    )


def render_family_configs() -> dict[str, str]:
    """File name -> YAML text for every member and objective: what `configs/smdm/` must hold."""
    import yaml

    out = {}
    for m in FAMILY.values():
        for objective, prefix in (("mdm", "smdm"), ("arm", "arm")):
            body = yaml.safe_dump(
                experiment_dict(m.name, objective), sort_keys=False, default_flow_style=False
            )
            out[f"{prefix}-{m.slug}.yaml"] = _header(m, objective) + body
    return out


def write_family_configs(directory: str | Path) -> list[Path]:
    """Write `render_family_configs()` into `directory`; delete generated files of members that
    left the table (hand-written files there are kept), so no stale size lingers."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rendered = render_family_configs()
    for stale in directory.glob("*.yaml"):
        if stale.name not in rendered and stale.read_text(encoding="utf-8").startswith(_GENERATED):
            stale.unlink()
    written = []
    for fname, text in rendered.items():
        path = directory / fname
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
