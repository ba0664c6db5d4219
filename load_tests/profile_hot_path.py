"""Where a pod's CPU goes on the hot path: py-spy samples of a pod under closed-loop load.

py-spy sees Python frames only: time inside grpc's Cython and C core shows as
the Python frame that called into it (mostly asyncio's ``Handle._run`` for the
server side and ``UnaryUnaryCall._invoke`` for the client side), and the
completion-queue poller thread as ``Thread.run``. The summary splits samples
into the mesh's own code (any frame in mesh/) and the rest.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from harness.processes import VENV_BIN
from load_tests.echo_runtime import INFER_METHOD
from load_tests.hop import echo_paths, infer_request
from load_tests.loadgen import closed_loop, raw_call

MESH_FRAME = re.compile(
    r"[(/]mesh/(?!process/pod\.py|process/entry\.py)"
)  # "name (mesh/fronts/rest.py:12)"; pod/entry: main()


def summarize_samples(raw_lines: list[str], top: int = 12) -> dict[str, Any]:
    """py-spy ``--format raw`` lines (``frame;frame;... count``) -> shares of samples (pure)."""
    self_time: Counter[str] = Counter()
    mesh_inclusive: Counter[str] = Counter()
    total = in_mesh = poller = 0
    for line in raw_lines:
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        self_time[frames[-1]] += count
        if frames[0].startswith("Thread._bootstrap"):
            poller += count
        mesh_frames = {f for f in frames if MESH_FRAME.search(f)}
        if mesh_frames:
            in_mesh += count
        for frame in mesh_frames:
            mesh_inclusive[frame] += count

    def share(n: int) -> float:
        return round(100 * n / total, 1) if total else 0.0

    return {
        "samples": total,
        "mesh_code_pct": share(in_mesh),
        "grpc_poller_thread_pct": share(poller),
        "top_self_pct": {frame: share(n) for frame, n in self_time.most_common(top)},
        "top_mesh_inclusive_pct": {frame: share(n) for frame, n in mesh_inclusive.most_common(top)},
    }


async def _load(address: str, seconds: float) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        await closed_loop(raw_call(channel, INFER_METHOD), [infer_request("profiled")], 16, 10**9, seconds)


def run_profile(work_dir: Path, seconds: float = 8.0) -> dict[str, Any]:
    """Sample the local-holder pod for ``seconds`` while 16 requests are in flight through it."""
    output = work_dir / "py-spy.txt"
    with echo_paths(work_dir / "mesh", "profiled") as routes:
        pid = routes["mesh-local"].proxy_pids[0]
        spy = subprocess.Popen(
            [
                str(VENV_BIN / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "200",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            asyncio.run(_load(routes["mesh-local"].address, seconds + 2))
            _, error = spy.communicate(timeout=60)
        finally:
            if spy.poll() is None:
                spy.kill()
    if spy.returncode != 0 or not output.exists():
        return {"error": f"py-spy failed ({spy.returncode}): {error.decode(errors='replace')[-500:]}"}
    return summarize_samples(output.read_text().splitlines())
