"""CPU time of processes, from the scheduler's nanosecond counts.

psutil's cpu_times counts clock ticks (10 ms here): a proxy that spends 50 µs a request over 200 requests
can read 0. /proc/<pid>/task/*/schedstat gives every thread's time on a CPU in nanoseconds (Linux).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

import psutil


def cpu_seconds(pids: Iterable[int], children: bool = True) -> float:
    """Time on CPU so far of these processes (and, with ``children``, their descendants): every thread's.

    A thread that ended between two readings takes its time with it: read around work done by long-lived
    threads (servers' loops), as the scenarios do."""
    processes = list(pids)
    if children:
        for pid in list(processes):
            with contextlib.suppress(psutil.Error):
                processes += [child.pid for child in psutil.Process(pid).children(recursive=True)]
    total_ns = 0
    for pid in processes:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total_ns += int(stat.read_text().split()[0])
    return total_ns / 1e9
