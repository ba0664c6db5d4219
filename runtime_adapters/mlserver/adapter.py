"""mmesh.ModelRuntime implemented in front of a Seldon MLServer, spoken to over v2 gRPC only.

MLServer loads a model by name from its repository folder: each load rescans every ``model-settings.json``
below the repository root. So the adapter writes one folder per model it is asked to load, deletes it when the
model is unloaded or its load fails, and serialises everything that touches the repository with one lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2, service_pb2_grpc

from protos import model_runtime_pb2, model_runtime_pb2_grpc
from runtime_adapters.common.memory import find_listening_pid, process_tree_rss
from runtime_adapters.common.metrics import AdapterMetrics
from runtime_adapters.common.model_files import ModelFilesError, files_size
from runtime_adapters.common.sizing import SizeRpcs
from runtime_adapters.common.storage import ModelStore, StorageError

log = logging.getLogger(__name__)

# modelType (lower case) -> MLServer implementation class. deploy/local/setup.sh installs all three; a
# runtime without one fails the load with MLServer's own "No module named ..." message.
MODEL_TYPE_IMPLEMENTATIONS: dict[str, str] = {
    "sklearn": "mlserver_sklearn.SKLearnModel",
    "xgboost": "mlserver_xgboost.XGBoostModel",
    "lightgbm": "mlserver_lightgbm.LightGBMModel",
}

SETTINGS_FILE = "model-settings.json"
# Marks folders this adapter wrote, so a purge never deletes a model folder an operator put there.
MARKER_FILE = ".modelmesh-adapter"

# The concrete model id is written into field 1 (model_name) of these v2 requests by the mesh.
METHOD_INFOS: dict[str, list[int]] = {
    "inference.GRPCInferenceService/ModelInfer": [1],
    "inference.GRPCInferenceService/ModelMetadata": [1],
}

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_CONTROL_TIMEOUT_S = 30.0


class UnsupportedModelType(ValueError):
    pass


def implementation_for(model_type: str) -> str:
    """MLServer implementation for a mesh model type (case-insensitive)."""
    impl = MODEL_TYPE_IMPLEMENTATIONS.get(model_type.strip().lower())
    if impl is None:
        supported = ", ".join(sorted(MODEL_TYPE_IMPLEMENTATIONS))
        raise UnsupportedModelType(f"unsupported model type {model_type!r} (supported: {supported})")
    return impl


def folder_name(model_id: str) -> str:
    """A filesystem-safe, deterministic folder name, unique per id.

    Ids may contain '/', ':' and anything else; the slug keeps folders readable and the hash keeps two ids
    that slug alike apart. No leading '.', because MLServer's repository scan skips hidden folders.
    """
    slug = _UNSAFE_CHARS.sub("_", model_id).lstrip("._-")[:80] or "model"
    digest = hashlib.sha256(model_id.encode("utf-8")).hexdigest()[:12]
    return f"{slug}-{digest}"


@dataclass
class MLServerAdapterConfig:
    mlserver_grpc_address: str
    repository_dir: Path
    runtime_pid: int | None = None
    capacity_bytes: int = 1 << 30
    min_model_size_bytes: int = 0
    load_timeout_ms: int = 120_000
    default_model_size_bytes: int = 1 << 20


class _LoadFailed(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _LoadTicket:
    """Shared between a loadModel handler and the task doing the work; set when the caller went away."""

    abandoned: bool = False


class MLServerAdapter(SizeRpcs, model_runtime_pb2_grpc.ModelRuntimeServicer):
    config: MLServerAdapterConfig

    def __init__(
        self,
        config: MLServerAdapterConfig,
        registry: CollectorRegistry | None = None,
        store: ModelStore | None = None,
    ) -> None:
        self.config = config
        self.repository_dir = Path(config.repository_dir).absolute()
        self.repository_dir.mkdir(parents=True, exist_ok=True)
        # Where model files come from (local paths, or S3 downloads cached beside the repository).
        self.store = store or ModelStore(
            self.repository_dir.with_name(self.repository_dir.name + "-cache"), {}
        )
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = AdapterMetrics(self.registry)
        # One lock for every repository mutation and MLServer load/unload: a load rescans all folders, so a
        # half-written or vanishing model-settings.json during a scan would fail an unrelated load.
        self._lock = asyncio.Lock()
        self._sizes: dict[str, int] = {}
        self._paths: dict[str, Path] = {}
        self._runtime_pid = config.runtime_pid
        self._channel: grpc.aio.Channel | None = None
        self._stub: service_pb2_grpc.GRPCInferenceServiceStub | None = None
        self._background: set[asyncio.Task[int]] = set()

    # ---- plumbing -------------------------------------------------------------------------------------

    @property
    def stub(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        # Created lazily so the channel binds to the event loop the server runs on.
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.config.mlserver_grpc_address)
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        for task in list(self._background):
            with contextlib.suppress(BaseException):
                await task
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None

    def model_dir(self, model_id: str) -> Path:
        return self.repository_dir / folder_name(model_id)

    def _runtime_rss(self) -> int | None:
        if self._runtime_pid is None:
            port = int(self.config.mlserver_grpc_address.rsplit(":", 1)[1])
            self._runtime_pid = find_listening_pid(port)
            if self._runtime_pid is None:
                return None
        try:
            return process_tree_rss(self._runtime_pid)
        except psutil.Error:
            # The runtime restarted (or was never ours to see); rediscover next time if we discovered it.
            if self.config.runtime_pid is None:
                self._runtime_pid = None
            return None

    def _write_settings(self, model_id: str, implementation: str, path: Path) -> Path:
        folder = self.model_dir(model_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER_FILE).write_text(model_id)
        settings = {"name": model_id, "implementation": implementation, "parameters": {"uri": str(path)}}
        tmp = folder / (SETTINGS_FILE + ".tmp")
        tmp.write_text(json.dumps(settings, indent=2))
        # Atomic: a concurrent scan by MLServer never sees a half-written settings file.
        os.replace(tmp, folder / SETTINGS_FILE)
        return folder

    def _our_folders(self) -> Iterator[Path]:
        for child in self.repository_dir.iterdir():
            if child.is_dir() and (child / MARKER_FILE).is_file():
                yield child

    def _forget(self, model_id: str) -> None:
        self._sizes.pop(model_id, None)
        self._paths.pop(model_id, None)
        self.store.release(model_id)
        self.metrics.loaded_models.set(len(self._sizes))

    async def _mlserver_unload(self, model_id: str) -> None:
        """Unload in MLServer; an unknown model counts as unloaded."""
        try:
            await self.stub.RepositoryModelUnload(
                service_pb2.RepositoryModelUnloadRequest(model_name=model_id), timeout=_CONTROL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as e:
            # MLServer 1.7 answers NOT_FOUND "Model x not found"; older versions INVALID_ARGUMENT "not found".
            if e.code() == grpc.StatusCode.NOT_FOUND or "not found" in (e.details() or "").lower():
                return
            raise

    async def _cleanup(self, model_id: str) -> None:
        """Undo a load: never leave a model in MLServer or a folder that later scans would trip over."""
        try:
            await self._mlserver_unload(model_id)
        except grpc.aio.AioRpcError as e:
            log.warning("cleanup unload of %r failed: %s", model_id, e.details())
        await asyncio.to_thread(shutil.rmtree, self.model_dir(model_id), True)
        self._forget(model_id)

    # ---- loadModel ------------------------------------------------------------------------------------

    async def loadModel(
        self, request: model_runtime_pb2.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> model_runtime_pb2.LoadModelResponse:
        model_id = request.modelId
        try:
            if not model_id:
                raise _LoadFailed(grpc.StatusCode.INVALID_ARGUMENT, "modelId is empty")
            implementation = implementation_for(request.modelType)
            downloads = self.store.download_count
            path = await self.store.fetch(model_id, request.modelPath, request.modelKey)
            self.metrics.downloads.inc(self.store.download_count - downloads)
        except (UnsupportedModelType, ModelFilesError) as e:
            self.metrics.load_requests.labels(result="failure").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except StorageError as e:  # no load was attempted; nothing changes until someone fixes the storage
            self.metrics.load_requests.labels(result="failure").inc()
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except _LoadFailed as e:
            self.metrics.load_requests.labels(result="failure").inc()
            await context.abort(e.code, e.message)

        # The work runs in its own task: if the caller cancels, the load still finishes (or fails) and is
        # then undone under the lock, so an unloadModel arriving right after cannot race with it.
        ticket = _LoadTicket()
        task = asyncio.create_task(self._load(model_id, implementation, path, ticket))
        self._background.add(task)
        task.add_done_callback(self._load_done)
        try:
            size = await asyncio.shield(task)
        except asyncio.CancelledError:
            ticket.abandoned = True
            self.metrics.load_requests.labels(result="failure").inc()
            raise
        except _LoadFailed as e:
            self.metrics.load_requests.labels(result="failure").inc()
            await context.abort(e.code, e.message)
        self.metrics.load_requests.labels(result="success").inc()
        return model_runtime_pb2.LoadModelResponse(sizeInBytes=size)

    def _load_done(self, task: asyncio.Task[int]) -> None:
        self._background.discard(task)
        # Retrieve the exception so an abandoned load does not log "exception was never retrieved".
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, _LoadFailed):
            log.error("load task failed", exc_info=exc)

    async def _load(self, model_id: str, implementation: str, path: Path, ticket: _LoadTicket) -> int:
        async with self._lock:
            if ticket.abandoned:
                raise _LoadFailed(grpc.StatusCode.CANCELLED, "load cancelled by the caller")
            try:
                await asyncio.to_thread(self._write_settings, model_id, implementation, path)
                rss_before = await asyncio.to_thread(self._runtime_rss)
                await self.stub.RepositoryModelLoad(
                    service_pb2.RepositoryModelLoadRequest(model_name=model_id),
                    timeout=self.config.load_timeout_ms / 1000,
                )
                rss_after = await asyncio.to_thread(self._runtime_rss)
                file_bytes = await asyncio.to_thread(files_size, path)
            except grpc.aio.AioRpcError as e:
                await self._cleanup(model_id)
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise _LoadFailed(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"loading model {model_id!r} in MLServer timed out"
                        f" after {self.config.load_timeout_ms} ms",
                    ) from e
                raise _LoadFailed(
                    grpc.StatusCode.INTERNAL,
                    f"MLServer failed to load model {model_id!r} ({e.code().name}): {e.details()}",
                ) from e
            except BaseException:
                await asyncio.shield(self._cleanup(model_id))
                raise
            if ticket.abandoned:
                await self._cleanup(model_id)
                raise _LoadFailed(grpc.StatusCode.CANCELLED, "load cancelled by the caller")
            delta = rss_after - rss_before if rss_before is not None and rss_after is not None else 0
            size = max(delta, int(file_bytes * 1.25), self.config.min_model_size_bytes, 1)
            self._sizes[model_id] = size
            self._paths[model_id] = path
            self.metrics.loaded_models.set(len(self._sizes))
            log.info("loaded %r: %d bytes (rss delta %d, files %d)", model_id, size, delta, file_bytes)
            return size

    # ---- unloadModel ----------------------------------------------------------------------------------

    async def unloadModel(
        self, request: model_runtime_pb2.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> model_runtime_pb2.UnloadModelResponse:
        model_id = request.modelId
        self.metrics.unload_requests.inc()
        if not model_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "modelId is empty")
        error: grpc.aio.AioRpcError | None = None
        async with self._lock:
            try:
                await self._mlserver_unload(model_id)
            except grpc.aio.AioRpcError as e:
                error = e
            # The folder goes either way: MLServer does not need it to unload later, and a retry is harmless.
            await asyncio.to_thread(shutil.rmtree, self.model_dir(model_id), True)
            self._forget(model_id)
        if error is not None:
            message = f"MLServer failed to unload model {model_id!r}: {error.details()}"
            await context.abort(error.code(), message)
        return model_runtime_pb2.UnloadModelResponse()

    # ---- sizes ----------------------------------------------------------------------------------------

    # ---- runtimeStatus --------------------------------------------------------------------------------

    async def runtimeStatus(
        self, request: model_runtime_pb2.RuntimeStatusRequest, context: grpc.aio.ServicerContext
    ) -> model_runtime_pb2.RuntimeStatusResponse:
        status_type = model_runtime_pb2.RuntimeStatusResponse
        starting = status_type(status=status_type.STARTING)
        try:
            ready = await self.stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=5.0)
            if not ready.ready:
                return starting
            # The mesh asks for status when it (re)starts: anything loaded now belongs to an earlier mesh.
            async with self._lock:
                await self._purge()
            version, numeric = await self._runtime_version()
        except grpc.aio.AioRpcError as e:
            log.info("MLServer not ready yet: %s %s", e.code().name, e.details())
            return starting
        return model_runtime_pb2.RuntimeStatusResponse(
            status=model_runtime_pb2.RuntimeStatusResponse.READY,
            capacityInBytes=self.config.capacity_bytes,
            maxLoadingConcurrency=1,
            modelLoadingTimeoutMs=self.config.load_timeout_ms,
            defaultModelSizeInBytes=self.config.default_model_size_bytes,
            runtimeVersion=version,
            numericRuntimeVersion=numeric,
            methodInfos={
                name: model_runtime_pb2.RuntimeStatusResponse.MethodInfo(idInjectionPath=path)
                for name, path in METHOD_INFOS.items()
            },
            allowAnyMethod=False,
            limitModelConcurrency=False,
        )

    async def _purge(self) -> None:
        index = await self.stub.RepositoryIndex(
            service_pb2.RepositoryIndexRequest(), timeout=_CONTROL_TIMEOUT_S
        )
        for model in index.models:
            # MLServer reports states as "State.READY"; models merely present on disk are UNAVAILABLE.
            if model.state.rsplit(".", 1)[-1].upper() in ("READY", "LOADING"):
                log.info("purging leftover model %r", model.name)
                await self._mlserver_unload(model.name)
        for folder in await asyncio.to_thread(lambda: list(self._our_folders())):
            await asyncio.to_thread(shutil.rmtree, folder, True)
        self._sizes.clear()
        self._paths.clear()
        self.metrics.loaded_models.set(0)

    async def _runtime_version(self) -> tuple[str, int]:
        meta = await self.stub.ServerMetadata(service_pb2.ServerMetadataRequest(), timeout=5.0)
        name = meta.name or "mlserver"
        numeric = 0
        parts = re.findall(r"\d+", meta.version)[:3]
        if parts:
            parts += ["0"] * (3 - len(parts))
            numeric = int(parts[0]) * 1_000_000 + int(parts[1]) * 1_000 + int(parts[2])
        return (f"{name}-{meta.version}" if meta.version else name), numeric
