"""A Hugging Face causal LM (Llama / Mistral / Qwen2 folder, or its hub id) as the start of a run:
`mdm convert import --format llama` and `train.init_from=<folder>` (docs/design.md §13.1).

- The folder's config.json fixes the model shape (`convert/causal_lm.py`); `train.init_from` fills
  every model key the config left unset and refuses one it set to another value.
- Its tokenizer (an HF tokenizer folder: the same folder) becomes the run's tokenizer; it may not
  hold more ids than the embedding has rows.
- `[MASK]`: by default a row appended after the embedding's rows, initialised as the mean
  embedding (LLaDA2.0: a zero-norm mask embedding blows up the gradient); or an id the user names
  (model.mask_token_id, `--mask-id`): an unused row (past the tokenizer's ids) or a reserved
  added token of the tokenizer, never an ordinary token.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from megatron_mdm.checkpointing import folder_io
from megatron_mdm.config import ConfigError, ExperimentConfig
from megatron_mdm.convert import layouts
from megatron_mdm.convert.causal_lm import (
    CausalLM,
    CausalLMError,
    is_causal_lm_folder,
    read_causal_lm,
    resolve_source,
)
from megatron_mdm.data.tokenizers import Tokenizer, build_tokenizer

__all__ = ["causal_canonical", "check_mask_id", "load_causal_tokenizer", "resolve_init_from"]


def load_causal_tokenizer(lm: CausalLM) -> Tokenizer:
    """The folder's own HF tokenizer, no larger than the embedding."""
    tok = build_tokenizer("hf", str(lm.folder))
    rows = lm.settings["vocab_size"]
    if tok.vocab_size > rows:
        raise CausalLMError(
            f"{lm.folder}: the tokenizer has {tok.vocab_size} ids, the embedding only {rows} rows"
        )
    return tok


def _reserved_ids(tok: Tokenizer) -> set[int]:
    """Added tokens of an HF tokenizer that are no BOS/EOS/PAD/UNK: reserved for such uses."""
    hf = getattr(tok, "hf", None)
    if hf is None:
        return set()
    taken = {tok.bos_id, tok.eos_id, tok.pad_id, getattr(hf, "unk_token_id", None)}
    return {int(i) for i in getattr(hf, "added_tokens_decoder", {})} - taken


def check_mask_id(mask_id: int | None, rows: int, tok: Tokenizer, key: str) -> int:
    """The [MASK] id: `rows` (a row appended) when unset, else the id named, if it is free."""
    if mask_id is None or mask_id == rows:
        return rows
    if mask_id > rows:
        raise ConfigError(
            f"{mask_id} leaves a gap after the embedding's {rows} rows; use an id below "
            f"{rows} or {rows} (a new row)",
            key=key,
        )
    if mask_id < tok.vocab_size and mask_id not in _reserved_ids(tok):
        raise ConfigError(
            f"{mask_id} is an ordinary token of the tokenizer ({tok.decode([mask_id])!r}); name "
            f"a reserved added token, an unused row (>= {tok.vocab_size}), or leave it unset "
            f"to append a row",
            key=key,
        )
    return mask_id


def causal_canonical(
    folder: Path, shape: layouts.ModelShape, padded_vocab: int, mask_id: int
) -> dict:
    """The folder's tensors as a canonical (TP=1) fp32 state dict for a model of `shape`: rows
    padded to `padded_vocab`, the head untied, an appended [MASK] row set to the mean embedding."""
    rows = read_causal_lm(folder).settings["vocab_size"]
    tensors = folder_io.load_safetensors(folder)
    import_shape = dataclasses.replace(shape, n_vocab=rows)
    canonical = layouts.LAYOUTS["llama"].import_(tensors, import_shape, padded_vocab)
    canonical = {k: v.float() for k, v in canonical.items()}
    if mask_id >= rows:  # an appended row: the mean of the real ones
        emb = canonical[layouts.EMBEDDING]
        emb[mask_id] = emb[:rows].mean(dim=0)
    return canonical


def _settings_for(cfg: ExperimentConfig, lm: CausalLM) -> dict[str, Any]:
    """The model keys the folder fixes; a key the config set to another value fails."""
    changes = {}
    for key, theirs in lm.settings.items():
        ours = getattr(cfg.model, key)
        if f"model.{key}" in cfg.explicit:
            same = ours == theirs or (
                isinstance(theirs, float)
                and ours is not None
                and abs(float(ours) - theirs) <= 1e-12 * abs(theirs)
            )
            if not same:
                raise ConfigError(
                    f"{ours} disagrees with train.init_from {lm.folder} ({key} {theirs})",
                    source=cfg.source,
                    key=f"model.{key}",
                )
        changes[key] = theirs
    return changes


def resolve_init_from(cfg: ExperimentConfig) -> ExperimentConfig:
    """`train.init_from` as a local path (hub ids resolved from the cache) and, for a causal LM
    folder, the config completed from it; other configs come back unchanged."""
    if not cfg.train.init_from:
        return cfg
    path = resolve_source(cfg.train.init_from, "train.init_from")
    train = dataclasses.replace(cfg.train, init_from=str(path))
    if not is_causal_lm_folder(path):
        return _replace(cfg, train=train)
    lm = read_causal_lm(path)
    model = dataclasses.replace(cfg.model, **_settings_for(cfg, lm))
    data = cfg.data
    if not {"data.tokenizer.type", "data.tokenizer.model"} & cfg.explicit:
        tokenizer = dataclasses.replace(data.tokenizer, type="hf", model=str(path))
        data = dataclasses.replace(data, tokenizer=tokenizer)
    out = _replace(cfg, model=model, train=train, data=data)
    tok = build_tokenizer(out.data.tokenizer.type, out.data.tokenizer.model)
    rows = lm.settings["vocab_size"]
    if tok.vocab_size > rows:
        raise ConfigError(
            f"the tokenizer has {tok.vocab_size} ids, {path}'s embedding only {rows} rows",
            source=cfg.source,
            key="data.tokenizer.model",
        )
    check_mask_id(out.model.mask_token_id, rows, tok, "model.mask_token_id")
    out.validate()
    return out


def _replace(cfg: ExperimentConfig, **sections) -> ExperimentConfig:
    out = dataclasses.replace(cfg, **sections)
    out.source, out.explicit = cfg.source, cfg.explicit
    return out
