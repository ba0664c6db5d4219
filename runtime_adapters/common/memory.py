"""Memory measurement of runtime processes (the mesh sizes models by RSS delta)."""

from __future__ import annotations

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
