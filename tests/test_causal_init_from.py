"""`train.init_from=<Llama folder or hub id>` (docs/design.md §13.1, §13.3): the model shape and
the tokenizer come from the folder where the config leaves them unset, a disagreeing key is one
line, the run trains an MDM from the causal LM's weights and checkpoints; hub ids resolve from a
fake cache made here (HF_HUB_CACHE), a missing one says how to download it."""

from __future__ import annotations

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
