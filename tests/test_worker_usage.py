"""Hits served by a pod's extra serving processes count in the main process's LRU order and rates (pure)."""

from __future__ import annotations

import pytest

from mesh.models.cache import EvictionPolicy, ModelCache
from mesh.models.rates import RateTracker
from mesh.models.worker_usage import UsageLog, parse_usage


def test_usage_log_drains_counts_and_last_use() -> None:
    log = UsageLog()
    log.hit("a", 100)
    log.hit("a", 250)
    log.hit("b", 120)
    assert parse_usage(log.drain()) == {"a": (2, 250), "b": (1, 120)}
    assert parse_usage(log.drain()) == {}  # a drain starts a new report


@pytest.mark.parametrize(
    "raw", [b"[]", b"{", b'{"a": 3}', b'{"a": []}', b'{"a": ["x", 1]}', b'{"a": [0, 1]}', b'{"a": [-4, 1]}']
)
def test_malformed_reports_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_usage(raw)


def test_reported_uses_make_a_model_recent_and_frequent() -> None:
    cache = ModelCache(100, EvictionPolicy.LRU)
    for model_id, at in (("old", 10), ("new", 20)):
        cache.start_load(model_id, 40, at)
        cache.finish_load(model_id, 40)
    assert cache.plan_eviction(60) == ["old"]
    cache.touch("old", 30, uses=5)  # a worker served "old" after "new" was last used here
    assert cache.plan_eviction(60) == ["new"]
    gdsf = ModelCache(100, EvictionPolicy.GDSF)
    for model_id in ("a", "b"):
        gdsf.start_load(model_id, 40, 10)
        gdsf.finish_load(model_id, 40)
    gdsf.touch("a", 20, uses=1)
    gdsf.touch("b", 20, uses=5)  # five reported uses weigh five times
    assert gdsf.plan_eviction(60) == ["a"]


def test_rates_count_reported_requests() -> None:
    rates = RateTracker(interval_s=10, window=6)
    rates.record("m", 50)
    rates.record("m")
    rates.tick()
    assert rates.per_minute("m") == pytest.approx(51 * 60 / 10)
