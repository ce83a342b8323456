"""The model an evaluation scores: `--ckpt` (training checkpoint) or `--hf` (exported folder).

A thin layer over `inference_model` that adds what evaluators need beyond `model_fn`: the context
length the model was trained at (windows for perplexity, truncation for lm-eval), and errors as
one line (`EvalError`) instead of a traceback when a path is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path


class EvalError(ValueError):
    """Bad input to an evaluation: one line naming the file, key or value at fault."""


def load_model(ckpt: str | None = None, hf: str | None = None):
    """InferenceModel from exactly one of a training checkpoint / output_dir or an hf export."""
    from megatron_mdm.convert.folder_io import FolderError
    from megatron_mdm.convert.training_checkpoint import CheckpointError
    from megatron_mdm.eval import inference_model

    if (ckpt is None) == (hf is None):
        raise EvalError("give exactly one of a training checkpoint (ckpt) or an hf folder (hf)")
    try:
        if ckpt is not None:
            return inference_model.from_training_checkpoint(ckpt)
        if not (Path(hf) / "config.json").is_file():
            raise EvalError(f"{hf}: not an exported folder (no config.json)")
        return inference_model.from_hf_folder(hf)
    except (CheckpointError, FolderError) as exc:
        raise EvalError(str(exc).splitlines()[0]) from None


def trained_seq_length(model=None, ckpt: str | None = None, hf: str | None = None) -> int:
    """Sequence length the model was trained at: the loaded model's `max_length` when it has
    one, else read from the checkpoint (`model.seq_length`) or the export's config.json
    (`max_position_embeddings`)."""
    if getattr(model, "max_length", None):
        return int(model.max_length)
    if ckpt is not None:
        from megatron_mdm.convert.training_checkpoint import find_checkpoint
        from megatron_mdm.training.checkpoint import read_meta

        return int(read_meta(find_checkpoint(ckpt))["config"]["model"]["seq_length"])
    config = json.loads((Path(hf) / "config.json").read_text())
    return int(config.get("max_position_embeddings", 2048))
