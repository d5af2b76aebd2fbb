"""Concurrent CPU stages share the machine's cores: each follows how many stages run now.

When `sycorec demo` runs stages at once it writes the number running to a file named by $SYCOREC_CPU_SHARE. A stage
re-reads it every second and sets torch's thread count to its share of the CPUs: a stage that runs alone (the tiny
base's pretraining, most of the time) uses every core, two stages on two cores one each. Fixed counts are worse
both ways on a 2-core machine: one thread each leaves a lone stage at two-thirds speed, all cores each makes
OpenMP threads spin against each other (measured in bench/cpu_share_bench.py).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from pathlib import Path

SHARE_ENV = "SYCOREC_CPU_SHARE"
PERIOD_S = 1.0


def cpus() -> int:
    return len(os.sched_getaffinity(0))


def threads_for(running: int, available: int) -> int:
    return max(1, available // max(1, running))


def write_share(path: Path, running: int) -> None:
    """Atomically record how many stages run now."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(str(running))
    os.replace(tmp, path)


def apply_share(path: Path) -> None:
    """Set torch's threads to this stage's share (no-op before torch is imported or when the file is unreadable)."""
    torch = sys.modules.get("torch")
    if torch is None or getattr(torch.__spec__, "_initializing", False):  # not imported, or being imported now
        return
    try:
        running = int(path.read_text())
    except (OSError, ValueError):  # between two writes, or the run is over
        return
    wanted = threads_for(running, cpus())
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def follow_share() -> None:
    """With $SYCOREC_CPU_SHARE set, re-apply the share every second (a timer signal: the handler runs in the main
    thread, between torch calls, where the thread count may change)."""
    path = os.environ.get(SHARE_ENV)
    if not path:
        return
    signal.signal(signal.SIGALRM, lambda *_: apply_share(Path(path)))
    signal.setitimer(signal.ITIMER_REAL, PERIOD_S, PERIOD_S)
    atexit.register(signal.setitimer, signal.ITIMER_REAL, 0)  # no alarm after Python restores SIGALRM's default
