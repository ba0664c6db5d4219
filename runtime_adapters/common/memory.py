"""Memory measurement of runtime processes (the mesh sizes models by RSS delta)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil


def process_tree_rss(pid: int) -> int:
    """RSS in bytes of process ``pid`` plus all its descendants.

    Children can exit between listing and reading; those are skipped rather than failing the measurement.
    Raises psutil.NoSuchProcess if ``pid`` itself is gone.
    """
    root = psutil.Process(pid)
    total = int(root.memory_info().rss)
    for child in root.children(recursive=True):
        try:
            total += int(child.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return total


class TreeRss:
    """``process_tree_rss`` of one process, read often: listing its descendants walks every process on the
    machine (a millisecond with a few dozen), so the list is kept for ``relist_s`` and redone when one of
    them exits. Raises psutil.NoSuchProcess if the process itself is gone."""

    def __init__(self, pid: int, relist_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.pid = pid
        self._root = psutil.Process(pid)
        self._relist_s = relist_s
        self._clock = clock
        self._children: list[psutil.Process] = []
        self._listed_at: float | None = None

    def read(self) -> int:
        now = self._clock()
        if self._listed_at is None or now - self._listed_at >= self._relist_s:
            self._children = self._root.children(recursive=True)
            self._listed_at = now
        total = int(self._root.memory_info().rss)
        for child in self._children:
            try:
                total += int(child.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                self._listed_at = None  # list again next time
        return total


def find_listening_pid(port: int) -> int | None:
    """Pid of the process listening on TCP ``port`` (any address), or None.

    Needs enough privilege to see other processes' sockets (the adapter runs as root next to its runtime).
    """
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return int(conn.pid)
    return None


# What the runtime process itself and the adapter need besides models: kept out of the capacity.
CAPACITY_RESERVE_FRACTION = 0.2
CAPACITY_RESERVE_MIN = 256 << 20


def memory_limit_bytes(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The container's memory limit (cgroup v2, else v1), or the machine's memory when unlimited."""
    machine = int(psutil.virtual_memory().total)
    for candidate in (cgroup_root / "memory.max", cgroup_root / "memory" / "memory.limit_in_bytes"):
        try:
            text = candidate.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return min(int(text), machine)  # v1 reports a huge number when unlimited
        return machine  # "max": no limit
    return machine


def default_capacity_bytes(cgroup_root: Path = Path("/sys/fs/cgroup"), runtime_limit_bytes: int = 0) -> int:
    """Model memory to offer: the memory limit minus a reserve for the runtime and the adapter.

    ``runtime_limit_bytes``: the runtime container's limit when the runtime runs in a container of its own
    (Kubernetes hands it to the adapter through the downward API); else this container's cgroup limit.
    """
    limit = runtime_limit_bytes or memory_limit_bytes(cgroup_root)
    reserve = max(CAPACITY_RESERVE_MIN, int(limit * CAPACITY_RESERVE_FRACTION))
    return max(limit - reserve, 0)
