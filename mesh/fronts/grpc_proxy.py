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

import logging
from collections.abc import Awaitable, Callable

import grpc
from tritonclient.grpc import service_pb2 as v2

from mesh.errors import MeshError, Reroute
from mesh.models.local import LoadClaimed
from mesh.models.runtime_client import RuntimeClient
from mesh.models.worker_usage import USAGE_METHOD, parse_usage
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
    peer_error,
    runtime_error,
)
from mesh.routing.peers import PeerPool
from mesh.routing.router import LoadHereFailed, Router
from mesh.routing.target import TargetError, request_target
from mesh.routing.wire import with_model_id

log = logging.getLogger(__name__)

V2_SERVICE = "/inference.GRPCInferenceService/"
STREAMING_METHODS = frozenset({V2_SERVICE + "ModelStreamInfer"})
# Headers that are ours or the transport's; everything else reaches the runtime.
_DROP_HEADER_PREFIXES = ("mm-", ":", "grpc-")
_DROP_HEADERS = frozenset({"user-agent", "content-type", "te"})
MAX_CACHED_METHODS = 256

Behavior = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def message_size_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def forwarded_metadata(metadata: Metadata) -> list[tuple[str, str | bytes]]:
    return [(k, v) for k, v in metadata if not k.startswith(_DROP_HEADER_PREFIXES) and k not in _DROP_HEADERS]


class MethodTable:
    """The runtime's methodInfos: which methods are forwarded, and where the model id goes in each."""

    def __init__(self, method_infos: dict[str, list[int]], allow_any_method: bool) -> None:
        self._infos = method_infos  # "/pkg.Service/Method" -> field path of the model id
        self._allow_any = allow_any_method or not method_infos

    def refusal(self, method: str) -> str | None:
        if method in STREAMING_METHODS:
            return f"{method} (streaming) is not proxied yet"
        if not self._allow_any and method not in self._infos:
            return f"method {method} is not served by the runtime"
        return None

    def id_path(self, method: str) -> list[int]:
        return self._infos.get(method, [1])


class HandlerCache:
    """One raw-bytes handler per method name, made on first use (bounded: clients choose the names)."""

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def get(self, method: str, make: Callable[[], Behavior]) -> grpc.RpcMethodHandler:
        handler = self._handlers.get(method)
        if handler is None:
            handler = grpc.unary_unary_rpc_method_handler(make())  # no (de)serializers: raw bytes
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
    try:
        response: bytes = await runtime.method(method)(request, timeout=timeout_s, metadata=metadata)
        return response
    except grpc.aio.AioRpcError as e:
        raise runtime_error(e) from e  # mesh/outcomes.py: what the runtime's answer means


class InferenceProxy(grpc.GenericRpcHandler):
    def __init__(
        self,
        router: Router,
        peers: PeerPool,
        runtime: RuntimeClient,
        methods: MethodTable,
        server_name: str,
        server_version: str,
    ) -> None:
        self._router = router
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
        }

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        return self._cache.get(method, lambda: self._local.get(method) or self._forwarder(method))

    def _forwarder(self, method: str) -> Behavior:
        refusal = self._methods.refusal(method)
        if refusal is not None:
            return _refuse(grpc.StatusCode.UNIMPLEMENTED, refusal)
        id_path = self._methods.id_path(method)

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = context.invocation_metadata() or ()
            try:
                target = request_target(metadata, request)
                try:
                    model_id = self._router.model_id(target)
                except MeshError:  # perhaps registered elsewhere a moment ago
                    model_id = await self._router.model_id_after_miss(target)
                outgoing = forwarded_metadata(metadata)

                async def here() -> bytes:
                    return await call_runtime(
                        self._runtime, method, id_path, request, model_id, outgoing, context.time_remaining()
                    )

                async def there(pod_id: str, avoid: frozenset[str]) -> bytes:
                    address = self._router.instance(pod_id).internal_address
                    try:
                        return await self._peers.call(
                            address, method, request, model_id, outgoing, context.time_remaining(), avoid
                        )
                    except grpc.aio.AioRpcError as e:
                        raise peer_error(e) from e

                return await self._router.route(model_id, context.time_remaining(), here, there)
            except MESH_ERRORS as e:
                await abort(context, e)
            raise AssertionError("unreachable")  # abort() raises

        return forward

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

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        return self._cache.get(method, lambda: self._server(method))

    def _server(self, method: str) -> Behavior:
        if method == LOAD_METHOD:
            return self._load
        if method == USAGE_METHOD:
            return self._usage
        refusal = self._methods.refusal(method)
        if refusal is not None:
            return _refuse(grpc.StatusCode.UNIMPLEMENTED, refusal)
        id_path = self._methods.id_path(method)

        async def serve(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = context.invocation_metadata() or ()
            model_id = await self._forwarded_model(metadata, context)

            async def here() -> bytes:
                return await call_runtime(
                    self._runtime,
                    method,
                    id_path,
                    request,
                    model_id,
                    forwarded_metadata(metadata),
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

        return serve

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


def _constant(response: bytes) -> Behavior:
    async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return response

    return answer


def _refuse(code: grpc.StatusCode, message: str) -> Behavior:
    async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await abort(context, MeshError(code, message))
        raise AssertionError("unreachable")

    return refuse
