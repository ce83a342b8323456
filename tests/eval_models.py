"""Tiny trained models for the evaluation tests, made once per test session and shared by the
test modules (training and export are the slow part; every eval test only needs *a* model).

`tiny_models(base)` trains a 2-step MDM and a 2-step ARM on the quickstart corpus (seq length 32)
and exports the MDM and the ARM as `hf` folders, under `base` (the session's pytest basetemp)."""

from __future__ import annotations

import fcntl
from dataclasses import dataclass
from pathlib import Path

from helpers import QUICKSTART, TINY_MODEL, run_cli, run_mdm

SEQ_LENGTH = 32


@dataclass(frozen=True)
class TinyModels:
    mdm: Path  # training output_dir
    mdm_hf: Path
    arm: Path
    arm_hf: Path
    corpus_prefix: Path  # the .bin/.idx the runs trained on


def _train(out: Path, objective: str) -> None:
    overrides = [o for o in TINY_MODEL if not o.startswith("model.seq_length")]
    run_mdm(
        [
            "train",
            QUICKSTART,
            *overrides,
            f"model.seq_length={SEQ_LENGTH}",
            f"model.objective={objective}",
            "train.max_steps=2",
            "train.warmup_steps=1",
            "train.micro_batch_size=4",
            "train.global_batch_size=4",
            "logging.tensorboard=false",
            "logging.progress=false",
            f"train.output_dir={out}",
        ]
    )


def _export(run: Path, out: Path) -> None:
    proc = run_cli(
        "convert",
        "export",
        str(run),
        str(out),
        "--format",
        "hf",
        "--dtype",
        "fp32",
        "--no-progress",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def tiny_models(base: Path) -> TinyModels:
    base = Path(base) / "eval-tiny-models"
    base.mkdir(parents=True, exist_ok=True)
    models = TinyModels(base / "mdm", base / "mdm-hf", base / "arm", base / "arm-hf", Path())
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base / ".done").exists():
            _train(models.mdm, "mdm")
            _train(models.arm, "arm")
            _export(models.mdm, models.mdm_hf)
            _export(models.arm, models.arm_hf)
            (base / ".done").touch()
    [prefix] = [p.with_suffix("") for p in (models.mdm / "data").glob("*.idx")]
    return TinyModels(models.mdm, models.mdm_hf, models.arm, models.arm_hf, prefix)
