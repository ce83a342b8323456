"""One run per output folder: `<output_dir>/run.lock` names the process that owns it.

Two runs writing the same checkpoints, metrics and `latest` pointer would corrupt each other, so
the second one refuses, in one line naming the owner (pid, host, start time). The lock is a small
JSON file created atomically (written under a temporary name, then hard-linked to `run.lock`,
which fails if it exists); the run removes it when it ends, however it ends, short of being killed.
A lock left by a killed run is stale when its host is this machine and its process is gone (or
the pid now belongs to a process started at another time): it is taken over, with a message. A
lock from another host cannot be checked from here; the message says which file to delete.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from megatron_mdm.utils import MDMError

LOCK_NAME = "run.lock"


class RunLockedError(MDMError):
    """Another run owns the output folder."""


def _process_start(pid: int) -> str | None:
    """The start time of `pid` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner() -> dict:
    pid = os.getpid()
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "process_start": _process_start(pid),
    }


def _is_alive(owner: dict) -> bool:
    """True unless the owner is provably gone: same host, and no such process (or a different
    one under the same pid)."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    recorded, now = owner.get("process_start"), _process_start(pid)
    return recorded is None or now is None or recorded == now


def _read(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable or half-written by a process killed mid-write: treat as stale
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict) -> str:
    return f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}"


class RunLock:
    """``with RunLock(output_dir, say): ...`` holds `<output_dir>/run.lock` for the block."""

    def __init__(self, output_dir: str | os.PathLike[str], say=print):
        self.path = Path(output_dir) / LOCK_NAME
        self.say = say
        self.owner = _owner()

    def _try_create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{LOCK_NAME}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.owner) + "\n")
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    def _take_over(self, stale: dict) -> None:
        """Move a stale lock aside (one process wins the rename); put back a lock that turned out
        not to be the stale one we read."""
        aside = self.path.with_name(f".{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read(aside) != stale:
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        else:
            self.say(f"{self.path}: taking over the stale lock of {_describe(stale)}")
        aside.unlink()

    def acquire(self) -> None:
        for _ in range(10):
            if self._try_create():
                return
            owner = _read(self.path)
            if owner is None:
                continue
            if owner and _is_alive(owner):
                raise RunLockedError(
                    f"{self.path.parent}: another run is using this train.output_dir "
                    f"({_describe(owner)}); wait for it, or use another output_dir (if that run "
                    f"is dead, delete {self.path})"
                )
            self._take_over(owner)
        raise RunLockedError(f"{self.path}: could not take the lock (another run keeps racing)")

    def release(self) -> None:
        if _read(self.path) == self.owner:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
