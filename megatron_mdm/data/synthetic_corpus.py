"""A tiny deterministic English-like corpus so the quickstart needs no external data.

The grammar is deliberately small (a few hundred words, a handful of
templates): a byte-level model of a few million parameters learns its spelling
and word order within minutes, so a quickstart run shows loss falling and
samples becoming readable, which is the point of the demo. Questions and
quoted speech add punctuation and capitalisation patterns beyond plain
declaratives.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

__all__ = ["generate_corpus", "vocabulary", "write_corpus"]

ARTICLES = ("the", "a", "every", "one", "that", "this")

NOUNS = (
    "king", "queen", "child", "dog", "cat", "bird", "river", "mountain", "forest", "city",
    "village", "farmer", "sailor", "soldier", "teacher", "student", "horse", "wolf", "fox",
    "garden", "house", "tower", "bridge", "ship", "road", "door", "window", "book", "letter",
    "song", "storm", "moon", "sun", "star", "tree", "stone", "fire", "lamp", "bell", "market",
)  # fmt: skip

VERBS = (
    "saw", "found", "loved", "feared", "followed", "watched", "carried", "built", "broke",
    "opened", "closed", "painted", "heard", "called", "helped", "chased", "remembered",
    "forgot", "visited", "crossed", "guarded", "lifted", "dropped", "wanted", "touched",
    "kept", "sold", "bought", "read", "greeted",
)  # fmt: skip

INTRANSITIVE = (
    "slept", "laughed", "waited", "sang", "ran", "fell", "smiled", "wept", "danced", "listened",
)  # fmt: skip

ADJECTIVES = (
    "old", "young", "small", "large", "quiet", "loud", "bright", "dark", "cold", "warm",
    "green", "red", "blue", "golden", "silver", "brave", "tired", "happy", "sad", "strange",
    "gentle", "wild", "clever", "proud", "hungry", "empty", "ancient", "tall", "narrow", "wise",
)  # fmt: skip

ADVERBS = (
    "slowly", "quickly", "quietly", "softly", "often", "never", "always", "gladly", "suddenly",
    "carefully", "happily", "sadly", "boldly", "calmly", "again",
)  # fmt: skip

PREPOSITIONS = ("near", "under", "behind", "beside", "across", "over", "inside", "beyond")
TIMES = ("at dawn", "at night", "in the morning", "in winter", "after the rain", "one day")
WH_WORDS = ("where", "why", "when", "how")
SPEECH_VERBS = ("said", "asked", "whispered", "shouted", "replied")
QUESTION_VERBS = ("go", "wait", "sing", "hide", "look")
JOINERS = ("and", "but", "because", "so")
# Words the templates write themselves ("an" replaces "a" before a vowel).
TEMPLATE_WORDS = ("an", "did", "is")


STANDARD = {
    "articles": ARTICLES, "nouns": NOUNS, "verbs": VERBS, "intransitive": INTRANSITIVE,
    "adjectives": ADJECTIVES, "adverbs": ADVERBS, "prepositions": PREPOSITIONS, "times": TIMES,
    "wh_words": WH_WORDS, "speech_verbs": SPEECH_VERBS, "question_verbs": QUESTION_VERBS,
    "joiners": JOINERS,
}  # fmt: skip

# The quickstart's lexicon: the same grammar over a few words of each list (48 words in all, with "an", "did", "is"),
# so a byte-level model of ~1M parameters learns their spelling in a few hundred steps.
SMALL = {
    "articles": ("the", "a"),
    "nouns": ("king", "queen", "child", "dog", "cat", "bird", "fox", "wolf", "river", "tree"),
    "verbs": ("saw", "found", "loved", "followed", "helped", "called"),
    "intransitive": ("slept", "sang", "ran", "smiled"),
    "adjectives": ("old", "young", "small", "happy", "brave", "red"),
    "adverbs": ("slowly", "quietly", "again"),
    "prepositions": ("near", "under"),
    "times": ("at night", "one day"),
    "wh_words": ("where", "why"),
    "speech_verbs": ("said", "asked"),
    "question_verbs": ("go", "sing"),
    "joiners": ("and", "but"),
}
LEXICONS = {"standard": STANDARD, "small": SMALL}


def _lexicon(name: str) -> dict[str, tuple[str, ...]]:
    if name not in LEXICONS:
        raise ValueError(f"lexicon must be one of {sorted(LEXICONS)}, not {name!r}")
    return LEXICONS[name]


class _Grammar:
    """Sentence templates over one RNG, so the whole corpus is a function of the seed."""

    def __init__(self, rng: random.Random, lexicon: str = "standard") -> None:
        self.rng = rng
        self.words = _lexicon(lexicon)

    def pick(self, words: str) -> str:
        """One word (or entry) of the lexicon's list `words`."""
        return self.rng.choice(self.words[words])

    def noun_phrase(self) -> str:
        words = [self.pick("articles")]
        if self.rng.random() < 0.6:
            words.append(self.pick("adjectives"))
        words.append(self.pick("nouns"))
        if words[0] == "a" and words[1][0] in "aeiou":
            words[0] = "an"
        return " ".join(words)

    def place(self) -> str:
        return f"{self.pick('prepositions')} {self.noun_phrase()}"

    def clause(self) -> str:
        """A bare subject-verb(-object) clause; the building block of all templates."""
        subj = self.noun_phrase()
        if self.rng.random() < 0.3:
            verb_part = self.pick("intransitive")
        else:
            verb_part = f"{self.pick('verbs')} {self.noun_phrase()}"
        if self.rng.random() < 0.35:
            adverb = self.pick("adverbs")
            verb_part = (
                f"{adverb} {verb_part}" if self.rng.random() < 0.5 else f"{verb_part} {adverb}"
            )
        if self.rng.random() < 0.3:
            verb_part = f"{verb_part} {self.place()}"
        return f"{subj} {verb_part}"

    def statement(self) -> str:
        return _cap(self.clause()) + "."

    def timed(self) -> str:
        return _cap(f"{self.pick('times')}, {self.clause()}") + "."

    def compound(self) -> str:
        joiner = self.pick("joiners")
        return _cap(f"{self.clause()} {joiner} {self.clause()}") + "."

    def question(self) -> str:
        if self.rng.random() < 0.5:
            return (
                _cap(
                    f"{self.pick('wh_words')} did {self.noun_phrase()} {self.pick('question_verbs')}"
                )
                + "?"
            )
        return _cap(f"is {self.noun_phrase()} {self.pick('adjectives')}") + "?"

    def dialogue(self) -> str:
        inner = self.question() if self.rng.random() < 0.4 else self.statement()
        return _cap(f'{self.noun_phrase()} {self.pick("speech_verbs")}: "{inner}"')

    def sentence(self) -> str:
        templates = (
            (self.statement, 0.40),
            (self.timed, 0.15),
            (self.compound, 0.15),
            (self.question, 0.12),
            (self.dialogue, 0.18),
        )
        fns, weights = zip(*templates, strict=True)
        return self.rng.choices(fns, weights=weights)[0]()


def vocabulary(lexicon: str = "standard") -> frozenset[str]:
    """Every word the corpus of `lexicon` can contain, lower case, without punctuation: the
    words of all the grammar's lists (multi-word entries such as "at dawn" split into their
    words). A sample's word is "of the corpus" when, lower-cased and stripped of punctuation,
    it is in this set."""
    lists = _lexicon(lexicon)
    words = (*lists.values(), TEMPLATE_WORDS)
    return frozenset(word for group in words for entry in group for word in entry.split())


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def generate_corpus(
    num_documents: int = 2000, seed: int = 0, lexicon: str = "standard"
) -> list[str]:
    """``num_documents`` single-line documents of 2-6 sentences over the words of `lexicon`
    (standard | small), identical for equal arguments."""
    if num_documents < 0:
        raise ValueError(f"num_documents={num_documents} must be >= 0")
    grammar = _Grammar(random.Random(seed), lexicon)
    return [
        " ".join(grammar.sentence() for _ in range(grammar.rng.randint(2, 6)))
        for _ in range(num_documents)
    ]


def write_corpus(
    path: str | os.PathLike[str],
    num_documents: int = 2000,
    seed: int = 0,
    lexicon: str = "standard",
) -> Path:
    """Write one document per line; atomic so a crashed or concurrent writer
    (several ranks preparing data) never leaves a truncated corpus behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    docs = generate_corpus(num_documents, seed, lexicon)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the corpus from other users
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for doc in docs:
                f.write(doc + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
