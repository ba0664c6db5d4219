"""Scenario grpc_cost against real grpc.aio processes: both arms measured side by side."""

from __future__ import annotations

import pytest

from load_tests.grpc_cost import ARMS, run_grpc_cost, summary_lines

pytestmark = pytest.mark.integration


def test_grpc_cost_measures_both_arms_side_by_side() -> None:
    result = run_grpc_cost(rounds=2, calls=100)
    for arm in ARMS:
        assert len(result["rounds"][arm]) == 2
        figures = result[arm]
        assert figures["p50_us"] > 0 and figures["server_cpu_us"] > 0 and figures["client_cpu_us"] > 0
    default, off = result["grpc_default"], result["poller_off"]
    assert result["server_cpu_ratio"] == pytest.approx(
        off["server_cpu_us"] / default["server_cpu_us"], abs=0.01
    )
    assert len(summary_lines(result)) == 2
