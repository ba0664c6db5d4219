"""The gRPC inference proxy: any unary method, forwarded as raw bytes.

The hot path, top to bottom: receive bytes -> resolve the model (headers or
field 1) -> pick the pod (this one if it holds the model) -> write the concrete
id into field 1 -> forward the bytes to the runtime, or to the peer that holds
or will load the model -> return the bytes that come back.

Two handlers: ``InferenceProxy`` on the external port (also answers the
server-level v2 calls; ModelReady never loads) and ``PeerHandler`` on the
internal port, which serves forwarded requests here and never forwards again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.trace import Span, SpanKind
from tritonclient.grpc import service_pb2 as v2

from mesh.errors import BadRequest, MeshError, Reroute
from mesh.fronts.streams import relay_stream, stream_error, unchanged
from mesh.models.local import LoadClaimed
from mesh.models.runtime_client import RuntimeClient
from mesh.models.worker_usage import METRICS_METHOD, USAGE_METHOD, parse_metrics_report, parse_usage
from mesh.observe.logs import RequestLog
from mesh.observe.metrics import CANCELLED, OK, UNKNOWN, MeshMetrics
from mesh.observe.tracing import Tracing, set_status
from mesh.outcomes import (
    AVOID_HEADER,
    COPY_HEADER,
    INTERNAL_MODEL_HEADER,
    LOAD_FAILED_TRAILER,
    LOAD_METHOD,
    MESH_ERRORS,
    REDIRECT_TRAILER,
    RUNTIME_ANSWER_TRAILER,
    RUNTIME_DOWN_TRAILER,
    Metadata,
    Passthrough,
    abort,
    grpc_status,
    peer_error,
    runtime_error,
)
from mesh.routing.peers import PeerPool
from mesh.routing.router import LoadHereFailed, Router
from mesh.routing.target import RequestTarget, TargetError, TargetKind, header_target, request_target
from mesh.routing.wire import read_string_field, with_model_id

log = logging.getLogger(__name__)

V2_SERVICE = "/inference.GRPCInferenceService/"
STREAMING_METHODS = frozenset({V2_SERVICE + "ModelStreamInfer"})
# v2 methods for one model, named in field 1: routed to a pod holding the model even when this pod's runtime
# lacks the method (a mixed pool), and refused only by the pod that would serve them.
PER_MODEL_METHODS = frozenset(
    V2_SERVICE + m
    for m in ("ModelInfer", "ModelMetadata", "ModelConfig", "ModelStatistics", "ModelStreamInfer")
)
MODEL_STATISTICS = V2_SERVICE + "ModelStatistics"
# Headers that are ours or the transport's; everything else reaches the runtime.
_DROP_HEADER_PREFIXES = ("mm-", ":", "grpc-")
_DROP_HEADERS = frozenset({"user-agent", "content-type", "te"})
MAX_CACHED_METHODS = 256

Behavior = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]
StreamBehavior = Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], AsyncIterator[bytes]]


def message_size_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def forwarded_metadata(metadata: Metadata) -> list[tuple[str, str | bytes]]:
    return [(k, v) for k, v in metadata if not k.startswith(_DROP_HEADER_PREFIXES) and k not in _DROP_HEADERS]


class MethodTable:
    """The runtime's methodInfos: which methods are forwarded, and where the model id goes in each."""

    def __init__(self, method_infos: dict[str, list[int]], allow_any_method: bool, runtime: str = "") -> None:
        self._infos = method_infos  # "/pkg.Service/Method" -> field path of the model id
        self._allow_any = allow_any_method or not method_infos
        self.runtime = runtime  # its runtimeVersion, to name it in refusals

    def refusal(self, method: str) -> str | None:
        """Why this pod's runtime does not take ``method`` (None: it does)."""
        if not self._allow_any and method not in self._infos:
            return f"method {method} is not served by the runtime" + (
                f" {self.runtime}" if self.runtime else ""
            )
        return None

    def routable(self, method: str) -> bool:
        """Whether the mesh forwards ``method`` at all: this pod's runtime takes it, or another pod's may."""
        return self.refusal(method) is None or method in PER_MODEL_METHODS

    def id_path(self, method: str) -> list[int]:
        return self._infos.get(method, [1])


class HandlerCache:
    """One raw-bytes handler per method name, made on first use (bounded: clients choose the names)."""

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def get(self, method: str, make: Callable[[], grpc.RpcMethodHandler]) -> grpc.RpcMethodHandler:
        handler = self._handlers.get(method)
        if handler is None:
            handler = make()
            if len(self._handlers) < MAX_CACHED_METHODS:  # clients choose method names: bound the cache
                self._handlers[method] = handler
        return handler


async def call_runtime(
    runtime: RuntimeClient,
    method: str,
    id_path: list[int],
    request: bytes,
    model_id: str,
    metadata: Metadata,
    timeout_s: float | None,
    field1: str | None = None,
) -> bytes:
    """Write the concrete id into the request and send it to this pod's runtime (``field1``: see
    ``with_model_id``).

    Raises RuntimeNotFound for the runtime's "not found" (lost model, or a version or input the model
    lacks: the caller asks ``Router.copy_lost``), Reroute when the runtime is down, else Passthrough;
    WireFormatError when the request's bytes do not parse.
    """
    request = with_model_id(request, id_path, model_id, field1)
    started, status = time.monotonic(), OK
    try:
        response: bytes = await runtime.method(method)(request, timeout=timeout_s, metadata=metadata)
        return response
    except grpc.aio.AioRpcError as e:
        status = e.code().value[0]
        raise runtime_error(e) from e  # mesh/outcomes.py: what the runtime's answer means
    except asyncio.CancelledError:
        status = CANCELLED
        raise
    finally:
        runtime.metrics.invoked(method, status, (time.monotonic() - started) * 1000, model_id)


@dataclass(slots=True)
class Served:
    """Where a request went, for its log line and its span."""

    model_id: str = ""
    pod: str = ""

    def describe(self, span: Span | None, status: int) -> None:
        if span is not None:
            span.set_attribute("mesh.model_id", self.model_id)
            span.set_attribute("mesh.served_by", self.pod)
            set_status(span, status)


class CountedRequests(grpc.GenericRpcHandler):
    """The external port's ``api_request`` and message sizes where grpc.aio is the edge (``--front=grpc``):
    ``inner``'s unary inference handlers, timed and counted. Behind the HTTP/2 front the front counts."""

    def __init__(self, inner: grpc.GenericRpcHandler, metrics: MeshMetrics) -> None:
        self._inner = inner
        self._metrics = metrics
        self._cache = HandlerCache()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        handler = self._inner.service(handler_call_details)
        if handler is None or handler.unary_unary is None or not method.startswith(V2_SERVICE):
            return handler
        behavior = handler.unary_unary
        return self._cache.get(
            method, lambda: grpc.unary_unary_rpc_method_handler(self._counted(method, behavior))
        )

    def _counted(self, method: str, behavior: Behavior) -> Behavior:
        metrics = self._metrics

        async def counted(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            started, response, status = time.monotonic(), None, OK
            try:
                response = await behavior(request, context)
                return response
            except asyncio.CancelledError:
                status = CANCELLED
                raise
            except BaseException:
                code = context.code()  # set by abort
                status = code.value[0] if isinstance(code, grpc.StatusCode) else int(code or UNKNOWN)
                raise
            finally:
                # a model that answered is a registered one; a client's made-up ids must not become series
                named = metrics.per_model and status == OK
                model_id, vmodel_id = _named_model(context, request) if named else ("", "")
                metrics.request(
                    method,
                    status,
                    (time.monotonic() - started) * 1000,
                    len(request),
                    None if response is None else len(response),
                    model_id,
                    vmodel_id,
                )

        return counted


def _named_model(context: grpc.aio.ServicerContext, request: bytes) -> tuple[str, str]:
    """(modelId, vModelId) as the client named them, for per-model labels."""
    try:
        target = request_target(context.invocation_metadata() or (), request)
    except BadRequest:  # a bad id or body: the behaviour has answered that
        return "", ""
    return ("", target.id) if target.kind is TargetKind.VMODEL else (target.id, "")


class InferenceProxy(grpc.GenericRpcHandler):
    def __init__(
        self,
        router: Router,
        peers: PeerPool,
        runtime: RuntimeClient,
        methods: MethodTable,
        server_name: str,
        server_version: str,
        requests: RequestLog | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._router = router
        self._requests = requests or RequestLog(router.pod_id)
        self._tracing = tracing or Tracing.off()
        self._peers = peers
        self._runtime = runtime
        self._methods = methods
        self._cache = HandlerCache()
        metadata = v2.ServerMetadataResponse(name=server_name, version=server_version).SerializeToString()
        self._local: dict[str, Behavior] = {
            V2_SERVICE + "ServerLive": _constant(v2.ServerLiveResponse(live=True).SerializeToString()),
            V2_SERVICE + "ServerReady": _constant(v2.ServerReadyResponse(ready=True).SerializeToString()),
            V2_SERVICE + "ServerMetadata": _constant(metadata),
            V2_SERVICE + "ModelReady": self._model_ready,
            V2_SERVICE + "RepositoryIndex": self._repository_index,
        }

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        return self._cache.get(method, lambda: self._handler(method))

    def _handler(self, method: str) -> grpc.RpcMethodHandler:
        local = self._local.get(method)
        if local is not None:
            return grpc.unary_unary_rpc_method_handler(local)  # no (de)serializers: raw bytes
        if not self._methods.routable(method):
            refusal = self._methods.refusal(method) or method
            return grpc.unary_unary_rpc_method_handler(_refuse(grpc.StatusCode.UNIMPLEMENTED, refusal))
        if method in STREAMING_METHODS:
            return grpc.stream_stream_rpc_method_handler(self._streamer(method))
        return grpc.unary_unary_rpc_method_handler(self._forwarder(method))

    async def _resolve(self, target: RequestTarget) -> str:
        try:
            return self._router.model_id(target)
        except MeshError:  # perhaps registered elsewhere a moment ago
            return await self._router.model_id_after_miss(target)

    def _forwarder(self, method: str) -> Behavior:
        id_path = self._methods.id_path(method)
        refusal = self._methods.refusal(method)  # this pod's runtime lacks it: only a peer may serve it

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            """The general route, observed: its log line, its span; ``_route`` decides."""
            metadata = context.invocation_metadata() or ()
            served = Served()
            started, status = time.monotonic(), OK
            with self._tracing.request("mesh.inference", metadata, **{"rpc.method": method}) as span:
                try:
                    return await self._route(method, id_path, refusal, request, context, served)
                except MESH_ERRORS as e:
                    status = grpc_status(e)[0].value[0]
                    await abort(context, e)
                except asyncio.CancelledError:
                    status = CANCELLED
                    raise
                finally:
                    ms = (time.monotonic() - started) * 1000
                    self._requests.served(method, served.model_id, served.pod, status, ms, metadata)
                    served.describe(span, status)
            raise AssertionError("unreachable")  # abort() raises

        return forward

    async def _route(
        self,
        method: str,
        id_path: list[int],
        refusal: str | None,
        request: bytes,
        context: grpc.aio.ServicerContext,
        served: Served,
    ) -> bytes:
        metadata = context.invocation_metadata() or ()
        if (
            method == MODEL_STATISTICS
            and header_target(metadata) is None
            and not read_string_field(request, 1)
        ):
            return await self._all_statistics(request, metadata, context)
        target = request_target(metadata, request)
        model_id = served.model_id = await self._resolve(target)
        if method == MODEL_STATISTICS and not self._router.ready(target):
            return _no_statistics(model_id)  # not loaded anywhere: nothing to count, and no load
        outgoing = forwarded_metadata(metadata)
        tracing = self._tracing

        async def here() -> bytes:
            if refusal is not None:
                raise MeshError(grpc.StatusCode.UNIMPLEMENTED, refusal)
            served.pod = self._router.pod_id
            with tracing.step("mesh.runtime", SpanKind.CLIENT):
                return await call_runtime(
                    self._runtime,
                    method,
                    id_path,
                    request,
                    model_id,
                    tracing.outgoing(outgoing),
                    context.time_remaining(),
                )

        async def there(pod_id: str, avoid: frozenset[str]) -> bytes:
            served.pod = pod_id
            address = self._router.instance(pod_id).internal_address
            with tracing.step("mesh.forward", SpanKind.CLIENT, {"mesh.peer": pod_id}):
                try:
                    return await self._peers.call(
                        address,
                        method,
                        request,
                        model_id,
                        tracing.outgoing(outgoing),
                        context.time_remaining(),
                        avoid,
                    )
                except grpc.aio.AioRpcError as e:
                    raise peer_error(e) from e

        return await self._router.route(model_id, context.time_remaining(), here, there)

    async def _all_statistics(
        self, request: bytes, metadata: Metadata, context: grpc.aio.ServicerContext
    ) -> bytes:
        """ModelStatistics naming no model (perf_analyzer asks so): this pod's runtime's own figures for the
        models it holds, or none if the runtime keeps no statistics."""
        if self._methods.refusal(MODEL_STATISTICS) is not None:
            return v2.ModelStatisticsResponse().SerializeToString()
        try:
            answer: bytes = await self._runtime.method(MODEL_STATISTICS)(
                request, timeout=context.time_remaining(), metadata=forwarded_metadata(metadata)
            )
        except grpc.aio.AioRpcError as e:
            raise Passthrough.of(e) from e
        return answer

    def _streamer(self, method: str) -> StreamBehavior:
        """ModelStreamInfer: the first message names the model; the stream goes where a unary call would
        (loading the model first), and every message gets the concrete id."""
        id_path = self._methods.id_path(method)
        refusal = self._methods.refusal(method)

        async def stream(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            metadata = context.invocation_metadata() or ()
            first = await anext(requests, None)
            if first is None:
                return
            upstream = "the runtime serving the stream"
            try:
                model_id = await self._resolve(request_target(metadata, first))
                outgoing = forwarded_metadata(metadata)
                served_by = ""

                def splice(message: bytes) -> bytes:
                    return with_model_id(message, id_path, model_id)

                async def here() -> grpc.aio.StreamStreamCall:
                    nonlocal served_by
                    if refusal is not None:
                        raise MeshError(grpc.StatusCode.UNIMPLEMENTED, refusal)
                    call = self._runtime.stream(method)(metadata=outgoing, timeout=context.time_remaining())
                    await call.write(splice(first))
                    served_by = self._router.pod_id
                    return call

                async def there(pod_id: str, avoid: frozenset[str]) -> grpc.aio.StreamStreamCall:
                    nonlocal served_by, upstream
                    address = self._router.instance(pod_id).internal_address
                    call = self._peers.stream(
                        address, method, model_id, outgoing, context.time_remaining(), avoid
                    )
                    await call.write(first)  # the peer splices: it serves the model itself
                    served_by, upstream = pod_id, f"pod {pod_id} serving the stream"
                    return call

                call = await self._router.route(model_id, context.time_remaining(), here, there)
            except MESH_ERRORS as e:
                await abort(context, e)
                return
            self._router.acquire(model_id, served_by)  # no await since route(): eviction cannot slip in
            try:
                async for answer in relay_stream(
                    call, requests, splice if served_by == self._router.pod_id else unchanged
                ):
                    yield answer
            except grpc.aio.AioRpcError as e:
                await abort(context, stream_error(e, upstream))
            finally:
                self._router.release(model_id, served_by)

        return stream

    async def _repository_index(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """The mesh's registered models and their state (not one runtime's folder)."""
        try:
            ready_only = v2.RepositoryIndexRequest.FromString(request).ready
        except DecodeError:
            await abort(
                context, MeshError(grpc.StatusCode.INVALID_ARGUMENT, "cannot decode RepositoryIndexRequest")
            )
        entries = self._router.repository_index(ready_only)
        return v2.RepositoryIndexResponse(
            models=[
                v2.RepositoryIndexResponse.ModelIndex(
                    name=e.name, version=e.version, state=e.state, reason=e.reason
                )
                for e in entries
            ]
        ).SerializeToString()

    async def _model_ready(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            target = request_target(context.invocation_metadata() or (), request)
        except TargetError as e:
            await abort(context, e)
        return v2.ModelReadyResponse(ready=self._router.ready(target)).SerializeToString()


class PeerHandler(grpc.GenericRpcHandler):
    """The internal port: requests forwarded by peers, for a model already resolved, served here."""

    def __init__(self, router: Router, runtime: RuntimeClient, methods: MethodTable) -> None:
        self._router = router
        self._runtime = runtime
        self._methods = methods
        self._cache = HandlerCache()
        self._metrics = runtime.metrics  # the pod's: the serving processes' counts are added to it

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        return self._cache.get(method, lambda: self._handler(method))

    def _handler(self, method: str) -> grpc.RpcMethodHandler:
        refusal = self._methods.refusal(method)
        if method not in (LOAD_METHOD, USAGE_METHOD, METRICS_METHOD) and refusal is not None:
            return grpc.unary_unary_rpc_method_handler(_refuse(grpc.StatusCode.UNIMPLEMENTED, refusal))
        if method in STREAMING_METHODS:
            return grpc.stream_stream_rpc_method_handler(self._streamer(method))
        return grpc.unary_unary_rpc_method_handler(self._server(method))

    def _streamer(self, method: str) -> StreamBehavior:
        """A stream a peer forwarded: served here (loading the model first), never forwarded again."""
        id_path = self._methods.id_path(method)

        async def stream(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            metadata = context.invocation_metadata() or ()
            model_id = await self._forwarded_model(metadata, context)
            first = await anext(requests, None)
            if first is None:
                return

            def splice(message: bytes) -> bytes:
                return with_model_id(message, id_path, model_id)

            async def here() -> grpc.aio.StreamStreamCall:
                timeout = context.time_remaining()
                call = self._runtime.stream(method)(metadata=forwarded_metadata(metadata), timeout=timeout)
                await call.write(splice(first))
                return call

            try:
                call = await self._router.serve_here(model_id, context.time_remaining(), here)
            except LoadHereFailed as e:
                await _abort_load(context, e.error)
                return
            except MESH_ERRORS as e:
                await abort(context, e)
                return
            self._router.acquire(model_id, self._router.pod_id)
            try:
                async for answer in relay_stream(call, requests, splice):
                    yield answer
            except grpc.aio.AioRpcError as e:
                await abort(context, stream_error(e, "the runtime serving the stream"))
            finally:
                self._router.release(model_id, self._router.pod_id)

        return stream

    def _server(self, method: str) -> Behavior:
        if method == LOAD_METHOD:
            return self._load
        if method == USAGE_METHOD:
            return self._usage
        if method == METRICS_METHOD:
            return self._worker_metrics
        id_path = self._methods.id_path(method)

        async def serve(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = context.invocation_metadata() or ()
            with self._router.tracing.request("mesh.serve", metadata, **{"rpc.method": method}) as span:
                status = OK
                try:
                    return await self._serve(method, id_path, request, context)
                except BaseException:
                    status = UNKNOWN if context.code() is None else context.code().value[0]
                    raise
                finally:
                    set_status(span, status)

        return serve

    async def _serve(
        self, method: str, id_path: list[int], request: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        """A request a peer forwarded: the model loaded here if it is not, then this pod's runtime."""
        metadata = context.invocation_metadata() or ()
        model_id = await self._forwarded_model(metadata, context)
        tracing = self._router.tracing

        async def here() -> bytes:
            with tracing.step("mesh.runtime", SpanKind.CLIENT):
                return await call_runtime(
                    self._runtime,
                    method,
                    id_path,
                    request,
                    model_id,
                    tracing.outgoing(forwarded_metadata(metadata)),
                    context.time_remaining(),
                )

        try:
            return await self._router.serve_here(model_id, context.time_remaining(), here)
        except LoadHereFailed as e:
            await _abort_load(context, e.error)
        except Reroute as e:  # the runtime here is down
            await abort(context, e, ((RUNTIME_DOWN_TRAILER, "1"),))
        except Passthrough as e:  # the runtime's own answer: final for the sender too, whatever its code
            await abort(context, e, ((RUNTIME_ANSWER_TRAILER, "1"),))
        except MESH_ERRORS as e:
            await abort(context, e)
        raise AssertionError("unreachable")

    async def _load(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata = context.invocation_metadata() or ()
        model_id = await self._forwarded_model(metadata, context)

        async def loaded() -> bytes:
            return b""

        extra_copy = any(k == COPY_HEADER for k, _ in metadata)
        try:
            return await self._router.serve_here(model_id, context.time_remaining(), loaded, extra_copy)
        except LoadHereFailed as e:
            await _abort_load(context, e.error)
        raise AssertionError("unreachable")

    async def _usage(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Hits one of this pod's serving processes served from the runtime itself."""
        try:
            usage = parse_usage(request)
        except ValueError as e:
            await abort(context, MeshError(grpc.StatusCode.INVALID_ARGUMENT, str(e)))
        for model_id, (count, last_used_ms) in usage.items():
            self._router.record_use(model_id, count, last_used_ms)
        return b""

    async def _worker_metrics(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """What one of this pod's serving processes counted since its last report."""
        try:
            self._metrics.merge(parse_metrics_report(request))
        except ValueError as e:
            await abort(context, MeshError(grpc.StatusCode.INVALID_ARGUMENT, str(e)))
        return b""

    async def _forwarded_model(self, metadata: Metadata, context: grpc.aio.ServicerContext) -> str:
        """The model a peer forwarded the request for (the peer resolved it); pods it found unreachable."""
        model_id = next((str(v) for k, v in metadata if k == INTERNAL_MODEL_HEADER), "")
        avoid = next((str(v) for k, v in metadata if k == AVOID_HEADER), "")
        self._router.heard_unreachable(p for p in avoid.split(",") if p)
        if not model_id:
            missing = f"internal call without {INTERNAL_MODEL_HEADER}"
            await abort(context, MeshError(grpc.StatusCode.INVALID_ARGUMENT, missing))
        await self._router.caught_up(model_id)
        return model_id


async def _abort_load(context: grpc.aio.ServicerContext, error: MeshError) -> None:
    """A load here failed: tell the sender which pod claimed it, or that it may try another."""
    if isinstance(error, LoadClaimed):
        await abort(context, error, ((REDIRECT_TRAILER, error.holder),))
    await abort(context, error, ((LOAD_FAILED_TRAILER, "1"),))


def _no_statistics(model_id: str) -> bytes:
    """ModelStatistics for a model loaded nowhere: valid and all zero (counts start with its first load)."""
    return v2.ModelStatisticsResponse(model_stats=[v2.ModelStatistics(name=model_id)]).SerializeToString()


def _constant(response: bytes) -> Behavior:
    async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return response

    return answer


def _refuse(code: grpc.StatusCode, message: str) -> Behavior:
    async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await abort(context, MeshError(code, message))
        raise AssertionError("unreachable")

    return refuse
