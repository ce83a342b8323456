"""The config error and the small value checks every section's ``validate`` shares.

A check reports through ``fail(key, message)``, which raises a :class:`ConfigError` naming the
config's source and the dotted ``key``; the first problem found is the one reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NoReturn

from megatron_mdm.utils import MDMError

__all__ = [
    "ConfigError",
    "Fail",
    "finite",
    "non_negative",
    "positive",
    "short",
    "step_schedule",
    "within",
]


class ConfigError(MDMError):
    """A bad configuration, reported as one line: ``source: key: message``.

    One line because it ends up in the log of every rank of a job and must stay greppable.
    """

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        self.message = message
        super().__init__(": ".join(p for p in (source, key, message) if p))


Fail = Callable[[str, str], NoReturn]
"""``fail(key, message)``: raise the ConfigError for dotted ``key`` of the config being checked."""


def short(value: Any) -> str:
    """``repr(value)``, cut to 60 characters so that a long list keeps the message one line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def positive(fail: Fail, key: str, value: float | None) -> None:
    """``value > 0`` (None passes: an optional setting left unset)."""
    if value is not None and not value > 0:
        fail(key, f"must be > 0, got {value}")


def non_negative(fail: Fail, key: str, value: float | None) -> None:
    """``value >= 0`` (None passes)."""
    if value is not None and not value >= 0:
        fail(key, f"must be >= 0, got {value}")


def finite(fail: Fail, key: str, value: float | None) -> None:
    """Neither inf nor nan (None passes): YAML reads ``.inf`` and ``.nan`` as floats."""
    if value is not None and not math.isfinite(value):
        fail(key, f"must be finite, got {value}")


def within(fail: Fail, key: str, value: float, *, closed: bool = False) -> None:
    """``0 <= value < 1`` (``closed``: ``<= 1``), the range of a probability or a fraction."""
    if not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
        fail(key, f"must be in [0, 1{']' if closed else ')'}, got {value}")


def step_schedule(fail: Fail, key: str, schedule: list | None) -> None:
    """A piecewise-constant schedule `[[step, value], ...]` of ints: from step 0, steps
    increasing, values >= 1 (None passes)."""
    if schedule is None:
        return
    if not schedule:
        fail(key, "must list at least one [step, value] pair (or be null)")
    last = -1
    for i, pair in enumerate(schedule):
        ints = isinstance(pair, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in pair
        )
        if not ints or len(pair) != 2:
            fail(key, f"item {i} should be a [step, value] pair of ints, got {short(pair)}")
        step, size = pair
        if i == 0 and step != 0:
            fail(key, f"must start at step 0, got {short(pair)}")
        if step <= last:
            fail(key, f"steps must increase, got {step} after {last}")
        if size < 1:
            fail(key, f"item {i}: value must be >= 1, got {size}")
        last = step
