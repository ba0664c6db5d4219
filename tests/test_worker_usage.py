"""Hits served by a pod's extra serving processes count in the main process's LRU order and rates, and
their metrics in its scrape (pure)."""

from __future__ import annotations

import json

import pytest

from mesh.models.cache import EvictionPolicy, ModelCache
from mesh.models.rates import RateTracker
from mesh.models.worker_usage import UsageLog, parse_metrics_report, parse_usage
from mesh.observe.metrics import MeshMetrics, MetricsConfig, metrics_for
from mesh.process.serving_worker import main_host


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


def test_a_metrics_report_round_trips_and_a_bad_one_is_refused() -> None:
    worker, main = MeshMetrics(), MeshMetrics()
    worker.request("/inference.GRPCInferenceService/ModelInfer", 0, 3.0, 100, 50)
    worker.front_stream("external", "fast")
    main.merge(parse_metrics_report(json.dumps(worker.drain()).encode()))
    assert main.api_request.by_labels[("ModelInfer", "OK")].count == 1
    assert main.front_streams.by_labels[("external", "fast")] == 1
    assert worker.drain() == {}  # drained: the next report starts from zero
    for bad in (b"not json", b"[1, 2]", b'{"api_request": 3}', b"\xff"):
        with pytest.raises(ValueError):
            parse_metrics_report(bad)


def test_with_metrics_off_only_the_fronts_paths_are_counted() -> None:
    metrics = metrics_for(MetricsConfig(port=0))
    metrics.request("/inference.GRPCInferenceService/ModelInfer", 0, 3.0, 100, 50)
    metrics.invoked("/inference.GRPCInferenceService/ModelInfer", 0, 1.0)
    metrics.loaded("m", 5.0, 1.0, 100, reason="request")
    metrics.evicted("m", "lru", 10.0)
    metrics.front_stream("external", "fast")
    assert metrics.drain() == {"front_streams": [[["external", "fast"], 1.0]]}
    assert isinstance(metrics_for(MetricsConfig(port=9100)), MeshMetrics)
    assert metrics_for(MetricsConfig(port=9100, per_model=True)).per_model


@pytest.mark.parametrize(
    ("host", "reached_at"),
    [("0.0.0.0", "127.0.0.1"), ("", "127.0.0.1"), ("::", "127.0.0.1"), ("10.1.2.3", "10.1.2.3")],
)
def test_serving_processes_reach_their_main_process_on_an_address_a_certificate_names(
    host: str, reached_at: str
) -> None:
    assert main_host(host) == reached_at
