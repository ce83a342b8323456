"""Where a run's checkpoints live and how one is found: names, the `latest` pointer, `meta.yaml`.

Layout under `<output_dir>/checkpoints/`:
    step_0000100/            DeepSpeed files (mp_rank_XX_model_states.pt, ZeRO shards), plus
        meta.yaml            config, step, consumed samples, tokenizer, vocabulary layout
        rng_rank_XXXXX.pt    torch RNG states of each rank
    latest                   name of the newest complete checkpoint (DeepSpeed's format)

Only complete checkpoints carry a final `step_*` name (they are written under a temporary name
and renamed, see `deepspeed_io`), so anything `latest` names or a `meta.yaml` marks is whole.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from megatron_mdm.config import ConfigError, ExperimentConfig
from megatron_mdm.model.vocab import VocabLayout
from megatron_mdm.utils import MDMError

LATEST = "latest"
META = "meta.yaml"
TMP_PREFIX = ".tmp-"
TAG_PREFIX = "step_"


class CheckpointError(MDMError):
    """A checkpoint that is missing, incomplete or not what it claims: one line naming the file
    (and tensor) at fault."""


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:07d}"


def checkpoint_root(cfg: ExperimentConfig) -> Path:
    return Path(cfg.train.output_dir) / "checkpoints"


def resolve_checkpoint(path: str | Path) -> Path | None:
    """An output_dir, a `checkpoints` dir or one checkpoint dir -> the checkpoint dir to load;
    None when the path holds no checkpoint at all."""
    path = Path(path)
    if (path / META).exists():
        return path
    for root in (path / "checkpoints", path):
        latest = root / LATEST
        if latest.exists():
            candidate = root / latest.read_text().strip()
            if (candidate / META).exists():
                return candidate
            raise CheckpointError(
                f"{latest} names {candidate.name}, which is not a complete checkpoint"
            )
    return None


def find_checkpoint(path: str | Path) -> Path:
    """Like `resolve_checkpoint`, but a path without a checkpoint is an error."""
    found = resolve_checkpoint(path)
    if found is None:
        raise CheckpointError(f"{path}: not a checkpoint (no {META}, no {LATEST})")
    return found


def find_resume_checkpoint(cfg: ExperimentConfig) -> Path | None:
    """The checkpoint `checkpoint.resume` asks for: none, the run's own latest, or a path."""
    mode = cfg.checkpoint.resume
    if mode == "none":
        return None
    try:
        if mode == "auto":
            return resolve_checkpoint(cfg.train.output_dir)
        found = resolve_checkpoint(mode)
    except CheckpointError as exc:
        raise ConfigError(str(exc), source=cfg.source, key="checkpoint.resume") from None
    if found is None:
        raise ConfigError(f"{mode} holds no checkpoint", source=cfg.source, key="checkpoint.resume")
    return found


def read_meta(ckpt_dir: Path) -> dict:
    path = Path(ckpt_dir) / META
    try:
        with open(path, encoding="utf-8") as f:
            meta = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path}: cannot be read ({str(exc).splitlines()[0]})") from None
    if not isinstance(meta, dict) or "config" not in meta:
        raise CheckpointError(f"{path}: not a checkpoint's meta.yaml (no config)")
    return meta


def vocab_from_meta(meta: dict) -> VocabLayout:
    """The vocabulary layout a checkpoint was trained with (recorded, never re-derived)."""
    v = meta["vocab"]
    return VocabLayout(v["tokenizer_size"], v["mask_id"], v["padded_size"])


def complete_tags(root: Path) -> list[Path]:
    """The complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(TAG_PREFIX))


def _checked_finite(ckpt_dir: Path) -> bool:
    """Whether the save checked the weights finite (`weights_finite` in meta.yaml)."""
    try:
        return bool(read_meta(ckpt_dir).get("weights_finite"))
    except CheckpointError:
        return False


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints, and never the newest one
    whose weights were checked finite (older runs may have saved NaN weights after it)."""
    tags = complete_tags(root)
    newest_finite = next((p for p in reversed(tags) if _checked_finite(p)), None)
    for old in tags[:-keep_last]:
        if old != newest_finite:
            shutil.rmtree(old)
