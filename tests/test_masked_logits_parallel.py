"""model.logits=masked, with and without model.ce_chunk_tokens, equals model.logits=all in the
parallel layouts (docs/design.md §14): TP=2 (vocab-parallel output layer and cross-entropy, the
chunked kernel's reductions over the TP group) and PP=2 (the loss positions reach the last stage
as model kwargs), loss and every local parameter gradient, for pretraining and SFT batches; and
ZeRO-3 (DeepSpeed gathers the output weight for the chunked kernel), two real training steps.
One torchrun launch (tests/masked_logits_worker.py) covers every case; fp32, 1e-5 relative."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import ROOT, free_port, subprocess_env

pytestmark = pytest.mark.slow

GRADIENT_CASES = ("tp2", "pp2")
MODES = ("all", "masked", "masked_chunk3")


@pytest.fixture(scope="module")
def seen(tmp_path_factory):
    out = tmp_path_factory.mktemp("masked_logits")
    port = str(free_port())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", port,
           str(ROOT / "tests" / "masked_logits_worker.py"), str(out)]  # fmt: skip
    env = {**subprocess_env(), "MASTER_PORT": port, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return {
        (case, rank): json.loads((out / f"{case}-rank{rank}.json").read_text())
        for case in (*GRADIENT_CASES, "zero3_dp2")
        for rank in (0, 1)
    }


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_loss_and_gradients_equal_all_logits(seen, case):
    for rank in (0, 1):
        for kind in ("pretrain", "sft"):
            for mode in MODES:
                s = seen[case, rank][f"{kind}/{mode}"]
                where = (case, rank, kind, mode, s["worst"])
                assert s["loss"] == pytest.approx(s["ref_loss"], rel=1e-5), where
                assert s["max_grad_rel_err"] < 1e-5, where
                assert s["nonzero_grads"] == s["params"] > 0, where  # every gradient checked


def test_zero3_steps_equal_all_logits(seen):
    for rank in (0, 1):
        s = seen["zero3_dp2", rank]
        for mode in ("masked_chunk3",):
            for want, got in zip(s["all"], s[mode], strict=True):
                assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), (rank, mode)
                assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5), (rank, mode)
                assert not got["skipped"]
