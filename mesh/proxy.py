"""The inference proxy: any unary method on the external port, forwarded as raw bytes.

The hot path, top to bottom: receive bytes -> resolve the model (headers or
field 1) -> make sure this pod holds it (loading it at most once) -> write the
concrete id into field 1 -> forward the bytes to the runtime -> return its bytes.
Server-level v2 calls are answered here; ModelReady never loads.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import grpc
from tritonclient.grpc import service_pb2 as v2

from mesh.dispatch import Dispatcher
from mesh.errors import MeshError
from mesh.runtime_client import RuntimeClient
from mesh.target import TargetError, request_target
from mesh.wire import WireFormatError, inject_string, read_string_field

log = logging.getLogger(__name__)

V2_SERVICE = "/inference.GRPCInferenceService/"
STREAMING_METHODS = frozenset({V2_SERVICE + "ModelStreamInfer"})
# Headers that are ours or the transport's; everything else reaches the runtime.
_DROP_HEADER_PREFIXES = ("mm-", ":", "grpc-")
_DROP_HEADERS = frozenset({"user-agent", "content-type", "te"})

MAX_CACHED_METHODS = 256

Behavior = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def forwarded_metadata(metadata: tuple[tuple[str, str | bytes], ...]) -> list[tuple[str, str | bytes]]:
    return [(k, v) for k, v in metadata if not k.startswith(_DROP_HEADER_PREFIXES) and k not in _DROP_HEADERS]


class InferenceProxy(grpc.GenericRpcHandler):
    def __init__(
        self,
        dispatch: Dispatcher,
        runtime: RuntimeClient,
        method_infos: dict[str, list[int]],
        allow_any_method: bool,
        server_name: str,
        server_version: str,
    ) -> None:
        self._dispatch = dispatch
        self._runtime = runtime
        self._method_infos = method_infos  # "/pkg.Service/Method" -> field path of the model id
        self._allow_any = allow_any_method or not method_infos
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        metadata = v2.ServerMetadataResponse(name=server_name, version=server_version).SerializeToString()
        self._local: dict[str, Behavior] = {
            V2_SERVICE + "ServerLive": self._constant(v2.ServerLiveResponse(live=True).SerializeToString()),
            V2_SERVICE + "ServerReady": self._constant(
                v2.ServerReadyResponse(ready=True).SerializeToString()
            ),
            V2_SERVICE + "ServerMetadata": self._constant(metadata),
            V2_SERVICE + "ModelReady": self._model_ready,
        }

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            behavior = self._local.get(method) or self._forwarder(method)
            handler = grpc.unary_unary_rpc_method_handler(behavior)  # no (de)serializers: raw bytes
            if len(self._handlers) < MAX_CACHED_METHODS:  # clients choose method names: bound the cache
                self._handlers[method] = handler
        return handler

    # -- forwarding --------------------------------------------------------------------
    def _forwarder(self, method: str) -> Behavior:
        if method in STREAMING_METHODS:
            return self._refuse(grpc.StatusCode.UNIMPLEMENTED, f"{method} (streaming) is not proxied yet")
        if not self._allow_any and method not in self._method_infos:
            return self._refuse(
                grpc.StatusCode.UNIMPLEMENTED, f"method {method} is not served by the runtime"
            )
        id_path = self._method_infos.get(method, [1])
        call = self._runtime.method(method)

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = context.invocation_metadata() or ()
            try:
                model_id = self._dispatch.model_id(request_target(metadata, request))
                await self._dispatch.ensure_local(model_id, context.time_remaining())
                if read_string_field(request, id_path[0]) != model_id or len(id_path) > 1:
                    request = inject_string(request, id_path, model_id)
            except TargetError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            except WireFormatError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {e}")
            except MeshError as e:
                await context.abort(e.code, e.message)
            with self._dispatch.serving(model_id):
                try:
                    response: bytes = await call(
                        request, timeout=context.time_remaining(), metadata=forwarded_metadata(metadata)
                    )
                    return response
                except grpc.aio.AioRpcError as e:  # the runtime's own answer, passed through
                    await context.abort(e.code(), e.details() or "")
            raise AssertionError("unreachable")  # abort() raises

        return forward

    # -- answered by the mesh ------------------------------------------------------------
    async def _model_ready(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Registered and loaded somewhere; never triggers a load."""
        try:
            target = request_target(context.invocation_metadata() or (), request)
        except TargetError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return v2.ModelReadyResponse(ready=self._dispatch.ready(target)).SerializeToString()

    @staticmethod
    def _constant(response: bytes) -> Behavior:
        async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return response

        return answer

    @staticmethod
    def _refuse(code: grpc.StatusCode, message: str) -> Behavior:
        async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await context.abort(code, message)
            raise AssertionError("unreachable")

        return refuse
