"""The leaf every other module may import: one error base, keyed random generators, atomic writes.

- :class:`MDMError` is the base of every error meant for a person (bad config, bad file, bad
  argument). Its message is one line naming the file, key or value at fault; ``mdm`` catches the
  base class in one place and prints it without a traceback.
- :func:`stable_seed` / :func:`keyed_generator`: every random draw of the data path (masks, t,
  crops, SFT order, evaluation samples) and of initialisation comes from a generator seeded by a
  *key* (the experiment seed plus what the draw is for), never from a stream carried across
  steps, ranks or resumes. That is what makes masks and weights layout-independent and resumes
  bit-exact (docs/design.md §3, §9).
- ``atomic_*``: a file or folder appears under its final name only once complete (write to a
  temporary name beside it, then rename), so a crash never leaves half a file that looks whole.
  Temporary names carry the pid, so two processes writing the same target do not collide.

No torch at import time: ``megatron_mdm.config`` imports this module on machines without torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "QUIET_IMPORT_WARNINGS",
    "MDMError",
    "atomic_directory",
    "atomic_path",
    "atomic_write_json",
    "atomic_write_text",
    "keyed_generator",
    "one_line",
    "stable_seed",
    "strip_ansi",
]


# megatron-core announces at import time that optional accelerators are absent; on CPU (and with
# the local spec) that is the expected set-up, not news. Commands filter it with this pattern.
QUIET_IMPORT_WARNINGS = r".*(Apex is not installed|Transformer Engine and Apex are not installed).*"


# Terminal control sequences (colours, cursor moves) that library messages carry, e.g.
# DeepSpeed's yellow "[WARNING]": in a one-line error they are noise in logs and greps.
_ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences."""
    return _ANSI_ESCAPE.sub("", str(text))


def one_line(text: str) -> str:
    """``text`` with every line break (and the blanks around it) folded into one space, and
    without terminal escape sequences."""
    return re.sub(r"\s*\n\s*", " ", strip_ansi(text)).strip()


class MDMError(ValueError):
    """A mistake in what a person gave us (config, file, argument), reported as one line.

    Subclasses name the area (``ConfigError``, ``CheckpointError``, ...); the command line
    catches this base class once and prints ``mdm: error: <message>`` with exit status 2.
    A ValueError, so callers that predate the base class keep working.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(one_line(message))


# ---------------------------------------------------------------------------------------------
# Keyed randomness


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (their ``repr``), the same in every
    process, Python version and run: unlike ``hash()``, which is salted per process."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def keyed_generator(*parts: Any, device: str | None = None) -> torch.Generator:
    """A fresh CPU (or ``device``) torch generator seeded by :func:`stable_seed` of ``parts``."""
    import torch  # on use: see the module docstring

    gen = torch.Generator() if device is None else torch.Generator(device=device)
    return gen.manual_seed(stable_seed(*parts))


# ---------------------------------------------------------------------------------------------
# Atomic writes


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for any writer (``torch.save``, a library's
    ``save``); on success it is renamed to ``path``, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike[str], data: Any, **dump_options: Any) -> None:
    """JSON (``indent=2`` unless told otherwise) and a final newline, atomically."""
    dump_options.setdefault("indent", 2)
    atomic_write_text(path, json.dumps(data, **dump_options) + "\n")


@contextlib.contextmanager
def atomic_directory(
    out_dir: str | os.PathLike[str], *, exists_error: type[Exception] | None = None
) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out_dir``; rename it to ``out_dir`` on success,
    remove it on failure. ``out_dir`` must not exist yet: ``exists_error`` (default
    :class:`MDMError`) is raised naming it. The folder gets the permissions a plain ``mkdir``
    would (``tempfile.mkdtemp`` makes it 0700, which would lock colleagues out of an export)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise (exists_error or MDMError)(f"{out_dir}: already exists (refusing to overwrite)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        staging.chmod(0o777 & ~_current_umask())
        yield staging
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
