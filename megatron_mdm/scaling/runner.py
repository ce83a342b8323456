"""Run a sweep's configs on this machine, one `mdm train` subprocess after another.

A subprocess per run, not a loop in this process, because each run initialises its own
torch.distributed world and megatron-core parallel state, which a process can hold only once.
A run counts as finished when its metrics.jsonl has the validation loss of its last step, so an
interrupted sweep is simply started again: finished runs are skipped, an unfinished one resumes
from its latest checkpoint (checkpoint.resume=auto) or starts over.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from megatron_mdm.scaling.results import final_val_loss
from megatron_mdm.scaling.sweep import Manifest, PlannedRun

__all__ = ["RunOutcome", "run_local"]


@dataclass
class RunOutcome:
    run: PlannedRun
    status: str  # "skipped" (already finished), "done", "failed"
    val_loss: float | None
    seconds: float
    log: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    """A single-process world on this host: launcher variables from an enclosing job (torchrun,
    Slurm) would make the trainer wait for ranks that never come; a fresh port per run keeps two
    sweeps on one machine (or a stale MASTER_PORT) from colliding."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
        and not k.startswith(("SLURM_", "OMPI_", "PMI_", "PMIX_"))
    }
    env["MASTER_ADDR"] = "127.0.0.1"
    env["MASTER_PORT"] = str(_free_port())
    return env


def run_local(manifest: Manifest, progress: bool = True, echo=print) -> list[RunOutcome]:
    """Train every unfinished run of the manifest in turn; `echo` gets one line per run. Output
    of each run goes to `<output_dir>/train.log`. Returns one outcome per run (failures do not
    stop the sweep: the other points are still worth having)."""
    from tqdm import tqdm

    outcomes = []
    bar = tqdm(manifest.runs, desc="isoflop runs", unit="run", disable=not progress)
    for i, run in enumerate(bar, 1):
        bar.set_postfix_str(run.name)
        log = str(Path(run.output_dir) / "train.log")
        head = f"[{i}/{len(manifest.runs)}] {run.name}"
        done = final_val_loss(run)
        if done is not None:
            outcomes.append(RunOutcome(run, "skipped", done, 0.0, log))
            echo(f"{head}: finished earlier, val_loss {done:.4f}")
            continue
        Path(run.output_dir).mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(log, "a", encoding="utf-8") as f:
            proc = subprocess.run(
                [sys.executable, "-m", "megatron_mdm.cli", "train", run.config],
                cwd=manifest.workdir if Path(manifest.workdir).is_dir() else None,
                env=_env(),
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        seconds = time.perf_counter() - start
        loss = final_val_loss(run) if proc.returncode == 0 else None
        status = "done" if loss is not None else "failed"
        outcomes.append(RunOutcome(run, status, loss, seconds, log))
        if status == "done":
            echo(f"{head}: {run.steps} steps, val_loss {loss:.4f} ({seconds:.0f} s)")
        else:
            echo(f"{head}: FAILED (exit {proc.returncode}, {seconds:.0f} s); see {log}")
    bar.close()
    return outcomes
