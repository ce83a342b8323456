"""RESULTS.csv: one row per finished run, `objective,params,tokens,flops,loss`.

`params` is the non-embedding parameter count, `tokens` the training tokens, `flops` the run's
IsoFLOP budget C (6 * params * tokens is within the sweep's tolerance of it; rows of one budget
share it exactly, which is how the fit groups them) and `loss` the final validation loss. The
format is the interface to the fit, so results from elsewhere (another cluster, a paper's
table) can be fitted the same way.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from megatron_mdm.config import COMPARED_OBJECTIVES as OBJECTIVES
from megatron_mdm.scaling.errors import ScalingLawError
from megatron_mdm.scaling.sweep import Manifest, PlannedRun
from megatron_mdm.utils import atomic_write_text

__all__ = [
    "HEADER",
    "OBJECTIVES",
    "Result",
    "collect",
    "final_val_loss",
    "read_results",
    "write_results",
]

HEADER = ("objective", "params", "tokens", "flops", "loss")


@dataclass(frozen=True)
class Result:
    objective: str
    params: float
    tokens: float
    flops: float
    loss: float


def write_results(rows: list[Result], path: str | Path) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    for r in rows:
        writer.writerow(
            [r.objective, int(r.params), int(r.tokens), f"{r.flops:.6g}", f"{r.loss:.6f}"]
        )
    atomic_write_text(path, buf.getvalue())


def _number(text: str, column: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ScalingLawError(f"{where}: {column} {text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise ScalingLawError(f"{where}: {column} must be a positive finite number, got {text}")
    return value


def read_results(path: str | Path) -> list[Result]:
    """Parse and check RESULTS.csv; any problem is one ScalingLawError naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ScalingLawError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScalingLawError(f"{path}: cannot read ({e})") from None
    lines = list(csv.reader(io.StringIO(text)))
    if not lines or tuple(c.strip() for c in lines[0]) != HEADER:
        got = ",".join(lines[0]) if lines else "an empty file"
        raise ScalingLawError(f"{path}: header must be {','.join(HEADER)}, got {got}")
    rows = []
    for number, cells in enumerate(lines[1:], 2):
        if not any(c.strip() for c in cells):
            continue
        where = f"{path}:{number}"
        if len(cells) != len(HEADER):
            raise ScalingLawError(f"{where}: expected {len(HEADER)} columns, got {len(cells)}")
        objective = cells[0].strip().lower()
        if objective not in OBJECTIVES:
            raise ScalingLawError(f"{where}: objective must be mdm or arm, got {cells[0]!r}")
        values = [_number(c.strip(), col, where) for c, col in zip(cells[1:], HEADER[1:])]
        rows.append(Result(objective, *values))
    if not rows:
        raise ScalingLawError(f"{path}: no result rows")
    return rows


def final_val_loss(run: PlannedRun) -> float | None:
    """The validation loss logged at the run's last step, or None while it is unfinished."""
    path = Path(run.output_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    last = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if record.get("step") == run.steps and record.get("val_loss") is not None:
            last = float(record["val_loss"])
    return last if last is not None and math.isfinite(last) else None


def collect(manifest: Manifest) -> tuple[list[Result], list[str]]:
    """(rows of the finished runs, names of the unfinished ones)."""
    rows, missing = [], []
    for run in manifest.runs:
        loss = final_val_loss(run)
        if loss is None:
            missing.append(run.name)
            continue
        rows.append(Result(run.objective, run.params, run.tokens, run.budget, loss))
    return rows, missing
