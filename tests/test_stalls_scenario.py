"""The stalls scenario, small: it runs against real processes and yields every figure (no timing asserted)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import grpc
import pytest

from harness.triton import triton_installed
from load_tests.run import render, scenario_lines
from load_tests.stalls import (
    SequentialRun,
    StallSettings,
    echo_routes,
    measure,
    run_stalls,
    summarize_runs,
)
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc

SMALL = StallSettings(rounds=2, calls=50)
PATH_FIELDS = {
    "stalls_over_30ms",
    "stalls_per_round",
    "stall_fraction",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "first_call_ms",
    "calls_per_round",
    "errors",
    "error_codes",
    "stall_calls_by_round",
}


def run(stalls: int, p50: float, errors: dict[str, int] | None = None) -> SequentialRun:
    stall_calls = [(i, 40.0) for i in range(min(stalls, 20))]
    return SequentialRun(100, 100, errors or {}, stalls, p50, p50 * 2, 50.0, 3.0, 1.0, stall_calls)


def test_rounds_are_summarized_as_medians_with_every_round_kept() -> None:
    summary = summarize_runs([run(1, 1.0), run(7, 3.0), run(2, 2.0, {"UNAVAILABLE": 1})], StallSettings())
    assert set(summary) == PATH_FIELDS
    assert summary["stalls_over_30ms"] == 2 and summary["stalls_per_round"] == [1, 7, 2]
    assert summary["p50_ms"] == 2.0 and summary["p99_ms"] == 4.0
    assert summary["errors"] == 1 and summary["error_codes"] == {"UNAVAILABLE": 1}
    assert len(summary["stall_calls_by_round"][1]) == 7


def check_summary(summary: dict[str, object], settings: StallSettings) -> None:
    for path in ("direct", "mesh"):
        entry = summary[path]
        assert isinstance(entry, dict) and set(entry) == PATH_FIELDS, path
        assert entry["errors"] == 0, entry["error_codes"]
        assert len(entry["stalls_per_round"]) == settings.rounds
        assert all(0 <= n <= settings.calls for n in entry["stalls_per_round"])
        assert entry["p50_ms"] > 0 and entry["p99_ms"] >= entry["p50_ms"] and entry["first_call_ms"] > 0
        assert entry["calls_per_round"] == settings.calls
    assert "mesh_added_p50_ms" in summary and "mesh_added_stalls" in summary


@pytest.mark.integration
def test_the_echo_backend_is_measured_direct_and_through_the_pod(tmp_path: Path) -> None:
    with echo_routes(tmp_path, "stalls-test") as routes:
        assert routes["direct"] != routes["mesh"]
        summary = measure(routes, "stalls-test", SMALL)
        with grpc.insecure_channel(routes["mesh"]) as channel:  # the mesh path is a pod, holding the model
            status = mm_grpc.ModelMeshStub(channel).getModelStatus(mm.GetStatusRequest(modelId="stalls-test"))
    assert status.status == mm.ModelStatusInfo.LOADED
    check_summary(summary, SMALL)
    results = {"stalls": {"settings": asdict(SMALL), "echo": summary}}
    report = render(results, {"command": "test", "date": "today", "machine": "here", "seconds": 1})
    assert "## Stalls" in report
    assert "| echo backend | direct |" in report and "| echo backend | mesh |" in report
    assert scenario_lines("stalls", results["stalls"])[0].startswith("echo backend: calls over 30 ms per 50")


@pytest.mark.integration
@pytest.mark.skipif(not triton_installed(), reason="tritonserver is not installed (setup-triton.sh)")
def test_the_triton_backend_is_measured_direct_and_through_the_pod(tmp_path: Path) -> None:
    settings = StallSettings(rounds=1, calls=50)
    result = run_stalls(tmp_path, settings, ["triton"])
    assert "error" not in result["triton"], result["triton"]
    assert result["settings"] == asdict(settings)
    check_summary(result["triton"], settings)
