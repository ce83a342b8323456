"""Launcher detection must agree with what each launcher really exports; a wrong
rank or master address shows up only as a rendezvous hang on a cluster."""

from __future__ import annotations

import pytest

from megatron_mdm.parallel.launch_env import (
    LaunchEnv,
    detect_launch_env,
    expand_slurm_nodelist,
    export_torch_env,
)

TORCHRUN = {
    "RANK": "5",
    "WORLD_SIZE": "8",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "4",
    "GROUP_RANK": "1",
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "29400",
    "TORCHELASTIC_RUN_ID": "none",
}

# What deepspeed/launcher/launch.py sets for node 1 of 2, 4 GPUs per node.
DEEPSPEED = {
    "MASTER_ADDR": "worker-0",
    "MASTER_PORT": "29500",
    "WORLD_SIZE": "8",
    "CROSS_RANK": "1",
    "CROSS_SIZE": "2",
    "LOCAL_SIZE": "4",
    "RANK": "6",
    "LOCAL_RANK": "2",
}

OPENMPI = {
    "OMPI_COMM_WORLD_RANK": "3",
    "OMPI_COMM_WORLD_SIZE": "4",
    "OMPI_COMM_WORLD_LOCAL_RANK": "3",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
}

PMI = {"PMI_RANK": "2", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2"}

SLURM = {
    "SLURM_JOB_ID": "123456",
    "SLURM_PROCID": "5",
    "SLURM_NTASKS": "8",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
    "SLURM_STEP_NODELIST": "node[001-004,007]",
    "SLURM_JOB_NODELIST": "other[1-9]",
}


def test_torchrun():
    le = detect_launch_env(TORCHRUN)
    assert le == LaunchEnv(5, 8, 1, 4, "10.0.0.1", 29400, "torchrun")


def test_torchrun_minimal_defaults():
    le = detect_launch_env({"RANK": "0", "WORLD_SIZE": "1"})
    assert le == LaunchEnv(0, 1, 0, 1, "127.0.0.1", 29500, "torchrun")


def test_deepspeed_launcher_detected_via_cross_rank():
    le = detect_launch_env(DEEPSPEED)
    assert le == LaunchEnv(6, 8, 2, 4, "worker-0", 29500, "deepspeed")


def test_torch_vars_win_over_surrounding_slurm():
    # torchrun started by srun once per node: torchrun's view is the real one.
    le = detect_launch_env({**SLURM, **TORCHRUN})
    assert le.launcher == "torchrun" and le.rank == 5 and le.master_addr == "10.0.0.1"


def test_openmpi():
    le = detect_launch_env(OPENMPI)
    assert le == LaunchEnv(3, 4, 3, 4, "127.0.0.1", 29500, "mpi")


def test_openmpi_multinode_without_master_addr_fails_loudly():
    env = {**OPENMPI, "OMPI_COMM_WORLD_SIZE": "8"}
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        detect_launch_env(env)
    le = detect_launch_env({**env, "MASTER_ADDR": "h0"})
    assert le.master_addr == "h0" and le.world_size == 8


def test_mpirun_inside_slurm_allocation_uses_mpi_ranks_and_job_nodelist():
    batch_step = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "42"}
    env = {**batch_step, **OPENMPI, "SLURM_JOB_NODELIST": "gpu[07-08]"}
    env["OMPI_COMM_WORLD_SIZE"] = "8"
    le = detect_launch_env(env)
    assert le.launcher == "mpi" and le.rank == 3 and le.world_size == 8
    assert le.master_addr == "gpu07" and le.master_port == 10042


def test_pmi():
    le = detect_launch_env({**PMI, "MASTER_ADDR": "h0"})
    assert le == LaunchEnv(2, 4, 0, 2, "h0", 29500, "mpi")


def test_pmi_local_defaults():
    le = detect_launch_env({"PMI_RANK": "1", "PMI_SIZE": "2"})
    assert (le.local_rank, le.local_world_size, le.master_addr) == (0, 1, "127.0.0.1")


def test_slurm():
    le = detect_launch_env(SLURM)
    assert le == LaunchEnv(5, 8, 1, 4, "node001", 10000 + 123456 % 20000, "slurm")


def test_slurm_uneven_tasks_per_node_uses_node_id():
    env = {
        **SLURM,
        "SLURM_NTASKS": "3",
        "SLURM_PROCID": "2",
        "SLURM_LOCALID": "0",
        "SLURM_STEP_TASKS_PER_NODE": "2,1",
    }
    assert detect_launch_env(env).local_world_size == 1
    env.update(SLURM_NODEID="0", SLURM_PROCID="1", SLURM_LOCALID="1")
    assert detect_launch_env(env).local_world_size == 2


def test_slurm_ntasks_per_node_and_job_nodelist_fallbacks():
    env = {
        "SLURM_JOB_ID": "7",
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_JOB_NODELIST": "gpu-a1,gpu-b2",
    }
    le = detect_launch_env(env)
    assert (le.local_world_size, le.master_addr, le.master_port) == (2, "gpu-a1", 10007)


def test_slurm_step_num_tasks_beats_allocation_ntasks():
    env = {**SLURM, "SLURM_STEP_NUM_TASKS": "6"}
    assert detect_launch_env(env).world_size == 6


def test_single_process():
    single = detect_launch_env({})  # no launcher: a free port (tests/test_run_hygiene.py)
    assert single == LaunchEnv(0, 1, 0, 1, "127.0.0.1", single.master_port, "single")
    assert detect_launch_env({"MASTER_PORT": "1234"}).master_port == 1234


@pytest.mark.parametrize("base", [SLURM, OPENMPI, PMI, {}])
def test_master_env_overrides_derived(base):
    le = detect_launch_env({**base, "MASTER_ADDR": "pinned", "MASTER_PORT": "31337"})
    assert (le.master_addr, le.master_port) == ("pinned", 31337)


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "LOCAL_RANK"),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "http"}, "MASTER_PORT"),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "70000"}, "MASTER_PORT"),
        ({**OPENMPI, "OMPI_COMM_WORLD_RANK": "4"}, "OMPI_COMM_WORLD_RANK"),
        ({**PMI, "PMI_SIZE": "two"}, "PMI_SIZE"),
        ({**SLURM, "SLURM_PROCID": "8"}, "SLURM_PROCID"),
        ({**SLURM, "SLURM_JOB_ID": "abc"}, "SLURM_JOB_ID"),
        ({**SLURM, "SLURM_STEP_TASKS_PER_NODE": "4(y2)"}, "SLURM_STEP_TASKS_PER_NODE"),
    ],
)
def test_bad_values_raise_one_line(env, var):
    with pytest.raises(ValueError) as info:
        detect_launch_env(env)
    msg = str(info.value)
    assert var in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("nodelist", "expected"),
    [
        ("node[001-004,007]", ["node001", "node002", "node003", "node004", "node007"]),
        ("node[001-004,007],gpu1", ["node001", "node002", "node003", "node004", "node007", "gpu1"]),
        ("gpu-a1,gpu-b2", ["gpu-a1", "gpu-b2"]),
        ("single", ["single"]),
        ("n[1-2]-ib", ["n1-ib", "n2-ib"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("a[09-10],b", ["a09", "a10", "b"]),
        ("", []),
    ],
)
def test_expand_slurm_nodelist(nodelist, expected):
    assert expand_slurm_nodelist(nodelist) == expected


@pytest.mark.parametrize("bad", ["n[1-2", "n1-2]", "n[a-b]", "n[3-1]", "n[[1]]", "n[1-9:2]"])
def test_expand_slurm_nodelist_rejects_malformed(bad):
    with pytest.raises(ValueError, match="nodelist"):
        expand_slurm_nodelist(bad)


@pytest.mark.parametrize(
    "env", [TORCHRUN, DEEPSPEED, OPENMPI, {**PMI, "MASTER_ADDR": "h0"}, SLURM, {}]
)
def test_export_torch_env_round_trip(env):
    le = detect_launch_env(env)
    out: dict[str, str] = {}
    export_torch_env(le, out)
    assert set(out) == {
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    }
    back = detect_launch_env(out)
    assert back.launcher == "torchrun"
    assert (back.rank, back.world_size, back.local_rank, back.local_world_size) == (
        le.rank,
        le.world_size,
        le.local_rank,
        le.local_world_size,
    )
    assert (back.master_addr, back.master_port) == (le.master_addr, le.master_port)


def test_reads_os_environ_by_default(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    for var in ("CROSS_RANK", "CROSS_SIZE", "LOCAL_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert detect_launch_env().rank == 1
