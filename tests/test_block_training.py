"""Block diffusion training on the parallel code path (docs/design.md §11): TP=2, PP=2 and ZeRO-2
on two gloo processes reproduce the one-process losses (the 2L sequence flows through the
pipeline; a block-size schedule changes B mid-run), a resumed run reproduces the uninterrupted
curve bit for bit, and a checkpoint resharded to TP=2 by `mdm convert reshard` trains on with the
uninterrupted run's next loss."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import QUICKSTART, ROOT, SCRATCH_RUN, read_metrics, read_val_metrics, run_mdm

pytestmark = pytest.mark.slow

STEPS = 4
BLOCK = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.num_attention_heads=4",
    "model.ffn_hidden_size=128",
    "model.seq_length=32",
    "model.objective=block",
    "diffusion.block_size=8",
    "diffusion.block_size_schedule=[[0, 2], [2, 8]]",
    "train.micro_batch_size=2",
    "train.global_batch_size=8",
    "train.warmup_steps=1",
    "train.lr_decay_steps=6",
    "diffusion.var_len_prob=0.3",
]
COMMON = [
    *BLOCK,
    f"train.max_steps={STEPS}",
    "train.eval_interval=4",
    "train.eval_iters=1",
    *SCRATCH_RUN,
]
CASES = {
    "tp2": ["parallel.tensor=2"],
    "pp2": ["parallel.pipeline=2"],
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("block_ref")
    run_mdm(["train", QUICKSTART, *COMMON, "checkpoint.save_interval=2", f"train.output_dir={out}"])
    return read_metrics(out), read_val_metrics(out), out / "checkpoints" / "step_0000002"


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_process_layout_matches_single_process(case, reference, tmp_path):
    run_mdm(["train", QUICKSTART, *COMMON, *CASES[case], f"train.output_dir={tmp_path}"], nproc=2)
    want_train, want_val, _ = reference
    got = read_metrics(tmp_path)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for want, have in zip(want_train, got):
        assert have["loss"] == pytest.approx(want["loss"], rel=1e-5), (case, want["step"])
        assert have["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4), (case, want["step"])
    got_val = read_val_metrics(tmp_path)
    assert got_val[0]["val_loss"] == pytest.approx(want_val[0]["val_loss"], rel=1e-5)


def test_resume_is_bit_exact_and_reshard_trains_on(reference, tmp_path):
    """Resume the reference run from its step-2 checkpoint: steps 3-4 bit-identical (the block
    size switches from 2 to 8 at step 2). Reshard that checkpoint to TP=2 and train on: step 3's
    loss is computed before its update, from the step-2 weights, with the same batch, masks and
    block size, so it equals the reference's (only the optimizer starts afresh)."""
    want, _, step2 = reference
    resumed = tmp_path / "resumed"
    run_mdm(
        ["train", QUICKSTART, *COMMON, f"checkpoint.resume={step2}", f"train.output_dir={resumed}"]
    )
    got = read_metrics(resumed)
    assert [r["step"] for r in got] == [3, 4]
    assert [r["loss"] for r in got] == [r["loss"] for r in want[2:]]  # bit-identical

    resharded = tmp_path / "tp2"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "megatron_mdm.cli",
            "convert",
            "reshard",
            str(step2),
            str(resharded),
            "--tensor",
            "2",
            "--no-progress",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cont = tmp_path / "cont"
    run_mdm(
        [
            "train",
            QUICKSTART,
            *COMMON,
            "train.max_steps=3",
            "parallel.tensor=2",
            f"checkpoint.resume={resharded}",
            f"train.output_dir={cont}",
        ],
        nproc=2,
    )
    [third] = read_metrics(cont)
    assert third["step"] == 3 and third["loss"] == pytest.approx(want[2]["loss"], rel=1e-5)
