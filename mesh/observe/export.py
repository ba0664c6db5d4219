"""The pod's counts as Prometheus families, made when scraped (``prometheus_client``'s collector API).

Gauges are read at scrape time: the pod's own figures (``InstanceGauges``) always, the mesh-wide ones
(``ModelCounts``) only while this pod is the leader, so a sum over pods counts them once (as ModelMesh:
its globals are registered only on the leader).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from mesh.observe.counting import CounterFamily, Histogram, HistogramFamily
from mesh.observe.metrics import FAMILIES, MeshMetrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class InstanceGauges:
    """This pod's cache, as ModelMesh's ``modelmesh_instance_*`` gauges have it."""

    capacity_bytes: int
    used_bytes: int
    model_count: int
    lru_ms: int  # last use of the least recently used model (0: none)
    now_ms: int


class ModelCounts(Protocol):
    """Mesh-wide model counts (mesh/registry/snapshot.py's ``ModelCounts``), the leader's."""

    @property
    def managed(self) -> int: ...
    @property
    def loaded(self) -> int: ...
    @property
    def with_failure(self) -> int: ...


class MeshCollector:
    """A ``prometheus_client`` collector over one pod's ``MeshMetrics`` and its gauges."""

    def __init__(
        self,
        metrics: MeshMetrics,
        instance: Callable[[], InstanceGauges],
        mesh: Callable[[], ModelCounts | None],
    ) -> None:
        self._metrics = metrics
        self._instance = instance
        self._mesh = mesh

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        for spec in FAMILIES:
            family = metrics.families[spec.attr]
            labels = list(metrics.label_names(spec))
            if isinstance(family, HistogramFamily):
                histogram = HistogramMetricFamily(spec.name, spec.help, labels=labels)
                for values, counts in family.by_labels.items():
                    histogram.add_metric(list(values), counts.cumulative(), counts.sum)
                if not labels and not family.by_labels:  # ModelMesh shows these before any observation
                    histogram.add_metric([], Histogram(family.bounds).cumulative(), 0.0)
                yield histogram
            elif spec.kind == "bare_counter":  # ModelMesh's name, without _total: untyped to the parser
                assert isinstance(family, CounterFamily)
                bare = Metric(spec.name, spec.help, "unknown")
                bare.add_sample(spec.name, {}, family.by_labels.get((), 0.0))
                yield bare
            else:
                assert isinstance(family, CounterFamily)
                counter = CounterMetricFamily(spec.name, spec.help, labels=labels)
                for values, value in family.by_labels.items():
                    counter.add_metric(list(values), value)
                yield counter
        yield from instance_families(self._instance())
        mesh = self._mesh()
        if mesh is not None:
            yield from mesh_families(mesh)


def instance_families(g: InstanceGauges) -> Iterator[Metric]:
    def gauge(name: str, help: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, help, value=value)

    lru_s = g.lru_ms // 1000 if g.lru_ms else 0
    yield gauge(
        "modelmesh_instance_lru_seconds",
        "Last used time of least recently used model in pod (in secs since epoch)",
        lru_s,
    )
    yield gauge(
        "modelmesh_instance_lru_age_seconds",
        "Last used age of least recently used model in pod (secs ago)",
        max(0, (g.now_ms - g.lru_ms) // 1000) if g.lru_ms else 0,
    )
    yield gauge(
        "modelmesh_instance_capacity_bytes",
        "Effective model capacity of pod excluding unload buffer",
        g.capacity_bytes,
    )
    yield gauge(
        "modelmesh_instance_used_bytes", "Amount of capacity currently in use by loaded models", g.used_bytes
    )
    yield gauge(
        "modelmesh_instance_used_bps",
        "Amount of capacity used in basis points (100ths of percent)",
        int(g.used_bytes / g.capacity_bytes * 10000) if g.capacity_bytes else 0,
    )
    yield gauge("modelmesh_instance_models_total", "Number of model copies loaded in pod", g.model_count)


def mesh_families(g: ModelCounts) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "modelmesh_models_loaded_total",
        "Total number of models with at least one loaded copy",
        value=g.loaded,
    )
    yield GaugeMetricFamily(
        "modelmesh_models_with_failure_total",
        "Total number of models with one or more recent load failures",
        value=g.with_failure,
    )
    yield GaugeMetricFamily(
        "modelmesh_models_managed_total", "Total number of models managed", value=g.managed
    )


class Exposition:
    """The text a scrape gets: this pod's families in Prometheus' text format."""

    def __init__(self, collector: MeshCollector) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)

    def text(self) -> bytes:
        return generate_latest(self.registry)
