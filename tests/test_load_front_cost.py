"""The front_cost scenario, small: the in-memory front passes requests and answers; every figure is named."""

from __future__ import annotations

import asyncio

from load_tests import front_cost
from load_tests.run import scenario_lines


def test_the_in_memory_front_serves_and_is_timed() -> None:
    figures = asyncio.run(front_cost.front_hot_cost(requests=200, warm=20))
    assert figures["request_us"] > 0 and figures["answer_us"] > 0


def test_the_summary_names_every_figure() -> None:
    result = front_cost.run_front_cost(rounds=1)
    assert set(result) >= {
        "front_us",
        "request_us",
        "answer_us",
        "hot_us",
        "after_sleep_us",
        "wake_penalty_x",
    }
    lines = scenario_lines("front_cost", result)
    assert str(result["front_us"]) in lines[0] and str(result["after_sleep_us"]) in lines[1]
