"""Graceful stop on SIGTERM, SIGUSR1 (Slurm's pre-emption warning, `--signal=USR1@T`) and SIGINT
(Ctrl-C); a second Ctrl-C aborts at once.

The command installs the handlers first thing, before the slow imports and the set-up, so a
signal at any moment is a clean exit. A handler only records the signal; during start-up the run
checks at a few points (``stop_if_requested``: nothing trained yet, so nothing to save, exit 0),
and the training loop checks after each step, where all ranks agree through one all-reduce (a
signal may reach ranks at different moments, and every rank must take part in the checkpoint);
the loop then saves and returns, so the process exits 0 and a requeued job resumes with
`checkpoint.resume=auto`. A second SIGINT raises KeyboardInterrupt wherever the program is (the
command prints one line and exits 130).

torch is imported on use: the command arms this before anything slow is imported.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StoppedBeforeTraining(Exception):
    """A stop signal arrived during start-up: no step was taken, so there is nothing to save and
    the command exits 0 (not an MDMError: nothing is wrong)."""


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
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt  # the second Ctrl-C: abort now
        if self.received is None:
            self.received = signum

    def should_stop(self, device) -> bool:
        """True on every rank as soon as any rank has received a stop signal (a collective)."""
        import torch

        flag = torch.tensor([0 if self.received is None else 1], device=device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def stop_if_requested(self, device=None) -> None:
        """Start-up check: raise StoppedBeforeTraining if a stop signal has arrived (on any rank
        once ``device`` is given and the process group is up; on this process otherwise)."""
        stop = self.should_stop(device) if device is not None else self.received is not None
        if stop:
            raise StoppedBeforeTraining(
                f"received {self.name} during start-up: exiting before the first step "
                "(nothing to save)"
            )

    @property
    def name(self) -> str:
        return (
            signal.Signals(self.received).name if self.received is not None else "a peer's signal"
        )
