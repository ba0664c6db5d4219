"""MLServer's scanned repository in a local mesh is in memory, as in the pool's manifest; removed at stop."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.cluster import memory_folder


@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="no writable tmpfs at /dev/shm")
def test_the_folder_is_on_tmpfs_and_apart_per_pod(tmp_path: Path) -> None:
    folder_a, scratch_a = memory_folder("pod-a", tmp_path / "fallback")
    _, scratch_b = memory_folder("pod-a", tmp_path / "fallback")
    try:
        assert scratch_a is not None and scratch_b is not None and scratch_a != scratch_b
        assert folder_a.parent == scratch_a and scratch_a.parent == Path("/dev/shm")
        mounts = Path("/proc/mounts").read_text().split("\n")
        assert any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in mounts if line)
    finally:
        for scratch in (scratch_a, scratch_b):
            if scratch is not None:
                scratch.rmdir()


def test_without_tmpfs_the_fallback_on_disk_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    folder, scratch = memory_folder("pod-a", tmp_path / "repo")
    assert (folder, scratch) == (tmp_path / "repo", None)


@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="no writable tmpfs at /dev/shm")
def test_a_local_pods_repository_is_in_memory_and_gone_after_stop(tmp_path: Path) -> None:
    from harness.cluster import LocalMesh

    with LocalMesh(tmp_path / "mesh") as mesh:
        (stack,) = mesh.stacks
        assert stack.scratch is not None and stack.scratch.parent == Path("/dev/shm")
        command = Path(f"/proc/{stack.mlserver.pid}/cmdline").read_bytes().split(b"\0")
        repository = Path(command[command.index(b"start") + 1].decode())
        assert repository.is_relative_to(stack.scratch) and repository.is_dir()
    assert not stack.scratch.exists()
