"""The Grafana dashboard in deploy/grafana/ queries only series a pod exports (pure: the exposition of a pod
that has counted one of everything, as its leader)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from mesh.observe.export import Exposition, InstanceGauges, MeshCollector
from mesh.observe.metrics import MeshMetrics
from mesh.registry.snapshot import ModelCounts

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "modelmesh-py-dashboard.json"
SERIES = re.compile(r"\b(modelmesh_[a-z_]+)\b")
INFER = "/inference.GRPCInferenceService/ModelInfer"


def exported_series() -> set[str]:
    metrics = MeshMetrics()
    metrics.request(INFER, 0, 1.0, 100, 50)
    metrics.invoked(INFER, 0, 1.0)
    metrics.front_stream("external", "fast")
    metrics.missed("m", 5.0)
    metrics.loaded("m", 5.0, 1.0, 1000, reason="request")
    metrics.unloaded("m", 2.0)
    metrics.load_failed()
    metrics.unload_failed()
    metrics.evicted("m", "lru", 10.0)
    metrics.copy_dropped("evicted")
    metrics.watch_lagged(1.0)
    collector = MeshCollector(
        metrics,
        lambda: InstanceGauges(capacity_bytes=10, used_bytes=5, model_count=1, lru_ms=1000, now_ms=2000),
        lambda: ModelCounts(managed=1, loaded=1, with_failure=0),
    )
    text = Exposition(collector).text().decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def queries() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_every_queried_series_is_exported() -> None:
    exported = exported_series()
    queried = {name for expr in queries() for name in SERIES.findall(expr)}
    assert queried, "the dashboard queries no modelmesh series"
    assert queried <= exported, f"queried but never exported: {sorted(queried - exported)}"


def test_the_dashboard_shows_modelmeshs_main_series_and_the_meshs_own() -> None:
    queried = {name for expr in queries() for name in SERIES.findall(expr)}
    for name in (
        "modelmesh_api_request_milliseconds_count",
        "modelmesh_invoke_model_milliseconds_count",
        "modelmesh_cache_miss_milliseconds_count",
        "modelmesh_loadmodel_milliseconds_sum",
        "modelmesh_instance_used_bytes",
        "modelmesh_models_managed_total",
        "modelmesh_loadmodel_failure",
        "modelmesh_py_front_streams_total",
        "modelmesh_py_evictions_total",
        "modelmesh_py_copy_changes_total",
        "modelmesh_py_etcd_watch_lag_milliseconds_sum",
    ):
        assert name in queried, name


def test_every_panel_has_a_unique_id_and_each_target_a_ref() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]
