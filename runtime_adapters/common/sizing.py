"""The size RPCs of the ModelRuntime SPI, the same for every adapter.

Predictions come from file sizes; answers from what each load measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import grpc

from protos import model_runtime_pb2
from runtime_adapters.common.metrics import AdapterMetrics
from runtime_adapters.common.model_files import SIZE_FACTOR, ModelFilesError, predicted_size
from runtime_adapters.common.model_key import parse_model_key
from runtime_adapters.common.storage import ModelStore


class SizeFloors(Protocol):
    min_model_size_bytes: int
    default_model_size_bytes: int


class SizeRpcs:
    """Mixin for an adapter servicer, which sets what it reads: ``store``, ``config``, ``metrics``,
    ``_sizes`` and ``_paths``."""

    store: ModelStore
    config: SizeFloors
    metrics: AdapterMetrics
    _sizes: dict[str, int]
    _paths: dict[str, Path]

    def _default_size(self) -> int:
        return max(self.config.default_model_size_bytes, self.config.min_model_size_bytes)

    async def predictModelSize(
        self, request: model_runtime_pb2.PredictModelSizeRequest, context: grpc.aio.ServicerContext
    ) -> model_runtime_pb2.PredictModelSizeResponse:
        self.metrics.size_predictions.inc()
        try:
            path = self.store.local_path(request.modelPath, request.modelKey)
            disk_size = parse_model_key(request.modelKey).disk_size_bytes
        except ModelFilesError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if disk_size is not None:  # modelmesh-serving's puller measured the files already
            size = max(int(disk_size * SIZE_FACTOR), self.config.min_model_size_bytes)
        elif path is None:  # remote files: no lookups here (the SPI wants an answer at once)
            size = self._default_size()
        else:
            # A stat, or a walk of the model's folder: cheaper on the loop than a hop to a thread and back.
            size = predicted_size(path, self.config.min_model_size_bytes)
        return model_runtime_pb2.PredictModelSizeResponse(sizeInBytes=size)

    async def modelSize(
        self, request: model_runtime_pb2.ModelSizeRequest, context: grpc.aio.ServicerContext
    ) -> model_runtime_pb2.ModelSizeResponse:
        size = self._sizes.get(request.modelId)
        if size is None:
            path = self._paths.get(request.modelId)
            if path is not None and path.exists():
                size = predicted_size(path, self.config.min_model_size_bytes)
            else:
                size = self._default_size()
        return model_runtime_pb2.ModelSizeResponse(sizeInBytes=size)
