"""Training checkpoints: DeepSpeed model/optimizer shards plus what an exact resume needs.

Layout under `<output_dir>/checkpoints/`:
    step_0000100/            DeepSpeed files (mp_rank_XX_model_states.pt, ZeRO shards), plus
        meta.yaml            config, step, consumed samples, tokenizer, vocabulary layout
        rng_rank_XXXXX.pt    torch RNG states of each rank
    latest                   name of the newest complete checkpoint (DeepSpeed's format)

A checkpoint is written under a temporary name and renamed once every rank has finished, then
`latest` is replaced: a crash mid-save never leaves a half-written checkpoint under a final name.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from megatron_mdm.config import ConfigError, ExperimentConfig, to_dict

LATEST = "latest"
META = "meta.yaml"
TMP_PREFIX = ".tmp-"


@dataclass
class ResumeState:
    step: int
    consumed_samples: int


def tag_for(step: int) -> str:
    return f"step_{step:07d}"


def checkpoint_root(cfg: ExperimentConfig) -> Path:
    return Path(cfg.train.output_dir) / "checkpoints"


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def save_checkpoint(engine, cfg: ExperimentConfig, ctx, step: int, meta_extra: dict) -> Path:
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
        meta = {"step": step, "config": to_dict(cfg), **meta_extra}
        _write_text_atomic(tmp_dir / META, yaml.safe_dump(meta, sort_keys=False))
    _barrier()
    final = root / tag
    if ctx.is_logging_rank:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp_dir, final)
        _write_text_atomic(root / LATEST, tag)
        _prune(root, cfg.checkpoint.keep_last)
    _barrier()
    return final


def _prune(root: Path, keep_last: int) -> None:
    tags = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for old in tags[:-keep_last]:
        shutil.rmtree(old)


def resolve_checkpoint(path: str | Path) -> Path | None:
    """An output_dir, a `checkpoints` dir or one checkpoint dir -> the checkpoint dir to load."""
    path = Path(path)
    if (path / META).exists():
        return path
    for root in (path / "checkpoints", path):
        latest = root / LATEST
        if latest.exists():
            candidate = root / latest.read_text().strip()
            if (candidate / META).exists():
                return candidate
            raise ConfigError(
                f"{latest} names {candidate.name}, which is not a complete checkpoint"
            )
    return None


def find_resume_checkpoint(cfg: ExperimentConfig) -> Path | None:
    mode = cfg.checkpoint.resume
    if mode == "none":
        return None
    if mode == "auto":
        return resolve_checkpoint(cfg.train.output_dir)
    found = resolve_checkpoint(mode)
    if found is None:
        raise ConfigError(f"{mode} holds no checkpoint", source=cfg.source, key="checkpoint.resume")
    return found


def read_meta(ckpt_dir: Path) -> dict:
    with open(ckpt_dir / META) as f:
        return yaml.safe_load(f)


def load_checkpoint(engine, ckpt_dir: Path, ctx) -> ResumeState:
    meta = read_meta(ckpt_dir)
    load_path, _ = engine.load_checkpoint(
        str(ckpt_dir.parent),
        tag=ckpt_dir.name,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
    )
    if load_path is None:
        raise ConfigError(f"{ckpt_dir}: DeepSpeed could not load this checkpoint")
    rng_file = ckpt_dir / f"rng_rank_{ctx.rank:05d}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return ResumeState(step=int(meta["step"]), consumed_samples=int(meta["consumed_samples"]))
