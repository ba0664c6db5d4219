"""A runtime for benchmarks: the ModelRuntime SPI and KServe v2 ModelInfer in one grpc.aio process.

It does as little as a runtime can, so the backend is never what a benchmark
measures: "loading" a model waits the time its path asks for and records the
size it names; inference answers a loaded model with one precomputed response
(NOT_FOUND for a model it does not hold, like a real runtime), after the time the path asks for. The
model path says what the model is:
``size=<bytes>[;load_ms=<ms>][;infer_ms=<ms>][;answers=<n>;answer_bytes=<b>]``.
On ModelStreamInfer each request is answered ``answers`` times (default 1) with ``answer_bytes`` of output
each, ``infer_ms`` apart: a stream to read slowly, or to cancel.

``/echo.Stats/Get`` returns JSON: loads per model, unloads, models held — what
the cache and cold-start scenarios count — ModelInfer calls per model id asked for (and the last
``traceparent`` each carried), and stream answers sent
per model (counted once grpc has taken each: what flow control holds back is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
from tritonclient.grpc import service_pb2 as v2

from mesh.routing.wire import WireFormatError, read_string_field
from protos import model_runtime_pb2 as spi
from protos import model_runtime_pb2_grpc as spi_grpc

MODEL_TYPE = "echo"
V2_SERVICE = "/inference.GRPCInferenceService/"
INFER_METHOD = V2_SERVICE + "ModelInfer"
STREAM_METHOD = V2_SERVICE + "ModelStreamInfer"
READY_TRUE = b"\x08\x01"  # ServerLiveResponse / ServerReadyResponse with the flag set
STATS_METHOD = "/echo.Stats/Get"


@dataclass(frozen=True)
class EchoModel:
    size_bytes: int
    load_ms: int = 0
    infer_ms: int = 0  # each inference waits this long (a slow model)
    answers: int = 1  # answers to each stream request
    answer_bytes: int = 4  # output bytes in each stream answer


def parse_model_path(path: str) -> EchoModel:
    """``size=<bytes>[;<field>=<int>]...`` (EchoModel's fields) -> EchoModel; ValueError on anything else."""
    fields: dict[str, int] = {}
    for part in filter(None, path.split(";")):
        name, _, value = part.partition("=")
        if name not in _PATH_FIELDS or not value.isdigit():
            raise ValueError(
                f"bad echo model path part {part!r}: want size=<bytes> and any of {', '.join(_PATH_FIELDS)}"
            )
        fields[_PATH_FIELDS[name]] = int(value)
    if "size_bytes" not in fields:
        raise ValueError(f"echo model path {path!r} has no size=<bytes>")
    return EchoModel(**fields)


_PATH_FIELDS = {
    "size": "size_bytes",
    "load_ms": "load_ms",
    "infer_ms": "infer_ms",
    "answers": "answers",
    "answer_bytes": "answer_bytes",
}


def infer_response(model_id: str) -> bytes:
    output = v2.ModelInferResponse.InferOutputTensor(name="echo", datatype="FP32", shape=[1])
    return v2.ModelInferResponse(
        model_name=model_id, outputs=[output], raw_output_contents=[b"\x00\x00\x80?"]
    ).SerializeToString()


def stream_answer(model_id: str, index: int, size: int) -> bytes:
    """A ModelStreamInferResponse: answer ``index`` (its id) with ``size`` output bytes."""
    output = v2.ModelInferResponse.InferOutputTensor(name="echo", datatype="BYTES", shape=[1])
    answer = v2.ModelInferResponse(
        model_name=model_id, id=str(index), outputs=[output], raw_output_contents=[bytes(size)]
    )
    return v2.ModelStreamInferResponse(infer_response=answer).SerializeToString()


class EchoRuntime(spi_grpc.ModelRuntimeServicer):
    def __init__(self, capacity_bytes: int, max_loading_concurrency: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.max_loading_concurrency = max_loading_concurrency
        self.models: dict[str, EchoModel] = {}
        self.responses: dict[str, bytes] = {}  # model id -> its one answer (the hot path is a dict lookup)
        self.loads: Counter[str] = Counter()
        self.unloads = 0
        self.infers: Counter[str] = Counter()  # ModelInfer calls per model id in field 1, answered or not
        self.traceparents: dict[str, str] = {}  # the last W3C traceparent each model's ModelInfer carried
        self.streamed: Counter[str] = Counter()  # stream answers grpc has taken, per model
        self.streams_cancelled: Counter[str] = Counter()  # streams that ended by cancellation, per model
        self.stream_deadlines: list[float | None] = []  # the time left each stream request arrived with

    async def loadModel(
        self, request: spi.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> spi.LoadModelResponse:
        try:
            model = parse_model_path(request.modelPath)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        self.loads[request.modelId] += 1
        if model.load_ms:
            await asyncio.sleep(model.load_ms / 1000)
        self.models[request.modelId] = model
        self.responses[request.modelId] = infer_response(request.modelId)
        return spi.LoadModelResponse(sizeInBytes=model.size_bytes)

    async def unloadModel(
        self, request: spi.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> spi.UnloadModelResponse:
        if self.models.pop(request.modelId, None) is not None:
            self.unloads += 1
        self.responses.pop(request.modelId, None)
        return spi.UnloadModelResponse()

    async def predictModelSize(
        self, request: spi.PredictModelSizeRequest, context: grpc.aio.ServicerContext
    ) -> spi.PredictModelSizeResponse:
        try:
            return spi.PredictModelSizeResponse(sizeInBytes=parse_model_path(request.modelPath).size_bytes)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        raise AssertionError("unreachable")

    async def modelSize(
        self, request: spi.ModelSizeRequest, context: grpc.aio.ServicerContext
    ) -> spi.ModelSizeResponse:
        model = self.models.get(request.modelId)
        return spi.ModelSizeResponse(sizeInBytes=model.size_bytes if model else 0)

    async def runtimeStatus(
        self, request: spi.RuntimeStatusRequest, context: grpc.aio.ServicerContext
    ) -> spi.RuntimeStatusResponse:
        return spi.RuntimeStatusResponse(
            status=spi.RuntimeStatusResponse.READY,
            capacityInBytes=self.capacity_bytes,
            maxLoadingConcurrency=self.max_loading_concurrency,
            modelLoadingTimeoutMs=60_000,
            runtimeVersion="echo",
            methodInfos={
                method[1:]: spi.RuntimeStatusResponse.MethodInfo(idInjectionPath=[1])
                for method in (INFER_METHOD, STREAM_METHOD)
            },
        )

    def stats(self) -> bytes:
        return json.dumps(
            {
                "loads": dict(self.loads),
                "unloads": self.unloads,
                "loaded": sorted(self.models),
                "infers": dict(self.infers),
                "traceparents": self.traceparents,
                "streamed": dict(self.streamed),
                "streams_cancelled": dict(self.streams_cancelled),
                "stream_deadlines": self.stream_deadlines,
            }
        ).encode()


class EchoInference(grpc.GenericRpcHandler):
    """ModelInfer and the stats call, raw bytes in and out."""

    def __init__(self, runtime: EchoRuntime) -> None:
        self._runtime = runtime
        self._handlers = {
            INFER_METHOD: grpc.unary_unary_rpc_method_handler(self._infer),
            STREAM_METHOD: grpc.stream_stream_rpc_method_handler(self._stream),
            STATS_METHOD: grpc.unary_unary_rpc_method_handler(self._stats),
            V2_SERVICE + "ServerLive": grpc.unary_unary_rpc_method_handler(self._true),
            V2_SERVICE + "ServerReady": grpc.unary_unary_rpc_method_handler(self._true),
        }

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)

    async def _infer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            model_id = read_string_field(request, 1) or ""
        except WireFormatError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        self._runtime.infers[model_id] += 1
        for key, value in context.invocation_metadata() or ():
            if key == "traceparent":
                self._runtime.traceparents[model_id] = str(value)
        response = self._runtime.responses.get(model_id)
        model = self._runtime.models.get(model_id)
        if model is not None and model.infer_ms:
            await asyncio.sleep(model.infer_ms / 1000)
        if response is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {model_id} is not loaded")
            raise AssertionError("unreachable")  # abort() raises
        return response

    async def _stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for request in requests:
            try:
                model_id = read_string_field(request, 1) or ""
            except WireFormatError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            model = self._runtime.models.get(model_id)
            if model is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"model {model_id} is not loaded")
                raise AssertionError("unreachable")
            self._runtime.stream_deadlines.append(context.time_remaining())
            answered = 0
            try:
                for index in range(model.answers):
                    if model.infer_ms:
                        await asyncio.sleep(model.infer_ms / 1000)
                    yield stream_answer(model_id, index, model.answer_bytes)
                    self._runtime.streamed[model_id] += 1
                    answered += 1
            finally:
                if answered < model.answers:  # cancelled: the caller went away or its deadline passed
                    self._runtime.streams_cancelled[model_id] += 1

    async def _true(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return READY_TRUE

    async def _stats(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return self._runtime.stats()


async def serve(
    host: str, port: int, capacity_bytes: int, max_loading_concurrency: int, preload: Sequence[str]
) -> None:
    runtime = EchoRuntime(capacity_bytes, max_loading_concurrency)
    for model_id in preload:  # for direct calls that bypass the mesh
        runtime.models[model_id] = EchoModel(0)
        runtime.responses[model_id] = infer_response(model_id)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    spi_grpc.add_ModelRuntimeServicer_to_server(runtime, server)
    server.add_generic_rpc_handlers((EchoInference(runtime),))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--capacity-bytes", type=int, default=1 << 30)
    parser.add_argument("--max-loading-concurrency", type=int, default=4)
    parser.add_argument("--preload", action="append", default=[], help="model id served without a load")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.capacity_bytes, args.max_loading_concurrency, args.preload))


if __name__ == "__main__":
    main()
