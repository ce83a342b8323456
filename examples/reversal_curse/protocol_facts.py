"""Facts for the two reversal protocols beside `reversal_facts.py` (Berglund et al.'s subsets).

**LLaDA protocol** (`build_pair_dataset`): a fact is a two-part text "<A> | <B>" (A a
person's name, B their description). People of the `pair` subset are trained only as
"<A> | <B>"; people of the `both` subset also as "<B> | <A>" (they show that the format runs
both ways, which an ARM needs to have any chance). Test queries exist for the `pair` people:
forward = given A produce B (both models continue "<A> |"); reverse = given B produce A: the MDM
fills the masked first part in place ("[MASK]... | <B>", an infill), the ARM is prompted with
"<B> |" and must continue. A query is a dict {subset, direction, first, second, person}; the
model-specific prompts come from `prompt_layout`.

**Berglund protocol with pretraining** (`build_pretrain_corpus`): the fine-tuning facts are
`reversal_facts.build_dataset`'s (one direction per test person); before them a model is
pretrained on a generic corpus of *other* people, each stated in several paraphrase templates in
both directions, so the pretrained model has seen that "<name> ... <description>" and
"<description> ... <name>" state the same fact, as the paper fine-tunes pretrained models.
Every template is space-separated words (a word-level tokenizer sees each word as one token),
and the plain "<x> is <y>" form of the fine-tuning facts is among them.

Everything is a function of the seed; names and descriptions of pretraining people never
coincide with those of the test people.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from reversal_facts import ADJECTIVES, FIRST_NAMES, LAST_NAMES, NOUNS, ROLES

from megatron_mdm.utils import atomic_write_text

SEPARATOR = "|"
PAIR, BOTH = "pair", "both"

# "{n}": the name, "{d}": the description
NAME_FIRST = (
    "{n} is {d}",
    "{n} was known as {d}",
    "{n} became {d}",
    "everyone knows {n} as {d}",
    "{n} , {d} , lived long ago",
)
DESCRIPTION_FIRST = (
    "{d} is {n}",
    "{d} was {n}",
    "{d} is called {n}",
    "people say that {d} was {n}",
    "the records show {d} to be {n}",
)


def _name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _description(rng: random.Random) -> str:
    return f"the {rng.choice(ROLES)} the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"


def draw_people(
    rng: random.Random,
    count: int,
    taken: set[str] = frozenset(),  # type: ignore[assignment]
) -> list[tuple[str, str]]:
    """`count` (name, description) pairs, all names and descriptions unique and not in `taken`."""
    names: list[str] = []
    descriptions: list[str] = []
    for _ in range(200 * count + 1000):
        if len(names) == count and len(descriptions) == count:
            break
        if len(names) < count and (n := _name(rng)) not in taken and n not in names:
            names.append(n)
        if len(descriptions) < count and (d := _description(rng)) not in taken:
            if d not in descriptions:
                descriptions.append(d)
    if len(names) < count or len(descriptions) < count:
        raise ValueError(f"cannot draw {count} unique people; ask for fewer")
    return list(zip(names, descriptions, strict=True))


def pair_text(first: str, second: str) -> str:
    return f"{first} {SEPARATOR} {second}"


@dataclass
class PairData:
    seed: int
    people: list[dict]
    train_documents: list[str]
    queries: list[dict]

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """`train.txt` (one document per line) and `dataset.json`, atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        text, meta = out / "train.txt", out / "dataset.json"
        atomic_write_text(text, "".join(doc + "\n" for doc in self.train_documents))
        record = {"seed": self.seed, "people": self.people, "queries": self.queries}
        atomic_write_text(meta, json.dumps({**record, "train_documents": self.train_documents}))
        return text, meta


def build_pair_dataset(seed: int, per_subset: int, both: int) -> PairData:
    """`per_subset` test people trained as "<name> | <description>" only, `both` people trained
    in both orders; forward and reverse queries for the test people."""
    if per_subset < 1 or both < 0:
        raise ValueError(f"need per_subset >= 1 and both >= 0, got {per_subset}, {both}")
    rng = random.Random(seed)
    drawn = draw_people(rng, per_subset + both)
    people = [
        {"name": n, "description": d, "subset": PAIR if i < per_subset else BOTH}
        for i, (n, d) in enumerate(drawn)
    ]
    docs = [pair_text(p["name"], p["description"]) for p in people]
    docs += [pair_text(p["description"], p["name"]) for p in people if p["subset"] == BOTH]
    rng.shuffle(docs)
    queries = []
    for i, p in enumerate(people):
        if p["subset"] != PAIR:
            continue
        for direction in ("forward", "reverse"):
            q = {"subset": PAIR, "direction": direction, "person": i}
            queries.append({**q, "first": p["name"], "second": p["description"]})
    reversed_texts = {pair_text(q["second"], q["first"]) for q in queries}
    leaked = [d for d in docs if d in reversed_texts]
    if leaked:
        raise AssertionError(f"a reverse test fact is a training document: {leaked[0]!r}")
    return PairData(seed, people, docs, queries)


def prompt_layout(query: dict, objective: str) -> tuple[str, str, str]:
    """(text before the answer, answer, text after it) that `objective`'s model is given.

    forward, both models: ("<A> |", B, ""). reverse: MDM ("", A, "| <B>"), filled in place;
    ARM ("<B> |", A, ""), a continuation of the second part."""
    first, second = query["first"], query["second"]
    if query["direction"] == "forward":
        return f"{first} {SEPARATOR}", second, ""
    if objective == "arm":
        return f"{second} {SEPARATOR}", first, ""
    return "", first, f"{SEPARATOR} {second}"


def build_pretrain_corpus(
    seed: int, people: int, per_person: int, taken: set[str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """(documents, the (name, description) pairs): `people` pretraining people whose names and
    descriptions are not in `taken`, each stated in `per_person` paraphrases (distinct
    templates), alternating name-first and description-first so every person is seen both
    ways. Shuffled."""
    if per_person < 2:
        raise ValueError(f"per_person must be >= 2 (both directions), got {per_person}")
    rng = random.Random(seed + 10_000)  # independent of the fine-tuning facts' draws
    drawn = draw_people(rng, people, taken)
    docs = []
    for name, description in drawn:
        forms = (
            rng.sample(NAME_FIRST, len(NAME_FIRST)),
            rng.sample(DESCRIPTION_FIRST, len(DESCRIPTION_FIRST)),
        )
        for k in range(per_person):
            template = forms[k % 2][(k // 2) % len(forms[k % 2])]
            docs.append(template.format(n=name, d=description))
    rng.shuffle(docs)
    return docs, drawn
