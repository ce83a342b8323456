"""A model to sample from or score, loaded from a training checkpoint or an exported folder.

Both give a `model_fn(token ids [B, L]) -> logits [B, L, V]` plus the tokenizer and special ids,
so samplers and evaluators never care where the weights came from:
- `--ckpt`: a training checkpoint at any TP/PP/ZeRO; its shards are gathered into the full model
  (`checkpointing.canonical`) and run on one process (megatron-core at TP=PP=1, gloo/NCCL
  world of one);
- `--hf`: an exported `hf` folder, run with `transformers` through the modeling code installed
  with this package (`convert.hf_modeling.MDMForMaskedLM.from_pretrained`: the folder's
  config.json and safetensors only). The folder's own `modeling_mdm.py` is there for stock
  `transformers` users (`trust_remote_code=True`); our loaders never import Python files from a
  model folder, so an edited copy cannot run code here (docs/design.md §8).

Samplers with a key/value cache (ARM decoding, Fast-dLLM) need a model that takes cached keys and
values; megatron-core's GPTModel has no such interface. `cached_model` is therefore always the
installed plain-torch `MDMForMaskedLM` (convert/hf_modeling/modeling_mdm.py): the `--hf` model
itself (the folder's weights), and for `--ckpt` the same class built on demand from the gathered
weights through the `hf` export mapping (`convert.layouts.to_hf`), sharing the megatron model's
tensors where the mapping does not cut them. Both sources thus run one cached implementation.

Block diffusion models (docs/design.md §11) also give `block_fn(x_t, x_0) -> logits of x_t`,
the training layout [x_t; x_0] that the block ELBO scores, and their `block_size`; their
`model_fn` is the block-causal forward of one copy.

Bad paths are one line (`ModelLoadError`), never a traceback from inside a library.
"""

from __future__ import annotations

import functools
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_mdm.checkpointing.canonical import load_canonical
from megatron_mdm.checkpointing.folder_io import read_tokenizer
from megatron_mdm.checkpointing.run_dir import find_checkpoint, read_meta, vocab_from_meta
from megatron_mdm.checkpointing.weights import canonical_weights, load_weights_into
from megatron_mdm.config import from_dict
from megatron_mdm.convert import layouts
from megatron_mdm.convert.hf_modeling.configuration_mdm import MDMConfig
from megatron_mdm.convert.hf_modeling.modeling_mdm import MDMForMaskedLM
from megatron_mdm.data.tokenizers import Tokenizer, build_tokenizer
from megatron_mdm.diffusion.sampling import ModelFn
from megatron_mdm.model.builder import build_model
from megatron_mdm.parallel.distributed import init_distributed
from megatron_mdm.utils import MDMError, one_line


class SelectiveModel:
    """A `model_fn` (token ids [B, L] -> logits [B, L, V]) that can also run its output layer on
    selected positions only: `at(x, select [B, L] bool) -> logits [N, V]`, row-major (what
    `diffusion.sampling.logits_at` calls)."""

    def __init__(self, model, device: torch.device, hf: bool):
        self.model, self.device, self.hf = model, device, hf

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.hf:
            return self.model(input_ids=x.to(self.device)).logits
        return self.model(x.to(self.device))

    def at(self, x: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        x, select = x.to(self.device), select.to(self.device)
        if self.hf:
            return self.model(input_ids=x, output_positions=select).logits
        return self.model(x, output_positions=select)


class ModelLoadError(MDMError):
    """A model path that is not a checkpoint or an export: one line naming it."""


@dataclass
class InferenceModel:
    model_fn: ModelFn
    tokenizer: Tokenizer
    mask_id: int
    eos_id: int
    objective: str
    device: torch.device
    # builds `cached_model` when first used
    load_cached_model: Callable[[], torch.nn.Module] | None = None
    max_length: int | None = None  # the sequence length the model was trained at
    block_size: int | None = None  # block diffusion: tokens per block
    block_fn: Callable | None = None  # block diffusion: (x_t, x_0) -> logits of x_t

    @functools.cached_property
    def cached_model(self) -> torch.nn.Module | None:
        """`MDMForMaskedLM` with the key/value cache interface, or None if unavailable."""
        return None if self.load_cached_model is None else self.load_cached_model()


def _single_process_world() -> None:
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(key, None)


def from_training_checkpoint(path: str | Path) -> InferenceModel:
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
    shape = layouts.ModelShape.from_config(cfg.model, vocab)
    canonical = canonical_weights(ckpt, shape, vocab.padded_size)
    load_weights_into(model, canonical, ctx, cfg.model.num_layers, str(ckpt))
    tok = meta["tokenizer"]
    tokenizer = build_tokenizer(tok["type"], tok.get("model"))
    hf_meta = layouts.config_meta(cfg, vocab, eos_token_id=tokenizer.eos_id)

    def load_cached_model():
        canonical_now = layouts.canonicalize_names(model.state_dict())
        return torch_model_from_canonical(canonical_now, shape, hf_meta).to(ctx.device)

    return InferenceModel(
        model_fn=SelectiveModel(model, ctx.device, hf=False),
        tokenizer=tokenizer,
        mask_id=vocab.mask_id,
        eos_id=tokenizer.eos_id,
        objective=cfg.model.objective,
        device=ctx.device,
        load_cached_model=load_cached_model,
        max_length=cfg.model.seq_length,
        block_size=cfg.diffusion.block_size,
        block_fn=lambda xt, x0: model(xt.to(ctx.device), clean_input_ids=x0.to(ctx.device)),
    )


def from_training_checkpoint_torch(path: str | Path, objective: str | None = None):
    """The model of a training checkpoint (any TP/PP/ZeRO, gathered) run by the plain-torch
    `MDMForMaskedLM` for every sampler: no torch.distributed world and no megatron-core model,
    so tests and benchmarks can load checkpoints in-process and compare samplers on one forward
    implementation. Its logits equal megatron's within float tolerance (the `hf` export parity
    test). `objective` overrides the attention mask (e.g. "arm": the same weights, causal, to
    time the ARM decoder at an equal model size)."""
    canonical, meta, ckpt = load_canonical(path)
    cfg = from_dict(meta["config"], source=str(ckpt))
    vocab = vocab_from_meta(meta)
    tok = meta["tokenizer"]
    tokenizer = build_tokenizer(tok["type"], tok.get("model"))
    hf_meta = layouts.config_meta(cfg, vocab, eos_token_id=tokenizer.eos_id)
    if objective is not None:
        hf_meta["objective"] = objective
    shape = layouts.ModelShape.from_config(cfg.model, vocab)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = torch_model_from_canonical(layouts.canonicalize_names(canonical), shape, hf_meta)
    model = model.to(device)
    return InferenceModel(
        model_fn=SelectiveModel(model, device, hf=True),
        tokenizer=tokenizer,
        mask_id=vocab.mask_id,
        eos_id=tokenizer.eos_id,
        objective=hf_meta["objective"],
        device=device,
        load_cached_model=lambda: model,
        max_length=cfg.model.seq_length,
        block_size=model.config.block_size,
        block_fn=_torch_block_fn(model, device),
    )


def _torch_block_fn(model, device) -> Callable:
    def block_fn(xt: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return model(input_ids=xt.to(device), clean_input_ids=x0.to(device)).logits

    return block_fn


def torch_model_from_canonical(canonical: dict, shape, meta: dict):
    """The shipped `MDMForMaskedLM` holding `canonical` weights (renamed and cut by the `hf`
    export mapping), in eval mode. `meta` as for `layouts.hf_config`. Built on the meta device
    and given the tensors themselves, so no random init runs and uncut tensors are not copied."""
    config = MDMConfig(**layouts.hf_config(shape, meta))
    weights = layouts.to_hf(canonical, shape)
    with torch.device("meta"):
        model = MDMForMaskedLM(config)
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval()


def from_hf_folder(path: str | Path) -> InferenceModel:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = MDMForMaskedLM.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{path}: not a loadable hf export ({one_line(str(exc))})") from None
    # transformers wraps PreTrainedModel.to in a decorator whose stub mistypes the argument
    model = model.to(device).eval()  # type: ignore[arg-type]
    tok = read_tokenizer(Path(path))
    tokenizer = build_tokenizer(tok["type"], tok.get("model"))
    return InferenceModel(
        model_fn=SelectiveModel(model, device, hf=True),
        tokenizer=tokenizer,
        mask_id=model.config.mask_token_id,
        eos_id=tokenizer.eos_id,
        objective=model.config.objective,
        device=device,
        load_cached_model=lambda: model,
        max_length=model.config.max_position_embeddings,
        block_size=getattr(model.config, "block_size", None),
        block_fn=_torch_block_fn(model, device),
    )


def load_model(ckpt: str | None = None, hf: str | None = None) -> InferenceModel:
    """InferenceModel from exactly one of a training checkpoint / output_dir or an hf export."""
    if (ckpt is None) == (hf is None):
        raise ModelLoadError(
            "give exactly one of a training checkpoint (ckpt) or an hf folder (hf)"
        )
    if ckpt is not None:
        return from_training_checkpoint(ckpt)
    assert hf is not None  # exactly one of the two, checked above
    config = Path(hf) / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"{hf}: not an exported folder (no config.json)")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise ModelLoadError(f"{config}: cannot be read ({one_line(str(exc))})") from None
    if model_type != MDMConfig.model_type:
        raise ModelLoadError(
            f"{config}: model_type is {model_type!r}, not an `hf` export of megatron-mdm "
            f"({MDMConfig.model_type!r}); export with `mdm convert export --format hf`"
        )
    return from_hf_folder(hf)


def trained_seq_length(model=None, ckpt: str | None = None, hf: str | None = None) -> int:
    """Sequence length the model was trained at: the loaded model's `max_length` when it has
    one, else read from the checkpoint (`model.seq_length`) or the export's config.json
    (`max_position_embeddings`)."""
    if getattr(model, "max_length", None):
        return int(model.max_length)
    if ckpt is not None:
        return int(read_meta(find_checkpoint(ckpt))["config"]["model"]["seq_length"])
    if hf is None:
        raise ModelLoadError("no sequence length: give a loaded model, ckpt or hf")
    config = json.loads((Path(hf) / "config.json").read_text())
    return int(config.get("max_position_embeddings", 2048))
