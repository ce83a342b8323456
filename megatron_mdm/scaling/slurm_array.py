"""A Slurm job array for a sweep: one array task per unfinished run, each handing its config to
`slurm/pretrain.sbatch`.

The array script only picks the config; launching (srun + torchrun per node), the USR1
time-limit checkpoint and the requeue all stay in pretrain.sbatch, which the task `exec`s so that
Slurm's signal reaches that script's trap. A requeued array task keeps its own job id, so it
resumes its own run. pretrain.sbatch's `#SBATCH` lines are comments when it runs under bash:
the array script's own header below is what Slurm reads.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from megatron_mdm.scaling.errors import ScalingLawError
from megatron_mdm.scaling.results import final_val_loss
from megatron_mdm.scaling.sweep import Manifest

__all__ = ["SlurmOptions", "array_script"]


@dataclass
class SlurmOptions:
    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int = 32
    time: str = "24:00:00"
    max_parallel: int | None = None  # Slurm's `%N` array throttle
    job_name: str = "mdm-isoflop"


def array_script(manifest: Manifest, opts: SlurmOptions, include_finished: bool = False) -> str:
    """The sbatch script text; raises if there is nothing left to run."""
    runs = [r for r in manifest.runs if include_finished or final_val_loss(r) is None]
    if not runs:
        raise ScalingLawError(f"{manifest.path}: every run has finished; nothing to submit")
    throttle = f"%{opts.max_parallel}" if opts.max_parallel else ""
    configs = "\n".join(f"    {shlex.quote(r.config)}  # {r.name}" for r in runs)
    root = shlex.quote(manifest.workdir)
    return f"""#!/bin/bash
# IsoFLOP sweep {manifest.path}: {len(runs)} run(s), one array task each, written by
# `tools/scaling_law.py run --slurm`. Submit from the repository root:
#   mkdir -p logs && sbatch THIS_FILE
# Each task execs slurm/pretrain.sbatch CONFIG (signals, checkpoint-and-requeue as there).
#SBATCH --job-name={opts.job_name}
#SBATCH --array=0-{len(runs) - 1}{throttle}
#SBATCH --nodes={opts.nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={opts.gpus_per_node}
#SBATCH --cpus-per-task={opts.cpus_per_task}
#SBATCH --time={opts.time}
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%A_%a.out
#SBATCH --error=logs/%x-%A_%a.out

set -eu -o pipefail
CONFIGS=(
{configs}
)
# The directory the sweep was planned from: relative paths in its overrides start there.
export MDM_ROOT=${{MDM_ROOT:-{root}}}
TASK=${{SLURM_ARRAY_TASK_ID:?not an array task: submit with sbatch}}
if [ "$TASK" -ge "${{#CONFIGS[@]}}" ]; then
    echo "array task $TASK: only ${{#CONFIGS[@]}} configs" >&2
    exit 2
fi
exec bash "$MDM_ROOT/slurm/pretrain.sbatch" "${{CONFIGS[$TASK]}}"
"""
