"""Fast in-process checks of what a run does around its steps: LR schedules against their
formulas, warmup clamping, the output-folder lock, the single-process port, checkpoint pruning,
metrics sinks (TensorBoard purge on resume, `val/`, MFU only against a known peak), the quiet
progress bar, signal handling, and the DeepSpeed op builds a run must not wait on forever."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml
from helpers import QUICKSTART, run_cli

from megatron_mdm.checkpointing.run_dir import prune
from megatron_mdm.config import ConfigError, load_config
from megatron_mdm.parallel.launch_env import DEFAULT_MASTER_PORT, detect_launch_env
from megatron_mdm.training.console import progress_bar
from megatron_mdm.training.metrics import MetricsWriter, check_wandb, peak_tflops_per_device
from megatron_mdm.training.preemption import PreemptionWatcher, StoppedBeforeTraining
from megatron_mdm.training.run_lock import LOCK_NAME, RunLock, RunLockedError
from megatron_mdm.training.schedule import lr_at, warmup_warning

# ------------------------------------------------------------------------------ LR schedules


def reference_lr(step, lr, min_lr, warmup, end, schedule, fraction):
    """docs/design.md §10, written out independently of training/schedule.py."""
    warmup = min(warmup, end)
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        if end <= warmup:
            return min_lr
        x = min(1.0, (step - warmup) / (end - warmup))
        return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * x)) / 2
    length = int(fraction * (end - warmup) + 0.5)  # rounded half up
    start = end - length
    if step < start:
        return lr
    if step >= end:
        return min_lr
    return lr + (min_lr - lr) * (step - start) / length


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
@pytest.mark.parametrize(
    ("warmup", "decay_steps", "fraction"), [(0, None, 0.1), (10, None, 0.25), (5, 60, 0.5)]
)
def test_lr_schedule_matches_its_formula(schedule, warmup, decay_steps, fraction):
    overrides = [
        "train.max_steps=100",
        "train.lr=3e-4",
        "train.min_lr=1e-5",
        f"train.warmup_steps={warmup}",
        f"train.lr_schedule={schedule}",
        f"train.lr_decay_fraction={fraction}",
    ]
    if decay_steps:
        overrides.append(f"train.lr_decay_steps={decay_steps}")
    t = load_config(None, overrides).train
    end = decay_steps or 100
    for step in range(120):
        want = reference_lr(step, 3e-4, 1e-5, warmup, end, schedule, fraction)
        assert lr_at(step, t) == pytest.approx(want, rel=1e-12, abs=1e-15), (schedule, step)
    if schedule == "wsd":  # stable at the peak, then a linear ramp ending at min_lr
        assert lr_at(end - int(fraction * (end - warmup) + 0.5) - 1, t) == 3e-4
        assert lr_at(end, t) == 1e-5


def test_llada_recipe_uses_warmup_stable_decay():
    from helpers import ROOT

    for name in ("llada-8b", "arm-8b"):
        t = load_config(str(ROOT / "configs" / f"{name}.yaml")).train
        assert (t.lr_schedule, t.warmup_steps, t.lr, t.min_lr) == ("wsd", 2000, 4e-4, 1e-5)
        stable_until = t.max_steps - int(t.lr_decay_fraction * (t.max_steps - 2000) + 0.5)
        assert lr_at(stable_until - 1, t) == 4e-4 and lr_at(t.max_steps, t) == 1e-5


def test_warmup_longer_than_a_short_run_is_clamped_with_a_warning():
    t = load_config(None, ["train.max_steps=5", "train.warmup_steps=20"]).train
    assert [lr_at(s, t) for s in range(5)] == pytest.approx([t.lr * k / 5 for k in range(1, 6)])
    message = warmup_warning(t)
    assert "train.warmup_steps = 20" in message and "clamped to 5" in message
    assert warmup_warning(load_config(None, ["train.max_steps=50"]).train) is None


# ------------------------------------------------------------------------------ run lock


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_run_in_one_output_dir_refuses_in_one_line(tmp_path):
    with RunLock(tmp_path):
        owner = json.loads((tmp_path / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(RunLockedError) as err:
            RunLock(tmp_path).acquire()
        message = str(err.value)
        assert f"pid {os.getpid()} on {socket.gethostname()}" in message
        assert str(tmp_path) in message and "\n" not in message
    assert not (tmp_path / LOCK_NAME).exists()  # released
    with RunLock(tmp_path):  # and free again
        pass


@pytest.mark.parametrize("how", ["dead pid", "reused pid", "unreadable"])
def test_stale_lock_is_taken_over_with_a_message(tmp_path, how):
    owner = {"pid": dead_pid(), "host": socket.gethostname(), "started": "then"}
    if how == "reused pid":  # our own pid, but recorded for a process started at another time
        owner = {**owner, "pid": os.getpid(), "process_start": "1"}
    text = json.dumps(owner) if how != "unreadable" else '{"pid": 12'
    (tmp_path / LOCK_NAME).write_text(text)
    said = []
    with RunLock(tmp_path, said.append) as lock:
        assert json.loads((tmp_path / LOCK_NAME).read_text()) == lock.owner
    assert len(said) == 1 and "taking over the stale lock" in said[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_lock_of_another_host_is_not_taken(tmp_path):
    owner = {"pid": dead_pid(), "host": "elsewhere.example", "started": "then"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(owner))
    with pytest.raises(RunLockedError, match="on elsewhere.example.*delete"):
        RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == owner


# ------------------------------------------------------------------------------ port


def test_single_process_without_launcher_does_not_use_a_fixed_port():
    held = socket.socket()
    try:
        held.bind(("127.0.0.1", DEFAULT_MASTER_PORT))
        held.listen()
    except OSError:
        pass  # someone else holds it: the case under test all the same
    try:
        port = detect_launch_env({}).master_port
        assert port != DEFAULT_MASTER_PORT
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free
    finally:
        held.close()
    assert detect_launch_env({"MASTER_PORT": "1234"}).master_port == 1234


# ------------------------------------------------------------------------------ pruning


def checkpoint(root, step, finite):
    path = root / f"step_{step:07d}"
    path.mkdir(parents=True)
    meta = {"step": step, "config": {}}
    if finite is not None:
        meta["weights_finite"] = finite
    (path / "meta.yaml").write_text(yaml.safe_dump(meta))


def test_prune_never_deletes_the_newest_finite_checkpoint(tmp_path):
    # step 2 checked finite; 3 and 4 written by a release that saved NaN weights unchecked
    checkpoint(tmp_path, 1, True)
    checkpoint(tmp_path, 2, True)
    checkpoint(tmp_path, 3, None)
    checkpoint(tmp_path, 4, None)
    prune(tmp_path, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000002", "step_0000004"]
    checkpoint(tmp_path, 5, True)
    prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000004", "step_0000005"]


# ------------------------------------------------------------------------------ metrics


def scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_resumed_metrics_drop_points_past_the_resume_step(tmp_path):
    cfg = load_config(None, [f"train.output_dir={tmp_path}", "logging.tensorboard=true"])
    crashed = MetricsWriter(cfg, resume_step=0)
    for step in (2, 4):  # logged, but the last checkpoint was at step 2
        crashed.write({"step": step, "loss": 1.0})
    crashed.write_validation(4, 5.0)
    crashed.write_samples(4, "p", ["x"])
    crashed.close()
    resumed = MetricsWriter(cfg, resume_step=2)
    resumed.write({"step": 4, "loss": 2.0, "mfu": None})
    resumed.write_validation(4, 6.0)
    resumed.close()
    assert scalars(tmp_path / "tensorboard", "train/loss") == [(2, 1.0), (4, 2.0)]
    assert scalars(tmp_path / "tensorboard", "val/loss") == [(4, 6.0)]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [
        {"step": 2, "loss": 1.0},
        {"step": 4, "loss": 2.0, "mfu": None},
        {"step": 4, "val_loss": 6.0},
    ]
    assert (tmp_path / "samples.jsonl").read_text() == ""


def test_mfu_only_against_a_known_peak():
    import torch

    assert peak_tflops_per_device(123.0) == 123.0
    if not torch.cuda.is_available():
        assert peak_tflops_per_device(None) is None  # a CPU has no meaningful peak here


def test_progress_bar_redraws_rarely_when_not_on_a_terminal():
    def redraws(file) -> int:
        bar = progress_bar(100, 0, True, "train", file=file)
        for _ in range(40):
            bar.update(1)
            bar.set_postfix(loss="1.0", refresh=False)
            time.sleep(0.01)
        n = file.getvalue().count("\r")
        bar.close()
        return n

    assert redraws(io.StringIO()) <= 2  # the first draw (and maybe one more), not 40


def test_wandb_without_the_package_is_one_line():
    try:
        import wandb  # noqa: F401

        pytest.skip("wandb is installed here")
    except ImportError:
        pass
    cfg = load_config(QUICKSTART, ["logging.wandb=true"])
    with pytest.raises(ConfigError) as err:
        check_wandb(cfg)
    assert "logging.wandb" in str(err.value) and "pip install wandb" in str(err.value)
    proc = run_cli("train", QUICKSTART, "logging.wandb=true", "train.output_dir=/nonexistent/x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "logging.wandb" in lines[0], proc.stderr


def test_wandb_offline_run_logs_the_metrics_and_resumes_the_same_run(tmp_path):
    pytest.importorskip("wandb")
    cfg = load_config(
        None,
        [
            f"train.output_dir={tmp_path}",
            "logging.wandb=true",
            "logging.wandb_mode=offline",
            "logging.tensorboard=false",
        ],
    )
    first = MetricsWriter(cfg, resume_step=0)
    first.write({"step": 1, "loss": 2.5, "mfu": None})
    first.write_validation(1, 3.5)
    first.write({"step": 2, "loss": 2.0})  # W&B commits step 1 once a later step arrives
    summary = dict(first._wandb.run.summary)
    run_id = first._wandb.run.id
    first.close()
    assert summary["_step"] == 1
    assert summary["train/loss"] == 2.5 and summary["val/loss"] == 3.5
    assert "train/mfu" not in summary  # null values are not logged
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    resumed = MetricsWriter(cfg, resume_step=1)
    assert resumed._wandb.run.id == run_id
    resumed.close()


# ------------------------------------------------------------------------------ signals


def test_ctrl_c_requests_a_stop_and_a_second_one_aborts():
    previous = signal.getsignal(signal.SIGINT)
    with PreemptionWatcher() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs between bytecodes of the main thread
        assert stop.received == signal.SIGINT
        with pytest.raises(StoppedBeforeTraining, match="received SIGINT during start-up"):
            stop.stop_if_requested()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is previous


# ------------------------------------------------------------------------------ op builds


def test_cpu_runs_do_not_build_the_shm_allreduce_op():
    from megatron_mdm.parallel.distributed import prepare_accelerator, without_shm_allreduce

    prepare_accelerator()
    import deepspeed
    from deepspeed.comm.torch import build_shm_op

    without_shm_allreduce(deepspeed)
    assert build_shm_op() is None


def test_a_leftover_build_lock_is_named_not_waited_on_forever(tmp_path, monkeypatch):
    from megatron_mdm.training.engine import BuildLockError, wait_for_build_lock

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    wait_for_build_lock("cpu_adam", timeout_s=0.2)  # no lock: returns at once
    lock = tmp_path / "cpu_adam" / "lock"
    lock.parent.mkdir(exist_ok=True)
    lock.touch()
    said = []
    start = time.monotonic()
    with pytest.raises(BuildLockError) as err:
        wait_for_build_lock("cpu_adam", timeout_s=0.5, say=said.append)
    assert time.monotonic() - start < 5
    assert str(lock) in str(err.value) and str(lock) in said[0]


# ------------------------------------------------------------------------------ checkpoints


def test_weights_that_are_not_finite_are_never_checkpointed(
    single_rank_world, monkeypatch, tmp_path
):
    import torch
    from helpers import TINY_MODEL
    from megatron.core import parallel_state as ps

    from megatron_mdm.checkpointing.deepspeed_io import save_checkpoint
    from megatron_mdm.checkpointing.run_dir import CheckpointError
    from megatron_mdm.model.builder import build_model
    from megatron_mdm.model.vocab import VocabLayout
    from megatron_mdm.parallel.distributed import ParallelContext
    from megatron_mdm.training.engine import build_engine

    for name, value in (("LOCAL_RANK", "0"), ("RANK", "0"), ("WORLD_SIZE", "1")):
        monkeypatch.setenv(name, value)  # what a launcher sets; DeepSpeed asserts on them
    cfg = load_config(None, [*TINY_MODEL, f"train.output_dir={tmp_path}"])
    ctx = ParallelContext(
        rank=0, world_size=1, local_rank=0, tp_rank=0, tp_size=1, pp_rank=0, pp_size=1,
        dp_rank=0, dp_size=ps.get_data_parallel_world_size(), device=torch.device("cpu"),
        launcher="single",
    )  # fmt: skip
    engine = build_engine(cfg, build_model(cfg, VocabLayout.build(100, None, 64, 1), False), ctx)
    root = tmp_path / "checkpoints"
    save_checkpoint(engine, cfg, ctx, 1, {})
    with torch.no_grad():
        next(engine.module.parameters())[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="step 2: the model weights are not finite"):
        save_checkpoint(engine, cfg, ctx, 2, {})
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000001"]
    assert (root / "latest").read_text() == "step_0000001"
    assert yaml.safe_load((root / "step_0000001" / "meta.yaml").read_text())["weights_finite"]


def test_samples_only_where_rank_0_holds_the_whole_model():
    from megatron_mdm.training.samples import sampling_unavailable

    assert sampling_unavailable(load_config(None, ["parallel.zero_stage=2"])) is None
    for layout in (["parallel.tensor=2"], ["parallel.pipeline=2"], ["parallel.zero_stage=3"]):
        message = sampling_unavailable(load_config(None, layout))
        assert message.startswith("train.sample_interval:") and "no samples" in message
