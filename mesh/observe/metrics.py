"""What a mesh pod counts, under KServe ModelMesh's metric names, types, labels and buckets (pure).

ModelMesh's Grafana dashboard and alerts read these names, so each one means what ModelMesh's does:
``api_request`` is an inference request on the external port, timed from its first byte to its last;
``invoke_model`` a call this pod made to its own runtime; ``cache_miss`` the time a request waited for
its model to load. Request metrics carry ``method`` (the part after the first ``/``, or the full name with
``fq_names``) and ``code`` (the gRPC status name); ``per_model_metrics`` adds ``modelId`` and ``vModelId``
everywhere a histogram is observed (they multiply the series, so they are opt-in). The three failure
counters keep ModelMesh's bare names (no ``_total``). The mesh's own figures are ``modelmesh_py_*``.

Everything here is counting on the event loop: ``mesh/observe/export.py`` turns it into Prometheus
families when scraped, and a serving process ships ``drain()`` to the main process, which ``merge``s it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as v2

from mesh.observe.counting import CounterFamily, Histogram, HistogramFamily, Labels

# ModelMesh's bucket sets (Prometheus adds +Inf).
MS_TIME = (0.5, 1, 2, 5, 10, 20, 50, 75, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 60000, 120000, 300000)
AGE_MS = (30_000, 300_000, 900_000, 3_600_000, 14_400_000, 43_200_000, 86_400_000, 604_800_000,
          2_592_000_000, 7_776_000_000)  # fmt: skip
MODEL_SIZE = tuple(262_144 * 4**n for n in range(8))
MSG_SIZE = tuple(128 * 4**n for n in range(8))

REQUEST_LABELS = ("method", "code")
MODEL_LABELS = ("modelId", "vModelId")
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
V2_METHODS = frozenset(
    f"/{service.full_name}/{method.name}"
    for service in v2.DESCRIPTOR.services_by_name.values()
    for method in service.methods
)
OK, CANCELLED, UNKNOWN = 0, 1, 2  # the gRPC status codes a request ends with when no trailers say


@dataclass(frozen=True, slots=True)
class Family:
    """One exported metric: its name, help, kind (histogram, counter, bare_counter) and labels."""

    attr: str  # the MeshMetrics attribute that counts it
    name: str
    help: str
    kind: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    per_model: bool = False  # gets modelId, vModelId with per_model_metrics


FAMILIES: tuple[Family, ...] = (
    Family("api_request", "modelmesh_api_request_milliseconds", "External inference request time",
           "histogram", REQUEST_LABELS, MS_TIME, True),
    Family("invoke_model", "modelmesh_invoke_model_milliseconds",
           "Internal model server inference request time", "histogram", REQUEST_LABELS, MS_TIME, True),
    Family("request_size", "modelmesh_request_size_bytes", "Inference request payload size",
           "histogram", REQUEST_LABELS, MSG_SIZE, True),
    Family("response_size", "modelmesh_response_size_bytes", "Inference response payload size",
           "histogram", REQUEST_LABELS, MSG_SIZE, True),
    Family("cache_miss", "modelmesh_cache_miss_milliseconds", "Cache miss delay",
           "histogram", (), MS_TIME, True),
    Family("load_time", "modelmesh_loadmodel_milliseconds", "Time taken to load model",
           "histogram", (), MS_TIME, True),
    Family("unload_time", "modelmesh_unloadmodel_milliseconds", "Time taken to unload model",
           "histogram", (), MS_TIME, True),
    Family("loading_queue", "modelmesh_loading_queue_delay_milliseconds", "Time spent in model loading queue",
           "histogram", (), MS_TIME, True),
    Family("age_at_eviction", "modelmesh_age_at_eviction_milliseconds",
           "Time since model was last used when evicted", "histogram", (), AGE_MS, True),
    Family("loaded_size", "modelmesh_loaded_model_size_bytes", "Reported size of loaded model",
           "histogram", (), MODEL_SIZE, True),
    Family("load_failures", "modelmesh_loadmodel_failure", "Model load failures", "bare_counter"),
    Family("unload_failures", "modelmesh_unloadmodel_failure",
           "Unload model failures (not counting multiple attempts for same copy)", "bare_counter"),
    Family("unload_attempt_failures", "modelmesh_unloadmodel_attempt_failure",
           "Unload model attempt failures", "bare_counter"),
    # the mesh's own
    Family("front_streams", "modelmesh_py_front_streams", "Streams the HTTP/2 front took, by path "
           "(fast: to this pod's runtime; forwarded: to a holding peer; relayed: to the general route; "
           "replayed: a fast attempt the general route finished)", "counter", ("port", "path")),
    Family("evictions", "modelmesh_py_evictions", "Model copies evicted for room, by eviction policy",
           "counter", ("policy",)),
    Family("copies", "modelmesh_py_copy_changes", "Model copies this pod added or dropped, and why",
           "counter", ("change", "reason")),
    Family("watch_lag", "modelmesh_py_etcd_watch_lag_milliseconds",
           "Time from an etcd write by this pod to its own view having it", "histogram", (), MS_TIME),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``MM_METRICS`` in ModelMesh's syntax (``prometheus:port=2112;per_model_metrics=true;fq_names=true``,
    or ``disabled``) with ``MM_METRICS_PORT`` (0: no metrics port)."""

    port: int = 0
    per_model: bool = False
    fq_names: bool = False

    @property
    def enabled(self) -> bool:
        return self.port > 0


def parse_metrics_config(spec: str, port: int) -> MetricsConfig:
    """The metrics settings; ValueError for anything ModelMesh would reject, with what was wrong."""
    spec = spec.strip()
    if not spec:
        return MetricsConfig(port=port)
    kind, _, params = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "disabled":
        return MetricsConfig()
    if kind != "prometheus":
        raise ValueError(f"metrics kind {kind!r}: only prometheus or disabled")
    values: dict[str, Any] = {"port": port}
    for item in filter(None, (p.strip() for p in params.split(";"))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"metrics parameter {item!r} is not key=value")
        if key == "port":
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise ValueError(f"metrics port {value!r} is not a port number")
            values["port"] = int(value)
        elif key in ("per_model_metrics", "fq_names"):
            values["per_model" if key == "per_model_metrics" else key] = value.lower() == "true"
        elif key == "scheme":
            if value != "http":
                raise ValueError(f"metrics scheme {value!r}: only http (the metrics port has no TLS yet)")
        else:
            raise ValueError(f"unknown metrics parameter {key!r}")
    if not values["port"]:
        values["port"] = 2112  # ModelMesh's default port once prometheus is asked for
    return MetricsConfig(**values)


def method_label(path: str, fq_names: bool = False) -> str:
    """``/inference.GRPCInferenceService/ModelInfer`` -> ``ModelInfer`` (ModelMesh: after the first ``/``
    of the service-qualified name; ``fq_names`` keeps it whole). A method KServe v2 does not have is
    ``unknown``: clients choose paths, and each label value is a series kept for good."""
    if path not in V2_METHODS:
        return "unknown"
    name = path[1:]
    return name if fq_names else name.partition("/")[2]


def code_name(status: int) -> str:
    return CODE_NAMES.get(status, "UNKNOWN")


class MeshMetrics:
    """Every count a pod keeps: observed on the event loop, read when scraped or drained."""

    def __init__(self, per_model: bool = False, fq_names: bool = False) -> None:
        self.per_model = per_model
        self.fq_names = fq_names
        self.families: dict[str, HistogramFamily | CounterFamily] = {
            f.attr: HistogramFamily(f.buckets) if f.kind == "histogram" else CounterFamily() for f in FAMILIES
        }
        h, c = self.histogram, self.counter
        self.api_request, self.invoke_model = h("api_request"), h("invoke_model")
        self.request_size, self.response_size = h("request_size"), h("response_size")
        self.cache_miss, self.load_time, self.unload_time = h("cache_miss"), h("load_time"), h("unload_time")
        self.loading_queue, self.age_at_eviction = h("loading_queue"), h("age_at_eviction")
        self.loaded_size, self.watch_lag = h("loaded_size"), h("watch_lag")
        self.load_failures, self.unload_failures = c("load_failures"), c("unload_failures")
        self.unload_attempt_failures = c("unload_attempt_failures")
        self.front_streams, self.evictions, self.copies = c("front_streams"), c("evictions"), c("copies")
        # the hot path's series, found by one dict lookup: (path, status[, model ids]) -> histograms
        self._request_series: dict[tuple[Any, ...], tuple[Histogram, Histogram, Histogram | None]] = {}
        self._invoke_series: dict[tuple[Any, ...], Histogram] = {}

    def histogram(self, attr: str) -> HistogramFamily:
        family = self.families[attr]
        assert isinstance(family, HistogramFamily)
        return family

    def counter(self, attr: str) -> CounterFamily:
        family = self.families[attr]
        assert isinstance(family, CounterFamily)
        return family

    def label_names(self, family: Family) -> tuple[str, ...]:
        return (*family.labels, *MODEL_LABELS) if self.per_model and family.per_model else family.labels

    def _model(self, model_id: str, vmodel_id: str = "") -> Labels:
        return (model_id, vmodel_id) if self.per_model else ()

    # -- requests -------------------------------------------------------------------------
    def request(
        self,
        path: str,
        status: int,
        ms: float,
        request_bytes: int,
        response_bytes: int | None,
        model_id: str = "",
        vmodel_id: str = "",
    ) -> None:
        """An inference request on the external port ended (``response_bytes`` None: no answer).

        Model ids are the caller's to vouch for: a registered model's, or empty (clients choose ids)."""
        answered = response_bytes is not None
        key = (path, status, answered, model_id, vmodel_id) if self.per_model else (path, status, answered)
        series = self._request_series.get(key)
        if series is None:
            labels = (method_label(path, self.fq_names), code_name(status), *self._model(model_id, vmodel_id))
            series = self._request_series[key] = (
                self.api_request.series(labels),
                self.request_size.series(labels),
                None if response_bytes is None else self.response_size.series(labels),  # no answer: no size
            )
        api, request_size, response_size = series
        api.observe(ms)
        request_size.observe(request_bytes)
        if response_size is not None:
            response_size.observe(response_bytes)  # type: ignore[arg-type]

    def invoked(self, path: str, status: int, ms: float, model_id: str = "") -> None:
        """A call this pod made to its own runtime ended."""
        key = (path, status, model_id) if self.per_model else (path, status)
        series = self._invoke_series.get(key)
        if series is None:
            labels = (method_label(path, self.fq_names), code_name(status), *self._model(model_id))
            series = self._invoke_series[key] = self.invoke_model.series(labels)
        series.observe(ms)

    def front_stream(self, port: str, path: str) -> None:
        self.front_streams.inc((port, path))

    # -- models ---------------------------------------------------------------------------
    def missed(self, model_id: str, ms: float) -> None:
        self.cache_miss.observe(self._model(model_id), ms)

    def loaded(self, model_id: str, ms: float, queue_ms: float, size_bytes: int, reason: str) -> None:
        """The runtime loaded a copy here (``reason``: a request needed it, or scale-up by request rate)."""
        labels = self._model(model_id)
        self.load_time.observe(labels, ms)
        self.loading_queue.observe(labels, queue_ms)
        self.loaded_size.observe(labels, size_bytes)
        self.copies.inc(("added", reason))

    def load_failed(self) -> None:
        self.load_failures.inc(())

    def unloaded(self, model_id: str, ms: float) -> None:
        self.unload_time.observe(self._model(model_id), ms)

    def unload_failed(self) -> None:
        self.unload_failures.inc(())
        self.unload_attempt_failures.inc(())

    def evicted(self, model_id: str, policy: str, idle_ms: float) -> None:
        self.age_at_eviction.observe(self._model(model_id), idle_ms)
        self.evictions.inc((policy,))

    def copy_dropped(self, reason: str) -> None:
        self.copies.inc(("dropped", reason))

    def watch_lagged(self, ms: float) -> None:
        self.watch_lag.observe((), ms)

    # -- serving processes ------------------------------------------------------------------
    def drain(self) -> dict[str, list[list[Any]]]:
        """What was counted since the last drain, JSON-ready (a serving process's report)."""
        self._request_series.clear()  # their histograms leave with the report
        self._invoke_series.clear()
        return {attr: family.drain() for attr, family in self.families.items() if family.by_labels}

    def merge(self, drained: Mapping[str, list[list[Any]]]) -> None:
        """Add a serving process's ``drain()``; ValueError for a report that does not fit."""
        arity = {f.attr: self.label_names(f) for f in FAMILIES}
        for attr, rows in drained.items():
            family = self.families.get(attr)
            if family is None:
                raise ValueError(f"unknown metric {attr!r}")
            try:
                if any(len(row[0]) != len(arity[attr]) for row in rows):
                    raise ValueError(f"labels are not {arity[attr]}")
                family.merge(rows)
            except (TypeError, ValueError, IndexError) as e:
                raise ValueError(f"metric {attr!r}: {e}") from e


class UncountedMetrics(MeshMetrics):
    """Metrics off (no metrics port): nothing is observed but the HTTP/2 front's own stream counts, which
    ``/mesh/front`` shows either way. The hot path's cost of counting is measured against this."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        pass

    def invoked(self, *args: Any, **kwargs: Any) -> None:
        pass

    def missed(self, *args: Any, **kwargs: Any) -> None:
        pass

    def loaded(self, *args: Any, **kwargs: Any) -> None:
        pass

    def load_failed(self, *args: Any, **kwargs: Any) -> None:
        pass

    def unloaded(self, *args: Any, **kwargs: Any) -> None:
        pass

    def unload_failed(self, *args: Any, **kwargs: Any) -> None:
        pass

    def evicted(self, *args: Any, **kwargs: Any) -> None:
        pass

    def copy_dropped(self, *args: Any, **kwargs: Any) -> None:
        pass

    def watch_lagged(self, *args: Any, **kwargs: Any) -> None:
        pass


def metrics_for(config: MetricsConfig) -> MeshMetrics:
    """What a pod counts with: everything when it has a metrics port, else only the front's paths."""
    if not config.enabled:
        return UncountedMetrics()
    return MeshMetrics(per_model=config.per_model, fq_names=config.fq_names)
