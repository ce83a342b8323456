"""Synthetic facts about fictitious people for the reversal-curse experiment (Berglund et al. 2023).

Every person gets a unique invented name (first + last name) and a unique templated description
("the composer of the silver lighthouse"). Every word of every person appears in some training
document, so a word-level tokenizer trained on the documents covers all queries. People fall into three subsets, as in the paper's
experiment 1:

- `name_to_description`: trained only as "<name> is <description>"
- `description_to_name`: trained only as "<description> is <name>"
- `both`: trained in both orders; these teach the model that both orders of the format exist.

Test queries exist for the first two subsets in both directions. "forward" is the direction the
fact was trained in, "reverse" the other one (never seen for that person): for a
`name_to_description` person the reverse query is "<description> is" -> "<name>"; for a
`description_to_name` person it is "<name> is" -> "<description>". The description string is
the same in both positions (no capitalisation change), so a reverse query differs from the
training text only by the order of the two parts around " is ".

Everything is a function of the seed (one `random.Random`), and `build_dataset` asserts that no
training document contains the reversed statement of a test fact, so a split can never leak.
This lives beside the example, not in `megatron_mdm`, because it is specific to this experiment.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from megatron_mdm.utils import atomic_write_text

__all__ = [
    "SUBSETS",
    "TEST_SUBSETS",
    "Person",
    "Query",
    "ReversalData",
    "build_dataset",
    "statement",
]

FIRST_NAMES = (
    "Daphne", "Aldric", "Mirela", "Osric", "Tamsin", "Corwin", "Ysolde", "Bertil", "Linnea",
    "Caspian", "Odile", "Fenwick", "Rosalind", "Thaddeus", "Elowen", "Grigor", "Ismay", "Leopold",
    "Marisol", "Percival", "Quilla", "Rurik", "Sabine", "Tobias", "Ulrika", "Valentin", "Wilhelmina",
    "Xavier", "Yvaine", "Zephyr", "Anselm", "Brigida", "Cosimo", "Delphine", "Emeric", "Florian",
)  # fmt: skip

LAST_NAMES = (
    "Barrington", "Ashdown", "Crowther", "Delacroix", "Everhart", "Fairweather", "Galloway",
    "Hargreave", "Ironwood", "Jessop", "Kilbride", "Lockhart", "Merriweather", "Northcott",
    "Oakenshaw", "Pemberton", "Quenneville", "Ravensworth", "Stirling", "Thistlewood", "Underhill",
    "Vandermeer", "Whitlock", "Yarborough", "Zellweger", "Ambrose", "Blackwood", "Coldridge",
)  # fmt: skip

ROLES = (
    "composer of", "architect of", "first pilot of", "founder of", "author of", "inventor of",
    "captain of", "director of", "painter of", "keeper of", "builder of", "discoverer of",
)  # fmt: skip

ADJECTIVES = (
    "silver", "hidden", "floating", "frozen", "singing", "crimson", "endless", "sunken",
    "whispering", "golden", "broken", "invisible", "burning", "northern", "painted", "ancient",
)  # fmt: skip

NOUNS = (
    "lighthouse", "orchestra", "library", "observatory", "railway", "garden", "cathedral",
    "airship", "labyrinth", "museum", "harbour", "bridge", "clocktower", "submarine", "theatre",
    "archive",
)  # fmt: skip

NAME_TO_DESCRIPTION = "name_to_description"
DESCRIPTION_TO_NAME = "description_to_name"
BOTH = "both"
SUBSETS = (NAME_TO_DESCRIPTION, DESCRIPTION_TO_NAME, BOTH)
TEST_SUBSETS = (NAME_TO_DESCRIPTION, DESCRIPTION_TO_NAME)
# The direction each test subset was trained in: "name" first or "description" first.
TRAINED_ORDER = {NAME_TO_DESCRIPTION: "name", DESCRIPTION_TO_NAME: "description"}


@dataclass(frozen=True)
class Person:
    name: str
    description: str
    subset: str


@dataclass(frozen=True)
class Query:
    """One test question: `prompt` ("<x> is") should be completed by " " + `answer`."""

    subset: str
    direction: str  # "forward": the trained order; "reverse": the order never trained
    prompt: str
    answer: str
    person: int  # index into ReversalData.people

    @property
    def text(self) -> str:
        """The full statement the query asks for."""
        return f"{self.prompt} {self.answer}"


def statement(first: str, second: str) -> str:
    """The only fact template, "<first> is <second>" (EOS ends the document, no period: with a
    word-level tokenizer "Barrington." would be a different token from "Barrington"). One
    template keeps the model small and makes the reverse statement differ from the trained one
    only in order."""
    return f"{first} is {second}"


def _split_statement(first: str, second: str) -> tuple[str, str]:
    """(prompt, answer) of `statement(first, second)`, joined by one space."""
    return f"{first} is", second


@dataclass
class ReversalData:
    seed: int
    people: list[Person]
    train_documents: list[str]
    queries: list[Query]

    def queries_for(self, direction: str, subset: str | None = None) -> list[Query]:
        return [
            q
            for q in self.queries
            if q.direction == direction and (subset is None or q.subset == subset)
        ]

    def to_json(self) -> dict:
        return {
            "seed": self.seed,
            "people": [asdict(p) for p in self.people],
            "train_documents": self.train_documents,
            "queries": [asdict(q) for q in self.queries],
        }

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """`train.txt` (one document per line, what `mdm train data.text_file=` reads) and
        `dataset.json` (everything), each written atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        text = out / "train.txt"
        meta = out / "dataset.json"
        _atomic_write(text, "".join(doc + "\n" for doc in self.train_documents))
        _atomic_write(meta, json.dumps(self.to_json(), indent=1) + "\n")
        return text, meta


def _atomic_write(path: Path, content: str) -> None:
    atomic_write_text(path, content)


def _unique_draws(rng: random.Random, count: int, make, what: str) -> list[str]:
    pool_limit = 100 * count + 1000
    seen: dict[str, None] = {}
    for _ in range(pool_limit):
        if len(seen) == count:
            break
        seen.setdefault(make(), None)
    if len(seen) < count:
        raise ValueError(f"cannot draw {count} unique {what}; ask for fewer people")
    return list(seen)


def _make_people(rng: random.Random, counts: dict[str, int]) -> list[Person]:
    total = sum(counts.values())
    names = _unique_draws(
        rng, total, lambda: f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}", "names"
    )
    descriptions = _unique_draws(
        rng,
        total,
        lambda: f"the {rng.choice(ROLES)} the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}",
        "descriptions",
    )
    people, i = [], 0
    for subset in SUBSETS:
        for _ in range(counts[subset]):
            people.append(Person(names[i], descriptions[i], subset))
            i += 1
    return people


def _queries(people: list[Person]) -> list[Query]:
    out = []
    for idx, p in enumerate(people):
        if p.subset not in TEST_SUBSETS:
            continue
        name_first = _split_statement(p.name, p.description)
        desc_first = _split_statement(p.description, p.name)
        trained, untrained = (
            (name_first, desc_first)
            if TRAINED_ORDER[p.subset] == "name"
            else (desc_first, name_first)
        )
        out.append(Query(p.subset, "forward", *trained, person=idx))
        out.append(Query(p.subset, "reverse", *untrained, person=idx))
    return out


def _documents(people: list[Person], rng: random.Random) -> list[str]:
    docs = []
    for p in people:
        if p.subset in (NAME_TO_DESCRIPTION, BOTH):
            docs.append(statement(p.name, p.description))
        if p.subset in (DESCRIPTION_TO_NAME, BOTH):
            docs.append(statement(p.description, p.name))
    rng.shuffle(docs)
    return docs


def assert_no_leak(train_documents: list[str], queries: list[Query]) -> None:
    """No training document may contain a reverse query's full statement (prompt + answer)."""
    for q in queries:
        if q.direction != "reverse":
            continue
        reversed_fact = q.text
        for doc in train_documents:
            if reversed_fact in doc:
                raise AssertionError(f"test fact leaked into training: {doc!r}")


def build_dataset(seed: int, per_subset: int, both: int | None = None) -> ReversalData:
    """`per_subset` people in each test subset, `both` (default `per_subset`) in the both-orders
    subset; a function of `seed` only."""
    if per_subset < 1:
        raise ValueError(f"per_subset must be >= 1, got {per_subset}")
    both = per_subset if both is None else both
    if both < 0:
        raise ValueError(f"both must be >= 0, got {both}")
    rng = random.Random(seed)
    counts = {NAME_TO_DESCRIPTION: per_subset, DESCRIPTION_TO_NAME: per_subset, BOTH: both}
    people = _make_people(rng, counts)
    docs = _documents(people, rng)
    queries = _queries(people)
    assert_no_leak(docs, queries)
    return ReversalData(seed=seed, people=people, train_documents=docs, queries=queries)
