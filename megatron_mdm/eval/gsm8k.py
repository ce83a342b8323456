"""`mdm eval gsm8k`: GSM8K accuracy with the SMDM protocol.

- Data: jsonl, one problem per line with `question` and `answer` (the reference solution, its
  final line `#### N`), as in the released GSM8K files.
- Prompt: `Question: {question}` (SMDM's evaluation prompt; its SFT data continues it with
  `Answer: <reasoning> #### N`). `--prompt-template` changes it, e.g. `{question}` for a model
  fine-tuned by `mdm sft` on `question||reasoning #### N` lines, whose prompts are the bare question.
- Answer: the text after the last `####` of the generation (SMDM's rule; `accuracy`); a second,
  lenient figure takes the last number anywhere in the generation when there is no `####`
  (`accuracy_flexible`, lm-eval's "flexible-extract"). Both are normalised the same way: commas,
  `$` and a trailing `.` dropped, numbers compared by value (`18.00` == `18`).
- One generation per problem, greedy by default (temperature 0), with the sampler options of
  `mdm generate`. SMDM's second pass (generate once more from question + first answer) is not done.
"""

from __future__ import annotations

import json
import os
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

from megatron_mdm.eval.loading import EvalError
from megatron_mdm.eval.sampler_options import SamplerOptions, sample_completions
from megatron_mdm.model.init import stable_seed

DEFAULT_TEMPLATE = "Question: {question}"
_NUMBER = re.compile(r"-?[$]?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def load_problems(path: str | Path, limit: int | None = None) -> list[dict]:
    """[{question, answer, target}] of a GSM8K jsonl; one-line errors name file and line."""
    problems = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise EvalError(f"--data {path}: {exc.strerror}") from None
    for lineno, line in enumerate(lines, start=1):
        if limit is not None and len(problems) >= limit:
            break
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not all(
            isinstance(record.get(k), str) for k in ("question", "answer")
        ):
            raise EvalError(f"{path}:{lineno}: expected string fields 'question' and 'answer'")
        target = extract_hash_answer(record["answer"])
        if target is None:
            raise EvalError(f"{path}:{lineno}: the answer has no final '#### N'")
        problems.append(
            {"question": record["question"], "answer": record["answer"], "target": target}
        )
    if not problems:
        raise EvalError(f"--data {path}: no problems")
    return problems


def extract_hash_answer(text: str) -> str | None:
    """The text after the last `####` (up to the end of that line), stripped; None if absent."""
    if "####" not in text:
        return None
    return text.rsplit("####", 1)[1].strip().split("\n", 1)[0].strip()


def extract_last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize_answer(text: str | None) -> str | None:
    """Canonical form for comparison: a number's value (`1,000.50` -> `1000.5`, `$18` -> `18`,
    `7.` -> `7`) when the answer starts with one, else the lower-cased stripped text."""
    if text is None:
        return None
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    match = re.match(r"-?\d+(?:\.\d+)?|-?\.\d+", cleaned)
    if match:
        try:
            value = Decimal(match.group(0))
        except InvalidOperation:
            return cleaned.lower()
        value = value.quantize(Decimal(1)) if value == value.to_integral() else value.normalize()
        return format(value, "f")
    return cleaned.lower() or None


def grade(generation: str, target: str) -> dict:
    """Strict (`####`) and flexible (last number) predictions and whether each is correct."""
    strict = extract_hash_answer(generation)
    flexible = strict if strict is not None else extract_last_number(generation)
    gold = normalize_answer(target)
    return {
        "prediction": strict,
        "prediction_flexible": flexible,
        "correct": strict is not None and normalize_answer(strict) == gold,
        "correct_flexible": flexible is not None and normalize_answer(flexible) == gold,
    }


def write_jsonl_atomic(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def evaluate_gsm8k(
    model,
    problems: list[dict],
    options: SamplerOptions,
    template: str = DEFAULT_TEMPLATE,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict, list[dict]]:
    """(summary, one row per problem). Each problem's sampling seed is keyed by its index."""
    from tqdm import tqdm

    if "{question}" not in template:
        raise EvalError(f"--prompt-template {template!r}: must contain {{question}}")
    rows, correct, flexible = [], 0, 0
    bar = tqdm(problems, desc="gsm8k", unit="problem", disable=not progress)
    for i, problem in enumerate(bar):
        prompt = template.replace("{question}", problem["question"])
        try:
            [generation] = sample_completions(
                model, prompt, options, seed=stable_seed(seed, "gsm8k", i)
            )
        except ValueError as exc:
            raise EvalError(str(exc)) from None
        graded = grade(generation, problem["target"])
        correct += graded["correct"]
        flexible += graded["correct_flexible"]
        rows.append(
            {
                "index": i,
                "question": problem["question"],
                "prompt": prompt,
                "generation": generation,
                "target": problem["target"],
                **graded,
            }
        )
        bar.set_postfix(acc=f"{correct / (i + 1):.3f}")
    n = len(rows)
    summary = {
        "accuracy": correct / n,
        "accuracy_flexible": flexible / n,
        "correct": correct,
        "problems": n,
        "prompt_template": template,
        "seed": seed,
        **{f"sampler.{k}": v for k, v in vars(options).items()},
    }
    return summary, rows
