"""Checkpoint and model-folder safety (docs/design.md §8): a planted pickle or an edited modeling
file never runs, a complete checkpoint is never rewritten and `latest` is never pruned, a layout
change on resume fails at once with the command that fixes it, resharding re-pads the vocabulary
for the target TP, and every output respects the umask.

One tiny single-process run feeds every check; the planted-code checks write a marker file when
the payload runs and assert it is absent (and, as a control, that an unguarded load does run it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
import yaml
from helpers import QUICKSTART, TINY_MODEL, read_metrics, run_mdm

from megatron_mdm.checkpointing.safe_load import load_tensors

pytestmark = pytest.mark.slow

TRAIN = [
    *TINY_MODEL,
    # 259 byte-tokenizer ids, [MASK] at 260: 261 rows at TP=1, which TP=2 cannot split evenly
    "model.mask_token_id=260",
    "model.make_vocab_size_divisible_by=1",
    "train.max_steps=2",
    "train.warmup_steps=1",
    "train.micro_batch_size=2",
    "train.global_batch_size=2",
    "checkpoint.save_interval=1",
    "checkpoint.keep_last=2",
    "logging.progress=false",
    "logging.tensorboard=false",
]


class Payload:
    """Pickles as a call to `exec` that creates `marker`: what a planted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "run"
    run_mdm(["train", QUICKSTART, *TRAIN, f"train.output_dir={out}"])
    return out


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, symlinks=True)
    return dest


def latest(out: Path) -> Path:
    root = out / "checkpoints"
    return root / (root / "latest").read_text().strip()


def convert(*argv: str) -> None:
    from megatron_mdm.convert.commands import add_convert_arguments, run_convert_args

    parser = argparse.ArgumentParser()
    add_convert_arguments(parser)
    assert run_convert_args(parser.parse_args([*argv, "--no-progress"])) == 0


def one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert lines, proc.stderr[-3000:]
    return lines[-1]


# ------------------------------------------------------------------ planted pickles


def test_a_planted_pickle_is_refused_by_every_checkpoint_reader(run, tmp_path):
    from megatron_mdm.checkpointing.canonical import load_canonical
    from megatron_mdm.checkpointing.safe_load import UnsafeCheckpointError
    from megatron_mdm.inference.loading import from_training_checkpoint_torch

    planted = copy_run(run, tmp_path / "planted")
    target = latest(planted) / "mp_rank_00_model_states.pt"
    state = load_tensors(target, mmap=False)
    marker = tmp_path / "payload-ran"
    state["planted"] = Payload(marker)
    torch.save(state, target)

    control = tmp_path / "control.pt"
    torch.save({"x": Payload(tmp_path / "control-ran")}, control)
    torch.load(control, weights_only=False)  # the payload is live when unpickled freely
    assert (tmp_path / "control-ran").exists()

    for reader in (load_canonical, from_training_checkpoint_torch):  # init_from, eval, generate
        with pytest.raises(UnsafeCheckpointError) as err:
            reader(planted)
        assert str(err.value).startswith(f"{target}: refusing to load:")
        assert "exec" in str(err.value) and "\n" not in str(err.value)

    # Resume (DeepSpeed's own loader, which unpickles freely) is gated before it runs.
    proc = run_mdm(
        ["train", QUICKSTART, *TRAIN, "train.max_steps=3", f"train.output_dir={planted}"],
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc)
    assert f"{target}: refusing to load: it contains the Python global" in line
    assert not marker.exists()


# ------------------------------------------------------------------ folder code


def test_hf_loaders_use_the_installed_modeling_code_not_the_folders(run, tmp_path):
    from megatron_mdm.eval.errors import EvalError
    from megatron_mdm.eval.genppl import load_judge
    from megatron_mdm.inference.loading import (
        ModelLoadError,
        from_training_checkpoint_torch,
        load_model,
    )

    folder = tmp_path / "hf"
    convert("export", str(run), str(folder), "--format", "hf", "--dtype", "fp32")
    marker = tmp_path / "folder-code-ran"
    for name in ("modeling_mdm.py", "configuration_mdm.py"):
        with open(folder / name, "a") as f:
            f.write(f"\nopen({str(marker)!r}, 'w').close()\n")

    model = load_model(hf=str(folder))
    assert type(model.cached_model).__module__.startswith("megatron_mdm.")
    reference = from_training_checkpoint_torch(run)  # the gathered checkpoint, same class
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.model_fn(x), reference.model_fn(x), rtol=1e-5, atol=1e-5)
    assert not marker.exists()

    # A folder of another model type whose config points at its own code: refused, not run.
    other = tmp_path / "other"
    other.mkdir()
    code = f"open({str(marker)!r}, 'w').close()\n"
    for name in ("configuration_other.py", "modeling_other.py"):
        (other / name).write_text(code)
    (other / "config.json").write_text(
        json.dumps(
            {
                "model_type": "other",
                "auto_map": {
                    "AutoConfig": "configuration_other.OtherConfig",
                    "AutoModelForCausalLM": "modeling_other.OtherModel",
                },
            }
        )
    )
    with pytest.raises(ModelLoadError, match="model_type is 'other'"):
        load_model(hf=str(other))
    with pytest.raises(EvalError) as err:  # a transformers judge: trust_remote_code=False
        load_judge(judge_hf=str(other))
    assert "\n" not in str(err.value)
    assert not marker.exists()


# ------------------------------------------------------------------ save, prune, layout


def test_rerunning_a_finished_run_leaves_its_final_checkpoint_alone(run, tmp_path):
    again = copy_run(run, tmp_path / "again")
    final = latest(again)
    before = {p.name: p.stat().st_ino for p in [final, *final.iterdir()]}
    proc = run_mdm(["train", QUICKSTART, *TRAIN, f"train.output_dir={again}"])
    out = proc.stdout + proc.stderr
    assert "already exists and is complete" in out and "saved checkpoint" not in out
    assert {p.name: p.stat().st_ino for p in [final, *final.iterdir()]} == before
    assert latest(again) == final
    assert len(read_metrics(again)) == len(read_metrics(run))  # no step was trained


def test_prune_never_deletes_the_checkpoint_latest_names(tmp_path):
    from megatron_mdm.checkpointing.run_dir import prune

    root = tmp_path / "checkpoints"
    for step in (3, 5, 7):
        (root / f"step_{step:07d}").mkdir(parents=True)
        (root / f"step_{step:07d}" / "meta.yaml").write_text("step: 0\n")
    (root / "latest").write_text("step_0000003")  # resumed from 3 after a longer run reached 7
    prune(root, keep_last=1)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000003", "step_0000007"]


def test_a_layout_change_on_resume_fails_at_once_with_the_reshard_command(run, tmp_path):
    moved = copy_run(run, tmp_path / "moved")
    proc = run_mdm(
        ["train", QUICKSTART, *TRAIN, "train.max_steps=3", "parallel.tensor=2"]
        + [f"train.output_dir={moved}"],
        nproc=2,
        check=False,
    )
    assert proc.returncode != 0
    line = one_error_line(proc)
    ckpt = latest(moved)
    assert "saved at TP=1 PP=1 ZeRO-0, this run is TP=2 PP=1 ZeRO-0" in line, line
    assert f"`mdm convert reshard {ckpt} {moved}-tp2pp1 --tensor 2 --pipeline 1`" in line
    assert "optimizer" in line
    assert "model:" not in proc.stdout  # failed before the model was built
    assert len(read_metrics(moved)) == len(read_metrics(run))


def test_what_counts_as_a_layout_change():
    """TP, PP and the ZeRO family always; DP only where ZeRO partitions the optimizer."""
    from megatron_mdm.checkpointing.run_dir import Layout, layout_change

    saved = Layout(tensor=2, pipeline=1, data=2, zero_stage=1)
    same = [Layout(2, 1, 2, 2)]  # ZeRO-1 <-> 2 share a file format
    changed = [Layout(1, 2, 2, 1), Layout(2, 1, 4, 1), Layout(2, 1, 2, 0), Layout(2, 1, 2, 3)]
    assert not any(layout_change(saved, wanted) for wanted in same)
    assert all(layout_change(saved, wanted) for wanted in changed)
    assert not layout_change(Layout(1, 1, 1, 0), Layout(1, 1, 4, 0))  # ZeRO-0: DP is free
    assert not layout_change(Layout(2, 1, None, 1), saved)  # DP not recorded: not judged


def test_a_resharded_adam_state_is_refused_where_it_cannot_be_restored():
    from megatron_mdm.config import ConfigError, load_config
    from megatron_mdm.training.loop import _check_adam_target

    for overrides, ok in (
        ([], True),
        (["parallel.zero_stage=1", "train.precision=bf16"], True),
        (["train.precision=bf16"], False),  # DeepSpeed's unfused bf16 optimizer at ZeRO-0
        (["parallel.zero_stage=3"], False),
    ):
        cfg = load_config(QUICKSTART, overrides)
        _check_adam_target(cfg, "ckpt", with_adam=False)  # weights only: any engine
        if ok:
            _check_adam_target(cfg, "ckpt", with_adam=True)
        else:
            with pytest.raises(ConfigError, match="--weights-only"):
                _check_adam_target(cfg, "ckpt", with_adam=True)


def test_reshard_repads_the_vocabulary_for_the_target_tp(run, tmp_path):
    from megatron_mdm.checkpointing.canonical import load_canonical

    source, meta, _ = load_canonical(run)
    assert meta["vocab"]["padded_size"] == 261
    out = tmp_path / "tp2"
    convert("reshard", str(run), str(out), "--tensor", "2")
    ckpt = latest(out)
    new_meta = yaml.safe_load((ckpt / "meta.yaml").read_text())
    assert new_meta["vocab"]["padded_size"] == 262
    for rank in (0, 1):  # even shards
        shard = load_tensors(ckpt / f"mp_rank_{rank:02d}_model_states.pt")
        for state in (shard["module"], shard["adam"]["exp_avg"], shard["adam"]["exp_avg_sq"]):
            assert state["embedding.word_embeddings.weight"].shape[0] == 131
            assert state["output_layer.weight"].shape[0] == 131
    back, _, _ = load_canonical(out)
    for name, tensor in source.items():
        if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
            assert torch.equal(back[name][:261], tensor)
            assert not back[name][261:].any()
        else:
            assert torch.equal(back[name], tensor), name


# ------------------------------------------------------------------ permissions


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        out[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return out


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_convert_outputs_respect_the_umask(run, tmp_path, mask):
    export, resharded, imported = tmp_path / "hf", tmp_path / "pp2", tmp_path / "imported"
    with umask(mask):
        convert("export", str(run), str(export), "--format", "hf")
        convert("reshard", str(run), str(resharded), "--pipeline", "2")
        convert("import", str(export), str(imported), "--format", "hf")
    for root in (export, resharded, imported):
        found = modes(root)
        assert "model.safetensors" in found or "checkpoints" in found
        for name, mode in found.items():
            is_dir = (root / name).is_dir()
            assert mode == (0o777 if is_dir else 0o666) & ~mask, (root, name, oct(mode))
