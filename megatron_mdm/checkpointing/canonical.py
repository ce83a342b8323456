"""Training checkpoints as the canonical full (unpartitioned, TP=1/PP=1) state dict, and back.

Reading gathers every TP shard and PP stage of a DeepSpeed checkpoint written by `mdm train`
into the canonical state dict: the TP=1, PP=1 megatron-core names and shapes (`model.sharding`
knows how each tensor is split). Every file of the checkpoint first passes `safe_load`'s gate
(a weights-only load with an explicit allow-list of DeepSpeed data classes). `--fp32-master` (and
any ZeRO-3 checkpoint, whose module files hold no weights) reads the fp32 master weights from the
ZeRO shards through DeepSpeed's own `zero_to_fp32`, one model-parallel rank at a time; that
reader unpickles freely, which is why the gate runs first.

Writing produces a weights-only checkpoint at any TP/PP (`mdm convert import`/`reshard`), in the
same file layout, which `checkpoint.resume=PATH` and `train.init_from=PATH` accept.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

from megatron_mdm.checkpointing.run_dir import (
    LATEST,
    META,
    CheckpointError,
    find_checkpoint,
    read_meta,
    tag_for,
)
from megatron_mdm.checkpointing.safe_load import check_checkpoint, load_tensors
from megatron_mdm.config import from_dict
from megatron_mdm.convert import layouts
from megatron_mdm.model import sharding
from megatron_mdm.model.vocab import VocabLayout
from megatron_mdm.utils import atomic_directory

if TYPE_CHECKING:
    from megatron_mdm.checkpointing.adam_state import AdamState

MODEL_STATES = "mp_rank_{:02d}_model_states.pt"
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


def model_parallel_rank(pp_rank: int, tp_rank: int, tp: int) -> int:
    """DeepSpeed names model-state files by this rank (see `parallel.mpu.MegatronMPU`)."""
    return pp_rank * tp + tp_rank


def _layers_per_stage(meta: dict) -> int:
    return meta["config"]["model"]["num_layers"] // meta["parallel"]["pipeline"]


def _module_states(ckpt: Path, meta: dict) -> list[list[dict]]:
    """[pp][tp] -> the `module` state dict of that rank."""
    tp, pp = meta["parallel"]["tensor"], meta["parallel"]["pipeline"]
    return [
        [
            load_tensors(ckpt / MODEL_STATES.format(model_parallel_rank(p, t, tp)))["module"]
            for t in range(tp)
        ]
        for p in range(pp)
    ]


def _fp32_master_states(ckpt: Path, meta: dict) -> list[list[dict]]:
    """fp32 master weights from the ZeRO optimizer shards, per model-parallel rank."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tp, pp = meta["parallel"]["tensor"], meta["parallel"]["pipeline"]
    out = []
    for p in range(pp):
        row = []
        for t in range(tp):
            mp = model_parallel_rank(p, t, tp)
            files = sorted(ckpt.glob(f"*mp_rank_{mp:02d}_*states.pt"))
            optim = [f for f in files if f.name.endswith("optim_states.pt")]
            if not optim:
                raise CheckpointError(
                    f"{ckpt}: no ZeRO optimizer shards for model-parallel rank {mp} "
                    "(--fp32-master needs a checkpoint trained with parallel.zero_stage >= 1)"
                )
            with tempfile.TemporaryDirectory() as staging:
                tag_dir = Path(staging) / "tag"
                tag_dir.mkdir()
                for f in files:
                    os.symlink(f.resolve(), tag_dir / f.name)
                row.append(get_fp32_state_dict_from_zero_checkpoint(staging, tag="tag"))
        out.append(row)
    return out


def load_canonical(path: str | Path, fp32_master: bool = False) -> tuple[dict, dict, Path]:
    """(canonical state dict, meta, checkpoint dir) of a training checkpoint."""
    ckpt = find_checkpoint(path)
    meta = read_meta(ckpt)
    # DeepSpeed's zero_to_fp32 unpickles freely: every file goes through the gate first.
    check_checkpoint(ckpt)
    zero3 = meta["config"]["parallel"]["zero_stage"] == 3 and not meta.get("weights_only")
    if fp32_master or zero3:
        states = _fp32_master_states(ckpt, meta)
    else:
        states = _module_states(ckpt, meta)
    return gather(states, meta, ckpt), meta, ckpt


def gather(states: list[list[dict]], meta: dict, ckpt: Path) -> dict[str, torch.Tensor]:
    """[pp][tp] local state dicts -> the canonical dict: TP shards joined (`model.sharding`),
    each stage's layers renumbered to global ones."""
    offset = _layers_per_stage(meta)
    full: dict[str, torch.Tensor] = {}
    for p, stage in enumerate(states):
        names = [n for n in stage[0] if not n.endswith("_extra_state")]
        for name in names:
            shards = []
            for t, rank_state in enumerate(stage):
                if name not in rank_state:
                    mp = model_parallel_rank(p, t, len(stage))
                    raise CheckpointError(
                        f"{ckpt / MODEL_STATES.format(mp)}: missing tensor {name}"
                    )
                shards.append(rank_state[name])
            full[sharding.global_name(name, p * offset)] = sharding.unshard(name, shards)
    return full


def check_canonical_shapes(canonical: dict, shape, padded_vocab: int, where: str) -> None:
    """Every tensor of the model `shape` present with its canonical shape, and nothing else; a
    mismatch is one line naming the first tensor at fault (`layouts.check_state_dict`)."""

    try:
        layouts.check_state_dict(canonical, layouts.canonical_shapes(shape, padded_vocab), where)
    except layouts.LayoutError as exc:
        raise CheckpointError(str(exc)) from None


def shard_for_rank(
    canonical: dict, tp_rank: int, tp: int, pp_rank: int, pp: int, num_layers: int
) -> dict:
    """The local state dict of one (TP, PP) rank: this stage's layers, renumbered, TP-sliced."""
    per_stage = num_layers // pp
    first, last = pp_rank * per_stage, (pp_rank + 1) * per_stage
    local = {}
    for name, tensor in canonical.items():
        match = _LAYER.match(name)
        if match:
            layer = int(match.group(1))
            if not first <= layer < last:
                continue
            local_name = f"decoder.layers.{layer - first}." + name[match.end() :]
        elif name.startswith("embedding."):
            if pp_rank != 0:
                continue
            local_name = name
        elif name.startswith(("decoder.final_layernorm.", "output_layer.")):
            if pp_rank != pp - 1:
                continue
            local_name = name
        else:
            local_name = name
        local[local_name] = sharding.shard(name, tensor, tp_rank, tp).clone()
    return local


_VOCAB_ROWS = ("embedding.word_embeddings.weight", "output_layer.weight")


def repad_vocab(canonical: dict, vocab: VocabLayout, padded_size: int) -> dict:
    """`canonical` with the embedding and output layer cut to the real rows (tokenizer ids and
    `[MASK]`) and zero-padded to `padded_size`: the padding rows are never embedded or
    predicted, so only their count changes."""
    if padded_size == vocab.padded_size:
        return canonical
    needed = max(vocab.tokenizer_size, vocab.mask_id + 1)
    out = dict(canonical)
    for name in _VOCAB_ROWS:
        if name in out:
            rows = out[name][:needed]
            pad = rows.new_zeros(padded_size - needed, *rows.shape[1:])
            out[name] = torch.cat([rows, pad], dim=0)
    return out


def write_weights_checkpoint(
    canonical: dict,
    meta: dict,
    out_dir: str | Path,
    tp: int,
    pp: int,
    progress=None,
    populate=None,
    adam: AdamState | None = None,
) -> Path:
    """A weights-only training checkpoint at TP=tp, PP=pp under `out_dir/checkpoints/`; with
    `adam` (whose `master` weights are then `canonical`) each rank's file also holds its slice
    of Adam's moments and the step (`optimizer_state: true` in meta.yaml).

    The folder is built under a temporary name next to `out_dir` and renamed into place, so a
    failure leaves nothing under the final name. The vocabulary rows are re-padded to what the
    target TP trains with (`repad_vocab`)."""
    out_dir = Path(out_dir)
    config = dict(meta["config"])
    config["parallel"] = {**config["parallel"], "tensor": tp, "pipeline": pp}
    if pp > 1 and config["parallel"]["zero_stage"] > 1:
        config["parallel"]["zero_stage"] = 1
    config["train"] = {**config["train"], "output_dir": str(out_dir)}
    cfg = from_dict(config, source=str(out_dir))  # validates tp/pp against the model
    num_layers = cfg.model.num_layers
    step = int(meta.get("step", 0))
    # The vocabulary padding the new layout trains with (a multiple of lcm(divisible_by, TP)),
    # so every TP shard is even and the resumed model's shapes match.
    source_vocab = VocabLayout(**meta["vocab"])
    vocab = VocabLayout.build(
        source_vocab.tokenizer_size,
        source_vocab.mask_id,
        cfg.model.make_vocab_size_divisible_by,
        tp,
    )
    canonical = repad_vocab(canonical, source_vocab, vocab.padded_size)
    moments = {}
    if adam is not None:
        moments = {
            k: repad_vocab(m, source_vocab, vocab.padded_size) for k, m in adam.moments.items()
        }
    with atomic_directory(out_dir, exists_error=CheckpointError) as staging:
        tag_dir = staging / "checkpoints" / tag_for(step)
        tag_dir.mkdir(parents=True)
        for p in range(pp):
            for t in range(tp):
                saved = {"module": shard_for_rank(canonical, t, tp, p, pp, num_layers)}
                if adam is not None:
                    saved["adam"] = {"step": adam.step}
                    for key, moment in moments.items():
                        saved["adam"][key] = shard_for_rank(moment, t, tp, p, pp, num_layers)
                torch.save(saved, tag_dir / MODEL_STATES.format(model_parallel_rank(p, t, tp)))
                if progress is not None:
                    progress.update(1)
        new_meta = {
            **meta,
            "config": config,
            "vocab": {**meta["vocab"], "padded_size": vocab.padded_size},
            "parallel": {"tensor": tp, "pipeline": pp},
            "weights_only": True,
            "optimizer_state": adam is not None,
        }
        (tag_dir / META).write_text(yaml.safe_dump(new_meta, sort_keys=False))
        (staging / "checkpoints" / LATEST).write_text(tag_for(step))
        if populate is not None:  # extra files (e.g. the tokenizer) inside the atomic folder
            populate(staging)
    return out_dir / "checkpoints" / tag_for(step)
