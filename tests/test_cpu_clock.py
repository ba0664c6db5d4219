"""load_tests/cpu.py: time on CPU from the scheduler's nanosecond counts, children included on request."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from load_tests.cpu import cpu_seconds

SPIN_ON_REQUEST = """
import sys, time
print("ready", flush=True)
for _ in sys.stdin:
    end = time.perf_counter() + 0.003
    while time.perf_counter() < end:
        pass
    print("done", flush=True)
"""


def test_three_milliseconds_of_another_process_show() -> None:
    # another process, read while it sleeps: a running thread's count is brought up to date only at a tick
    child = subprocess.Popen(
        [sys.executable, "-c", SPIN_ON_REQUEST], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        time.sleep(0.05)
        before = cpu_seconds([child.pid])
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "done\n"
        time.sleep(0.05)
        spent = cpu_seconds([child.pid]) - before
        assert 0.0025 < spent < 0.05  # clock ticks (10 ms) would read 0 or 10 ms
    finally:
        child.kill()
        child.wait()


def test_children_are_counted_only_when_asked() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.time() + 0.3\nwhile time.time() < end: pass\ntime.sleep(30)",
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while cpu_seconds([child.pid], children=False) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        alone = cpu_seconds([os.getpid()], children=False)
        with_children = cpu_seconds([os.getpid()])
        assert with_children - alone >= 0.25
    finally:
        child.kill()
        child.wait()
