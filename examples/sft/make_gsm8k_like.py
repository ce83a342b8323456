"""Synthetic GSM8K-like arithmetic word problems, so the SFT example runs from a clean clone.

GSM8K itself is not shipped with the project. This writes problems of the same shape instead:
a short word problem, a chain of reasoning in two or three steps whose every `a op b = c` is
real arithmetic, then `#### answer`, one problem per line in the format SMDM's math SFT reads
and `mdm sft` loads (`question||reasoning #### answer`, sft.format `gsm8k_icot`):

    python examples/sft/make_gsm8k_like.py data/gsm8k_like/train.txt            # 400 problems
    python examples/sft/make_gsm8k_like.py data/gsm8k_like/test.jsonl --jsonl --seed 1

`--jsonl` writes GSM8K's release format instead (`{"question", "answer"}`, one reasoning step
per line, the last line `#### N`), which `mdm eval gsm8k --data` reads and `mdm sft` loads too.

Problem i is a pure function of (seed, i): each draws from its own generator keyed by both, so
`--count 100` writes the first 100 problems of `--count 400`, and nothing depends on the order
of generation. Numbers stay small (answers below 10,000) and divisions exact, as in GSM8K.
This lives beside the example, not in `megatron_mdm`, because only the example needs it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

from megatron_mdm.utils import atomic_write_text, stable_seed

NAMES = (
    "Ava", "Ben", "Carla", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jonah", "Kira",
    "Liam", "Mei", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera",
)  # fmt: skip
GOODS = (
    ("notebook", "notebooks"), ("pencil", "pencils"), ("apple", "apples"), ("ticket", "tickets"),
    ("book", "books"), ("candle", "candles"), ("shirt", "shirts"), ("cup", "cups"),
)  # fmt: skip
BAKED = ("cookies", "muffins", "cupcakes", "rolls", "pies")
MACHINES = (("printer", "pages"), ("bakery oven", "loaves"), ("factory line", "toys"))
PURCHASES = ("bike", "game", "jacket", "lamp", "backpack", "guitar")

# (question, reasoning steps, answer)
Problem = tuple[str, list[str], int]


def _shopping(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    (one, many), (one2, many2) = rng.sample(GOODS, 2)
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    p, q = rng.randint(2, 25), rng.randint(2, 25)
    total = a * p + b * q
    question = (
        f"{name} buys {a} {many} at ${p} each and {b} {many2} at ${q} each. "
        f"How much does {name} spend in total?"
    )
    steps = [
        f"The {many} cost {a} * {p} = ${a * p}.",
        f"The {many2} cost {b} * {q} = ${b * q}.",
        f"In total {name} spends {a * p} + {b * q} = ${total}.",
    ]
    return question, steps, total


def _give_and_buy(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    _, many = rng.choice(GOODS)
    have = rng.randint(20, 90)
    give = rng.randint(2, have - 5)
    buy = rng.randint(2, 40)
    left = have - give
    question = (
        f"{name} has {have} {many}. {name} gives {give} of them to a friend and then buys "
        f"{buy} more. How many {many} does {name} have now?"
    )
    steps = [
        f"After giving some away, {name} has {have} - {give} = {left} {many}.",
        f"After buying more, {name} has {left} + {buy} = {left + buy} {many}.",
    ]
    return question, steps, left + buy


def _rate(rng: random.Random) -> Problem:
    machine, things = rng.choice(MACHINES)
    per_hour, hours, days = rng.randint(5, 60), rng.randint(2, 10), rng.randint(2, 7)
    daily = per_hour * hours
    question = (
        f"A {machine} makes {per_hour} {things} per hour. It runs {hours} hours a day. "
        f"How many {things} does it make in {days} days?"
    )
    steps = [
        f"In one day it makes {per_hour} * {hours} = {daily} {things}.",
        f"In {days} days it makes {daily} * {days} = {daily * days} {things}.",
    ]
    return question, steps, daily * days


def _sharing(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    food = rng.choice(BAKED)
    friends, each, kept = rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 10)
    shared = friends * each
    baked = shared + kept
    question = (
        f"{name} bakes {baked} {food}, keeps {kept} and shares the rest equally among "
        f"{friends} friends. How many {food} does each friend get?"
    )
    steps = [
        f"{name} shares {baked} - {kept} = {shared} {food}.",
        f"Each friend gets {shared} / {friends} = {each} {food}.",
    ]
    return question, steps, each


def _savings(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    thing = rng.choice(PURCHASES)
    weekly, weeks = rng.randint(5, 50), rng.randint(3, 20)
    saved = weekly * weeks
    price = rng.randint(1, saved - 1)
    question = (
        f"{name} saves ${weekly} every week for {weeks} weeks, then buys a {thing} for "
        f"${price}. How much money does {name} have left?"
    )
    steps = [
        f"{name} saves {weekly} * {weeks} = ${saved}.",
        f"After buying the {thing}, {name} has {saved} - {price} = ${saved - price} left.",
    ]
    return question, steps, saved - price


def _discount(rng: random.Random) -> Problem:
    _, many = rng.choice(GOODS)
    percent = rng.choice((10, 20, 25, 50))
    price = rng.randint(1, 20) * 20  # a multiple of 20: every discount above is whole dollars
    count = rng.randint(2, 6)
    off = percent * price // 100
    sale = price - off
    question = (
        f"A pack of {many} costs ${price}. This week it is {percent}% off. "
        f"How much do {count} packs cost this week?"
    )
    steps = [
        f"The discount is {percent} / 100 * {price} = ${off}.",
        f"One pack costs {price} - {off} = ${sale}.",
        f"{count} packs cost {sale} * {count} = ${sale * count}.",
    ]
    return question, steps, sale * count


TEMPLATES: tuple[Callable[[random.Random], Problem], ...] = (
    _shopping,
    _give_and_buy,
    _rate,
    _sharing,
    _savings,
    _discount,
)


def problem(seed: int, index: int) -> Problem:
    """Problem `index` of the set made from `seed`: its own generator, keyed by both."""
    rng = random.Random(stable_seed("gsm8k-like", seed, index))
    return rng.choice(TEMPLATES)(rng)


def icot_line(question: str, steps: list[str], answer: int) -> str:
    """`question||reasoning #### answer`: SMDM's one-line GSM8K format."""
    return f"{question}||{' '.join(steps)} #### {answer}"


def release_record(question: str, steps: list[str], answer: int) -> dict:
    """GSM8K's released jsonl record: one step per line, the last line `#### N`."""
    return {"question": question, "answer": "\n".join([*steps, f"#### {answer}"])}


def render(seed: int, count: int, jsonl: bool = False) -> str:
    lines = []
    for i in range(count):
        q, steps, answer = problem(seed, i)
        if jsonl:
            lines.append(json.dumps(release_record(q, steps, answer)))
        else:
            lines.append(icot_line(q, steps, answer))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the file to write (its folder is created)")
    parser.add_argument("--count", type=int, default=400, help="number of problems (400)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jsonl", action="store_true", help="GSM8K's release format instead")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be >= 1, got {args.count}")
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, render(args.seed, args.count, args.jsonl))
    except OSError as exc:
        print(f"make_gsm8k_like: error: {out}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"wrote {args.count} problems to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
