"""Hugging Face causal LM folders (Llama, Mistral, Qwen2): their config.json as our model settings,
and hub ids (`org/name`) resolved to the local cache.

Pure reading and checking: what megatron-core cannot compute the same way (an architecture, a RoPE
scaling, biases other than Qwen2's QKV bias, a head size that is not hidden / heads) is refused
here in one line, before any tensor is read. The tensors themselves go through the `llama` entry
of `layouts.LAYOUTS`; `checkpointing/causal_import.py` puts the two together.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_mdm.convert.layout_configs import LLAMA3_ROPE
from megatron_mdm.utils import MDMError

# config.json model_type -> the transformers class whose tensors and maths we reproduce.
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class CausalLMError(MDMError):
    """One line naming the folder (or hub id) and what in it we cannot use."""


@dataclass(frozen=True)
class CausalLM:
    """What a causal LM folder fixes about the model (our `model.*` key names)."""

    folder: Path
    model_type: str
    settings: dict[str, Any]  # num_layers, hidden_size, ..., vocab_size (= embedding rows)
    tied: bool  # tie_word_embeddings: the head is the embedding (untied on import)
    max_positions: int  # the longest sequence our full attention computes like theirs
    special_ids: dict[str, int]  # bos_token_id / eos_token_id / pad_token_id when given


def is_causal_lm_folder(path: str | Path) -> bool:
    """A folder whose config.json names one of ARCHITECTURES' model types."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") in ARCHITECTURES
    except (OSError, ValueError, AttributeError):
        return False


def resolve_source(name: str | Path, what: str) -> Path:
    """A local path as it is; an `org/name` that is no local path: its snapshot in the Hugging
    Face cache (HF_HUB_CACHE / HF_HOME; never the network: HF_HUB_OFFLINE or not, a training run
    must not download). `what` names the setting in the error (e.g. "train.init_from")."""
    path = Path(name).expanduser()
    if path.exists() or not HUB_ID.match(str(name)):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(name), local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise CausalLMError(
            f"{what}: {name} is neither a local folder nor in the Hugging Face cache; download it "
            f"first with `hf download {name}` (or huggingface-cli download {name})"
        ) from None


def _get(config: dict, key: str, where: Path) -> Any:
    if config.get(key) is None:
        raise CausalLMError(f"{where}: missing key {key}")
    return config[key]


def _rope(config: dict, where: Path) -> tuple[int, float | None]:
    """(rotary_base, rope_scaling_factor): both transformers spellings (rope_parameters, or
    rope_theta + rope_scaling); only megatron-core's Llama 3 scaling is accepted."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    if theta != int(theta):
        raise CausalLMError(f"{where}: rope_theta {theta} is not an integer (model.rotary_base)")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return int(theta), None
    expected = {k: float(v) for k, v in LLAMA3_ROPE.items()}
    found = {k: float(params.get(k, "nan")) for k in LLAMA3_ROPE}
    if kind != "llama3" or found != expected:
        raise CausalLMError(
            f"{where}: RoPE scaling {kind} {found if kind == 'llama3' else ''} is not supported; "
            f"megatron-core computes only llama3 scaling with {expected}"
        )
    return int(theta), float(params["factor"])


def _refuse(config: dict, where: Path, model_type: str) -> None:
    if config.get("hidden_act", "silu") != "silu":
        raise CausalLMError(f"{where}: hidden_act {config['hidden_act']} is not supported (silu)")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise CausalLMError(f"{where}: {key}=true is not supported (only Qwen2's QKV bias)")
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim * heads != hidden:
        raise CausalLMError(
            f"{where}: head_dim {head_dim} is not hidden_size / num_attention_heads = "
            f"{hidden} / {heads}"
        )


def read_causal_lm(folder: str | Path) -> CausalLM:
    """The model settings of a Llama / Mistral / Qwen2 `save_pretrained` folder."""
    folder = Path(folder)
    where = folder / "config.json"
    try:
        config = json.loads(where.read_text())
    except FileNotFoundError:
        raise CausalLMError(f"{where}: missing (not a save_pretrained folder)") from None
    except (OSError, ValueError) as exc:
        raise CausalLMError(f"{where}: unreadable ({exc})") from None
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise CausalLMError(
            f"{where}: model_type {model_type!r} is not supported; expected one of "
            f"{', '.join(sorted(ARCHITECTURES))}"
        )
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size"):
        _get(config, key, where)
    _refuse(config, where, model_type)
    base, factor = _rope(config, where)
    max_positions = int(config.get("max_position_embeddings") or 2048)
    window = config.get("sliding_window")
    if window and (model_type == "mistral" or config.get("use_sliding_window")):
        max_positions = min(max_positions, int(window))  # full attention equals theirs up to it
    settings = {
        "num_layers": config["num_hidden_layers"],
        "hidden_size": config["hidden_size"],
        "num_attention_heads": config["num_attention_heads"],
        "num_query_groups": config.get("num_key_value_heads") or config["num_attention_heads"],
        "ffn_hidden_size": config["intermediate_size"],
        "rotary_base": base,
        "rope_scaling_factor": factor,
        "norm_epsilon": float(config.get("rms_norm_eps", 1e-6)),
        "qkv_bias": model_type == "qwen2",
        "vocab_size": int(_get(config, "vocab_size", where)),
    }
    special = {
        k: config[k]
        for k in ("bos_token_id", "eos_token_id", "pad_token_id")
        if isinstance(config.get(k), int)
    }
    tied = bool(config.get("tie_word_embeddings", False))
    return CausalLM(folder, model_type, settings, tied, max_positions, special)
