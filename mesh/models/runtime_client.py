"""The pod's two channels to its sidecars: the ModelRuntime SPI (adapter) and the runtime's serving port.

Inference goes to the serving port as raw bytes: no serializer, no parse.
Channels are made inside the running event loop (grpc.aio requires it).
"""

from __future__ import annotations

import asyncio
import time
from typing import TypeAlias

import grpc
from tritonclient.grpc import service_pb2 as v2

from mesh.observe.metrics import MeshMetrics, UncountedMetrics
from protos import model_runtime_pb2 as spi
from protos import model_runtime_pb2_grpc as spi_grpc

RawUnary: TypeAlias = grpc.aio.UnaryUnaryMultiCallable
MODEL_READY = "/inference.GRPCInferenceService/ModelReady"
MODEL_READY_TIMEOUT_S = 5.0  # generous: a busy runtime is slow to answer, and a "no" drops the copy


class RuntimeClient:
    def __init__(
        self,
        spi_address: str,
        serving_address: str,
        max_message_bytes: int,
        metrics: MeshMetrics | None = None,
    ) -> None:
        self.metrics = metrics or UncountedMetrics()  # invoke_model: every inference call to the runtime
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._spi_channel = grpc.aio.insecure_channel(spi_address, options=options)
        self._spi = spi_grpc.ModelRuntimeStub(self._spi_channel)
        self._serving_channel = (
            self._spi_channel
            if serving_address == spi_address
            else grpc.aio.insecure_channel(serving_address, options=options)
        )
        self._methods: dict[str, RawUnary] = {}

    async def close(self) -> None:
        await self._spi_channel.close()
        if self._serving_channel is not self._spi_channel:
            await self._serving_channel.close()

    # -- SPI -------------------------------------------------------------------------
    async def wait_ready(self, timeout_s: float) -> spi.RuntimeStatusResponse:
        """Poll runtimeStatus until READY (the adapter has purged leftovers by then)."""
        deadline = time.monotonic() + timeout_s
        last_error = "no answer"
        while time.monotonic() < deadline:
            try:
                status = await self._spi.runtimeStatus(spi.RuntimeStatusRequest(), timeout=10)
                if status.status == spi.RuntimeStatusResponse.READY:
                    return status
                last_error = f"runtime status {spi.RuntimeStatusResponse.Status.Name(status.status)}"
            except grpc.aio.AioRpcError as e:
                last_error = f"{e.code().name}: {e.details()}"
            await asyncio.sleep(0.2)
        raise TimeoutError(f"runtime adapter not ready after {timeout_s:.0f}s ({last_error})")

    async def load(self, model_id: str, type_: str, path: str, key: str, timeout_s: float) -> int:
        request = spi.LoadModelRequest(modelId=model_id, modelType=type_, modelPath=path, modelKey=key)
        response = await self._spi.loadModel(request, timeout=timeout_s)
        if response.sizeInBytes:
            return int(response.sizeInBytes)
        sized = await self._spi.modelSize(spi.ModelSizeRequest(modelId=model_id), timeout=30)
        return int(sized.sizeInBytes)

    async def unload(self, model_id: str) -> None:
        await self._spi.unloadModel(spi.UnloadModelRequest(modelId=model_id), timeout=60)

    async def predict_size(
        self, model_id: str, type_: str, path: str, key: str, timeout_s: float = 5.0
    ) -> int:
        request = spi.PredictModelSizeRequest(modelId=model_id, modelType=type_, modelPath=path, modelKey=key)
        response = await self._spi.predictModelSize(request, timeout=timeout_s)
        return int(response.sizeInBytes)

    # -- inference ---------------------------------------------------------------------
    def method(self, full_method: str) -> RawUnary:
        """A raw-bytes callable for ``/package.Service/Method``, made once per method."""
        callable_ = self._methods.get(full_method)
        if callable_ is None:
            callable_ = self._serving_channel.unary_unary(full_method)
            self._methods[full_method] = callable_
        return callable_

    def stream(self, full_method: str) -> grpc.aio.StreamStreamMultiCallable:
        """A raw-bytes bidirectional stream for ``/package.Service/Method`` (ModelStreamInfer)."""
        return self._serving_channel.stream_stream(full_method)

    async def model_ready(self, model_id: str) -> bool:
        """The runtime's own v2 ModelReady for the model, with no version: whether it has the model loaded.

        Errors propagate (MLServer answers UNKNOWN for a model it does not have); callers decide.
        """
        request = v2.ModelReadyRequest(name=model_id).SerializeToString()
        answer = await self.method(MODEL_READY)(request, timeout=MODEL_READY_TIMEOUT_S)
        return bool(v2.ModelReadyResponse.FromString(answer).ready)
