"""Traces: the spans and the W3C traceparent they pass on, in process with OpenTelemetry's in-memory
exporter; then two real pods exporting over OTLP to a collector this test runs, a client's trace followed
through the front, a load, a forward to the holding peer and into the runtime."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from harness.cluster import EtcdServer
from harness.processes import free_port
from load_tests.echo_runtime import INFER_METHOD, MODEL_TYPE
from load_tests.hop import infer_request
from load_tests.processes import EchoProcess, start_echo_pod
from mesh.observe.tracing import Tracing, end_span, set_status
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.support import poll_until

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


@pytest.fixture
def exported() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracing = Tracing.with_processor(SimpleSpanProcessor(exporter), "pod-t")
    yield tracing, exporter
    tracing.shutdown()


def test_a_request_span_continues_the_callers_trace_and_passes_its_own_on(
    exported: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = exported
    with tracing.request("mesh.inference", [("traceparent", TRACEPARENT)], **{"rpc.method": "m"}) as span:
        assert span is not None
        with tracing.step("mesh.forward", SpanKind.CLIENT, {"mesh.peer": "pod-b"}):
            outgoing = tracing.outgoing(
                [("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"), ("x", "y")]
            )
        set_status(span, 5)
    forward, inference = exporter.get_finished_spans()
    assert (inference.name, inference.kind) == ("mesh.inference", SpanKind.SERVER)
    assert format(inference.context.trace_id, "032x") == CLIENT_TRACE
    assert inference.parent is not None and format(inference.parent.span_id, "016x") == CLIENT_SPAN
    assert forward.parent is not None and forward.parent.span_id == inference.context.span_id
    assert forward.attributes is not None and forward.attributes["mesh.peer"] == "pod-b"
    sent = dict(outgoing)
    assert sent["x"] == "y" and len([k for k, _ in outgoing if k == "traceparent"]) == 1
    assert sent["traceparent"] == f"00-{CLIENT_TRACE}-{format(forward.context.span_id, '016x')}-01"
    assert inference.status.status_code is StatusCode.ERROR and inference.status.description == "NOT_FOUND"
    assert inference.resource.attributes["service.instance.id"] == "pod-t"


def test_without_a_caller_a_request_starts_a_trace_and_a_step_outside_one_records_nothing(
    exported: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = exported
    with tracing.step("mesh.load"):
        pass
    assert exporter.get_finished_spans() == ()
    with tracing.request("mesh.inference", [("traceparent", "garbage")]):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.parent is None and span.status.status_code is StatusCode.UNSET


def test_the_fronts_spans_over_callbacks(exported: tuple[Tracing, InMemorySpanExporter]) -> None:
    tracing, exporter = exported
    span = tracing.start("mesh.inference", ((b"traceparent", TRACEPARENT.encode()),), **{"mesh.path": "fast"})
    assert span is not None
    headers = Tracing.with_traceparent(span, ((b":path", b"/x"), (b"traceparent", TRACEPARENT.encode())))
    end_span(span, 0)
    (finished,) = exporter.get_finished_spans()
    traceparents = [v for k, v in headers if k == b"traceparent"]
    assert traceparents == [f"00-{CLIENT_TRACE}-{format(finished.context.span_id, '016x')}-01".encode()]
    assert finished.status.status_code is StatusCode.UNSET


def test_off_nothing_is_touched() -> None:
    tracing = Tracing.off()
    assert not tracing.enabled
    with tracing.request("x", [("traceparent", TRACEPARENT)]) as span, tracing.step("y") as step:
        assert span is None and step is None
    metadata: list[tuple[str, str | bytes]] = [("traceparent", TRACEPARENT)]
    assert tracing.outgoing(metadata) is metadata
    assert tracing.start("x", ()) is None


def test_a_sample_ratio_of_zero_keeps_no_new_trace_but_follows_a_sampled_caller() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.with_processor(SimpleSpanProcessor(exporter), "pod-t", sample_ratio=0.0)
    with tracing.request("new", []):
        pass
    with tracing.request("followed", [("traceparent", TRACEPARENT)]):
        pass
    assert [s.name for s in exporter.get_finished_spans()] == ["followed"]
    tracing.shutdown()


# -- two real pods and an OTLP collector --------------------------------------------------------------------
class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []  # (service.instance.id, span)
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.spans.extend((attributes.get("service.instance.id", ""), s) for s in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def in_trace(self, trace_id: str) -> list[tuple[str, object]]:
        with self._lock:
            return [(pod, s) for pod, s in self.spans if s.trace_id.hex() == trace_id]  # type: ignore[attr-defined]


@dataclass
class TracedMesh:
    collector: Collector
    a: str  # pod-a's address
    b_echo: EchoProcess


@pytest.fixture
def traced_mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TracedMesh]:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # the pods export every 100 ms, not every 5 s
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    with contextlib.ExitStack() as stack:
        stack.callback(server.stop, None)
        etcd = EtcdServer.start(tmp_path / "etcd")
        stack.callback(etcd.process.stop)
        args = [f"--otlp-endpoint=127.0.0.1:{port}"]
        echo_a = EchoProcess.start(tmp_path / "echo-a", "echo-a")
        stack.callback(echo_a.stop)
        echo_b = EchoProcess.start(tmp_path / "echo-b", "echo-b")
        stack.callback(echo_b.stop)
        # pod-a serves no echo models: it forwards every request to pod-b, which loads the model
        a = start_echo_pod(tmp_path / "a", etcd, echo_a, "pod-a", model_types="none", extra_args=args)
        stack.callback(a.process.stop)
        b = start_echo_pod(tmp_path / "b", etcd, echo_b, "pod-b", extra_args=args)
        stack.callback(b.process.stop)
        yield TracedMesh(collector, a.address, echo_b)


def traced_call(address: str, trace_id: str) -> str:
    """One ModelInfer of "traced" in the client's trace ``trace_id``; returns the client span's id."""
    traceparent = f"00-{trace_id}-{CLIENT_SPAN}-01"
    with grpc.insecure_channel(address) as channel:
        channel.unary_unary(INFER_METHOD)(
            infer_request("traced"), metadata=(("traceparent", traceparent),), timeout=30
        )
    return CLIENT_SPAN


def spans_of(collector: Collector, trace_id: str, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    poll_until(
        lambda: wanted <= {(pod, s.name) for pod, s in collector.in_trace(trace_id)},  # type: ignore[attr-defined]
        what=f"spans {sorted(wanted)} in trace {trace_id}",
    )
    return {(pod, s.name): s for pod, s in collector.in_trace(trace_id)}  # type: ignore[attr-defined]


@pytest.mark.integration
def test_a_clients_trace_runs_through_both_pods_into_the_runtime(traced_mesh: TracedMesh) -> None:
    with grpc.insecure_channel(traced_mesh.a) as channel:  # registered only: the first request loads it
        mm_grpc.ModelMeshStub(channel).registerModel(
            mm.RegisterModelRequest(
                modelId="traced", modelInfo=mm.ModelInfo(type=MODEL_TYPE, path="size=100")
            ),
            timeout=10,
        )
    # cold: pod-a's general route forwards to pod-b, which loads the model and calls its runtime
    traced_call(traced_mesh.a, CLIENT_TRACE)
    spans = spans_of(
        traced_mesh.collector,
        CLIENT_TRACE,
        {
            ("pod-a", "mesh.inference"),
            ("pod-a", "mesh.forward"),
            ("pod-b", "mesh.serve"),
            ("pod-b", "mesh.load"),
        },
    )
    inference, forward = spans[("pod-a", "mesh.inference")], spans[("pod-a", "mesh.forward")]
    serve, load = spans[("pod-b", "mesh.serve")], spans[("pod-b", "mesh.load")]
    assert inference.parent_span_id.hex() == CLIENT_SPAN
    assert forward.parent_span_id == inference.span_id
    assert serve.parent_span_id == forward.span_id
    assert load.parent_span_id == serve.span_id
    runtime = spans_of(traced_mesh.collector, CLIENT_TRACE, {("pod-b", "mesh.runtime")})[
        ("pod-b", "mesh.runtime")
    ]
    assert runtime.parent_span_id == serve.span_id
    # the runtime got the traceparent of the span the call was made in
    _, trace_id, parent, _ = traced_mesh.b_echo.stats()["traceparents"]["traced"].split("-")
    assert (trace_id, parent) == (CLIENT_TRACE, runtime.span_id.hex())

    # warm: the HTTP/2 front's fast path, pod-a to pod-b's internal port, pod-b straight to its runtime
    warm_trace = "5" * 32
    traced_call(traced_mesh.a, warm_trace)
    spans = spans_of(
        traced_mesh.collector, warm_trace, {("pod-a", "mesh.inference"), ("pod-b", "mesh.serve")}
    )
    inference, serve = spans[("pod-a", "mesh.inference")], spans[("pod-b", "mesh.serve")]
    assert inference.parent_span_id.hex() == CLIENT_SPAN and serve.parent_span_id == inference.span_id
    _, trace_id, parent, _ = traced_mesh.b_echo.stats()["traceparents"]["traced"].split("-")
    assert (trace_id, parent) == (warm_trace, serve.span_id.hex())
    assert {name for _, name in spans} == {"mesh.inference", "mesh.serve"}  # no general route, no load
