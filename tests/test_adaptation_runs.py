"""Adaptation runs end to end (docs/design.md §13.4-13.5): `mdm train` from an ARM checkpoint with
`diffusion.shift` and `diffusion.attention_anneal_steps` resumes bit-exactly across the end of
annealing, and TP=2 / PP=2 on two gloo processes reproduce the one-process losses (the look-ahead
mask is rebuilt on every stage and tensor-parallel rank from the step)."""

from __future__ import annotations

import pytest
from helpers import QUICKSTART, SCRATCH_RUN, read_metrics, read_val_metrics, run_mdm

pytestmark = pytest.mark.slow

COMMON = [
    "model.seq_length=32",
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.ffn_hidden_size=128",
    "train.micro_batch_size=2",
    "train.global_batch_size=4",
    "train.warmup_steps=1",
    "train.lr_decay_steps=6",  # not max_steps: the split run stops early
    "diffusion.var_len_prob=0.3",
    "logging.interval=1",
    "logging.progress=false",
    "logging.tensorboard=false",
]
ADAPT = ["diffusion.shift=true", "diffusion.attention_anneal_steps=3"]


@pytest.fixture(scope="module")
def arm_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("arm")
    run_mdm(
        ["train", QUICKSTART, *COMMON, "model.objective=arm", "train.max_steps=2",
         "checkpoint.resume=none", f"train.output_dir={out}"]
    )  # fmt: skip
    return out / "checkpoints"


def test_adapted_run_resumes_bit_exactly_across_annealing(arm_checkpoint, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    init = [*ADAPT, f"train.init_from={arm_checkpoint}"]
    first = run_mdm(
        ["train", QUICKSTART, *COMMON, *init, "train.max_steps=5", f"train.output_dir={straight}"]
    )
    assert "loaded weights from" in first.stdout + first.stderr
    run_mdm(["train", QUICKSTART, *COMMON, *init, "train.max_steps=2",
             "checkpoint.save_interval=1", f"train.output_dir={split}"])  # fmt: skip
    resumed = run_mdm(
        ["train", QUICKSTART, *COMMON, *init, "train.max_steps=5", f"train.output_dir={split}"]
    )
    assert "resumed from" in resumed.stdout + resumed.stderr
    a, b = read_metrics(straight), read_metrics(split)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # bit-identical


PARITY_RUN = [*COMMON, *ADAPT, "train.max_steps=4", "train.eval_interval=4", "train.eval_iters=1"]


@pytest.fixture(scope="module")
def one_process_adaptation(tmp_path_factory):
    """The single-process reference of the two-process layouts (one run for both)."""
    ref = tmp_path_factory.mktemp("ref")
    run_mdm(["train", QUICKSTART, *PARITY_RUN, *SCRATCH_RUN, f"train.output_dir={ref}"])
    return ref


@pytest.mark.parametrize("layout", ["parallel.tensor=2", "parallel.pipeline=2"])
def test_two_process_adaptation_matches_single_process(layout, one_process_adaptation, tmp_path):
    run, ref, got = PARITY_RUN, one_process_adaptation, tmp_path / "got"
    run_mdm(["train", QUICKSTART, *run, *SCRATCH_RUN, layout, f"train.output_dir={got}"], nproc=2)
    want, have = read_metrics(ref), read_metrics(got)
    assert [r["step"] for r in have] == [1, 2, 3, 4]
    for x, y in zip(want, have, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5), x["step"]
    assert read_val_metrics(got)[0]["val_loss"] == pytest.approx(
        read_val_metrics(ref)[0]["val_loss"], rel=1e-5
    )
