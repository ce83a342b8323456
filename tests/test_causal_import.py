"""Hugging Face causal LMs in and out (docs/design.md §13): tiny random Llama / Mistral / Qwen2
models built and saved by `transformers` here, imported by `mdm convert import --format llama`
at TP=1 and TP=2/PP=2, against transformers' own logits; `export --format llama` gives the
original tensors back bit for bit and a folder stock `AutoModelForCausalLM` loads and generates
with; bad folders are one line each and write nothing.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import CAUSAL_ROWS as ROWS
from helpers import run_convert as convert
from helpers import tiny_causal_lm as make_model
from safetensors.torch import load_file, save_file


def our_logits(ckpt, x):
    """Our model (objective arm, TP=1) with the weights of checkpoint `ckpt`."""
    from megatron_mdm.checkpointing.run_dir import read_meta, resolve_checkpoint, vocab_from_meta
    from megatron_mdm.checkpointing.weights import canonical_weights, load_weights_into
    from megatron_mdm.config import from_dict
    from megatron_mdm.convert import layouts
    from megatron_mdm.model.builder import build_model
    from megatron_mdm.parallel.distributed import ParallelContext

    meta = read_meta(resolve_checkpoint(ckpt))
    cfg = from_dict({**meta["config"], "parallel": {"tensor": 1, "pipeline": 1}})
    assert cfg.model.objective == "arm"
    vocab = vocab_from_meta(meta)
    model = build_model(cfg, vocab, on_gpu=False).eval()
    ctx = ParallelContext(0, 1, 0, 0, 1, 0, 1, 0, 1, torch.device("cpu"), "single")
    shape = layouts.ModelShape.from_config(cfg.model, vocab)
    canonical = canonical_weights(ckpt, shape, vocab.padded_size)
    load_weights_into(model, canonical, ctx, cfg.model.num_layers, str(ckpt))
    with torch.no_grad():
        return model(x)[..., :ROWS], canonical


@pytest.mark.parametrize("kind,tied", [("llama", False), ("mistral", False), ("qwen2", True)])
def test_import_matches_transformers_and_exports_back_bit_for_bit(
    kind, tied, tmp_path, single_rank_world
):
    src = tmp_path / "src"
    hf = make_model(kind, src, tied=tied)
    proc = convert("import", str(src), str(tmp_path / "tp1"), "--format", "llama")
    assert "[MASK] = 128 (new row)" in proc.stdout
    assert ("tied embeddings untied" in proc.stdout) == tied

    x = torch.randint(0, 100, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf(input_ids=x).logits
    ours, canonical = our_logits(tmp_path / "tp1", x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    emb = canonical["embedding.word_embeddings.weight"]
    assert torch.equal(emb[ROWS], emb[:ROWS].mean(dim=0))  # [MASK]: the mean embedding

    # The same import cut for TP=2 / PP=2 holds exactly the same weights.
    convert(
        "import", str(src), str(tmp_path / "tp2pp2"), "--format", "llama",
        "--tensor", "2", "--pipeline", "2",
    )  # fmt: skip
    ours2, canonical2 = our_logits(tmp_path / "tp2pp2", x)
    assert canonical2.keys() == canonical.keys()
    assert all(torch.equal(canonical[k], canonical2[k]) for k in canonical)
    assert torch.equal(ours, ours2)

    out = tmp_path / "export"
    proc = convert("export", str(tmp_path / "tp2pp2"), str(out), "--format", "llama")
    assert "dtype fp32" in proc.stdout  # an fp32 run exports fp32
    original = load_file(str(src / "model.safetensors"))
    if tied:  # untied on import: the head comes back as a copy of the embedding
        original["lm_head.weight"] = original["model.embed_tokens.weight"]
    back = load_file(str(out / "model.safetensors"))
    assert back.keys() == original.keys()
    for key in original:
        assert back[key].dtype == original[key].dtype and torch.equal(back[key], original[key]), key


def test_llama3_rope_scaling_matches_transformers(tmp_path, single_rank_world):
    """megatron-core's Llama 3 RoPE scaling (model.rope_scaling_factor) is transformers'."""
    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    hf = make_model("llama", tmp_path / "src", rope_parameters=rope)
    convert("import", str(tmp_path / "src"), str(tmp_path / "ckpt"), "--format", "llama")
    x = torch.randint(0, 100, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = hf(input_ids=x).logits
    ours, _ = our_logits(tmp_path / "ckpt", x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_llama_export_is_a_stock_causal_lm(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tmp_path / "src"
    hf = make_model("qwen2", src)
    convert("import", str(src), str(tmp_path / "ckpt"), "--format", "llama")
    convert("export", str(tmp_path / "ckpt"), str(tmp_path / "out"), "--format", "llama")
    assert not list((tmp_path / "out").glob("*.py"))  # no custom code
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    assert type(model).__name__ == "Qwen2ForCausalLM"
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    x = torch.tensor([tok.encode("the old king")])
    with torch.no_grad():
        ours = model.generate(x, max_new_tokens=6, do_sample=False)
        theirs = hf.generate(x, max_new_tokens=6, do_sample=False)
    assert torch.equal(ours, theirs)


def _expect_error(tmp_path, src, *extra, match):
    out = tmp_path / "out"
    proc = convert("import", str(src), str(out), "--format", "llama", *extra, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], proc.stderr
    assert not out.exists() and not list(tmp_path.glob("*tmp*"))


def test_bad_folders_are_one_line_errors_and_write_nothing(tmp_path):
    src = tmp_path / "src"
    make_model("llama", src)
    config = json.loads((src / "config.json").read_text())

    def variant(name, **changes):
        folder = tmp_path / name
        shutil.copytree(src, folder)
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
        return folder

    _expect_error(tmp_path, variant("gpt2", model_type="gpt2"), match="model_type 'gpt2'")
    yarn = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    _expect_error(tmp_path, variant("yarn", rope_parameters=yarn), match="RoPE scaling yarn")
    small = variant("small", vocab_size=64)
    _expect_error(tmp_path, small, match="the embedding only 64 rows")
    # An ordinary token as [MASK] is refused; a reserved added token or an unused row is not.
    _expect_error(tmp_path, src, "--mask-id", "20", match="is an ordinary token")
    reserved = json.loads((src / "tokenizer.json").read_text())["added_tokens"][3]["id"]
    convert(
        "import", str(src), str(tmp_path / "ok"), "--format", "llama", "--mask-id", str(reserved)
    )
    # A sharded folder with a shard missing.
    sharded = tmp_path / "sharded"
    shutil.copytree(src, sharded)
    tensors = load_file(str(sharded / "model.safetensors"))
    (sharded / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = {
        "model-00001-of-00002.safetensors": names[:5],
        "model-00002-of-00002.safetensors": names[5:],
    }
    save_file(
        {n: tensors[n] for n in halves["model-00001-of-00002.safetensors"]},
        str(sharded / "model-00001-of-00002.safetensors"),
    )
    weight_map = {n: f for f, ns in halves.items() for n in ns}
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    _expect_error(tmp_path, sharded, match="missing shard")
