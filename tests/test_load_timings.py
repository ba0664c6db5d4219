"""Where the time of a load goes (mesh/models/load_timings.py)."""

from __future__ import annotations

from mesh.models.load_timings import LoadPhases, LoadTimings, summarize


def test_the_mesh_part_is_what_is_neither_the_runtime_nor_the_queue() -> None:
    phases = LoadPhases(
        predict=0.005,
        runtime_unload=0.010,
        queue=0.050,
        runtime_load=0.100,
        claim=0.003,
        publish=0.007,
    )
    assert abs(phases.total - 0.168) < 1e-9  # publishing is after the requests: not theirs to pay
    assert abs(phases.mesh - 0.008) < 1e-9


def test_the_summary_has_every_phase_and_the_totals() -> None:
    timings = LoadTimings(keep=3)
    for ms in (10, 20, 30, 40):
        timings.record(LoadPhases(runtime_load=ms / 1000, predict=0.002))
    summary = timings.summary()
    assert summary["loads"] == 4 and summary["kept"] == 3  # the oldest fell out
    phases = summary["phases"]
    assert isinstance(phases, dict)
    assert phases["runtime_load"] == {"p50_ms": 30.0, "p99_ms": 40.0, "mean_ms": 30.0}
    assert phases["mesh"]["p50_ms"] == 2.0
    assert phases["total"]["p50_ms"] == 32.0
    assert phases["queue"] == {"p50_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0}
    on_path = {"predict", "runtime_unload", "queue", "runtime_load", "claim"}
    assert set(phases) == on_path | {"publish", "mesh", "total"}


def test_an_empty_summary_is_zeros() -> None:
    assert summarize([]).p50_ms == 0.0
    assert LoadTimings().summary()["kept"] == 0
