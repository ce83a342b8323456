"""Load weights (no optimizer) into this rank's model from any source at any TP/PP.

Sources: a training checkpoint (full, or weights-only from `mdm convert import/reshard`), an
exported folder in any layout (detected from its tensor names) or a Hugging Face causal LM folder
(Llama / Mistral / Qwen2, detected from config.json's model_type; `causal_import.py`). Used by `train.init_from` and by
resuming a weights-only checkpoint. Runs before DeepSpeed wraps the model, so it works with every
ZeRO stage.
"""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_mdm.checkpointing import folder_io
from megatron_mdm.checkpointing.canonical import CheckpointError, load_canonical, shard_for_rank
from megatron_mdm.checkpointing.causal_import import causal_canonical
from megatron_mdm.convert import layouts
from megatron_mdm.convert.causal_lm import is_causal_lm_folder, read_causal_lm

FORMAT_MARKERS = {
    "llada": "model.transformer.wte.weight",
    "smdm": "transformer.wte.weight",
    "hf": "model.embed_tokens.weight",
}


def detect_format(tensors: dict) -> str:
    for fmt, marker in FORMAT_MARKERS.items():
        if marker in tensors:
            return fmt
    raise CheckpointError(f"unknown layout: none of {sorted(FORMAT_MARKERS.values())} present")


def canonical_weights(
    source: str | Path, shape: layouts.ModelShape, padded_vocab: int, mask_id: int | None = None
) -> dict:
    """`mask_id`: where a causal LM folder's [MASK] goes (default: a row after its rows)."""
    source = Path(source)
    if is_causal_lm_folder(source):
        if mask_id is None:  # our default: a row after the folder's
            mask_id = read_causal_lm(source).settings["vocab_size"]
        return causal_canonical(source, shape, padded_vocab, mask_id)
    if (source / "config.json").exists() and not (source / "checkpoints").exists():
        tensors = folder_io.load_safetensors(source)
        fmt = detect_format(tensors)
        return layouts.LAYOUTS[fmt].import_(tensors, shape, padded_vocab)
    canonical, _, ckpt = load_canonical(source)
    canonical = layouts.canonicalize_names(canonical)
    rows = canonical["embedding.word_embeddings.weight"].shape[0]
    if rows != padded_vocab:
        raise CheckpointError(
            f"{ckpt}: embedding has {rows} rows, this model has {padded_vocab} (vocab mismatch)"
        )
    return canonical


@torch.no_grad()
def load_weights_into(model, canonical: dict, ctx, num_layers: int, where: str) -> None:
    local = shard_for_rank(
        canonical, ctx.tp_rank, ctx.tp_size, ctx.pp_rank, ctx.pp_size, num_layers
    )
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    missing = sorted(set(own) - set(local))
    if missing:
        raise CheckpointError(f"{where}: missing tensor {missing[0]}")
    for name, target in own.items():
        if tuple(local[name].shape) != tuple(target.shape):
            raise CheckpointError(
                f"{where}: tensor {name} has shape {tuple(local[name].shape)} on this rank, "
                f"the model expects {tuple(target.shape)}"
            )
        target.copy_(local[name])
