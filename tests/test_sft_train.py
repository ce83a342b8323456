"""`mdm sft` (docs/design.md §4): the loss the trainer logs against a loop re-computation, prompt
positions never masked and without gradient, a tiny run that learns, exact resume, TP/PP parity,
the batch layout, the epochs rule and one-line errors."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from helpers import QUICKSTART, TINY_MODEL, read_metrics, read_val_metrics, run_cli, run_mdm

from megatron_mdm.config import load_config
from megatron_mdm.data.sft_batches import SFTBatches, epoch_order
from megatron_mdm.data.tokenizers import build_tokenizer
from megatron_mdm.training.schedule import warmup_warning
from megatron_mdm.training.sft_run import load_sft_data, sft_run_length

SEQ = 24
TINY = [*TINY_MODEL, f"model.seq_length={SEQ}"]
COMMON = [
    *TINY,
    "train.warmup_steps=0",
    "train.micro_batch_size=4",
    "train.global_batch_size=8",
    "train.lr=2e-3",
    "train.min_lr=2e-4",
    "logging.interval=1",
    "logging.progress=false",
    "logging.tensorboard=false",
]
TOK = build_tokenizer("byte", None)


def write_copy_task(path, n=64, seed=0):
    """A learnable task: the response is the prompt's word in capitals (prompts 10-12 bytes,
    responses 4-6, so every example fits 24 tokens and pads differ)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            word = "".join(rng.choice("abcdef") for _ in range(rng.randint(4, 6)))
            f.write(json.dumps({"prompt": f"copy {word}:", "response": word.upper()}) + "\n")
    return path


@pytest.fixture(scope="module")
def pre(tmp_path_factory):
    """A one-step pretraining checkpoint of the tiny model, and the SFT data file."""
    root = tmp_path_factory.mktemp("sft")
    out = root / "pre"
    run_mdm(["train", QUICKSTART, *COMMON, "train.max_steps=1", f"train.output_dir={out}"])
    return {"root": root, "ckpt": out, "data": write_copy_task(root / "copy.jsonl")}


def sft_cfg(pre, *extra):
    return load_config(
        QUICKSTART, [*COMMON, f"sft.data={pre['data']}", f"train.init_from={pre['ckpt']}", *extra]
    )


def source(cfg, dp_rank=0, dp_size=1):
    data = load_sft_data(cfg, TOK)
    return SFTBatches(cfg, data.train, data.valid, TOK.eos_id, TOK.vocab_size, dp_rank, dp_size)


def load_model(cfg, ckpt):
    """The tiny model at TP=PP=1 with the checkpoint's weights, in this process."""
    from megatron_mdm.checkpointing.weights import canonical_weights, load_weights_into
    from megatron_mdm.convert.layouts import ModelShape
    from megatron_mdm.model.builder import build_model
    from megatron_mdm.parallel.distributed import ParallelContext
    from megatron_mdm.training.loop import _vocab

    vocab = _vocab(cfg, TOK, 1)
    model = build_model(cfg, vocab, on_gpu=False)
    ctx = ParallelContext(0, 1, 0, 0, 1, 0, 1, 0, 1, torch.device("cpu"), "single")
    shape = ModelShape.from_config(cfg.model, vocab)
    load_weights_into(model, canonical_weights(ckpt, shape, vocab.padded_size), ctx, 2, "pre")
    return model


def loop_sft_loss(logits, examples, mb, normalize):
    """docs/design.md §4 element by element: log-softmax of each masked response position, weight
    1/p, per-sequence sum over its response length (L - prompt length, pads included), mean over
    the batch; or one sum over the batch divided by all response tokens."""
    per_seq, total, tokens = [], 0.0, 0
    length = mb.targets.shape[1]
    for b, ex in enumerate(examples):
        row = ex.prompt_ids + ex.response_ids
        row = row + [TOK.eos_id] * (length - len(row))
        s = 0.0
        for i in range(len(ex.prompt_ids), length):
            if mb.masked[b, i]:
                logp = torch.log_softmax(logits[b, i].double(), dim=-1)[row[i]]
                s += -logp.item() / mb.p_mask[b].item()
        per_seq.append(s / (length - len(ex.prompt_ids)))
        total += s
        tokens += length - len(ex.prompt_ids)
    return sum(per_seq) / len(per_seq) if normalize == "sequence" else total / tokens


def step_examples(batches, step):
    g = batches.cfg.train.global_batch_size
    return [batches.train_examples[batches.example_index(step * g + p)] for p in range(g)]


@pytest.mark.parametrize(
    "normalize, pad_to, gbs", [("sequence", "max", 4), ("token", "longest", 8)]
)
def test_logged_sft_loss_equals_loop_recomputation(pre, single_rank_world, normalize, pad_to, gbs):
    """The loss `mdm sft` logs at step 1 (weights = init_from, before any update) equals the
    loop above on the same batch; with 2 micro-batches it is their mean."""
    extra = [f"sft.normalize={normalize}", f"sft.pad_to={pad_to}", f"train.global_batch_size={gbs}"]
    out = pre["root"] / f"loss_{normalize}"
    run_mdm(
        [
            "sft",
            QUICKSTART,
            *COMMON,
            *extra,
            "train.max_steps=1",
            f"train.output_dir={out}",
            f"sft.data={pre['data']}",
            f"train.init_from={pre['ckpt']}",
        ]
    )
    (logged,) = read_metrics(out)

    cfg = sft_cfg(pre, *extra)
    batches = source(cfg)
    model = load_model(cfg, pre["ckpt"]).eval()
    examples = step_examples(batches, 0)
    want = []
    with torch.no_grad():
        for m, mb in enumerate(batches.train(0)):
            logits = model(mb.inputs)
            want.append(loop_sft_loss(logits, examples[4 * m : 4 * m + 4], mb, normalize))
    assert len(want) == gbs // 4
    assert logged["loss"] == pytest.approx(sum(want) / len(want), rel=1e-5)


def test_prompts_never_masked_and_get_no_gradient(pre, single_rank_world):
    from megatron_mdm.training.objective import loss_for

    cfg = sft_cfg(pre, "sft.pad_to=longest")
    batches = source(cfg)
    model = load_model(cfg, pre["ckpt"])
    n, masked_response = len(batches.train_examples), 0
    for step in range(2 * n // 8 + 1):  # over two epochs
        examples = step_examples(batches, step)
        for m, mb in enumerate(batches.train(step)):
            rows = examples[4 * m : 4 * m + 4]
            prompt_len = torch.tensor([len(ex.prompt_ids) for ex in rows])
            prompt = torch.arange(mb.targets.shape[1])[None, :] < prompt_len[:, None]
            assert not (mb.masked & prompt).any()
            assert torch.equal(mb.inputs[prompt], mb.targets[prompt])
            assert (mb.inputs[mb.masked] == TOK.vocab_size).all()
            masked_response += int(mb.masked.sum())
            if step == 0:
                logits = model(mb.inputs)
                logits.retain_grad()
                loss_for(cfg, batches.kind)(logits, mb).backward()
                row_grad = logits.grad.abs().sum(-1)
                assert (row_grad[prompt] == 0).all() and (row_grad[mb.masked] > 0).all()
    assert masked_response > 0


def test_arm_sft_is_next_token_ce_on_responses(pre, single_rank_world):
    from megatron_mdm.training.objective import loss_for

    cfg = sft_cfg(pre, "model.objective=arm")
    batches = source(cfg)
    model = load_model(cfg, pre["ckpt"]).eval()
    examples = step_examples(batches, 0)
    mb = batches.train(0)[0]
    with torch.no_grad():
        logits = model(mb.inputs)
        got = loss_for(cfg, batches.kind)(logits.clone(), mb).item()
    per_seq = []
    for b, ex in enumerate(examples[:4]):
        row = ex.prompt_ids + ex.response_ids + [TOK.eos_id] * SEQ
        # the model sees row[:i] (causal) and predicts row[i] for every response position i
        ce = [
            -torch.log_softmax(logits[b, i - 1].double(), -1)[row[i]].item()
            for i in range(len(ex.prompt_ids), SEQ)
        ]
        per_seq.append(sum(ce) / len(ce))
    assert got == pytest.approx(sum(per_seq) / len(per_seq), rel=1e-5)


def test_batches_do_not_depend_on_the_data_parallel_split(pre):
    cfg = sft_cfg(pre, "sft.pad_to=longest", "train.micro_batch_size=2")
    one = source(cfg)
    ranks = [source(cfg, d, 2) for d in (0, 1)]
    for step in (0, 5, 9):
        whole = one.train(step)  # 4 micro-batches of 2: positions 0-1, 2-3, 4-5, 6-7
        split = [ranks[d].train(step) for d in (0, 1)]  # rank d, micro m: positions 4m+2d...
        interleaved = [split[0][0], split[1][0], split[0][1], split[1][1]]
        for a, b in zip(whole, interleaved, strict=True):
            for name in ("inputs", "targets", "masked", "p_mask", "response_lengths"):
                assert torch.equal(getattr(a, name), getattr(b, name)), (step, name)


def test_every_epoch_visits_every_example_once(pre):
    cfg = sft_cfg(pre)
    batches = source(cfg)
    n = len(batches.train_examples)
    for epoch in range(3):
        seen = sorted(batches.example_index(epoch * n + j) for j in range(n))
        assert seen == list(range(n))
    assert not torch.equal(epoch_order(1, 0, n), epoch_order(1, 1, n))
    assert torch.equal(epoch_order(1, 0, n, shuffle=False), torch.arange(n))


def test_epochs_set_the_run_length_and_valid_holds_out_whole_lines(pre, tmp_path):
    cfg = sft_cfg(pre, "sft.epochs=2.5", "sft.valid_fraction=0.1")
    data = load_sft_data(cfg, TOK)
    assert (len(data.train), len(data.valid)) == (58, 6)  # round(0.1 * 64) lines held out
    assert sft_run_length(cfg, 58).train.max_steps == math.ceil(2.5 * 58 / 8) == 19
    plain = sft_cfg(pre, "train.max_steps=7")
    assert sft_run_length(plain, 58).train.max_steps == 7  # no epochs: train.max_steps
    # a run shorter than its warmup: the warmup is clamped (with a start-up warning), not an error
    short = sft_run_length(sft_cfg(pre, "sft.epochs=0.1", "train.warmup_steps=5"), 58).train
    assert (short.max_steps, short.effective_warmup) == (1, 1)
    assert "clamped to 1" in warmup_warning(short)

    gsm = tmp_path / "g.txt"
    gsm.write_text("".join(f"q{i}?||r{i}. #### {i}\n" for i in range(20)))
    cfg = load_config(
        QUICKSTART,
        [*TINY, f"sft.data={gsm}", "sft.gsm8k_split_cot=true", "sft.valid_fraction=0.2"],
    )
    data = load_sft_data(cfg, TOK)
    assert (len(data.train), len(data.valid)) == (32, 8)
    for examples in (data.train, data.valid):  # both samples of a problem on the same side
        for cot, answer in zip(examples[::2], examples[1::2], strict=True):
            assert answer.prompt_ids == cot.prompt_ids + cot.response_ids


@pytest.mark.slow
def test_tiny_sft_lowers_response_loss_and_resumes_exactly(pre):
    """~20 steps from the pretraining checkpoint: the validation response loss (fixed masks)
    falls; a second run resumed from the step-10 checkpoint logs bit-identical losses."""
    straight, resumed = pre["root"] / "straight", pre["root"] / "resumed"
    args = [
        "sft", QUICKSTART, *COMMON, f"sft.data={pre['data']}", f"train.init_from={pre['ckpt']}",
        "sft.epochs=2.5", "sft.valid_fraction=0.1", "train.eval_interval=1",
        "train.eval_iters=2", "checkpoint.save_interval=10",
    ]  # fmt: skip
    run_mdm([*args, f"train.output_dir={straight}"])
    train, val = read_metrics(straight), read_val_metrics(straight)
    assert [r["step"] for r in train] == list(range(1, 20))  # ceil(2.5 * 58 / 8) steps
    assert val[-1]["val_loss"] < 0.8 * val[0]["val_loss"]
    meta = (straight / "checkpoints" / "step_0000010" / "meta.yaml").read_text()
    assert "sft_examples" in meta and "sft:" in meta

    ckpt = straight / "checkpoints" / "step_0000010"
    run_mdm([*args, f"checkpoint.resume={ckpt}", f"train.output_dir={resumed}"])
    again = read_metrics(resumed)
    assert [r["step"] for r in again] == list(range(11, 20))
    for a, b in zip(train[10:], again, strict=True):
        assert a["loss"] == b["loss"] and a["lr"] == b["lr"], a["step"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout", ["parallel.tensor=2", "parallel.pipeline=2", "parallel.zero_stage=3"]
)
def test_parallel_sft_losses_match_one_process(pre, layout):
    """TP=2, PP=2 (one shape per step with pad_to=longest) and ZeRO-3 over DP=2 (each rank
    takes its own micro-batches of the step) log the single-process losses."""
    args = [
        "sft", QUICKSTART, *COMMON, f"sft.data={pre['data']}", f"train.init_from={pre['ckpt']}",
        "sft.pad_to=longest", "train.max_steps=3",
    ]  # fmt: skip
    ref = pre["root"] / "parity_ref"
    if not (ref / "metrics.jsonl").exists():
        run_mdm([*args, f"train.output_dir={ref}"])
    out = pre["root"] / layout.replace("=", "_")
    run_mdm([*args, layout, f"train.output_dir={out}"], nproc=2)
    a, b = read_metrics(ref), read_metrics(out)
    assert [r["step"] for r in b] == [1, 2, 3]
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5, abs=1e-6), x["step"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sft.normalize=mean"], "sft.normalize: must be one of sequence, token, got 'mean'"),
        ([], "sft.data: required by mdm sft"),
        (["sft.data=/nonexistent/d.jsonl"], "sft.data: /nonexistent/d.jsonl: no such file"),
        (["sft.data=BAD"], "sft.data: BAD:2: invalid JSON"),
    ],
)
def test_bad_sft_input_is_one_line(pre, overrides, message):
    bad = pre["root"] / "bad.jsonl"
    bad.write_text('{"prompt": "p", "response": "r"}\n{oops\n')
    overrides = [o.replace("BAD", str(bad)) for o in overrides]
    proc = run_cli("sft", QUICKSTART, *overrides)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mdm: error: ")
    assert message.replace("BAD", str(bad)) in lines[0]


def test_sft_configs_carry_the_recipes():
    from helpers import ROOT

    gsm = load_config(str(ROOT / "configs" / "sft-gsm8k.yaml"))
    t, s = gsm.train, gsm.sft
    assert (gsm.model.seq_length, t.lr, t.min_lr, t.global_batch_size) == (256, 2e-4, 2e-5, 256)
    assert (s.epochs, s.gsm8k_split_cot, s.normalize) == (40, True, "token")
    assert (t.adam_beta1, t.adam_beta2, t.weight_decay) == (0.9, 0.95, 0.1)
    chat = load_config(str(ROOT / "configs" / "sft-chat.yaml"))
    assert (chat.sft.format, chat.sft.normalize) == ("chat", "sequence")
    cpu = load_config(str(ROOT / "examples" / "sft" / "gsm8k-cpu.yaml"))
    assert cpu.sft.gsm8k_split_cot and cpu.train.precision == "fp32"
