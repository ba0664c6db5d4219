"""Rate tracking and copy decisions (pure)."""

from __future__ import annotations

import pytest

from mesh.models.rates import RateTracker, hot_models, should_drop_idle_copy


def test_rates_are_per_minute_over_the_closed_window() -> None:
    rates = RateTracker(interval_s=10, window=3)
    assert rates.per_minute("m") == 0.0
    for _ in range(30):
        rates.record("m")
    assert rates.per_minute("m") == 0.0  # the open interval does not count yet
    rates.tick()
    assert rates.per_minute("m") == 180.0  # 30 in 10 s
    rates.tick()
    assert rates.per_minute("m") == 90.0  # 30 in 20 s
    rates.record("n")
    rates.tick()
    rates.tick()  # the first interval leaves the window
    assert rates.per_minute("m") == 0.0
    assert rates.per_minute("n") == pytest.approx(2.0)
    assert rates.total_per_minute() == pytest.approx(2.0)


def test_idle_needs_a_full_quiet_window() -> None:
    rates = RateTracker(interval_s=1, window=2)
    assert not rates.idle("m")  # no history yet
    rates.tick()
    assert not rates.idle("m")
    rates.tick()
    assert rates.idle("m")
    rates.record("m")
    assert not rates.idle("m")  # a request in the open interval
    rates.tick()
    assert not rates.idle("m")
    rates.forget("m")
    assert rates.idle("m")


@pytest.mark.parametrize(
    "rates,threshold,expected",
    [
        ({"a": 10, "b": 3000, "c": 2500}, 2000, ["b", "c"]),
        ({"a": 2000}, 2000, []),  # at the threshold: not yet
        ({}, 1, []),
    ],
)
def test_hot_models(rates: dict[str, float], threshold: float, expected: list[str]) -> None:
    assert hot_models(rates, threshold) == expected


@pytest.mark.parametrize(
    "pod,holders,idle,expected",
    [
        ("b", {"a": 1, "b": 2}, True, True),  # later copy, idle: drop
        ("a", {"a": 1, "b": 2}, True, False),  # the first copy stays
        ("b", {"a": 1, "b": 2}, False, False),  # busy
        ("a", {"a": 1}, True, False),  # the only copy
        ("c", {"a": 1, "b": 2}, True, False),  # not a holder
        ("b", {"a": 5, "b": 5}, True, True),  # same time: the pod id decides
        ("a", {"a": 5, "b": 5}, True, False),
    ],
)
def test_should_drop_idle_copy(pod: str, holders: dict[str, int], idle: bool, expected: bool) -> None:
    assert should_drop_idle_copy(pod, holders, idle) is expected
