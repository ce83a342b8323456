"""Save and load a training checkpoint through the DeepSpeed engine, atomically.

Save protocol (every rank takes part): rank 0 clears `.tmp-step_N/`; every rank has DeepSpeed
write its model/optimizer shards there plus its own torch RNG state; rank 0 writes `meta.yaml`;
after a barrier rank 0 renames the folder to `step_N/`, then rewrites `latest`, then prunes old
checkpoints. A crash at any point leaves `latest` naming a complete checkpoint.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from megatron_mdm.checkpointing.run_dir import (
    LATEST,
    META,
    TMP_PREFIX,
    CheckpointError,
    checkpoint_root,
    prune,
    read_meta,
    tag_for,
)
from megatron_mdm.config import ExperimentConfig, to_dict
from megatron_mdm.utils import atomic_write_text


@dataclass
class ResumeState:
    step: int
    consumed_samples: int


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def weights_are_finite(engine) -> bool:
    """Every rank's share of the weights is free of inf/NaN (the same answer on every rank). At
    ZeRO-3 a rank holds its partition (`ds_tensor`); otherwise its TP/PP shard of the module."""
    finite = all(
        bool(torch.isfinite(getattr(p, "ds_tensor", p)).all()) for p in engine.module.parameters()
    )
    flag = torch.tensor([int(finite)], dtype=torch.int32, device=engine.device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def save_checkpoint(engine, cfg: ExperimentConfig, ctx, step: int, meta_extra: dict) -> Path:
    """Save step `step` (every rank); never weights that are not finite (CheckpointError, with
    nothing written: the newest checkpoint stays the newest finite one)."""
    if not weights_are_finite(engine):
        raise CheckpointError(
            f"step {step}: the model weights are not finite (inf/NaN); checkpoint not written "
            f"(the newest finite one in {checkpoint_root(cfg)} is kept)"
        )
    root = checkpoint_root(cfg)
    tag = tag_for(step)
    tmp_tag = TMP_PREFIX + tag
    if ctx.is_logging_rank:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / tmp_tag, ignore_errors=True)
    _barrier()
    engine.save_checkpoint(str(root), tag=tmp_tag, save_latest=False)
    tmp_dir = root / tmp_tag
    # Only torch generators: every draw of the training data path is keyed explicitly, and
    # tensors-only files load with weights_only=True (no unpickling).
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, tmp_dir / f"rng_rank_{ctx.rank:05d}.pt")
    if ctx.is_logging_rank:
        meta = {"step": step, "weights_finite": True, "config": to_dict(cfg), **meta_extra}
        atomic_write_text(tmp_dir / META, yaml.safe_dump(meta, sort_keys=False))
    _barrier()
    final = root / tag
    if ctx.is_logging_rank:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp_dir, final)
        atomic_write_text(root / LATEST, tag)
        prune(root, cfg.checkpoint.keep_last)
    _barrier()
    return final


def load_checkpoint(engine, ckpt_dir: Path, ctx) -> ResumeState:
    meta = read_meta(ckpt_dir)
    load_path, _ = engine.load_checkpoint(
        str(ckpt_dir.parent),
        tag=ckpt_dir.name,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
    )
    if load_path is None:
        raise CheckpointError(f"{ckpt_dir}: DeepSpeed could not load this checkpoint")
    rng_file = ckpt_dir / f"rng_rank_{ctx.rank:05d}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return ResumeState(step=int(meta["step"]), consumed_samples=int(meta["consumed_samples"]))
