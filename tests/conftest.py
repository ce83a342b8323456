"""Shared test helpers: an in-process single-rank megatron-core world, and runs of `mdm train`
as real subprocesses (one process, or several through torchrun on gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
# A 2-layer GQA model for in-process tests (heads 4, kv groups 2).
TINY_MODEL = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.num_attention_heads=4",
    "model.num_query_groups=2",
    "model.ffn_hidden_size=128",
    "model.seq_length=16",
]

# A throw-away run: every step logged to metrics.jsonl, no progress bar, no TensorBoard, no resume,
# no final checkpoint.
SCRATCH_RUN = [
    "logging.interval=1",
    "logging.progress=false",
    "logging.tensorboard=false",
    "checkpoint.resume=none",
    "checkpoint.save_at_end=false",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env.pop("LOCAL_RANK", None)
    env["MASTER_ADDR"] = "127.0.0.1"
    env["MASTER_PORT"] = str(free_port())
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_mdm(args: list[str], nproc: int = 1, timeout: int = 600, check: bool = True):
    """Run `mdm ARGS` on `nproc` processes (torchrun when > 1); returns the CompletedProcess."""
    env = subprocess_env()
    if nproc == 1:
        cmd = [sys.executable, "-m", "megatron_mdm.cli", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            env["MASTER_PORT"],
            "-m",
            "megatron_mdm.cli",
            *args,
        ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def run_cli(*args, timeout: int = 120) -> subprocess.CompletedProcess:
    """`mdm ARGS` in a subprocess, output captured, exit code left to the caller."""
    return subprocess.run(
        [sys.executable, "-m", "megatron_mdm.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_all_metrics(output_dir: Path) -> list[dict]:
    with open(Path(output_dir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_metrics(output_dir: Path) -> list[dict]:
    """Training records (validation records carry `val_loss` instead of `loss`)."""
    return [r for r in read_all_metrics(output_dir) if "loss" in r]


def read_val_metrics(output_dir: Path) -> list[dict]:
    return [r for r in read_all_metrics(output_dir) if "val_loss" in r]


@pytest.fixture(scope="session")
def single_rank_world():
    """torch.distributed (gloo, world 1) + megatron-core parallel state TP=PP=1, in-process."""
    import torch.distributed as dist

    from megatron_mdm.parallel.distributed import prepare_accelerator

    prepare_accelerator()
    from megatron.core import parallel_state as ps

    from megatron_mdm.parallel.cpu_compat import seed_model_parallel_rng

    if not dist.is_initialized():
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
        )
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(1, 1)
    seed_model_parallel_rng(1234)
    yield
