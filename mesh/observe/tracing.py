"""OpenTelemetry traces of inference through the mesh (off unless an OTLP endpoint is configured).

A request gets a server span where the mesh takes it (``mesh.inference`` on the external port,
``mesh.serve`` where a peer forwarded it), a child of the client's W3C ``traceparent`` when it sent one.
Inside: ``mesh.load`` while its model loads, ``mesh.forward`` for the call to a peer, ``mesh.runtime`` for
the call to this pod's runtime; each outgoing call carries the ``traceparent`` of the span it is in, so
the peer's and the runtime's spans join the same trace. On the HTTP/2 front's fast path the request goes
straight from the ``mesh.inference`` span to the runtime (or to the holding peer) with that span's
``traceparent``.

Off, ``Tracing.off()`` answers every call without touching OpenTelemetry: the hot path pays one check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mesh.observe.metrics import code_name

TRACE_HEADERS = ("traceparent", "tracestate")
_PROPAGATOR = TraceContextTextMapPropagator()
Metadata = Sequence[tuple[Any, Any]]  # str or bytes names and values (grpc.aio's, or the front's headers)


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _carrier(metadata: Metadata) -> dict[str, str]:
    """The trace headers of a request, as the propagator reads them."""
    found = {}
    for name, value in metadata:
        key = _text(name)
        if key in TRACE_HEADERS:
            found[key] = _text(value)
    return found


class Tracing:
    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("modelmesh-py") if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @classmethod
    def off(cls) -> Tracing:
        return cls()

    @classmethod
    def to_otlp(cls, endpoint: str, pod_id: str, sample_ratio: float = 1.0) -> Tracing:
        """Spans batched to an OTLP/gRPC collector (``endpoint``: host:port or http://host:port)."""
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # only when on

        insecure = not endpoint.startswith("https://")
        return cls.with_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure)), pod_id, sample_ratio
        )

    @classmethod
    def with_processor(cls, processor: SpanProcessor, pod_id: str, sample_ratio: float = 1.0) -> Tracing:
        resource = Resource.create({"service.name": "modelmesh-py", "service.instance.id": pod_id})
        provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
        provider.add_span_processor(processor)
        return cls(provider)

    def shutdown(self) -> None:
        """Flush what is batched (at the pod's stop)."""
        if self._provider is not None:
            self._provider.shutdown()

    # -- spans that a ``with`` block covers (grpc.aio handlers: the span is the current one inside) ------
    @contextlib.contextmanager
    def request(self, name: str, metadata: Metadata, **attributes: Any) -> Iterator[Span | None]:
        """A server span for a request, a child of the caller's ``traceparent``."""
        if self._tracer is None:
            yield None
            return
        parent = _PROPAGATOR.extract(_carrier(metadata))
        with self._tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,  # an exception's text is no span's business (it may name anything)
            set_status_on_exception=False,  # the request's gRPC status says how it went
        ) as span:
            yield span

    @contextlib.contextmanager
    def step(
        self, name: str, kind: SpanKind = SpanKind.INTERNAL, attributes: dict[str, Any] | None = None
    ) -> Iterator[Span | None]:
        """A child of the current span (a load, a call to a peer or the runtime)."""
        if self._tracer is None or not trace.get_current_span().get_span_context().is_valid:
            yield None
            return
        with self._tracer.start_as_current_span(
            name, kind=kind, attributes=attributes, record_exception=False, set_status_on_exception=False
        ) as span:
            yield span

    def outgoing(self, metadata: list[tuple[str, str | bytes]]) -> list[tuple[str, str | bytes]]:
        """``metadata`` with the current span's ``traceparent`` in place of the caller's."""
        if self._tracer is None:
            return metadata
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        if not carrier:
            return metadata
        return [(k, v) for k, v in metadata if k not in TRACE_HEADERS] + list(carrier.items())

    # -- spans over callbacks (the HTTP/2 front: a stream starts in one callback and ends in another) ----
    def start(self, name: str, headers: Metadata, **attributes: Any) -> Span | None:
        if self._tracer is None:
            return None
        parent = _PROPAGATOR.extract(_carrier(headers))
        return self._tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)

    @staticmethod
    def with_traceparent(
        span: Span, headers: tuple[tuple[bytes, bytes], ...]
    ) -> tuple[tuple[bytes, bytes], ...]:
        """The front's outgoing headers carrying ``span``'s ``traceparent``."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span, otel_context.Context()))
        kept = tuple((k, v) for k, v in headers if k not in (b"traceparent", b"tracestate"))
        return kept + tuple((k.encode(), v.encode("latin-1")) for k, v in carrier.items())


def end_span(span: Span, status: int) -> None:
    """End a request's span with its gRPC status (anything but OK marks it an error)."""
    set_status(span, status)
    span.end()


def set_status(span: Span | None, status: int) -> None:
    if span is None:
        return
    span.set_attribute("rpc.grpc.status_code", status)
    if status != 0:
        span.set_status(Status(StatusCode.ERROR, code_name(status)))
