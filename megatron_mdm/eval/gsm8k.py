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
- Protocol `single` (default): one generation per problem, greedy by default (temperature 0),
  with the sampler options of `mdm generate`.
- Protocol `two_stage` (`--two-stage`), for a model fine-tuned with `sft.gsm8k_split_cot` (SMDM's
  two samples per problem): stage 1 generates the chain of thought from the bare question, stage 2
  generates the short answer (` #### N`) from question + chain of thought. Both prompts are built
  as token ids by the SFT module's own helpers (`gsm8k_question_prompt`,
  `gsm8k_answer_prompt_ids`), so they are exactly the prompts of the two training samples; the
  chain of thought is the stage-1 ids cut at the first EOS (where training put the EOS). Stage 2
  is one block of `--answer-gen-length` tokens. The graded text is the chain of thought followed
  by the answer, decoded together (the SFT line's response).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path

from megatron_mdm.data.sft import gsm8k_answer_prompt_ids, gsm8k_question_prompt
from megatron_mdm.eval.errors import EvalError
from megatron_mdm.inference.batching import generate_many
from megatron_mdm.inference.sampling_config import SamplingConfig
from megatron_mdm.utils import MDMError, atomic_write_text, stable_seed

DEFAULT_TEMPLATE = "Question: {question}"
PROTOCOLS = ("single", "two_stage")
DEFAULT_ANSWER_GEN_LENGTH = 32  # " #### 1,234,567" is 15 bytes: room for any GSM8K answer

# (prompt ids, sampling config, seed) -> generated ids cut at the first EOS
GenerateIds = Callable[[list[int], SamplingConfig, int], list[int]]
# (prompts' ids, sampling config, one seed per prompt) -> each one's generated ids cut at EOS
GenerateBatch = Callable[[list[list[int]], SamplingConfig, list[int]], list[list[int]]]
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
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def answer_stage_options(
    options: SamplingConfig, gen_length: int, steps: int | None
) -> SamplingConfig:
    """Stage 2's sampler options: stage 1's, with one block of `gen_length` tokens (the answer is
    a few tokens; a stage-1 block length need not divide it)."""
    return options.replace(gen_length=gen_length, steps=steps or gen_length, block_length=None)


def solve_two_stage(
    question: str,
    tokenizer,
    generate: GenerateIds,
    options: SamplingConfig,
    answer_options: SamplingConfig,
    seeds: tuple[int, int],
) -> dict:
    """SMDM's two-stage answer to one problem, as token ids and text.

    Stage 1 prompt: the tokens of :func:`gsm8k_question_prompt`. Stage 2 prompt:
    :func:`gsm8k_answer_prompt_ids` of those and the stage-1 ids (already cut at EOS by
    `generate`). `generate` is the sampler (``generate_ids`` bound to a model).
    """

    def one_by_one(prompts: list[list[int]], opts: SamplingConfig, seeds: list[int]):
        return [list(generate(p, opts, s)) for p, s in zip(prompts, seeds)]

    [row] = solve_two_stage_batch(
        [question], tokenizer, one_by_one, options, answer_options, [seeds]
    )
    return row


def solve_two_stage_batch(
    questions: list[str],
    tokenizer,
    generate: GenerateBatch,
    options: SamplingConfig,
    answer_options: SamplingConfig,
    seeds: list[tuple[int, int]],
) -> list[dict]:
    """`solve_two_stage` for several problems: stage 1 of all of them in one batched call of
    `generate` (prompt ids, options, per-prompt seeds -> ids cut at EOS), then stage 2."""
    prompts = [gsm8k_question_prompt(q) for q in questions]
    prompt_ids = [list(tokenizer.encode(p)) for p in prompts]
    cots = generate(prompt_ids, options, [s[0] for s in seeds])
    answer_prompts = [gsm8k_answer_prompt_ids(p, list(c)) for p, c in zip(prompt_ids, cots)]
    answers = generate(answer_prompts, answer_options, [s[1] for s in seeds])
    rows = []
    for prompt, ids, cot, answer_prompt, answer in zip(
        prompts, prompt_ids, cots, answer_prompts, answers
    ):
        cot_ids, answer_ids = list(cot), list(answer)
        rows.append(
            {
                "prompt": prompt,
                "prompt_ids": ids,
                "chain_of_thought": tokenizer.decode(cot_ids),
                "chain_of_thought_ids": cot_ids,
                "answer_prompt_ids": answer_prompt,
                "generation": tokenizer.decode(answer_ids),
                "generation_ids": answer_ids,
                "response": tokenizer.decode(cot_ids + answer_ids),
            }
        )
    return rows


def _solve_batch(
    model, problems: list[dict], options, answer_options, template, protocol, seeds, batch_size
) -> list[tuple[dict, str]]:
    """(row, graded text) of each problem, the problems generated in batches of batch_size."""

    def generate(prompts: list[list[int]], opts: SamplingConfig, row_seeds: list[int]):
        done = generate_many(model, prompts, opts, batch_size, row_seeds)
        return [c.ids for c in done]

    questions = [p["question"] for p in problems]
    if protocol == "two_stage":
        rows = solve_two_stage_batch(
            questions, model.tokenizer, generate, options, answer_options, seeds
        )
        return [(row, row["response"]) for row in rows]
    prompts = [template.replace("{question}", q) for q in questions]
    ids = [list(model.tokenizer.encode(p)) for p in prompts]
    out = generate(ids, options, [s[0] for s in seeds])
    texts = [model.tokenizer.decode(g) for g in out]
    return [({"prompt": p, "generation": t}, t) for p, t in zip(prompts, texts)]


def evaluate_gsm8k(
    model,
    problems: list[dict],
    options: SamplingConfig,
    template: str = DEFAULT_TEMPLATE,
    seed: int = 0,
    progress: bool = True,
    protocol: str = "single",
    answer_gen_length: int = DEFAULT_ANSWER_GEN_LENGTH,
    answer_steps: int | None = None,
    batch_size: int = 8,
) -> tuple[dict, list[dict]]:
    """(summary, one row per problem). Each problem's sampling seed is keyed by its index (stage
    1 of `two_stage` uses the `single` seed, so both protocols share the first generation).
    Problems are generated `batch_size` at a time (`inference.batching`: batch-invariant, so
    the batch size changes no answer)."""
    from tqdm import tqdm

    if protocol not in PROTOCOLS:
        raise EvalError(f"--protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    if "{question}" not in template:
        raise EvalError(f"--prompt-template {template!r}: must contain {{question}}")
    if batch_size < 1:
        raise EvalError(f"--batch-size {batch_size}: must be >= 1")
    if answer_gen_length < 1 or (answer_steps is not None and answer_steps < 1):
        raise EvalError(
            f"--answer-gen-length {answer_gen_length} / --answer-steps {answer_steps}: must be >= 1"
        )
    answer_options = answer_stage_options(options, answer_gen_length, answer_steps)
    rows, correct, flexible = [], 0, 0
    bar = tqdm(
        total=len(problems), desc=f"gsm8k ({protocol})", unit="problem", disable=not progress
    )
    for first in range(0, len(problems), batch_size):
        chunk = problems[first : first + batch_size]
        seeds = [
            (stable_seed(seed, "gsm8k", i), stable_seed(seed, "gsm8k-answer", i))
            for i in range(first, first + len(chunk))
        ]
        try:
            solved = _solve_batch(
                model, chunk, options, answer_options, template, protocol, seeds, batch_size
            )
        except MDMError as exc:
            raise EvalError(str(exc)) from None
        for i, problem, (row, graded_text) in zip(range(first, len(problems)), chunk, solved):
            graded = grade(graded_text, problem["target"])
            correct += graded["correct"]
            flexible += graded["correct_flexible"]
            rows.append(
                {
                    "index": i,
                    "question": problem["question"],
                    **row,
                    "target": problem["target"],
                    **graded,
                }
            )
        bar.update(len(chunk))
        bar.set_postfix(acc=f"{correct / len(rows):.3f}")
    bar.close()
    n = len(rows)
    summary = {
        "accuracy": correct / n,
        "accuracy_flexible": flexible / n,
        "correct": correct,
        "problems": n,
        "protocol": protocol,
        "seed": seed,
        **{f"sampler.{k}": v for k, v in vars(options).items()},
    }
    if protocol == "two_stage":
        summary.update({f"answer_sampler.{k}": v for k, v in vars(answer_options).items()})
    else:
        summary["prompt_template"] = template
    return summary, rows
