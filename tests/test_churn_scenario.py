"""The churn scenario's pure parts (load_tests/churn.py): the median round, the goal rows, the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from load_tests.churn import (
    ChurnSettings,
    goal_checks,
    median_round,
    miss_cost,
    run_churn_trace,
    summary_lines,
    zipf_trace,
)


def churn_round(throughput: float, p99: float) -> dict[str, Any]:
    return {
        "models": 303,
        "fits": "20% of all bytes",
        "throughput": throughput,
        "p50_ms": 10.0,
        "p99_ms": p99,
        "hit_ratio": 0.68,
        "loads_per_s": 50.0,
        "errors": {},
        "load_phases_p50_ms": {"runtime_load": 6.0, "mesh": 4.0},
    }


def test_the_median_round_by_throughput_carries_every_round() -> None:
    chosen = median_round([churn_round(300, 90), churn_round(100, 400), churn_round(200, 150)])
    assert chosen["throughput"] == 200 and chosen["p99_ms"] == 150
    assert [r["throughput"] for r in chosen["rounds"]] == [300, 100, 200]


def result(miss_at_100: float, throughput: float, p99: float) -> dict[str, Any]:
    return {
        "settings": {"in_flight": 8},
        "mlserver_bare_load_ms": 4.0,
        "joblib_load_ms": 0.2,
        "churn": median_round([churn_round(throughput, p99)]),
        "miss_cost": [
            {
                "loaded": 100,
                "miss_p50_ms": miss_at_100,
                "miss_max_ms": miss_at_100,
                "miss_vs_bare_load": miss_at_100 / 4.0,
                "fill_s": 1.0,
                "fill_loads_per_s": 100.0,
                "phases_p50_ms": {
                    "runtime_load": 5.0,
                    "runtime_unload": 1.0,
                    "mesh": 3.0,
                    "predict": 1.0,
                    "publish": 2.0,
                },
            }
        ],
    }


def test_goals_are_judged_against_the_bare_load_and_the_baseline() -> None:
    """The baseline file (the adapter before) says 27.8 req/s and p99 1088.5 ms."""
    met = {goal: ok for goal, _, ok, _ in goal_checks(result(7.9, 120.0, 200.0))}
    assert met == {
        "miss p50 with 100 models loaded ≤ 2x MLServer's bare load": True,
        "churn throughput ≥ 4x the adapter before": True,
        "churn p99 ≤ a quarter of the adapter before": True,
    }
    missed = {goal: ok for goal, _, ok, _ in goal_checks(result(13.0, 100.0, 300.0))}
    assert set(missed.values()) == {False}


def test_the_report_names_the_rounds_and_the_baseline() -> None:
    lines = summary_lines(result(13.0, 120.0, 200.0))
    assert any("the median of 1 rounds" in line for line in lines)
    assert any("churn_baseline.json" in line for line in lines)


def test_the_trace_prefers_the_first_ranks() -> None:
    trace = zipf_trace(100, 5000, seed=0)
    assert trace.count(0) > trace.count(50) > 0
    assert trace == zipf_trace(100, 5000, seed=0)  # seeded: every run replays the same trace


@pytest.mark.integration
async def test_a_miss_is_measured_with_the_cpu_of_every_process_it_keeps_busy(tmp_path: Path) -> None:
    settings = ChurnSettings(in_flight=2, misses=3)
    row = await miss_cost(tmp_path, 4, settings, [])
    assert row["loaded"] == 4 and row["miss_p50_ms"] > 0
    assert row["phases_p50_ms"]["runtime_load"] > 0
    # timed beside the misses, on an MLServer of its own
    assert row["bare_load_ms"] > 0
    assert row["miss_vs_bare_load"] == pytest.approx(row["miss_p50_ms"] / row["bare_load_ms"], rel=0.05)
    cpu = row["cpu_ms_per_miss"]
    assert set(cpu) == {"pod", "adapter", "mlserver", "etcd", "client"}
    for name in ("pod", "adapter", "mlserver"):  # each miss is a load and an unload through all three
        assert cpu[name] > 0, name
    # the client is counted alone: the processes it started are not its own CPU
    assert cpu["client"] < sum(ms for name, ms in cpu.items() if name != "client")


def test_a_levels_ratio_is_reported_against_the_bare_load_timed_beside_it() -> None:
    figures = result(7.0, 120.0, 200.0)
    figures["miss_cost"][0] |= {"bare_load_ms": 3.0, "miss_vs_bare_load": round(7.0 / 3.0, 2)}
    (row,) = [r for r in goal_checks(figures) if r[0].startswith("miss p50")]
    assert row[1] == "7.0 ms, 2.33x the bare 3.0 ms" and row[2] is False
    assert any("2.33x the bare load timed beside it, 3.0 ms" in line for line in summary_lines(figures))


@pytest.mark.integration
async def test_churn_on_a_real_pod_answers_every_request(tmp_path: Path) -> None:
    """Misses, evictions and loads that measure more than predicted (the large models) overlapping on one
    MLServer pod, 8 in flight: every request is answered. A model evicted between its load and its waiting
    requests made some fail (NOT_FOUND, then INTERNAL from the reload). The room (a fifth of the bytes, about
    30 small models) is well above what 8 requests can pin: a pod whose every model is loading or in use
    refuses the next miss ("no room"), which a tighter room shows at times."""
    settings = ChurnSettings(
        small_models=150, large_models=3, large_repeat=100, warm_up_requests=100, requests=900
    )
    result = await run_churn_trace(tmp_path, settings, [])
    assert result["errors"] == {}
    assert result["requests"] == settings.requests
    assert 0 < result["hit_ratio"] < 1  # it did churn: misses and hits both
