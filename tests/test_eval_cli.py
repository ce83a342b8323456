"""`mdm eval ppl | likelihood | genppl` end to end on tiny trained models.

References are independent: the same figure from the training checkpoint (megatron-core) and from
its `hf` export (transformers), from an indexed dataset and from the text it was made of, and
ARM / judge numbers recomputed here with a plain loop or with transformers' own loss."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from eval_models import tiny_models
from helpers import run_mdm

from megatron_mdm.cli import main as mdm_main
from megatron_mdm.data.byte_tokenizer import ByteTokenizer

pytestmark = pytest.mark.slow

TEXT = [
    "The old man said that the river was cold.",
    "It was a dark night, and the wind was loud.",
    "She walked home.",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    """The text file, and the same text through `mdm preprocess` (byte tokenizer)."""
    from megatron_mdm.data.preprocess import preprocess
    from megatron_mdm.data.tokenizers import build_tokenizer

    d = tmp_path_factory.mktemp("ppl-data")
    (d / "held_out.txt").write_text("\n".join(TEXT) + "\n")
    preprocess(
        [str(d / "held_out.txt")],
        str(d / "held_out"),
        build_tokenizer("byte", None),
        progress=False,
    )
    tokens = []
    for line in TEXT:
        tokens += ByteTokenizer().encode(line) + [ByteTokenizer().eos_id]
    return d / "held_out.txt", d / "held_out", tokens


def run_eval(*args) -> dict:
    """`mdm eval ARGS --output F` in a subprocess (a fresh process per model, as users run it)."""
    proc = run_mdm(["eval", *args], timeout=300)
    return proc


def eval_json(tmp_path, name, *args, in_process=False, capsys=None) -> dict:
    out = tmp_path / f"{name}.json"
    if in_process:  # the hf path needs no distributed world: run it in this process (faster)
        assert mdm_main(["eval", *args, "--output", str(out), "--no-progress"]) == 0
    else:
        run_eval(*args, "--output", str(out), "--no-progress")
    return json.loads(out.read_text())


def hf_model(path):
    from megatron_mdm.inference.loading import from_hf_folder

    return from_hf_folder(path)


def log_softmax_rows(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model.model_fn(torch.tensor([ids]))[0].double(), -1)


def test_ppl_checkpoint_and_export_agree_on_text_and_indexed_data(models, text_data, tmp_path):
    text, prefix, tokens = text_data
    common = ["--mc-num", "16", "--batch-size", "8", "--seed", "5"]
    a = eval_json(tmp_path, "ckpt", "ppl", "--ckpt", str(models.mdm), "--data", str(text), *common)
    b = eval_json(
        tmp_path,
        "hf",
        "ppl",
        "--hf",
        str(models.mdm_hf),
        "--data",
        str(prefix),
        *common,
        in_process=True,
    )
    assert a["tokens"] == b["tokens"] == len(tokens)
    assert a["windows"] == math.ceil(len(tokens) / 32) and a["seq_length"] == 32
    assert a["bound"] and a["estimator"] == "mc"
    assert a["nll_per_token"] == pytest.approx(b["nll_per_token"], rel=1e-4)
    assert a["perplexity"] == pytest.approx(math.exp(a["nll_per_token"]))
    assert 0 < a["stderr_nll_per_token"] < 0.1 * a["nll_per_token"]
    c = eval_json(
        tmp_path,
        "c",
        "ppl",
        "--hf",
        str(models.mdm_hf),
        "--data",
        str(prefix),
        "--mc-num",
        "16",
        "--batch-size",
        "8",
        "--seed",
        "6",
        in_process=True,
    )
    assert c["nll_per_token"] != b["nll_per_token"]  # the seed matters; the bound is an estimate
    assert abs(c["nll_per_token"] - b["nll_per_token"]) < 5 * math.hypot(
        b["stderr_nll_per_token"], c["stderr_nll_per_token"]
    )


def test_arm_ppl_is_exact_next_token_nll_over_windows(models, text_data, tmp_path):
    _, prefix, tokens = text_data
    got = eval_json(
        tmp_path,
        "arm",
        "ppl",
        "--ckpt",
        str(models.arm),
        "--data",
        str(prefix),
        "--seq-length",
        "20",
    )
    ref = hf_model(models.arm_hf)
    nll = 0.0
    for start in range(0, len(tokens), 20):  # window [start, start+20), one token of context
        window = tokens[start : start + 20]
        context = tokens[start - 1] if start else ref.eos_id
        logp = log_softmax_rows(ref, [context] + window[:-1])
        nll -= sum(logp[i, t].item() for i, t in enumerate(window))
    assert got["bound"] is False and got["estimator"] == "exact"
    assert got["tokens"] == len(tokens) and got["windows"] == math.ceil(len(tokens) / 20)
    assert got["nll_per_token"] == pytest.approx(nll / len(tokens), rel=1e-4)


def test_likelihood_with_cfg_agrees_between_checkpoint_and_export(models, tmp_path):
    pair = ["--prompt", "The old ", "--answer", "man said", "--mc-num", "32", "--batch-size", "8"]
    for cfg in ("0", "1.5"):
        a = eval_json(
            tmp_path, f"a{cfg}", "likelihood", "--ckpt", str(models.mdm), *pair, "--cfg", cfg
        )
        b = eval_json(
            tmp_path,
            f"b{cfg}",
            "likelihood",
            "--hf",
            str(models.mdm_hf),
            *pair,
            "--cfg",
            cfg,
            in_process=True,
        )
        assert a["answer_tokens"] == len(" man said") == b["answer_tokens"]
        assert a["log_likelihood"] == pytest.approx(b["log_likelihood"], rel=1e-4)
        assert a["stderr"] > 0 and a["mc_num"] == 32
        assert a["kind"] == (
            "guided score (not normalised)" if cfg != "0" else "lower bound (ELBO)"
        )


def test_chain_rule_likelihood_matches_a_loop_on_the_export(models, tmp_path):
    got = eval_json(
        tmp_path,
        "chain",
        "likelihood",
        "--hf",
        str(models.mdm_hf),
        "--prompt",
        "ab",
        "--answer",
        "cde",
        "--estimator",
        "chain_rule",
        in_process=True,
    )
    model = hf_model(models.mdm_hf)
    prompt, answer = list(b"ab"), list(b"cde")
    expected = 0.0
    for i in range(3):
        x = prompt + answer[:i] + [model.mask_id] * (3 - i)
        expected += log_softmax_rows(model, x)[2 + i, answer[i]].item()
    assert got["kind"] == "exact" and got["stderr"] == 0
    assert got["log_likelihood"] == pytest.approx(expected, abs=1e-4)


def test_arm_likelihood_is_exact(models, tmp_path):
    got = eval_json(
        tmp_path,
        "arm",
        "likelihood",
        "--ckpt",
        str(models.arm),
        "--prompt",
        "The ",
        "--answer",
        "old man",
    )
    model = hf_model(models.arm_hf)
    ids = list(b"The old man")
    logp = log_softmax_rows(model, ids)
    expected = sum(logp[i - 1, ids[i]].item() for i in range(3, len(ids)))
    assert got["estimator"] == "exact" and got["answer_tokens"] == len(" old man")
    assert got["log_likelihood"] == pytest.approx(expected, abs=1e-4)


@pytest.fixture(scope="module")
def gpt2_judge(tmp_path_factory):
    """A randomly initialised 1-layer GPT-2 with a small BPE tokenizer trained here (no hub)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("gpt2-judge")
    rust = Tokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rust.train_from_iterator(TEXT * 20, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=rust, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    tok.save_pretrained(str(d))
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=rust.get_vocab_size(),
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(str(d))
    return d


def test_genppl_with_a_transformers_judge(models, gpt2_judge, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    got = eval_json(
        tmp_path,
        "gen",
        "genppl",
        "--hf",
        str(models.mdm_hf),
        "--judge-hf",
        str(gpt2_judge),
        "--num-samples",
        "3",
        "--batch-size",
        "2",
        "--gen-length",
        "16",
        "--steps",
        "8",
        "--temperature",
        "1.0",
        in_process=True,
    )
    assert got["num_samples"] == len(got["samples"]) == 3
    tok = AutoTokenizer.from_pretrained(str(gpt2_judge))
    judge = AutoModelForCausalLM.from_pretrained(str(gpt2_judge)).eval()
    total_nll, total_tokens, entropies = 0.0, 0, []
    for row in got["samples"]:
        ids = tok(row["text"], add_special_tokens=False)["input_ids"]
        assert row["text"] == ByteTokenizer().decode(row["ids"])
        counts = Counter(row["ids"])
        n = sum(counts.values())
        entropies.append(-sum(c / n * math.log(c / n) for c in counts.values()) if n else 0.0)
        if not ids:
            continue
        x = torch.tensor([[tok.bos_token_id, *ids]])
        with torch.no_grad():
            loss = judge(input_ids=x, labels=x).loss.item()  # mean over the len(ids) predictions
        total_nll += loss * len(ids)
        total_tokens += len(ids)
    assert total_tokens > 0 and got["judge_tokens"] == total_tokens
    assert got["gen_ppl"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-4)
    assert got["unigram_entropy"] == pytest.approx(sum(entropies) / 3, abs=1e-9)


def test_genppl_with_our_arm_checkpoint_as_judge(models, tmp_path):
    got = eval_json(
        tmp_path,
        "gen",
        "genppl",
        "--ckpt",
        str(models.mdm),
        "--judge-ckpt",
        str(models.arm),
        "--num-samples",
        "2",
        "--gen-length",
        "16",
        "--steps",
        "16",
        "--temperature",
        "1.0",
        "--seed",
        "3",
    )
    ref = hf_model(models.arm_hf)
    for row in got["samples"]:
        ids = list(row["text"].encode("utf-8"))[:31]
        logp = log_softmax_rows(ref, [ref.eos_id] + ids[:-1]) if ids else None
        nll = -sum(logp[i, t].item() for i, t in enumerate(ids)) if ids else 0.0
        assert row["judge_tokens"] == len(ids)
        assert row["judge_nll"] == pytest.approx(nll, rel=1e-4, abs=1e-4)


def test_bad_input_is_one_line_and_exit_2(models, tmp_path, capsys):
    cases = [
        (["ppl", "--hf", str(models.mdm_hf), "--data", str(tmp_path / "nope")], "nope"),
        (
            ["likelihood", "--hf", str(tmp_path / "missing"), "--prompt", "a", "--answer", "b"],
            "missing",
        ),
        (
            [
                "likelihood",
                "--hf",
                str(models.mdm_hf),
                "--prompt",
                "a",
                "--answer",
                "b",
                "--mc-num",
                "12",
                "--batch-size",
                "8",
            ],
            "multiple",
        ),
        (
            [
                "genppl",
                "--hf",
                str(models.mdm_hf),
                "--judge-hf",
                str(models.mdm_hf),
                "--num-samples",
                "1",
            ],
            "must be an ARM",
        ),
    ]
    for args, expected in cases:
        capsys.readouterr()
        assert mdm_main(["eval", *args]) == 2
        err = capsys.readouterr().err
        # Loading a model may draw progress bars first; the error itself is the one last line.
        errors = [line for line in err.splitlines() if "error" in line]
        assert "Traceback" not in err and errors == [err.strip().splitlines()[-1]]
        assert errors[0].startswith(f"mdm eval {args[0]}: error: ") and expected in errors[0]
