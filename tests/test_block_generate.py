"""Block diffusion end to end (docs/design.md §11): a tiny block model trained here on a trivially
learnable pattern; `mdm generate --sampler block` continues it from the checkpoint with the exact
KV cache and without it (megatron-core's block-causal forward over the whole prefix, every
step), with and without guidance, and from the exported `hf` folder, whose logits (block-causal
and training layout) match the training model's."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import QUICKSTART, read_metrics, run_cli, run_mdm

pytestmark = pytest.mark.slow

PATTERN = "abcdefghijkl"
MODEL = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.num_attention_heads=4",
    "model.num_query_groups=2",
    "model.ffn_hidden_size=128",
    "model.seq_length=32",
    "model.objective=block",
    "diffusion.block_size=4",
    "train.max_steps=150",
    "train.warmup_steps=5",
    "train.micro_batch_size=16",
    "train.global_batch_size=16",
    "train.lr=5e-3",
    "train.min_lr=5e-4",
    "logging.interval=10",
    "logging.progress=false",
    "logging.tensorboard=false",
    "checkpoint.save_interval=1000",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("block_pattern")
    text = root / "pattern.txt"
    text.write_text(f"{PATTERN}\n" * 2000)
    run = root / "run"
    run_mdm(["train", QUICKSTART, *MODEL, f"data.text_file={text}", f"train.output_dir={run}"])
    export = root / "hf"
    proc = run_cli(
        "convert", "export", str(run), str(export), "--format", "hf", "--dtype", "fp32",
        "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run, export


def test_pattern_is_learned_and_cache_matches_no_cache(trained, single_rank_world):
    from megatron_mdm.inference.generate import generate
    from megatron_mdm.inference.loading import load_model
    from megatron_mdm.inference.sampling_config import SamplingConfig

    run, export = trained
    losses = [r["loss"] for r in read_metrics(run)]
    assert losses[0] > 2.0 and sum(losses[-3:]) / 3 < 0.5, losses
    proc = run_cli("generate", "--ckpt", str(run), "--prompt", "abcde", "--gen-length", "16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert lines == ["[0] abcdefghijkl"]  # block sampler by default, threshold 0.9, cut at EOS

    ckpt, hf = load_model(ckpt=str(run)), load_model(hf=str(export))
    assert ckpt.objective == hf.objective == "block" and ckpt.block_size == hf.block_size == 4
    prompt = torch.tensor([ckpt.tokenizer.encode("abcde")] * 2)
    base = SamplingConfig(gen_length=16, steps=16, threshold=None, stop_at_eos=False)
    want = torch.tensor(ckpt.tokenizer.encode("abcdefghijkl") + [ckpt.eos_id])  # + "abc"
    for cfg in (0.0, 1.0):
        config = base.replace(cfg=cfg)
        cached = generate(ckpt, prompt, config)  # the shipped model with the exact KV cache
        plain = generate(ckpt, prompt, config.replace(cache="none"))  # megatron, whole prefix
        assert torch.equal(cached, plain), cfg
        assert torch.equal(generate(hf, prompt, config), cached), cfg
        if cfg == 0:
            assert torch.equal(cached[0, : len(want)], want)


def test_export_logits_match_training_model(trained, single_rank_world, monkeypatch):
    from transformers import AutoModelForMaskedLM

    from megatron_mdm.checkpointing.run_dir import find_checkpoint, read_meta, vocab_from_meta
    from megatron_mdm.checkpointing.weights import canonical_weights, load_weights_into
    from megatron_mdm.config import from_dict
    from megatron_mdm.convert import layouts
    from megatron_mdm.model.builder import build_model
    from megatron_mdm.parallel.distributed import ParallelContext

    run, export = trained
    config = json.loads((export / "config.json").read_text())
    assert config["objective"] == "block" and config["block_size"] == 4
    generation = json.loads((export / "generation_config.json").read_text())
    assert generation["sampler"] == "block" and generation["block_length"] == 4
    meta = read_meta(find_checkpoint(run))
    cfg = from_dict(meta["config"])
    vocab = vocab_from_meta(meta)
    model = build_model(cfg, vocab, on_gpu=False).eval()
    ctx = ParallelContext(0, 1, 0, 0, 1, 0, 1, 0, 1, torch.device("cpu"), "single")
    shape = layouts.ModelShape.from_config(cfg.model, vocab)
    load_weights_into(model, canonical_weights(run, shape, vocab.padded_size), ctx, 2, "run")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = AutoModelForMaskedLM.from_pretrained(str(export), trust_remote_code=True).eval()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 256, (2, 30), generator=gen)
    xt = x0.masked_fill(torch.rand(2, 30, generator=gen) < 0.5, vocab.mask_id)
    n = config["vocab_size"]
    with torch.no_grad():
        pairs = [
            (model(xt)[..., :n], hf(input_ids=xt).logits),
            (model(xt, clean_input_ids=x0)[..., :n], hf(input_ids=xt, clean_input_ids=x0).logits),
        ]
    for ours, theirs in pairs:
        finite = torch.isfinite(ours)
        assert torch.equal(finite, torch.isfinite(theirs))
        torch.testing.assert_close(theirs[finite], ours[finite], rtol=1e-5, atol=1e-5)


def test_block_elbo_from_checkpoint_and_lm_eval_on_export_agree(trained, tmp_path):
    """`mdm eval likelihood --ckpt` (megatron-core's training layout) and lm-eval's `mdm` model
    on the `hf` export (the shipped modeling file's), same seed: the same block ELBO; the true
    continuation outscores a wrong one and is the greedy block decoding."""
    pytest.importorskip("lm_eval")
    from megatron_mdm.eval.lm_eval_model import MDMEvalModel

    run, export = trained
    out = tmp_path / "ll.json"
    args = ["--mc-num", "16", "--batch-size", "8", "--seed", "3", "--no-progress"]
    proc = run_cli(
        "eval", "likelihood", "--ckpt", str(run), "--prompt", "abcde", "--answer", "fghijkl",
        *args, "--output", str(out), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    from_ckpt = json.loads(out.read_text())["log_likelihood"]
    lm = MDMEvalModel(hf=str(export), mc_num=16, mc_batch_size=8, seed=3, greedy_check=True)
    right, greedy = lm.score("abcde", "fghijkl")
    assert right == pytest.approx(from_ckpt, rel=1e-4, abs=1e-4)
    assert greedy
    wrong, wrong_greedy = lm.score("abcde", "lkjihgf")
    assert wrong < right - 5 and not wrong_greedy
