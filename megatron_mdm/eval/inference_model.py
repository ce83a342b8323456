"""A model to sample from or score, loaded from a training checkpoint or an exported folder.

Both give a `model_fn(token ids [B, L]) -> logits [B, L, V]` plus the tokenizer and special ids,
so samplers and evaluators never care where the weights came from:
- `--ckpt`: a training checkpoint at any TP/PP/ZeRO; its shards are gathered into the full model
  (`convert.training_checkpoint`) and run on one process (megatron-core at TP=PP=1, gloo/NCCL
  world of one);
- `--hf`: an exported `hf` folder, run with `transformers` through the shipped modeling file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class InferenceModel:
    model_fn: object
    tokenizer: object
    mask_id: int
    eos_id: int
    objective: str
    device: torch.device


def _single_process_world() -> None:
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(key, None)


def from_training_checkpoint(path: str | Path) -> InferenceModel:
    from megatron_mdm.config import from_dict
    from megatron_mdm.convert.commands import vocab_from_meta
    from megatron_mdm.convert.layouts import ModelShape
    from megatron_mdm.convert.training_checkpoint import find_checkpoint
    from megatron_mdm.convert.weights import canonical_weights, load_weights_into
    from megatron_mdm.data.tokenizers import build_tokenizer
    from megatron_mdm.model.builder import build_model
    from megatron_mdm.parallel.distributed import init_distributed
    from megatron_mdm.training.checkpoint import read_meta

    ckpt = find_checkpoint(path)
    meta = read_meta(ckpt)
    config = dict(meta["config"])
    config["parallel"] = {**config["parallel"], "tensor": 1, "pipeline": 1, "zero_stage": 0}
    config["train"] = {**config["train"], "global_batch_size": config["train"]["micro_batch_size"]}
    cfg = from_dict(config, source=str(ckpt))
    _single_process_world()
    ctx = init_distributed(cfg)
    vocab = vocab_from_meta(meta)
    model = build_model(cfg, vocab, ctx.on_gpu).to(ctx.device).eval()
    shape = ModelShape.from_config(cfg.model, vocab)
    canonical = canonical_weights(ckpt, shape, vocab.padded_size)
    load_weights_into(model, canonical, ctx, cfg.model.num_layers, str(ckpt))
    tok = meta["tokenizer"]
    tokenizer = build_tokenizer(tok["type"], tok.get("model"))
    return InferenceModel(
        model_fn=lambda x: model(x.to(ctx.device)),
        tokenizer=tokenizer,
        mask_id=vocab.mask_id,
        eos_id=tokenizer.eos_id,
        objective=cfg.model.objective,
        device=ctx.device,
    )


def from_hf_folder(path: str | Path) -> InferenceModel:
    from transformers import AutoModelForMaskedLM

    from megatron_mdm.convert.folder_io import read_tokenizer
    from megatron_mdm.data.tokenizers import build_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForMaskedLM.from_pretrained(str(path), trust_remote_code=True)
    model = model.to(device).eval()
    tok = read_tokenizer(Path(path))
    tokenizer = build_tokenizer(tok["type"], tok.get("model"))
    return InferenceModel(
        model_fn=lambda x: model(input_ids=x.to(device)).logits,
        tokenizer=tokenizer,
        mask_id=model.config.mask_token_id,
        eos_id=tokenizer.eos_id,
        objective=model.config.objective,
        device=device,
    )
