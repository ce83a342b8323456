"""The examples run from a clean clone: nothing outside the tests reads data from beside the
project, and the data the SFT example makes for itself (examples/sft/make_gsm8k_like.py) is what
`mdm sft` and `mdm eval gsm8k` read, with reasoning that is real arithmetic."""

from __future__ import annotations

import json
import os
import re
import sys
from fractions import Fraction

from helpers import ROOT, SCRATCH_RUN, read_metrics, run_mdm

from megatron_mdm.data.sft import gsm8k_line_from_record, iter_sft_groups
from megatron_mdm.data.tokenizers import build_tokenizer
from megatron_mdm.eval.gsm8k import load_problems

sys.path.insert(0, str(ROOT / "examples" / "sft"))
import make_gsm8k_like  # noqa: E402

TOK = build_tokenizer("byte", None)
# Folders that are not the project's files: VCS, environments, outputs, caches, the tests (which
# may read the shared data and skip without it) and the data folder users generate into.
NOT_SCANNED = {".git", ".venv", "runs", "tests", "data", "build", "dist"}
CACHES = {"__pycache__", ".pytest_cache", ".ruff_cache"}


def test_nothing_outside_the_tests_points_at_the_shared_folder():
    hits = []
    for folder, subdirs, files in os.walk(ROOT):
        top = folder == str(ROOT)
        subdirs[:] = [
            d
            for d in subdirs
            if d not in CACHES and not d.endswith(".egg-info") and not (top and d in NOT_SCANNED)
        ]
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                if b"../shared" in f.read():
                    hits.append(os.path.relpath(path, ROOT))
    assert hits == []


# --------------------------------------------------------------------------- make_gsm8k_like

# `a op b [op c ...] = [$]result`: the arithmetic claims of a reasoning text.
CLAIM = re.compile(r"(\d+(?: [-+*/] \d+)+) = \$?(\d+)")


def evaluate(expression: str) -> Fraction:
    """Left to right; a claim mixes no +/- with * and /, so that is the usual precedence."""
    tokens = expression.split()
    ops = set(tokens[1::2])
    assert ops <= {"+", "-"} or ops <= {"*", "/"}, expression
    value = Fraction(int(tokens[0]))
    for op, number in zip(tokens[1::2], tokens[2::2], strict=True):
        n = Fraction(int(number))
        value = {"+": value + n, "-": value - n, "*": value * n, "/": value / n}[op]
    return value


def test_generated_problems_load_as_sft_data_with_real_arithmetic(tmp_path):
    path = tmp_path / "train.txt"
    assert make_gsm8k_like.main([str(path), "--count", "60", "--seed", "3"]) == 0
    lines = path.read_text().splitlines()
    assert len(lines) == len(set(lines)) == 60
    for line in lines:
        question, reasoning = line.split("||")
        cot, answer = reasoning.split(" #### ")
        claims = CLAIM.findall(cot)
        assert len(claims) >= 2, line  # two or more steps, each a checkable calculation
        for expression, result in claims:
            assert evaluate(expression) == int(result), line
        assert int(answer) == int(claims[-1][1]) > 0, line

    groups = list(iter_sft_groups(path, TOK, gsm8k_split_cot=True))
    assert len(groups) == 60
    for (cot, answer), line in zip(groups, lines, strict=True):
        question = line.split("||")[0]
        assert TOK.decode(cot.prompt_ids) == question
        assert answer.prompt_ids == cot.prompt_ids + cot.response_ids
        assert TOK.decode(answer.response_ids) == " #### " + line.rsplit(" #### ", 1)[1]


def test_generated_problems_are_keyed_by_seed_and_index():
    first = make_gsm8k_like.render(seed=0, count=40).splitlines()
    assert make_gsm8k_like.render(seed=0, count=10).splitlines() == first[:10]
    assert make_gsm8k_like.render(seed=1, count=10).splitlines() != first[:10]
    # every kind of problem turns up: not one sentence with other numbers
    asks = ("spend in total?", "have now?", "days?", "friend get?", "have left?", "this week?")
    questions = [line.split("||")[0] for line in first]
    assert all(any(q.endswith(ask) for q in questions) for ask in asks)
    assert all(any(q.endswith(ask) for ask in asks) for q in questions)


def test_jsonl_release_format_reads_as_the_same_problems(tmp_path):
    txt, jsonl = tmp_path / "train.txt", tmp_path / "test.jsonl"
    make_gsm8k_like.main([str(txt), "--count", "25"])
    make_gsm8k_like.main([str(jsonl), "--count", "25", "--jsonl"])
    lines = txt.read_text().splitlines()
    records = [json.loads(r) for r in jsonl.read_text().splitlines()]
    problems = load_problems(jsonl)  # what `mdm eval gsm8k --data` reads
    for line, record, problem in zip(lines, records, problems, strict=True):
        assert gsm8k_line_from_record(record) == line  # the SFT loader's own normalisation
        assert problem["target"] == line.rsplit(" #### ", 1)[1]


def test_sft_example_config_trains_a_step_on_generated_data(tmp_path):
    """`mdm sft examples/sft/gsm8k-cpu.yaml` as the example README runs it, on generated data,
    for one step from a fresh model (the example starts from the quickstart's checkpoint)."""
    data = tmp_path / "train.txt"
    make_gsm8k_like.main([str(data), "--count", "40"])
    out = tmp_path / "run"
    run_mdm(
        [
            "sft",
            "examples/sft/gsm8k-cpu.yaml",
            f"sft.data={data}",
            "sft.epochs=null",
            "train.max_steps=1",
            "train.warmup_steps=0",
            "train.init_from=null",
            f"train.output_dir={out}",
            *SCRATCH_RUN,
        ]
    )
    [record] = read_metrics(out)
    assert record["step"] == 1 and record["loss"] > 0
