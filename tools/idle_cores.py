"""Print how many threads a small CPU job should use now: the cores idle over the next half
second (from /proc/stat), at least 1 and at most `--max` (default 4).

Why not the load average: it trails by a minute, so right after another job ends it still
reports the machine as busy; and why not always every core: on a machine that is already busy,
threads per op oversubscribe the cores and a small model's steps stall (measured 15x slower
with two threads at load 7-13). Used by `make quickstart` for OMP_NUM_THREADS.
"""

from __future__ import annotations

import argparse
import os
import time


def _cpu_times() -> tuple[int, int] | None:
    """(idle + iowait, total) jiffies of all CPUs, or None where /proc/stat is not there."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + fields[4], sum(fields[:8])


def idle_cores(interval: float = 0.5) -> float:
    """Cores idle over `interval` seconds; the load average's estimate where /proc is absent."""
    cores = os.cpu_count() or 1
    before = _cpu_times()
    if before is None:
        return max(0.0, cores - os.getloadavg()[0])
    time.sleep(interval)
    after = _cpu_times()
    total = after[1] - before[1]
    return cores * (after[0] - before[0]) / total if total > 0 else float(cores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=4, help="most threads to suggest")
    args = parser.parse_args()
    print(max(1, min(args.max, int(idle_cores() + 0.25))))


if __name__ == "__main__":
    main()
