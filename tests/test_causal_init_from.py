"""`train.init_from=<Llama folder or hub id>` (docs/design.md §13.1, §13.3): the model shape and
the tokenizer come from the folder where the config leaves them unset, a disagreeing key is one
line, the run trains an MDM from the causal LM's weights and checkpoints; hub ids resolve from a
fake cache made here (HF_HUB_CACHE), a missing one says how to download it."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from helpers import SCRATCH_RUN, read_metrics, run_cli, run_mdm, tiny_causal_lm

RUN = [
    "model.seq_length=32",
    "model.objective=mdm",
    "train.micro_batch_size=2",
    "train.global_batch_size=2",
    "train.max_steps=2",
    "train.warmup_steps=1",
    *SCRATCH_RUN,
    "checkpoint.save_at_end=true",
]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama") / "tiny-llama"
    tiny_causal_lm("llama", folder)
    return folder


def fake_hub_cache(root, repo_id, folder):
    """The layout huggingface_hub's cache uses: models--org--name/{refs/main, snapshots/<rev>}."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    rev = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / rev)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    return root


def test_init_from_a_llama_folder_trains_an_mdm(llama, tmp_path, monkeypatch):
    from megatron_mdm.checkpointing.canonical import load_canonical
    from megatron_mdm.checkpointing.run_dir import read_meta, resolve_checkpoint
    from megatron_mdm.checkpointing.weights import canonical_weights
    from megatron_mdm.convert import layouts
    from megatron_mdm.model.vocab import VocabLayout

    out = tmp_path / "run"
    cache = fake_hub_cache(tmp_path / "cache", "tiny-org/tiny-llama", llama)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # No config file: every model key but the ones in RUN comes from the folder (a hub id here).
    run_mdm(["train", os.devnull, *RUN, "train.init_from=tiny-org/tiny-llama",
             f"train.output_dir={out}"])  # fmt: skip
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    meta = read_meta(resolve_checkpoint(out))
    model = meta["config"]["model"]
    assert (model["num_layers"], model["hidden_size"], model["num_query_groups"]) == (2, 64, 2)
    assert (model["ffn_hidden_size"], model["vocab_size"], model["norm_epsilon"]) == (96, 128, 1e-6)
    assert meta["config"]["data"]["tokenizer"]["type"] == "hf"
    assert meta["vocab"]["mask_id"] == 128  # appended after the folder's 128 rows
    # The step-0 weights were the folder's: what changed in 2 steps is small next to them.
    trained, _, _ = load_canonical(out)
    vocab = VocabLayout(128, 128, meta["vocab"]["padded_size"])
    cfg_shape = layouts.ModelShape(2, 64, 4, 2, 96, 129)
    start = canonical_weights(llama, cfg_shape, vocab.padded_size)
    key = "decoder.layers.0.mlp.linear_fc1.weight"
    assert (trained[key] - start[key]).abs().max() < 0.1 * start[key].abs().max()


def test_disagreeing_key_and_missing_hub_id_are_one_line(llama, tmp_path, monkeypatch):
    proc = run_cli("train", os.devnull, *RUN, "model.hidden_size=32",
                   f"train.init_from={llama}", f"train.output_dir={tmp_path / 'a'}")  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "model.hidden_size" in lines[0] and "32" in lines[0] and "64" in lines[0]
    assert not (tmp_path / "a").exists()

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for args in (
        ["train", os.devnull, *RUN, "train.init_from=nobody/nothing",
         f"train.output_dir={tmp_path / 'b'}"],
        ["convert", "import", "nobody/nothing", str(tmp_path / "c"), "--format", "llama"],
    ):  # fmt: skip
        proc = run_cli(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert "hf download nobody/nothing" in lines[0]
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_llama_folder_adapted_with_shift_resumes_exports_and_samples(llama, tmp_path, monkeypatch):
    """The adaptation chain from a Hugging Face folder (design §13.1, §13.4): init_from + an MDM
    with diffusion.shift trains, resumes bit-exactly (a split run against an uninterrupted one),
    exports `hf` (config.json says shift) and samples through `--hf` given as a hub id, exactly as
    from the export's path; `convert import` of a hub id writes a checkpoint."""
    init = [
        "diffusion.shift=true",
        f"train.init_from={llama}",
        "train.lr_decay_steps=6",  # not max_steps: the split run stops early
        "checkpoint.resume=auto",
    ]
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_mdm(["train", os.devnull, *RUN, *init, "train.max_steps=3",
             f"train.output_dir={straight}"])  # fmt: skip
    run_mdm(["train", os.devnull, *RUN, *init, "train.max_steps=2",
             "checkpoint.save_interval=1", f"train.output_dir={split}"])  # fmt: skip
    resumed = run_mdm(["train", os.devnull, *RUN, *init, "train.max_steps=3",
                       f"train.output_dir={split}"])  # fmt: skip
    assert "resumed from" in resumed.stdout + resumed.stderr
    a, b = read_metrics(straight), read_metrics(split)
    assert [r["step"] for r in b] == [1, 2, 3]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # bit-identical

    export = tmp_path / "export"
    proc = run_cli("convert", "export", str(straight), str(export), "--format", "hf")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((export / "config.json").read_text())["shift"] is True
    cache = fake_hub_cache(tmp_path / "cache", "tiny-org/adapted", export)
    fake_hub_cache(cache, "tiny-org/tiny-llama", llama)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sample = ["--prompt", "the", "--gen-length", "8", "--steps", "8", "--block-length", "8"]
    by_id = run_cli("generate", "--hf", "tiny-org/adapted", *sample)
    by_path = run_cli("generate", "--hf", str(export), *sample)
    assert by_id.returncode == 0 and by_path.returncode == 0, by_id.stderr + by_path.stderr
    assert by_id.stdout == by_path.stdout and by_id.stdout.startswith("[0] the")

    imported = tmp_path / "imported"
    proc = run_cli("convert", "import", "tiny-org/tiny-llama", str(imported), "--format", "llama")
    assert proc.returncode == 0, proc.stderr
    assert (imported / "meta.yaml").is_file() or list(imported.rglob("meta.yaml"))


@pytest.mark.slow
def test_init_from_a_llama_folder_at_tp2_matches_one_process(llama, tmp_path):
    """The on-the-fly import cuts the folder's weights per rank (design §13.1): TP=2 on
    two gloo processes start from the same weights as one process, so their losses agree."""
    init = [f"train.init_from={llama}", "model.seq_length=32", "train.max_steps=2"]
    runs = {"one": ([], 1), "tp2": (["parallel.tensor=2"], 2)}
    losses = {}
    for name, (layout, nproc) in runs.items():
        out = tmp_path / name
        run_mdm(["train", os.devnull, *RUN, *init, *layout, f"train.output_dir={out}"], nproc=nproc)
        losses[name] = [m["loss"] for m in read_metrics(out)]
    assert len(losses["one"]) == 2
    assert losses["tp2"] == pytest.approx(losses["one"], rel=1e-5)
