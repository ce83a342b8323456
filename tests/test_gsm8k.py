"""GSM8K (SMDM protocol): answer extraction and normalisation, and `mdm eval gsm8k` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_models import tiny_models
from helpers import ROOT, run_mdm

from megatron_mdm.cli import main as mdm_main
from megatron_mdm.data.sft import load_sft_examples
from megatron_mdm.data.tokenizers import build_tokenizer
from megatron_mdm.eval.errors import EvalError
from megatron_mdm.eval.gsm8k import (
    answer_stage_options,
    extract_hash_answer,
    extract_last_number,
    grade,
    load_problems,
    normalize_answer,
    solve_two_stage,
)
from megatron_mdm.inference.sampling_config import SamplingConfig

SHARED_GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("He pays 5 * 3 = 15.\n#### 15", "15"),
        ("#### 1 then more\n#### 72\nextra line", "72"),
        ("####-4", "-4"),
        ("no marker, 12 and 13", None),
    ],
)
def test_extract_hash_answer_takes_the_last_marker(text, expected):
    assert extract_hash_answer(text) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("18", "18"),
        ("$18", "18"),
        ("1,000", "1000"),
        ("18.00", "18"),
        ("7.", "7"),
        ("0.50", "0.5"),
        ("-3", "-3"),
        ("  42 dollars", "42"),
        ("Forty", "forty"),
        (None, None),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_grade_strict_and_flexible():
    assert grade("so 2 + 3 = 5\n#### 5", "5")["correct"]
    lenient = grade("The answer is $1,200.", "1200")
    assert not lenient["correct"] and lenient["prediction"] is None
    assert lenient["correct_flexible"] and extract_last_number("a 3 b 4.5 c") == "4.5"
    assert not grade("#### 6", "5")["correct_flexible"]  # a wrong #### is not rescued


def test_load_problems_reports_file_and_line(tmp_path):
    good = {"question": "q", "answer": "r\n#### 3"}
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({"question": "q", "answer": "r"}) + "\n")
    with pytest.raises(EvalError, match=r"g\.jsonl:3: .*####"):
        load_problems(path)
    assert load_problems(path, limit=1) == [{**good, "target": "3"}]
    path.write_text("{not json\n")
    with pytest.raises(EvalError, match=r"g\.jsonl:1: invalid JSON"):
        load_problems(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.getbasetemp())


PROBLEMS = [
    {"question": "Tom has 2 apples and buys 3 more. How many?", "answer": "2+3=5\n#### 5"},
    {"question": "What is 10 - 4?", "answer": "10-4=6\n#### 6"},
    {"question": "not reached (--limit 2)", "answer": "#### 1"},
]


@pytest.mark.slow
def test_gsm8k_end_to_end_on_a_tiny_checkpoint(models, tmp_path):
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    out, summary = tmp_path / "out" / "gens.jsonl", tmp_path / "summary.json"
    sampler = ["--gen-length", "16", "--steps", "8", "--block-length", "8"]
    run_mdm(
        [
            "eval",
            "gsm8k",
            "--ckpt",
            str(models.mdm),
            "--data",
            str(data),
            "--limit",
            "2",
            *sampler,
            "--output",
            str(out),
            "--summary",
            str(summary),
            "--no-progress",
        ]
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1]
    assert [r["target"] for r in rows] == ["5", "6"]
    assert rows[0]["prompt"] == "Question: " + PROBLEMS[0]["question"]
    for row in rows:  # the grading recorded is the grading of the generation recorded
        assert {k: row[k] for k in grade(row["generation"], row["target"])} == grade(
            row["generation"], row["target"]
        )
        assert len(row["generation"].encode("utf-8")) <= 16
    figures = json.loads(summary.read_text())
    assert figures["problems"] == 2 and figures["generations"] == str(out)
    assert figures["accuracy"] == sum(r["correct"] for r in rows) / 2
    assert figures["accuracy_flexible"] == sum(r["correct_flexible"] for r in rows) / 2
    assert figures["sampler.gen_length"] == 16
    assert not list(out.parent.glob(".*tmp*"))  # written atomically, nothing left behind
    # The same command scores an ARM baseline (its export, in-process: no distributed world).
    arm_out = tmp_path / "arm.jsonl"
    assert (
        mdm_main(
            [
                "eval",
                "gsm8k",
                "--hf",
                str(models.arm_hf),
                "--data",
                str(data),
                "--limit",
                "1",
                "--gen-length",
                "8",
                "--output",
                str(arm_out),
                "--no-progress",
            ]
        )
        == 0
    )
    [row] = [json.loads(line) for line in arm_out.read_text().splitlines()]
    assert row["target"] == "5" and len(row["generation"].encode("utf-8")) <= 8


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_GSM8K.is_file(), reason=f"{SHARED_GSM8K} absent")
def test_gsm8k_runs_on_the_shared_test_set(models, tmp_path, capsys):
    out = tmp_path / "gens.jsonl"
    args = [
        "eval",
        "gsm8k",
        "--hf",
        str(models.mdm_hf),
        "--data",
        str(SHARED_GSM8K),
        "--limit",
        "1",
        "--gen-length",
        "8",
        "--steps",
        "4",
        "--output",
        str(out),
        "--no-progress",
    ]
    assert mdm_main(args) == 0
    [row] = [json.loads(line) for line in Path(out).read_text().splitlines()]
    first = json.loads(SHARED_GSM8K.read_text().splitlines()[0])
    assert row["question"] == first["question"] and row["target"] == first["target"]
    assert "gsm8k: accuracy = " in capsys.readouterr().out


def test_gsm8k_bad_data_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    assert mdm_main(["eval", "gsm8k", "--hf", str(tmp_path), "--data", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"mdm eval gsm8k: error: {bad}:1: expected string fields 'question' and 'answer'"
    ]


RELEASED = {  # GSM8K as released: steps on lines, calculator notes, padded question
    "question": "  Natalia sold 48 clips in April and half as many in May. How many in all? ",
    "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\n"
    "In all she sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
}


def test_two_stage_prompts_are_the_sft_split_samples(tmp_path):
    """The stage-2 prompt is the SFT second sample's prompt when stage 1 produces the trained
    chain of thought; the reference samples come from the SFT data path (a file on disk)."""
    tok = build_tokenizer("byte", None)
    sft_file = tmp_path / "train.jsonl"
    sft_file.write_text(json.dumps(RELEASED) + "\n")
    cot_sample, answer_sample = load_sft_examples(sft_file, tok, gsm8k_split_cot=True)
    calls = []
    outputs = iter([cot_sample.response_ids, answer_sample.response_ids])

    def fake_generate(prompt_ids, options, seed):  # a sampler that answers as trained
        calls.append((list(prompt_ids), options, seed))
        return next(outputs)

    options = SamplingConfig(gen_length=64, steps=32, block_length=16)
    answer_options = answer_stage_options(options, 12, None)
    result = solve_two_stage(
        RELEASED["question"], tok, fake_generate, options, answer_options, (7, 8)
    )
    assert [c[0] for c in calls] == [cot_sample.prompt_ids, answer_sample.prompt_ids]
    assert calls[0][1:] == (options, 7)
    assert calls[1][1:] == (SamplingConfig(gen_length=12, steps=12, block_length=None), 8)
    assert result["answer_prompt_ids"] == answer_sample.prompt_ids
    assert result["prompt"] == RELEASED["question"].strip()
    assert result["generation"] == " #### 72"
    assert result["response"] == (
        "In May she sold 48/2 = 24 clips. In all she sold 48+24 = 72 clips. #### 72"
    )
    assert grade(result["response"], "72")["correct"]


def test_two_stage_rejects_a_prompt_template(tmp_path, capsys):
    data = tmp_path / "g.jsonl"
    data.write_text(json.dumps(RELEASED) + "\n")
    args = ["eval", "gsm8k", "--hf", str(tmp_path), "--data", str(data), "--two-stage"]
    assert mdm_main([*args, "--prompt-template", "Q: {question}"]) == 2
    assert "--prompt-template: not used by --two-stage" in capsys.readouterr().err


@pytest.mark.slow
def test_gsm8k_two_stage_end_to_end(models, tmp_path):
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS[1:]))  # short: seq len 32
    out, summary = tmp_path / "gens.jsonl", tmp_path / "summary.json"
    args = ["eval", "gsm8k", "--hf", str(models.mdm_hf), "--data", str(data), "--limit", "1"]
    sampler = ["--gen-length", "8", "--steps", "4", "--answer-gen-length", "4"]
    assert (
        mdm_main(
            [
                *args,
                "--two-stage",
                *sampler,
                "--output",
                str(out),
                "--no-progress",
                "--summary",
                str(summary),
            ]
        )
        == 0
    )
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    tok = build_tokenizer("byte", None)
    question = PROBLEMS[1]["question"]
    assert row["prompt"] == question and row["prompt_ids"] == list(question.encode("utf-8"))
    cot, answer = row["chain_of_thought_ids"], row["generation_ids"]
    assert len(cot) <= 8 and len(answer) <= 4 and tok.eos_id not in cot + answer
    assert row["answer_prompt_ids"] == row["prompt_ids"] + cot
    assert row["chain_of_thought"] == tok.decode(cot) and row["generation"] == tok.decode(answer)
    assert {k: row[k] for k in grade(row["response"], "6")} == grade(row["response"], "6")
    figures = json.loads(summary.read_text())
    assert figures["protocol"] == "two_stage" and figures["answer_sampler.gen_length"] == 4
    assert figures["sampler.gen_length"] == 8 and figures["problems"] == 1
