"""The pod's metrics under ModelMesh's names (mesh/observe/metrics.py, export.py): pure, no pod."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mesh.observe.export import Exposition, InstanceGauges, MeshCollector
from mesh.observe.metrics import MeshMetrics, method_label, parse_metrics_config
from mesh.registry.snapshot import ModelCounts

INFER = "/inference.GRPCInferenceService/ModelInfer"


def scrape(metrics: MeshMetrics, leader: bool = True) -> dict[str, float]:
    instance = InstanceGauges(
        capacity_bytes=1000, used_bytes=250, model_count=3, lru_ms=10_000, now_ms=70_000
    )
    collector = MeshCollector(
        metrics,
        lambda: instance,
        lambda: ModelCounts(managed=9, loaded=4, with_failure=1) if leader else None,
    )
    text = Exposition(collector).text().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
            samples[key] = s.value
    return samples


def test_request_histograms_carry_method_and_code() -> None:
    metrics = MeshMetrics()
    metrics.request(INFER, 0, 3.0, 100, 40)
    metrics.request(INFER, 5, 700.0, 100, None)
    samples = scrape(metrics)
    assert samples["modelmesh_api_request_milliseconds_count{code=OK,method=ModelInfer}"] == 1
    assert samples["modelmesh_api_request_milliseconds_bucket{code=OK,le=5.0,method=ModelInfer}"] == 1
    assert samples["modelmesh_api_request_milliseconds_bucket{code=OK,le=2.0,method=ModelInfer}"] == 0
    assert samples["modelmesh_api_request_milliseconds_sum{code=NOT_FOUND,method=ModelInfer}"] == 700
    assert "modelmesh_response_size_bytes_count{code=NOT_FOUND,method=ModelInfer}" not in samples


def test_failure_counters_keep_modelmeshs_bare_names() -> None:
    metrics = MeshMetrics()
    metrics.load_failed()
    metrics.load_failed()
    samples = scrape(metrics)
    assert samples["modelmesh_loadmodel_failure{}"] == 2
    assert "modelmesh_loadmodel_failure_total{}" not in samples


def test_mesh_wide_gauges_only_on_the_leader() -> None:
    assert scrape(MeshMetrics(), leader=True)["modelmesh_models_managed_total{}"] == 9
    assert "modelmesh_models_managed_total{}" not in scrape(MeshMetrics(), leader=False)


def test_instance_gauges() -> None:
    samples = scrape(MeshMetrics())
    assert samples["modelmesh_instance_used_bps{}"] == 2500
    assert samples["modelmesh_instance_lru_age_seconds{}"] == 60
    assert samples["modelmesh_instance_models_total{}"] == 3


def test_per_model_labels_are_opt_in() -> None:
    metrics = MeshMetrics(per_model=True)
    metrics.missed("m1", 30.0)
    assert scrape(metrics)["modelmesh_cache_miss_milliseconds_count{modelId=m1,vModelId=}"] == 1
    plain = MeshMetrics()
    plain.missed("m1", 30.0)
    assert scrape(plain)["modelmesh_cache_miss_milliseconds_count{}"] == 1


def test_a_serving_processs_drain_merges_into_the_main_process() -> None:
    worker, main = MeshMetrics(), MeshMetrics()
    worker.request(INFER, 0, 1.0, 10, 10)
    worker.front_stream("external", "fast")
    main.request(INFER, 0, 1.0, 10, 10)
    main.merge(worker.drain())
    assert scrape(main)["modelmesh_api_request_milliseconds_count{code=OK,method=ModelInfer}"] == 2
    assert worker.drain() == {}
    with pytest.raises(ValueError):
        main.merge({"api_request": [[["only-one-label"], [0] * 20, 1.0]]})
    with pytest.raises(ValueError):
        main.merge({"no_such": []})


@pytest.mark.parametrize(
    ("spec", "port", "expected"),
    [
        ("", 0, (0, False, False)),
        ("", 9000, (9000, False, False)),
        ("disabled", 9000, (0, False, False)),
        ("prometheus", 0, (2112, False, False)),
        ("prometheus:port=2200;per_model_metrics=true;fq_names=true", 0, (2200, True, True)),
        ("prometheus:scheme=http", 0, (2112, False, False)),
    ],
)
def test_metrics_config(spec: str, port: int, expected: tuple[int, bool, bool]) -> None:
    config = parse_metrics_config(spec, port)
    assert (config.port, config.per_model, config.fq_names) == expected


@pytest.mark.parametrize(
    "spec", ["statsd", "prometheus:port=x", "prometheus:scheme=https", "prometheus:bogus=1"]
)
def test_bad_metrics_config_is_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_metrics_config(spec, 0)


def test_method_label() -> None:
    assert method_label(INFER) == "ModelInfer"
    assert method_label(INFER, fq_names=True) == "inference.GRPCInferenceService/ModelInfer"


def test_a_method_v2_lacks_is_one_label_whatever_its_name() -> None:
    metrics = MeshMetrics()
    for index in range(50):  # a client making up method names makes no new series
        metrics.request(f"/inference.GRPCInferenceService/Made{index}", 12, 1.0, 10, None)
    metrics.request("/inference.GRPCInferenceService/ModelInfer", 0, 1.0, 10, 5)
    assert set(metrics.api_request.by_labels) == {("unknown", "UNIMPLEMENTED"), ("ModelInfer", "OK")}
    assert metrics.api_request.by_labels[("unknown", "UNIMPLEMENTED")].count == 50


def test_a_drain_starts_the_hot_path_series_afresh() -> None:
    metrics = MeshMetrics()
    metrics.request(INFER, 0, 1.0, 10, 5)
    first = metrics.drain()
    metrics.request(INFER, 0, 2.0, 10, 5)  # counted into a new series, not the drained one
    second = metrics.drain()
    assert first["api_request"][0][2] == 1.0 and second["api_request"][0][2] == 2.0
