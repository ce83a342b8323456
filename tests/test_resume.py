"""Checkpoints: exact resume, atomic layout, keep-last-N, and the logged curve after resume."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import QUICKSTART, read_metrics, run_mdm

from megatron_mdm.config import load_config

pytestmark = pytest.mark.slow

COMMON = [
    "model.seq_length=64",
    "train.micro_batch_size=4",
    "train.global_batch_size=8",
    "train.warmup_steps=1",
    "train.lr_decay_steps=6",
    "diffusion.var_len_prob=0.3",
    "logging.interval=1",
    "logging.progress=false",
]


def test_resume_continues_the_loss_curve_bit_identically(tmp_path):
    """With the warmup-stable-decay schedule (its LambdaLR state is in the checkpoint); the
    logged lr is the optimizer's, so it must continue on the curve too."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    wsd = [
        "train.lr_schedule=wsd",
        "train.lr_decay_fraction=0.5",  # decays from step index 3
        # samples at steps 3 and 6, from the model being trained (keyed by step)
        "train.sample_interval=3",
        "train.sample_length=8",
    ]
    run_mdm(["train", QUICKSTART, *COMMON, *wsd, "train.max_steps=6",
             f"train.output_dir={straight}"])  # fmt: skip
    run_mdm(
        [
            "train",
            QUICKSTART,
            *COMMON,
            *wsd,
            "train.max_steps=3",
            "checkpoint.save_interval=1",
            "checkpoint.keep_last=2",
            f"train.output_dir={split}",
        ]
    )
    ckpts = split / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_0000002", "step_0000003"]
    assert (ckpts / "latest").read_text() == "step_0000003"
    meta = yaml.safe_load((ckpts / "step_0000003" / "meta.yaml").read_text())
    assert meta["step"] == 3 and meta["consumed_samples"] == 24
    assert meta["config"]["model"]["seq_length"] == 64

    resumed = run_mdm(
        ["train", QUICKSTART, *COMMON, *wsd, "train.max_steps=6", f"train.output_dir={split}"]
    )
    assert "resumed from" in resumed.stdout + resumed.stderr
    a, b = read_metrics(straight), read_metrics(split)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(a, b):
        assert x["loss"] == y["loss"], x["step"]  # bit-identical, not approximately equal
        assert x["lr"] == y["lr"]
    samples = [json.loads(line) for line in (split / "samples.jsonl").read_text().splitlines()]
    assert [(r["step"], r["prompt"], len(r["samples"])) for r in samples] == [
        (3, "The ", 2),
        (6, "The ", 2),
    ]
    assert (split / "samples.jsonl").read_text() == (straight / "samples.jsonl").read_text()
    # warmup (1 step), stable at lr, then linear towards min_lr at step 6 (design §10); lr and
    # min_lr are the quickstart config's (3e-3 and 3e-4 at the time of writing)
    train = load_config(QUICKSTART).train
    lr, min_lr = train.lr, train.min_lr
    decay = [lr - (lr - min_lr) * k / 3 for k in (1, 2)]  # steps 5 and 6 of a 3-step decay
    assert [r["lr"] for r in b] == pytest.approx([lr, lr, lr, lr, *decay])
    assert a[-1]["loss"] < a[0]["loss"]
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".tmp")]


def test_explicit_resume_path_and_none(tmp_path):
    first = tmp_path / "first"
    run_mdm(["train", QUICKSTART, *COMMON, "train.max_steps=2", f"train.output_dir={first}"])
    per_step = read_metrics(first)
    second = tmp_path / "second"
    out = run_mdm(
        [
            "train",
            QUICKSTART,
            *COMMON,
            "train.max_steps=3",
            f"checkpoint.resume={first / 'checkpoints' / 'step_0000002'}",
            f"train.output_dir={second}",
        ]
    )
    assert "at step 2" in out.stdout + out.stderr
    assert [r["step"] for r in read_metrics(second)] == [3]
    fresh = run_mdm(
        [
            "train",
            QUICKSTART,
            *COMMON,
            "train.max_steps=2",
            "logging.interval=2",
            "checkpoint.resume=none",
            f"train.output_dir={first}",
        ]
    )
    assert "resumed" not in fresh.stdout + fresh.stderr
    # the same two steps logged once: `loss` is the interval's mean, `loss_last` the last one's
    [both] = read_metrics(first)
    assert both["step"] == 2 and both["nonfinite_steps"] == 0
    assert both["loss"] == pytest.approx((per_step[0]["loss"] + per_step[1]["loss"]) / 2)
    assert both["loss_last"] == per_step[1]["loss"]


def test_sigterm_checkpoints_exits_zero_and_resume_continues_exactly(tmp_path):
    """SIGTERM mid-run (as Slurm sends before pre-emption): the step finishes, a checkpoint is
    written, the process exits 0, and a resumed run reproduces the uninterrupted loss curve."""
    import signal
    import subprocess
    import sys
    import time

    from helpers import ROOT, subprocess_env

    straight, split = tmp_path / "straight", tmp_path / "split"
    steps = ["train.max_steps=8", "checkpoint.save_interval=0"]
    run_mdm(["train", QUICKSTART, *COMMON, *steps, f"train.output_dir={straight}"])
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "megatron_mdm.cli",
            "train",
            QUICKSTART,
            *COMMON,
            *steps,
            f"train.output_dir={split}",
        ],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = split / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (
        metrics.exists() and len(metrics.read_text().splitlines()) >= 2
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "received SIGTERM" in out
    stopped_at = len(read_metrics(split))
    assert 2 <= stopped_at < 8
    latest = (split / "checkpoints" / "latest").read_text()
    assert latest == f"step_{stopped_at:07d}"
    run_mdm(["train", QUICKSTART, *COMMON, *steps, f"train.output_dir={split}"])
    a, b = read_metrics(straight), read_metrics(split)
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
