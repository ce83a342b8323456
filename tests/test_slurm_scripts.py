"""The sbatch scripts under a fake Slurm: stub `scontrol`/`srun`/`scancel` on PATH, SLURM_*
variables set by hand.

The dry runs (MDM_DRY_RUN=1) check the launch line each script would run: node count, per-node
rank, rendezvous address and port, and that the config and overrides pass through untouched.
The slow test runs pretrain.sbatch for real on one fake node (torchrun, 2 gloo processes) and
sends the batch shell Slurm's USR1 time-limit warning: training must survive the forwarded
signal, exit 0 with a checkpoint, and the script must requeue the job.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT, SLURM_JOB_ID, fake_slurm, free_port, read_metrics, write_executable

SCRIPTS = sorted((ROOT / "slurm").glob("*.sbatch"))
JOB_ID = SLURM_JOB_ID
PORT = 10000 + JOB_ID % 20000  # launch_env._slurm_port's formula; the script must agree


def test_the_scripts_exist():
    assert {"convert.sbatch", "pretrain.sbatch", "sft.sbatch"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def dry_run(script: str, args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", f"slurm/{script}", *args],
        cwd=ROOT,
        env={**env, "MDM_DRY_RUN": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def torchrun_args(words: list[str]) -> tuple[dict, list[str]]:
    """torchrun's --key=value options before `-m`, and everything from `-m` on."""
    i = words.index("-m")
    opts = dict(w.removeprefix("--").split("=", 1) for w in words[:i] if w.startswith("--"))
    return opts, words[i:]


TRICKY = "data.blend=[0.7, data/web it's, 0.3, data/books]"  # spaces, comma, quote


def test_pretrain_dry_run_prints_the_launch(tmp_path):
    env = fake_slurm(tmp_path)
    proc = dry_run("pretrain.sbatch", ["configs/quickstart.yaml", "train.max_steps=5", TRICKY], env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, proc.stdout
    assert lines[0] == f"MASTER_ADDR=node001 MASTER_PORT={PORT}"
    assert (tmp_path / "scontrol.calls").read_text().splitlines() == [
        "show hostnames node[001-002]"
    ]

    # The batch line: one srun task per node, each running the per-node script with torchrun.
    srun = shlex.split(lines[1])
    assert srun[0] == "srun"
    assert "--nodes=2" in srun and "--ntasks-per-node=1" in srun
    assert "--cpus-per-task=16" in srun and "--kill-on-bad-exit=1" in srun
    b = srun.index("bash")
    assert srun[b + 1] == "-c"
    node_script = srun[b + 2]
    # Each node must read its own SLURM_NODEID; the batch shell (node 0) must not expand it.
    assert '--node_rank="$SLURM_NODEID"' in node_script
    assert 'trap "" USR1' in node_script and "exec" in node_script
    assert srun[b + 3] == str(ROOT / ".venv" / "bin" / "torchrun")

    # What node 1 execs.
    assert lines[2].startswith("node 1: ")
    node = shlex.split(lines[2].removeprefix("node 1: "))
    assert node[0] == srun[b + 3]
    opts, rest = torchrun_args(node[1:])
    assert opts == {
        "node_rank": "1",
        "nnodes": "2",
        "nproc_per_node": "4",
        "master_addr": "node001",
        "master_port": str(PORT),
    }
    expected_tail = [
        "-m",
        "megatron_mdm.cli",
        "train",
        "configs/quickstart.yaml",
        "checkpoint.resume=auto",
        "train.max_steps=5",
        TRICKY,
    ]
    assert rest == expected_tail
    # The srun line carries the same torchrun arguments, minus the per-node rank.
    assert srun[b + 4 :] == node[2:]


def test_pretrain_dry_run_knobs(tmp_path):
    env = fake_slurm(
        tmp_path,
        hosts=("gpu-a17", "gpu-b03", "gpu-b04"),
        SLURM_NNODES="3",
        SLURM_NODEID="2",
        GPUS_PER_NODE="8",
        MDM_MASTER_PORT="23456",
        VENV="/opt/envs/mdm",
    )
    proc = dry_run("pretrain.sbatch", ["configs/quickstart.yaml", "checkpoint.resume=none"], env)
    assert proc.returncode == 0, proc.stderr
    node = shlex.split(proc.stdout.splitlines()[2].removeprefix("node 2: "))
    assert node[0] == "/opt/envs/mdm/bin/torchrun"
    opts, rest = torchrun_args(node[1:])
    assert opts["node_rank"] == "2" and opts["nnodes"] == "3" and opts["nproc_per_node"] == "8"
    assert opts["master_addr"] == "gpu-a17" and opts["master_port"] == "23456"
    # A user's resume override comes after the default, so it wins.
    assert rest[-2:] == ["checkpoint.resume=auto", "checkpoint.resume=none"]


def test_sft_dry_run_reuses_the_pretrain_launch(tmp_path):
    env = fake_slurm(tmp_path, SLURM_NODEID="0")
    proc = dry_run("sft.sbatch", ["configs/quickstart.yaml", "train.max_steps=3"], env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"MASTER_ADDR=node001 MASTER_PORT={PORT}"
    opts, rest = torchrun_args(shlex.split(lines[2].removeprefix("node 0: "))[1:])
    assert opts["node_rank"] == "0" and opts["nnodes"] == "2"
    assert rest == [
        "-m",
        "megatron_mdm.cli",
        "sft",
        "configs/quickstart.yaml",
        "checkpoint.resume=auto",
        "train.max_steps=3",
    ]


def test_convert_dry_run(tmp_path):
    env = fake_slurm(tmp_path, SLURM_NNODES="1")
    args = ["export", "runs/a b", "runs/out", "--format", "hf", "--dtype", "bf16"]
    proc = dry_run("convert.sbatch", args, env)
    assert proc.returncode == 0, proc.stderr
    words = shlex.split(proc.stdout)
    assert words[:3] == ["srun", "--ntasks=1", "--cpus-per-task=16"]
    assert words[3:] == [str(ROOT / ".venv/bin/python"), "-m", "megatron_mdm.cli", "convert", *args]


def sbatch_options(script: str) -> list[str]:
    """The #SBATCH lines of a script, as Slurm reads them (before the first command)."""
    options = []
    for line in (ROOT / "slurm" / script).read_text().splitlines():
        if line.startswith("#SBATCH "):
            options.append(line.removeprefix("#SBATCH ").split("#")[0].strip())
        elif line.strip() and not line.startswith("#"):
            break
    return options


@pytest.mark.parametrize("script", ["pretrain.sbatch", "sft.sbatch"])
def test_training_jobs_take_whole_nodes_and_their_memory(script):
    options = sbatch_options(script)
    assert "--exclusive" in options and "--mem=0" in options
    # convert.sbatch shares a node: a fixed memory request, no GPU, not exclusive.
    convert = sbatch_options("convert.sbatch")
    assert "--exclusive" not in convert and "--mem=128G" in convert


def test_dry_run_works_without_scontrol(tmp_path):
    env = fake_slurm(tmp_path, SLURM_JOB_NODELIST="gpu[017-018,031]", SLURM_NNODES="3")
    (tmp_path / "bin" / "scontrol").unlink()
    if shutil.which("scontrol", path=env["PATH"]):
        pytest.skip("a real scontrol is on PATH")
    for script in ("pretrain.sbatch", "sft.sbatch"):
        proc = dry_run(script, ["configs/quickstart.yaml"], env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0] == f"MASTER_ADDR=gpu017 MASTER_PORT={PORT}"
        assert "scontrol not found" in proc.stderr
    # Without MDM_DRY_RUN the launch refuses (no allocation can lack scontrol).
    proc = subprocess.run(
        ["bash", "slurm/pretrain.sbatch", "configs/quickstart.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "scontrol not found" in proc.stderr


@pytest.mark.parametrize(
    "script,args,needle",
    [
        ("pretrain.sbatch", [], "usage"),
        ("pretrain.sbatch", ["configs/missing.yaml"], "configs/missing.yaml not found"),
        ("sft.sbatch", [], "usage"),
        ("convert.sbatch", ["merge", "a", "b"], "export|import|reshard"),
    ],
)
def test_bad_arguments_fail_before_launching(tmp_path, script, args, needle):
    proc = dry_run(script, args, fake_slurm(tmp_path))
    assert proc.returncode == 2
    assert needle in proc.stderr and proc.stdout == ""


def test_pretrain_refuses_to_run_outside_slurm(tmp_path):
    env = fake_slurm(tmp_path)
    del env["SLURM_JOB_ID"]
    proc = dry_run("pretrain.sbatch", ["configs/quickstart.yaml"], env)
    assert proc.returncode == 2 and "sbatch" in proc.stderr


# ------------------------------------------------------------------ real run under fake Slurm

STUB_SRUN = """#!/bin/sh
# One fake node: drop srun's options, record the task's pid (this process: it execs the task),
# then run the task as node 0 the way slurmstepd would.
echo $$ > "$STUB_DIR/step.pid"
while [ $# -gt 0 ]; do case $1 in --*) shift ;; *) break ;; esac; done
SLURM_NODEID=0 SLURM_PROCID=0 SLURM_LOCALID=0 exec "$@"
"""

# Like slurmstepd: a signal for the step goes to every process in it, the task (torchrun) and
# all its descendants (torchrun's workers run in sessions of their own, so not a process group).
STUB_SCANCEL = """#!{python}
import os, signal, sys
stub = os.environ["STUB_DIR"]
with open(os.path.join(stub, "scancel.calls"), "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
sig = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--signal="))
sig = getattr(signal, "SIG" + sig.removeprefix("SIG"))
children = {{}}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{{pid}}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        continue
    children.setdefault(ppid, []).append(int(pid))
todo = [int(open(os.path.join(stub, "step.pid")).read())]
while todo:
    pid = todo.pop()
    todo += children.get(pid, [])
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
"""


@pytest.mark.slow
def test_usr1_warning_checkpoints_exits_0_and_requeues(tmp_path):
    out = tmp_path / "run"
    env = fake_slurm(
        tmp_path,
        hosts=("127.0.0.1",),
        SLURM_JOB_NODELIST="localhost",
        SLURM_NODELIST="localhost",
        SLURM_NNODES="1",
        SLURM_JOB_NUM_NODES="1",
        SLURM_NODEID="0",
        GPUS_PER_NODE="2",
        MDM_MASTER_PORT=str(free_port()),
        STUB_DIR=str(tmp_path),
    )
    write_executable(tmp_path / "bin" / "srun", STUB_SRUN)
    write_executable(tmp_path / "bin" / "scancel", STUB_SCANCEL.format(python=sys.executable))
    max_steps = 40
    args = [
        "configs/quickstart.yaml",
        "model.seq_length=64",
        "train.micro_batch_size=2",
        "train.global_batch_size=4",
        f"train.max_steps={max_steps}",
        "train.warmup_steps=1",
        "logging.interval=1",
        "logging.progress=false",
        "logging.tensorboard=false",
        "parallel.tensor=2",
        f"train.output_dir={out}",
    ]
    log_path = tmp_path / "job.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["bash", "slurm/pretrain.sbatch", *args], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 300
        metrics = out / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().strip()):
            assert proc.poll() is None, "the job ended before training started"
            assert time.monotonic() < deadline, "no training step within 300 s"
            time.sleep(0.5)
        proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 does
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:  # take the whole fake step down, not just the batch shell
            scancel = [str(tmp_path / "bin" / "scancel"), "--signal=KILL", str(JOB_ID)]
            subprocess.run(scancel, env=env, timeout=30)
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert rc == 0, text[-6000:]
    assert "got SIGUSR1" in text and "requeueing job" in text, text[-3000:]
    assert (tmp_path / "scancel.calls").read_text().split() == ["--signal=USR1", str(JOB_ID)]
    calls = (tmp_path / "scontrol.calls").read_text().splitlines()
    assert calls == ["show hostnames localhost", f"requeue {JOB_ID}"]

    steps = [r["step"] for r in read_metrics(out)]
    assert steps == list(range(1, len(steps) + 1))
    # The trainer stops at the next step boundary (or, on a fast machine, had already finished),
    # and either way leaves a checkpoint of its last step to resume from.
    latest = (out / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step_{steps[-1]:07d}"
    if steps[-1] < max_steps:
        assert "checkpointing step" in text
