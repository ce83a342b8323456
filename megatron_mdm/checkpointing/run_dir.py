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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Layout:
    """What DeepSpeed needs unchanged to load a checkpoint's shards as they are. `data` matters
    only when ZeRO partitions the optimizer over data-parallel ranks (stage >= 1)."""

    tensor: int
    pipeline: int
    data: int | None  # None: not recorded (checkpoints from before it was)
    zero_stage: int

    def describe(self) -> str:
        dp = f" DP={self.data}" if self.data is not None and self.zero_stage > 0 else ""
        return f"TP={self.tensor} PP={self.pipeline}{dp} ZeRO-{self.zero_stage}"


def saved_layout(ckpt_dir: Path, meta: dict) -> Layout:
    parallel = meta.get("parallel") or meta["config"]["parallel"]
    data = parallel.get("data")
    zero_stage = int(meta["config"]["parallel"]["zero_stage"])
    if data is None and zero_stage in (1, 2):  # one optimizer shard per data-parallel rank
        data = len(list(Path(ckpt_dir).glob("*zero_pp_rank_*_mp_rank_00_optim_states.pt"))) or None
    return Layout(int(parallel["tensor"]), int(parallel["pipeline"]), data, zero_stage)


def _zero_family(stage: int) -> int:
    """ZeRO-1 and -2 share a file format; ZeRO-0 keeps the optimizer in the model states and
    ZeRO-3 partitions the weights too."""
    return {0: 0, 1: 1, 2: 1, 3: 3}[stage]


def layout_change(saved: Layout, wanted: Layout) -> bool:
    if (saved.tensor, saved.pipeline) != (wanted.tensor, wanted.pipeline):
        return True
    if _zero_family(saved.zero_stage) != _zero_family(wanted.zero_stage):
        return True
    partitioned = saved.zero_stage > 0
    return partitioned and saved.data is not None and saved.data != wanted.data


def _reshard_keeps(saved: Layout) -> str:
    """What `mdm convert reshard` carries to the new layout (`checkpointing.adam_state`)."""
    if saved.zero_stage == 3:
        return "it keeps the weights, not the optimizer state of ZeRO-3 shards: Adam restarts"
    return "it keeps the weights and the optimizer state: Adam's moments and step"


def check_resume_layout(cfg: ExperimentConfig, ckpt_dir: Path, meta: dict, dp_size: int) -> None:
    """A full checkpoint resumes only in the layout it was saved in (DeepSpeed loads its shards
    as they are). Checked from meta.yaml before anything is built: a change is one line naming
    both layouts and the `mdm convert reshard` command that writes a checkpoint for the new one."""
    if meta.get("weights_only"):
        return  # loaded through the canonical form, at any layout
    par = cfg.parallel
    wanted = Layout(par.tensor, par.pipeline, dp_size, par.zero_stage)
    saved = saved_layout(ckpt_dir, meta)
    if not layout_change(saved, wanted):
        return
    out = f"{Path(cfg.train.output_dir)}-tp{par.tensor}pp{par.pipeline}"
    raise ConfigError(
        f"{ckpt_dir} was saved at {saved.describe()}, this run is {wanted.describe()}: DeepSpeed "
        f"cannot load it in another layout. Run `mdm convert reshard {ckpt_dir} {out} "
        f"--tensor {par.tensor} --pipeline {par.pipeline}` and resume with "
        f"checkpoint.resume={out} ({_reshard_keeps(saved)})",
        source=cfg.source,
        key="checkpoint.resume",
    )


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
    """Delete all but the newest `keep_last` complete checkpoints; never the one `latest` names
    (after a resume from an older step it need not be the newest), nor the newest one whose
    weights were checked finite (older runs may have saved NaN weights after it)."""
    tags = complete_tags(root)
    newest_finite = next((p for p in reversed(tags) if _checked_finite(p)), None)
    latest = root / LATEST
    keep = latest.read_text().strip() if latest.exists() else None
    for old in tags[:-keep_last]:
        if old != newest_finite and old.name != keep:
            shutil.rmtree(old)
