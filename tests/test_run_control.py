"""Runs that coexist and survive, as real `mdm train` processes: a second run on the same machine
(no fixed port) and in the same output folder (refused in one line), Ctrl-C and SIGTERM at any
moment (start-up: a clean exit; training: finish the step, save, exit 0), and torchrun launches
that neither build nor wait on DeepSpeed's shared-memory op (a stale build lock left by a killed
launch used to hang every later one).
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import QUICKSTART, ROOT, TINY_MODEL, free_port, read_metrics, subprocess_env

from megatron_mdm.parallel.launch_env import DEFAULT_MASTER_PORT

pytestmark = pytest.mark.slow

LONG_RUN = [
    *TINY_MODEL,
    "train.max_steps=100000",
    "train.warmup_steps=0",
    "logging.interval=1",
    "logging.progress=false",
    "logging.tensorboard=false",
    "checkpoint.save_interval=0",
]


def no_launcher_env() -> dict:
    """A shell with no launcher and no rendezvous variables (`mdm train` typed by a person)."""
    env = subprocess_env()
    env.pop("MASTER_PORT", None)
    env.pop("MASTER_ADDR", None)
    return env


def start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def mdm(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "megatron_mdm.cli", "train", QUICKSTART, *LONG_RUN,
            f"train.output_dir={out}", *extra]  # fmt: skip


def wait_for_records(out: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    metrics, deadline = out / "metrics.jsonl", time.time() + timeout
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= n):
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}:\n{proc.communicate()[1][-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"no {n} metrics records after {timeout} s (hung?)")
        time.sleep(0.2)


@pytest.fixture
def port_29500_taken():
    """Another job holds the port a fixed-port launch would use (or someone already does)."""
    held = socket.socket()
    try:
        held.bind(("127.0.0.1", DEFAULT_MASTER_PORT))
        held.listen()
    except OSError:
        pass
    yield
    held.close()


def test_second_run_is_refused_and_ctrl_c_saves(tmp_path, port_29500_taken):
    out, env = tmp_path / "run", no_launcher_env()
    first = start(mdm(out), env)
    wait_for_records(out, 2, first)
    second = subprocess.run(mdm(out), cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert "another run is using this train.output_dir" in lines[-1]
    assert f"pid {first.pid} on {socket.gethostname()}" in lines[-1]

    first.send_signal(signal.SIGINT)
    latest, deadline = out / "checkpoints" / "latest", time.time() + 300
    while not latest.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # into the interpreter's teardown
    first.send_signal(signal.SIGINT)  # saved, on its way out: the second Ctrl-C is harmless
    stdout, stderr = first.communicate(timeout=300)
    # 0, or 130 if it lands before the command returns; once killed by it mid-teardown (-2)
    assert first.returncode in (0, 130), (first.returncode, stderr[-3000:])
    assert "received SIGINT" in stdout and "Traceback" not in stderr
    stamp = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] "
    assert re.search(rf"^{stamp}step +1 \| loss [\d.]+ \|.*\| MFU n/a$", stdout, re.M), stdout
    steps = len(read_metrics(out))
    assert (out / "checkpoints" / "latest").read_text() == f"step_{steps:07d}"
    assert not (out / "run.lock").exists()


def wait_until_watching(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the command has put in its stop handlers (`training/preemption.py`, installed before
    the slow imports): SIGUSR1 is then caught, which Python alone never does. A signal sent now
    lands in start-up, seconds before the first step on any machine (a fixed sleep landed in
    training on a fast one)."""
    bit, deadline = 1 << (signal.SIGUSR1 - 1), time.time() + timeout
    while True:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
        if int(caught.split()[1], 16) & bit:
            return
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"no stop handlers after {timeout} s: {proc.communicate()[1]}")
        time.sleep(0.01)


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C twice"])
def test_signal_during_start_up(tmp_path, how):
    out = tmp_path / "run"
    proc = start(mdm(out), no_launcher_env())
    wait_until_watching(proc)
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert "Traceback" not in stderr, stderr[-3000:]
    if how == "SIGTERM":
        assert proc.returncode == 0
        assert "received SIGTERM during start-up: exiting before the first step" in stderr
    else:
        assert proc.returncode == 130 and stderr.strip().endswith("mdm: interrupted")
    assert not (out / "metrics.jsonl").exists() or not read_metrics(out)
    assert not (out / "run.lock").exists()


def test_torchrun_ignores_a_stale_op_build_lock_and_sigterm_saves(tmp_path):
    """A launch killed while DeepSpeed JIT-built its shm op left the build lock; later launches
    waited on it forever. CPU runs no longer build the op at all. SIGTERM to torchrun: the
    workers save and exit 0; torchrun itself exits 1 with its SignalException (README)."""
    ext = tmp_path / "torch_extensions"
    lock = ext / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    out, port = tmp_path / "run", str(free_port())
    env = {**subprocess_env(), "MASTER_PORT": port, "TORCH_EXTENSIONS_DIR": str(ext)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", port,
           "-m", "megatron_mdm.cli", "train", QUICKSTART, *LONG_RUN, f"train.output_dir={out}"]  # fmt: skip
    proc = start(cmd, env)
    wait_for_records(out, 2, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert "received SIGTERM" in stdout, stderr[-3000:]
    assert proc.returncode == 1 and "SignalException" in stderr  # torchrun's own exit
    assert "exitcode  : 1" not in stderr  # no worker failed
    steps = len(read_metrics(out))
    assert (out / "checkpoints" / "latest").read_text() == f"step_{steps:07d}"
    assert "built successfully" not in stdout + stderr
    assert sorted(p.name for p in lock.parent.iterdir()) == ["lock"]  # nothing built
