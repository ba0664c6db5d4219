"""The hop scenario end to end, small: every path answers through real nginx, a grpc.aio proxy, mesh pods."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from load_tests.hop import HopSettings, compare_paths, echo_paths, infer_request
from load_tests.run import goal_rows
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("front", ["h2", "grpc"])
async def test_every_path_serves_and_is_measured(tmp_path: Path, front: str) -> None:
    settings = HopSettings(
        rounds=1, latency_requests=50, throughput_requests=200, concurrency=4, connections=2
    )
    with echo_paths(tmp_path, "hop-test", pod_args=[f"--front={front}"]) as routes:
        summary, rounds = await compare_paths(routes, infer_request("hop-test"), settings)
        with grpc.insecure_channel(routes["mesh-local"].address) as channel:
            status = mm_grpc.ModelMeshStub(channel).getModelStatus(mm.GetStatusRequest(modelId="hop-test"))
    paths = ("direct", "nginx", "python-proxy", "asyncio-pump", "mesh-local", "mesh-remote")
    assert set(summary) >= set(paths)
    for path in paths:
        assert summary[path]["errors"] == 0, path
        assert rounds[0][path]["latency"].ok == 50 and rounds[0][path]["throughput"].ok == 200
    for path in paths[1:]:
        assert summary[path]["proxy_cpu_us_per_request"] > 0, path
    # pod-b cannot hold the model (another type): every mesh-remote request was forwarded to pod-a's copy
    assert status.status == mm.ModelStatusInfo.LOADED
    assert (
        summary["mesh-remote"]["proxy_cpu_us_per_request"] > summary["mesh-local"]["proxy_cpu_us_per_request"]
    )


def test_goal_verdicts_say_by_how_much() -> None:
    results = {
        "hop": {
            "echo": {
                "nginx": {"added_p50_ms": 0.2, "added_p99_ms": 0.4, "throughput_ratio": 0.9, "errors": 0},
                "mesh-local": {
                    "added_p50_ms": 0.6,
                    "added_p99_ms": 0.5,
                    "throughput_ratio": 0.45,
                    "errors": 0,
                },
            }
        },
        "cold_start": {
            "added_ms": {"over_load_ms": {"p50": 20.0}},
            "loads_per_model": {"max": 1, "models_never_loaded": 0},
            "errors": 0,
        },
    }
    rows = "\n".join(goal_rows(results))
    assert "3.0x instead of ≤ 1.5x" in rows  # p50
    assert "35% short" in rows
    assert rows.count("| met |") == 3  # p99 (1.25x) and both cold-start goals


def test_failed_requests_or_missed_models_never_pass_a_goal() -> None:
    results = {
        "cold_start": {
            "added_ms": {"over_load_ms": {"p50": 20.0}},
            "loads_per_model": {"max": 1, "models_never_loaded": 2},
            "errors": 4,
        },
    }
    rows = "\n".join(goal_rows(results))
    assert "| met |" not in rows and "4 requests failed" in rows
