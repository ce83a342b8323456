"""`mdm generate` end to end: the same completion from the training checkpoint (megatron-core)
and from its exported `hf` folder (transformers), two independent implementations."""

from __future__ import annotations

import pytest
from conftest import QUICKSTART, run_cli, run_mdm

pytestmark = pytest.mark.slow


def test_generate_from_checkpoint_and_hf_export_agree(tmp_path):
    run = tmp_path / "run"
    run_mdm(
        [
            "train",
            QUICKSTART,
            "model.seq_length=64",
            "train.max_steps=20",
            "train.warmup_steps=2",
            "train.micro_batch_size=8",
            "train.global_batch_size=8",
            "logging.progress=false",
            "logging.tensorboard=false",
            f"train.output_dir={run}",
        ]
    )
    export = tmp_path / "hf"
    proc = run_cli(
        "convert",
        "export",
        str(run),
        str(export),
        "--format",
        "hf",
        "--dtype",
        "fp32",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    sample = [
        "--prompt",
        "The old ",
        "--gen-length",
        "16",
        "--steps",
        "8",
        "--block-length",
        "8",
        "--num-samples",
        "2",
        "--seed",
        "3",
    ]
    outputs = []
    for source in (["--ckpt", str(run)], ["--hf", str(export)]):
        proc = run_cli("generate", *source, *sample, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
        assert len(lines) == 2 and all(
            line.startswith("[0] The old ") or line.startswith("[1] The old ") for line in lines
        )
        outputs.append(lines)
    assert outputs[0] == outputs[1]
