"""The Prometheus metrics every adapter exports (one registry per adapter, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AdapterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.load_requests = Counter(
            "modelmesh_adapter_load_requests",
            "loadModel requests handled by the adapter",
            ["result"],
            registry=registry,
        )
        self.unload_requests = Counter(
            "modelmesh_adapter_unload_requests",
            "unloadModel requests handled by the adapter",
            registry=registry,
        )
        self.size_predictions = Counter(
            "modelmesh_adapter_size_predictions",
            "predictModelSize requests (the mesh asks only for files no load has measured yet)",
            registry=registry,
        )
        self.downloads = Counter(
            "modelmesh_adapter_downloads",
            "model downloads from object storage (a reload from the cache does not count)",
            registry=registry,
        )
        self.loaded_models = Gauge(
            "modelmesh_adapter_loaded_models",
            "models currently loaded through this adapter",
            registry=registry,
        )
