"""What every runtime adapter does the same way, whatever model server it fronts.

An adapter implements mmesh.ModelRuntime in front of a model server spoken to over KServe v2 gRPC (MLServer,
Triton): it lays a model's files out in the server's repository folder, asks the server to load the model by
name, measures what the model took, and undoes all of that on unload. The mechanics are here once:

- each loadModel call runs its load in a task of its own, holding a ticket: a caller that goes away (cancel,
  deadline) never interrupts the server mid-load; the load finishes, sees the ticket abandoned and undoes
  itself under the model's lock, so an unloadModel sent right after waits for it instead of racing it;
- work on a model is serialised by a lock per model (or one lock for all, for a server whose loads touch every
  model), and a failed or abandoned load is cleaned up before the lock is let go;
- request checks, failures and their gRPC status codes, metrics, the server's channel, and runtimeStatus
  (readiness, the purge of an earlier mesh's models, version, method infos).

Each adapter keeps what belongs to its server: the model types it takes, how a model is laid out on disk, how
the memory a load took is measured, what counts as "up", and how leftovers are found and purged.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import grpc
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2, service_pb2_grpc

from protos import model_runtime_pb2, model_runtime_pb2_grpc
from runtime_adapters.common.metrics import AdapterMetrics
from runtime_adapters.common.model_files import SIZE_FACTOR, ModelFilesError, files_size
from runtime_adapters.common.model_key import model_type_name, parse_model_key
from runtime_adapters.common.sizing import SizeFloors, SizeRpcs
from runtime_adapters.common.storage import ModelStore, StorageError

# Marks folders an adapter wrote (content: the model id), so a purge never deletes an operator's model.
MARKER_FILE = ".modelmesh-adapter"

# The mesh writes the concrete model id into field 1 (model_name) of these v2 requests.
V2_METHOD_INFOS: Mapping[str, tuple[int, ...]] = {
    "inference.GRPCInferenceService/ModelInfer": (1,),
    "inference.GRPCInferenceService/ModelMetadata": (1,),
}

CONTROL_TIMEOUT_S = 30.0  # repository calls other than a load, which has its own configured timeout
STATUS_TIMEOUT_S = 5.0  # readiness and metadata: a runtime that slow is not ready

# Repository index states of a model that holds (or is about to hold) memory in the runtime.
_IN_MEMORY_STATES = frozenset({"READY", "LOADING"})


class ModelRejected(ValueError):
    """The request can never load as given: bad id, type, path or layout (INVALID_ARGUMENT)."""


class LoadFailed(Exception):
    """A load that did not happen, with the status its loadModel caller gets."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---- the bookkeeping of loads (pure: no runtime, no files) ------------------------------------------------


@dataclass
class LoadTicket:
    """One loadModel call's stake in the load running for it; ``abandoned`` once the caller went away."""

    abandoned: bool = False


@dataclass
class _KeyLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holding or waiting


class KeyedLocks:
    """One asyncio lock per key, dropped once nobody holds or waits for it (model ids come and go)."""

    def __init__(self) -> None:
        self._entries: dict[str, _KeyLock] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _KeyLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]


class LoadTasks:
    """Loads that run in tasks of their own, so a caller going away never cuts one short.

    A runtime interrupted mid-load can keep a model half in memory; instead the load runs to its end and
    reads its ticket to learn that the caller is gone, and then undoes what it did.
    """

    def __init__(self, log: logging.Logger) -> None:
        self.running: set[asyncio.Task[int]] = set()
        self._log = log

    async def run(self, work: Callable[[LoadTicket], Coroutine[Any, Any, int]]) -> int:
        """``work``'s result; if the caller is cancelled, ``work`` goes on with its ticket abandoned."""
        ticket = LoadTicket()
        task = asyncio.create_task(work(ticket))
        self.running.add(task)
        task.add_done_callback(self._done)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            ticket.abandoned = True
            raise

    def _done(self, task: asyncio.Task[int]) -> None:
        self.running.discard(task)
        # Retrieve the exception so an abandoned load does not log "exception was never retrieved".
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, LoadFailed):
            self._log.error("load task failed", exc_info=exc)

    async def drain(self) -> None:
        """Wait for every load still running (abandoned ones included), whatever they end with."""
        for task in list(self.running):
            with contextlib.suppress(BaseException):
                await task


# ---- records and pure helpers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelToLoad:
    """A loadModel request once checked: the id, the runtime's kind for the model's type, its local files."""

    model_id: str
    kind: str
    path: Path


@dataclass(frozen=True)
class RuntimeVersion:
    """What runtimeStatus reports: ``name-version`` and major*1e6 + minor*1e3 + patch (0 when unknown)."""

    label: str
    numeric: int

    @classmethod
    def parse(cls, name: str, version: str) -> RuntimeVersion:
        numeric = 0
        parts = re.findall(r"\d+", version)[:3]
        if parts:
            parts += ["0"] * (3 - len(parts))
            numeric = int(parts[0]) * 1_000_000 + int(parts[1]) * 1_000 + int(parts[2])
        return cls(f"{name}-{version}" if version else name, numeric)


def state_name(state: str) -> str:
    """A repository index state without its enum prefix: MLServer says ``State.READY``, Triton ``READY``."""
    return state.rsplit(".", 1)[-1].upper()


class AdapterSettings(SizeFloors, Protocol):
    """The configuration every adapter has (each adds its runtime's own)."""

    repository_dir: Path
    capacity_bytes: int
    load_timeout_ms: int


# ---- the servicer -----------------------------------------------------------------------------------------


class RuntimeAdapter(SizeRpcs, model_runtime_pb2_grpc.ModelRuntimeServicer, abc.ABC):
    """mmesh.ModelRuntime in front of a v2 gRPC model server; subclasses fill in the runtime's own steps."""

    config: AdapterSettings
    # How messages name the runtime ("MLServer failed to load ..."), and its version name if it reports none.
    runtime_label: ClassVar[str]
    runtime_name: ClassVar[str]
    # What load_in_runtime measures, for the log line of a load.
    memory_source: ClassVar[str]
    # Whether a load of a model this adapter already loaded answers its size instead of loading it again.
    reuses_loaded_models: ClassVar[bool] = False
    method_infos: ClassVar[Mapping[str, Sequence[int]]] = V2_METHOD_INFOS

    def __init__(
        self,
        config: AdapterSettings,
        grpc_address: str,
        registry: CollectorRegistry | None = None,
        store: ModelStore | None = None,
    ) -> None:
        self.config = config
        self.grpc_address = grpc_address
        self.repository_dir = Path(config.repository_dir).absolute()
        self.repository_dir.mkdir(parents=True, exist_ok=True)
        # Where model files come from (local paths, or S3 downloads cached beside the repository: never inside
        # it, where the runtime would take the cache for a model).
        self.store = store or ModelStore(
            self.repository_dir.with_name(self.repository_dir.name + "-cache"), {}
        )
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = AdapterMetrics(self.registry)
        self._log = logging.getLogger(type(self).__module__)
        self._locks = KeyedLocks()
        self._loads = LoadTasks(self._log)
        self._sizes: dict[str, int] = {}
        self._paths: dict[str, Path] = {}
        self._channel: grpc.aio.Channel | None = None
        self._stub: service_pb2_grpc.GRPCInferenceServiceStub | None = None

    # ---- hooks: what each runtime does its own way ------------------------------------------------------

    @abc.abstractmethod
    def model_kind(self, model_type: str) -> str:
        """The runtime's name for a mesh model type (case-insensitive); ModelRejected if it takes no such."""

    def check_model_id(self, model_id: str) -> None:
        """Raise ModelRejected if the runtime cannot name a model ``model_id`` (by default any id can)."""

    async def check_files(self, model: ModelToLoad) -> None:
        """Raise ModelRejected if the files cannot be this kind of model (before any lock)."""

    def check_placement(self, model_id: str) -> None:
        """Raise LoadFailed if the model cannot be placed in the repository now (under the model's lock)."""

    @abc.abstractmethod
    async def load_in_runtime(self, model: ModelToLoad) -> int:
        """Lay the model out, load it (``runtime_load``), return the bytes of memory it took (0: unknown).

        If it raises, the base unloads the model and calls ``remove_model``, so nothing it laid out stays.
        """

    @abc.abstractmethod
    async def remove_model(self, model_id: str) -> None:
        """After the runtime unloaded ``model_id`` (or failed to): delete what was laid out for it, and wait
        until its memory is back where the runtime frees it late."""

    @abc.abstractmethod
    async def runtime_up(self) -> bool:
        """Whether the runtime answers and can load models."""

    @abc.abstractmethod
    async def purge(self) -> None:
        """Unload what the runtime has loaded and delete our folders: it belongs to an earlier mesh.

        runtimeStatus calls it holding no lock; it takes the locks its runtime needs.
        """

    @property
    def max_loading_concurrency(self) -> int:
        """How many loads the mesh may send at once."""
        return 1

    def _lock_key(self, model_id: str) -> str:
        """The lock that serialises work on ``model_id``: its own, unless a runtime needs one for all."""
        return model_id

    # ---- the runtime's channel and its v2 calls ---------------------------------------------------------

    @property
    def stub(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        """The runtime's v2 stub, created on first use so its channel binds to the loop the server runs on."""
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.grpc_address)
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        """Let abandoned loads finish (and undo themselves) before the channel they need goes."""
        await self._loads.drain()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None

    async def runtime_load(self, model_id: str) -> None:
        """Ask the runtime to load ``model_id`` from its repository folder, within the load timeout."""
        await self.stub.RepositoryModelLoad(
            service_pb2.RepositoryModelLoadRequest(model_name=model_id),
            timeout=self.config.load_timeout_ms / 1000,
        )

    async def runtime_unload(self, model_id: str) -> None:
        """Unload in the runtime; an unknown model counts as unloaded."""
        try:
            await self.stub.RepositoryModelUnload(
                service_pb2.RepositoryModelUnloadRequest(model_name=model_id), timeout=CONTROL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as e:
            # MLServer 1.7 answers NOT_FOUND "Model x not found", older versions INVALID_ARGUMENT "not found";
            # Triton 2.51 answers OK.
            if e.code() == grpc.StatusCode.NOT_FOUND or "not found" in (e.details() or "").lower():
                return
            raise

    async def runtime_models_in_memory(self) -> list[tuple[str, str]]:
        """(name, state) of every model the runtime has loaded or is loading, whoever asked for it."""
        index = await self.stub.RepositoryIndex(
            service_pb2.RepositoryIndexRequest(), timeout=CONTROL_TIMEOUT_S
        )
        return [(m.name, m.state) for m in index.models if state_name(m.state) in _IN_MEMORY_STATES]

    async def runtime_version(self) -> RuntimeVersion:
        meta = await self.stub.ServerMetadata(service_pb2.ServerMetadataRequest(), timeout=STATUS_TIMEOUT_S)
        return RuntimeVersion.parse(meta.name or self.runtime_name, meta.version)

    # ---- state ------------------------------------------------------------------------------------------

    @property
    def _background(self) -> set[asyncio.Task[int]]:
        """Loads still running, abandoned ones included."""
        return self._loads.running

    def _locked(self, model_id: str) -> AbstractAsyncContextManager[None]:
        return self._locks.hold(self._lock_key(model_id))

    def _our_folders(self) -> Iterator[tuple[Path, str]]:
        """(folder, model id) of every repository folder an adapter wrote."""
        for child in self.repository_dir.iterdir():
            marker = child / MARKER_FILE
            if child.is_dir() and marker.is_file():
                yield child, marker.read_text().strip() or child.name

    def _forget(self, model_id: str) -> None:
        self._sizes.pop(model_id, None)
        self._paths.pop(model_id, None)
        self.store.release(model_id)
        self.metrics.loaded_models.set(len(self._sizes))

    def _forget_all(self) -> None:
        self._sizes.clear()
        self._paths.clear()
        self.metrics.loaded_models.set(0)

    async def _unload_and_remove(self, model_id: str) -> None:
        """Unload, then delete what the model left whether the unload worked or not. Caller holds the lock."""
        started = time.monotonic()
        try:
            await self.runtime_unload(model_id)
        finally:
            await self.remove_model(model_id)
            self._forget(model_id)
        self._log.info("unloaded %r in %.2fs", model_id, time.monotonic() - started)

    async def _cleanup(self, model_id: str) -> None:
        """Undo a failed or abandoned load: never leave a model in the runtime or a folder behind."""
        try:
            await self._unload_and_remove(model_id)
        except grpc.aio.AioRpcError as e:
            self._log.warning("cleanup unload of %r failed: %s", model_id, e.details())

    # ---- loadModel --------------------------------------------------------------------------------------

    async def loadModel(
        self, request: model_runtime_pb2.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> model_runtime_pb2.LoadModelResponse:
        model_id = request.modelId
        try:
            if not model_id:
                raise ModelRejected("modelId is empty")
            self.check_model_id(model_id)
            kind = self.model_kind(model_type_name(request.modelType, parse_model_key(request.modelKey)))
            downloads = self.store.download_count
            path = await self.store.fetch(model_id, request.modelPath, request.modelKey)
            self.metrics.downloads.inc(self.store.download_count - downloads)
        except (ModelRejected, ModelFilesError) as e:
            self._count_load("failure")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except StorageError as e:  # no load was attempted; nothing changes until someone fixes the storage
            self._count_load("failure")
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        model = ModelToLoad(model_id, kind, path)
        try:
            await self.check_files(model)
        except ModelRejected as e:
            if model_id not in self._sizes:  # a loaded copy keeps its files
                self.store.release(model_id)
            self._count_load("failure")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

        try:
            size = await self._loads.run(functools.partial(self._load, model))
        except asyncio.CancelledError:
            self._count_load("failure")
            raise
        except LoadFailed as e:
            self._count_load("failure")
            await context.abort(e.code, e.message)
        self._count_load("success")
        return model_runtime_pb2.LoadModelResponse(sizeInBytes=size)

    def _count_load(self, result: str) -> None:
        # A label is created on its first count, so a scrape shows no failure series before a failure.
        self.metrics.load_requests.labels(result=result).inc()

    async def _load(self, model: ModelToLoad, ticket: LoadTicket) -> int:
        model_id = model.model_id
        async with self._locked(model_id):
            if ticket.abandoned:
                raise LoadFailed(grpc.StatusCode.CANCELLED, "load cancelled by the caller")
            if self.reuses_loaded_models and model_id in self._sizes:
                return self._sizes[model_id]
            self.check_placement(model_id)
            started = time.monotonic()
            try:
                memory = await self.load_in_runtime(model)
                file_bytes = files_size(model.path)  # a stat or a walk of the folder: no thread hop
            except ModelRejected as e:
                await self._cleanup(model_id)
                raise LoadFailed(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
            except grpc.aio.AioRpcError as e:
                await self._cleanup(model_id)
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise LoadFailed(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"loading model {model_id!r} in {self.runtime_label} timed out"
                        f" after {self.config.load_timeout_ms} ms",
                    ) from e
                raise LoadFailed(
                    grpc.StatusCode.INTERNAL,
                    f"{self.runtime_label} failed to load model {model_id!r}"
                    f" ({e.code().name}): {e.details()}",
                ) from e
            except BaseException:
                await asyncio.shield(self._cleanup(model_id))
                raise
            if ticket.abandoned:
                await self._cleanup(model_id)
                raise LoadFailed(grpc.StatusCode.CANCELLED, "load cancelled by the caller")
            size = max(memory, int(file_bytes * SIZE_FACTOR), self.config.min_model_size_bytes, 1)
            self._sizes[model_id] = size
            self._paths[model_id] = model.path
            self.metrics.loaded_models.set(len(self._sizes))
            self._log.info(
                "loaded %r in %.2fs: %d bytes (%s %d, files %d)",
                model_id,
                time.monotonic() - started,
                size,
                self.memory_source,
                memory,
                file_bytes,
            )
            return size

    # ---- unloadModel ------------------------------------------------------------------------------------

    async def unloadModel(
        self, request: model_runtime_pb2.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> model_runtime_pb2.UnloadModelResponse:
        model_id = request.modelId
        self.metrics.unload_requests.inc()
        if not model_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "modelId is empty")
        try:
            self.check_model_id(model_id)
        except ModelRejected:
            return model_runtime_pb2.UnloadModelResponse()  # could never have been loaded
        error: grpc.aio.AioRpcError | None = None
        async with self._locked(model_id):  # after a load in flight, which may be one its caller abandoned
            try:
                await self._unload_and_remove(model_id)
            except grpc.aio.AioRpcError as e:
                error = e
        if error is not None:
            message = f"{self.runtime_label} failed to unload model {model_id!r}: {error.details()}"
            await context.abort(error.code(), message)
        return model_runtime_pb2.UnloadModelResponse()

    # ---- runtimeStatus ----------------------------------------------------------------------------------

    async def runtimeStatus(
        self, request: model_runtime_pb2.RuntimeStatusRequest, context: grpc.aio.ServicerContext
    ) -> model_runtime_pb2.RuntimeStatusResponse:
        status_type = model_runtime_pb2.RuntimeStatusResponse
        starting = status_type(status=status_type.STARTING)
        try:
            if not await self.runtime_up():
                return starting
            # The mesh asks for status when it (re)starts: anything loaded now belongs to an earlier mesh.
            await self.purge()
            version = await self.runtime_version()
        except grpc.aio.AioRpcError as e:
            self._log.info("%s not ready yet: %s %s", self.runtime_label, e.code().name, e.details())
            return starting
        return status_type(
            status=status_type.READY,
            capacityInBytes=self.config.capacity_bytes,
            maxLoadingConcurrency=self.max_loading_concurrency,
            modelLoadingTimeoutMs=self.config.load_timeout_ms,
            defaultModelSizeInBytes=self.config.default_model_size_bytes,
            runtimeVersion=version.label,
            numericRuntimeVersion=version.numeric,
            methodInfos={
                name: status_type.MethodInfo(idInjectionPath=path) for name, path in self.method_infos.items()
            },
            allowAnyMethod=False,
            limitModelConcurrency=False,
        )
