"""Graceful stop on SIGTERM / SIGUSR1 (Slurm's pre-emption warning, `--signal=USR1@T`).

The handler only records the signal; the training loop checks after each step, all ranks agree
through one all-reduce (a signal may reach ranks at different moments, and every rank must take
part in the checkpoint), then the loop saves and returns, so the process exits 0 and a requeued
job resumes with `checkpoint.resume=auto`.
"""

from __future__ import annotations

import signal
import threading

import torch

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionWatcher:
    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> PreemptionWatcher:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def should_stop(self, device) -> bool:
        """True on every rank as soon as any rank has received a stop signal."""
        flag = torch.tensor([0 if self.received is None else 1], device=device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    @property
    def name(self) -> str:
        return (
            signal.Signals(self.received).name if self.received is not None else "a peer's signal"
        )
