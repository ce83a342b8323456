"""Commands print results, progress and one-line errors: no library noise (DeepSpeed's "op built
successfully", megatron-core's cuda_graph_scope and CUDA_DEVICE_MAX_CONNECTIONS warnings, its
single-dataset blend notice) and no terminal escape codes. The commands run as users run them,
in subprocesses with Python's default warning filters (not the PYTHONWARNINGS=ignore of the
other subprocess tests), so any warning that reaches them shows.

The same runs check, end to end, `mdm eval ppl --split valid` on a checkpoint (the documents the
run held out, scored through megatron-core) against the exported model on those documents
written out as text (transformers), and that corrupted data stops `mdm train` before any step.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import pytest
import torch
from helpers import QUICKSTART, ROOT, TINY_MODEL, subprocess_env

from megatron_mdm.cli import main as mdm_main
from megatron_mdm.data.preprocess import preprocess
from megatron_mdm.data.tokenizers import build_tokenizer
from megatron_mdm.utils import MDMError, one_line

NOISE = (
    "built successfully",
    "cuda_graph_scope",
    "full scope is deprecated",
    "CUDA_DEVICE_MAX_CONNECTIONS",
    "Building a BlendedDataset",
    "\x1b",
)
DOCS = [f"Document {i}: the river was cold and the wind was loud." for i in range(60)]


def mdm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env.pop("PYTHONWARNINGS", None)  # default filters, as a user's shell has
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_mdm.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    for stream in (proc.stdout, proc.stderr):
        found = [n for n in NOISE if n in stream]
        assert not found, f"mdm {args[0]} printed {found}:\n{stream[-3000:]}"
    return proc


def test_one_line_strips_terminal_escapes():
    warning = "\x1b[93m [WARNING]\x1b[0m async_io: \x1b]8;;http://x\x07link\x1b]8;;\x07\nnext"
    assert one_line(warning) == "[WARNING] async_io: link next"
    assert str(MDMError("\x1b[1mbold\x1b[0m\n  line")) == "bold line"


def test_cuda_device_max_connections_advice_is_dropped_on_cpu(single_rank_world):
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import layers

    from megatron_mdm.parallel.distributed import prepare_accelerator

    if torch.cuda.is_available():
        pytest.skip("the advice is kept on GPUs")
    prepare_accelerator()
    layers.linear_with_grad_accumulation_and_async_allreduce.warned = False
    with warnings.catch_warnings(record=True) as seen:
        layers.linear_with_grad_accumulation_and_async_allreduce(
            input=torch.randn(2, 4),
            weight=torch.randn(3, 4),
            bias=None,
            gradient_accumulation_fusion=False,
            allreduce_dgrad=True,
            sequence_parallel=False,
            tp_group=ps.get_tensor_model_parallel_group(),
        )
    assert layers.linear_with_grad_accumulation_and_async_allreduce.warned  # it did warn ...
    assert not [w for w in seen if "CUDA_DEVICE_MAX_CONNECTIONS" in str(w.message)]  # unseen


@pytest.mark.slow
def test_commands_are_quiet_and_ppl_scores_the_held_out_split(tmp_path):
    (tmp_path / "docs.txt").write_text("\n".join(DOCS) + "\n")
    prefix = str(tmp_path / "docs")
    preprocess([str(tmp_path / "docs.txt")], prefix, build_tokenizer("byte"), progress=False)
    run = tmp_path / "run"
    train = [
        "train",
        QUICKSTART,
        *TINY_MODEL,
        f"data.blend=[{prefix}]",
        "data.split=6,2,2",
        "train.max_steps=2",
        "train.warmup_steps=0",
        "train.micro_batch_size=2",
        "train.global_batch_size=2",
        "logging.tensorboard=false",
        "checkpoint.resume=none",
    ]
    mdm(*train, f"train.output_dir={run}")
    gen = mdm(
        "generate",
        "--ckpt",
        str(run),
        "--prompt",
        "The",
        *["--gen-length", "8", "--steps", "8", "--block-length", "8"],
    )
    assert gen.stdout.strip()
    export = tmp_path / "export"
    mdm("convert", "export", str(run), str(export), "--format", "hf", "--dtype", "fp32")
    common = ["--mc-num", "8", "--batch-size", "8", "--seed", "3", "--no-progress"]
    got = tmp_path / "split.json"
    mdm("eval", "ppl", "--ckpt", str(run), "--split", "valid", *common, "--output", str(got))

    # The reference: the export, on the valid documents (round(0.6 n) .. round(0.8 n)) as text.
    (tmp_path / "valid.txt").write_text("\n".join(DOCS[36:48]) + "\n")
    ref = tmp_path / "ref.json"
    args = ["eval", "ppl", "--hf", str(export), "--data", str(tmp_path / "valid.txt")]
    assert mdm_main([*args, *common, "--output", str(ref)]) == 0
    got, ref = json.loads(got.read_text()), json.loads(ref.read_text())
    assert got["split"] == "valid" and got["documents"] == 12
    assert got["tokens"] == ref["tokens"] == sum(len(d) + 1 for d in DOCS[36:48])
    assert got["windows"] == ref["windows"] == math.ceil(got["tokens"] / 16)
    assert got["nll_per_token"] == pytest.approx(ref["nll_per_token"], rel=1e-4)

    # Damaged data: one line naming the file, before any step (no metrics written).
    for ext in (".idx", ".tokenizer.json"):
        (tmp_path / f"bad{ext}").write_bytes((tmp_path / f"docs{ext}").read_bytes())
    (tmp_path / "bad.bin").write_bytes((tmp_path / "docs.bin").read_bytes()[:-6])
    bad_run = tmp_path / "bad-run"
    overrides = [t.replace(prefix, str(tmp_path / "bad")) for t in train]
    proc = mdm(*overrides, f"train.output_dir={bad_run}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"mdm: error: {tmp_path / 'bad.bin'}: ")
    assert not (bad_run / "metrics.jsonl").exists()
