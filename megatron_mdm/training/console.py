"""What a person reads while a run trains: timestamped log lines, and a progress bar that stays
quiet in log files.

Every line carries the local time, so a Slurm log says when a step, an evaluation or a
checkpoint happened. tqdm redraws ten times a second by default, which in a file (stdout or
stderr not a terminal: batch jobs, `| tee`) is a flood of carriage-return updates; there it
redraws at most every ``QUIET_INTERVAL_S`` seconds.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

QUIET_INTERVAL_S = 5.0


def stamped(message: str) -> str:
    return f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}"


def say(message: str) -> None:
    """One timestamped line, printed without breaking a progress bar."""
    tqdm.write(stamped(message))


def progress_bar(total: int, initial: int, enabled: bool, desc: str, file=None) -> tqdm:
    """tqdm on `file` (stderr): fast redraws on a terminal, one every QUIET_INTERVAL_S else."""
    file = sys.stderr if file is None else file
    on_terminal = bool(getattr(file, "isatty", lambda: False)())
    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        desc=desc,
        file=file,
        dynamic_ncols=on_terminal,
        mininterval=0.1 if on_terminal else QUIET_INTERVAL_S,
    )
