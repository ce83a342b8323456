"""Batched generation (docs/design.md §14.4): a prompt's completion is the same alone and inside
batches of 3 and 8 prompts of mixed lengths, for every sampler; `mdm generate --prompt-file`
writes one JSON line per prompt. Tiny random `MDMForMaskedLM`s over the byte tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_config, tiny_model

from megatron_mdm.data.tokenizers import ByteLevelTokenizer
from megatron_mdm.inference.batching import generate_many, plan_batches
from megatron_mdm.inference.loading import InferenceModel, SelectiveModel
from megatron_mdm.inference.sampling_config import SamplingConfig

TOK = ByteLevelTokenizer()
VOCAB, MASK, EOS = TOK.vocab_size + 1, TOK.vocab_size, TOK.eos_id
BLOCK = 4
# eight prompts of lengths 3..7, mixed so that every batch size splits the lengths differently
PROMPTS = ["abc", "hello", "xyz", "quick b", "jumps", "abc", "lazy", "over th"]


def byte_model(objective: str, seed: int = 0) -> InferenceModel:
    extra = {"block_size": BLOCK} if objective == "block" else {}
    config = tiny_config(
        objective,
        vocab_size=VOCAB,
        mask_token_id=MASK,
        eos_token_id=EOS,
        initializer_range=0.3,
        **extra,
    )
    model = tiny_model(config, seed=seed)
    cpu = torch.device("cpu")
    return InferenceModel(
        model_fn=SelectiveModel(model, cpu, hf=True),
        tokenizer=TOK,
        mask_id=MASK,
        eos_id=EOS,
        objective=objective,
        device=cpu,
        load_cached_model=lambda: model,
        max_length=64,
        block_size=BLOCK if objective == "block" else None,
    )


@pytest.fixture(scope="module")
def models():
    return {objective: byte_model(objective) for objective in ("mdm", "arm", "block")}


DIFFUSION = dict(gen_length=8, steps=8, block_length=4)
CASES = [  # (objective, sampler config)
    ("mdm", SamplingConfig(sampler="llada", **DIFFUSION)),
    ("mdm", SamplingConfig(sampler="fast", cache="none", threshold=0.3, **DIFFUSION)),
    ("mdm", SamplingConfig(sampler="fast", cache="prefix", threshold=None, **DIFFUSION)),
    ("mdm", SamplingConfig(sampler="fast", cache="dual", threshold=0.3, **DIFFUSION)),
    ("mdm", SamplingConfig(sampler="mdlm", gen_length=8, steps=6, seed=5)),
    ("mdm", SamplingConfig(sampler="llada", temperature=0.8, remasking="random", **DIFFUSION)),
    ("arm", SamplingConfig(sampler="arm", gen_length=6, cache="dual")),
    ("arm", SamplingConfig(sampler="arm", gen_length=6, cache="none", temperature=0.9)),
    ("block", SamplingConfig(sampler="block", gen_length=8, steps=8, cache="dual")),
    ("block", SamplingConfig(sampler="block", gen_length=8, steps=8, cache="none")),
]


@pytest.mark.parametrize("objective,config", CASES, ids=lambda c: getattr(c, "sampler", c))
def test_completion_is_the_same_alone_and_in_any_batch(models, objective, config):
    model = models[objective]
    prompts = [TOK.encode(p) for p in PROMPTS]
    runs = {size: generate_many(model, prompts, config, size) for size in (1, 3, 8)}
    alone = [c.ids for c in runs[1]]
    assert sum(len(ids) for ids in alone) > 0
    for size in (3, 8):
        assert [c.ids for c in runs[size]] == alone, size
    # a different seed changes a sampled completion (the per-row seeds are used) ...
    if config.temperature > 0 or config.sampler == "mdlm":
        other = generate_many(model, prompts, config.replace(seed=config.seed + 1), 8)
        assert [c.ids for c in other] != alone
    # ... and per-prompt seeds give each prompt the sample it has alone with that seed
    seeds = list(range(len(prompts)))
    mixed = generate_many(model, prompts, config, 8, seeds=seeds)
    for i in (0, 3):
        [single] = generate_many(model, [prompts[i]], config.replace(seed=seeds[i]), 1)
        assert mixed[i].ids == single.ids


def test_batches_group_equal_lengths_in_input_order():
    assert plan_batches([3, 5, 3, 7, 5, 3], 2) == [[0, 2], [5], [1, 4], [3]]
    assert plan_batches([4, 4, 4], 8) == [[0, 1, 2]]


def test_prompt_file_writes_one_json_line_per_prompt(tmp_path, capsys):
    from megatron_mdm.cli import main

    model = byte_model("mdm")
    folder = tmp_path / "hf"
    model.cached_model.save_pretrained(folder)
    (folder / "mdm_tokenizer.json").write_text(json.dumps({"type": "byte", "model": None}))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:5]) + "\n")
    args = ["generate", "--hf", str(folder), "--prompt-file", str(prompts), "--batch-size", "3"]
    args += ["--gen-length", "8", "--steps", "8", "--block-length", "4", "--sampler", "llada"]
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS[:5]
    config = SamplingConfig(sampler="llada", **DIFFUSION)
    want = generate_many(model, [TOK.encode(p) for p in PROMPTS[:5]], config, 1)
    for row, done in zip(rows, want):
        assert set(row) == {"prompt", "completion", "tokens", "seconds"}
        assert row["completion"] == TOK.decode(done.ids) and row["tokens"] == len(done.ids)
        assert row["seconds"] > 0
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["generate", "--hf", str(folder), "--prompt-file", str(empty)]) == 2
    assert "no prompt" in capsys.readouterr().err
