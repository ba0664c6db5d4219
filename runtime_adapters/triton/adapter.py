"""mmesh.ModelRuntime implemented in front of a Triton Inference Server, spoken to over v2 gRPC only.

Triton runs with ``--model-control-mode=explicit``: a model is loaded only when asked, by the name of its
folder in the repository. The adapter writes ``<repository>/<model id>/`` (``config.pbtxt`` with ``name`` set
to the id, version folder ``1/``), asks Triton to load it, and deletes the folder after the unload.

Model types (case-insensitive):

- ``python`` / ``triton-python``: a directory in Triton's layout, ``config.pbtxt`` plus a numeric version
  folder holding ``model.py`` (python backend; the only backend the pytriton build of Triton ships).
- ``onnx``: a ``.onnx`` file, or a directory holding ``model.onnx`` (optionally under a version folder, with
  an optional ``config.pbtxt``). The adapter wraps it into a python-backend model that runs it with
  onnxruntime (``onnx_model.py``); inputs and outputs missing from the config come from the ONNX graph
  through Triton's auto-complete.

Model ids are Triton model names and folder names at once, because the mesh writes the concrete id into each
v2 request. Only ids made of ``A-Z a-z 0-9 _ . : @ = + -``, not starting with ``.``, at most 200 characters,
are accepted (INVALID_ARGUMENT otherwise). A space in a model name crashes Triton 2.51's python-backend stub
and the load then never returns; '/' cannot name a folder.

Readiness: runtimeStatus asks ServerLive, because with Triton's default ``--strict-readiness=true`` a model
that once failed to load keeps ServerReady false for good; run Triton with ``--strict-readiness=false`` so
its own readiness probe means "up" too.

Memory: each python-backend model instance is its own stub process, a child of tritonserver whose command
line names the model's ``model.py``. Its RSS is the model's memory; Triton's unload returns before the stub
exits (1-2 s later), so unloadModel waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
from google.protobuf import text_format
from prometheus_client import CollectorRegistry
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from protos import model_runtime_pb2, model_runtime_pb2_grpc
from runtime_adapters.common.memory import find_listening_pid
from runtime_adapters.common.metrics import AdapterMetrics
from runtime_adapters.common.model_files import SIZE_FACTOR, ModelFilesError, files_size
from runtime_adapters.common.sizing import SizeRpcs
from runtime_adapters.common.storage import ModelStore, StorageError

log = logging.getLogger(__name__)

PYTHON_TYPES = frozenset({"python", "triton-python"})
ONNX_TYPES = frozenset({"onnx"})
SUPPORTED_TYPES = PYTHON_TYPES | ONNX_TYPES

CONFIG_FILE = "config.pbtxt"
ONNX_FILE = "model.onnx"
PYTHON_MODEL_FILE = "model.py"
VERSION = "1"
# Marks folders this adapter wrote (content: the model id), so a purge never deletes an operator's model.
MARKER_FILE = ".modelmesh-adapter"
ONNX_TEMPLATE = Path(__file__).with_name("onnx_model.py")
STUB_BINARY = "triton_python_backend_stub"

# The concrete model id is written into field 1 (model_name) of these v2 requests by the mesh.
METHOD_INFOS: dict[str, list[int]] = {
    "inference.GRPCInferenceService/ModelInfer": [1],
    "inference.GRPCInferenceService/ModelMetadata": [1],
}

MAX_ID_LENGTH = 200
_VALID_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@=+-]*")
_CONTROL_TIMEOUT_S = 30.0


class InvalidModel(ValueError):
    """The request can never load as given: bad id, type, path or layout (INVALID_ARGUMENT)."""


# ---- pure helpers ---------------------------------------------------------------------------------------


def validate_model_id(model_id: str) -> None:
    """Raise InvalidModel unless ``model_id`` can be a Triton model name and a folder name."""
    if not model_id:
        raise InvalidModel("modelId is empty")
    if len(model_id) > MAX_ID_LENGTH:
        raise InvalidModel(f"model id longer than {MAX_ID_LENGTH} characters: {model_id[:40]!r}...")
    if not _VALID_ID.fullmatch(model_id):
        raise InvalidModel(
            f"model id {model_id!r} is not a valid Triton model name here: use only letters, digits and"
            " _ . : @ = + - (not starting with '.')"
        )


def normalize_model_type(model_type: str) -> str:
    """``python`` or ``onnx`` for a mesh model type (case-insensitive); InvalidModel otherwise."""
    kind = model_type.strip().lower()
    if kind in PYTHON_TYPES:
        return "python"
    if kind in ONNX_TYPES:
        return "onnx"
    raise InvalidModel(
        f"unsupported model type {model_type!r} (supported: {', '.join(sorted(SUPPORTED_TYPES))})"
    )


def parse_config(text: str, source: str = CONFIG_FILE) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise InvalidModel(f"{source} is not a valid Triton model config: {e}") from e
    return config


def python_model_config(text: str, model_id: str) -> str:
    """The config.pbtxt of a python-backend model, renamed to ``model_id``."""
    config = parse_config(text)
    if config.platform or (config.backend and config.backend != "python"):
        raise InvalidModel(
            f"only python-backend models can run here (config names backend {config.backend!r},"
            f" platform {config.platform!r}); ONNX models: use model type 'onnx'"
        )
    config.name = model_id
    config.backend = "python"
    return text_format.MessageToString(config)


def onnx_model_config(text: str | None, model_id: str) -> str:
    """config.pbtxt of the python-backend wrapper around an ONNX file.

    Starts from the model's own config when it has one (an ``onnxruntime_onnx`` config works), keeps its
    tensors, batching and parameters, and points it at the python backend. Tensors it does not declare are
    filled in from the ONNX graph by the template's ``auto_complete_config``.
    """
    config = parse_config(text) if text is not None else model_config_pb2.ModelConfig()
    config.name = model_id
    config.platform = ""
    config.backend = "python"
    config.ClearField("default_model_filename")
    config.ClearField("version_policy")  # the wrapper always has exactly version 1
    if not config.instance_group:
        group = config.instance_group.add()
        group.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
        group.count = 1
    return text_format.MessageToString(config)


def _version_dirs(directory: Path) -> list[Path]:
    """Numeric version folders, highest first."""
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(found, key=lambda p: int(p.name), reverse=True)


def find_onnx_file(path: Path) -> Path:
    """The ONNX file of a model path: the file itself, ``model.onnx``, ``<version>/model.onnx``, or the only
    ``*.onnx`` file of the directory."""
    if path.is_file():
        if path.suffix.lower() != ".onnx":
            raise InvalidModel(f"an onnx model must be a .onnx file or a directory: {path}")
        return path
    candidates = [path / ONNX_FILE] + [v / ONNX_FILE for v in _version_dirs(path)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    loose = sorted(path.glob("*.onnx"))
    if len(loose) == 1:
        return loose[0]
    raise InvalidModel(f"no {ONNX_FILE} in {path}")


def check_python_model(path: Path) -> None:
    if not path.is_dir():
        raise InvalidModel(f"a python model must be a directory with {CONFIG_FILE} and 1/model.py: {path}")
    if not (path / CONFIG_FILE).is_file():
        raise InvalidModel(f"no {CONFIG_FILE} in {path}")
    if not any((v / PYTHON_MODEL_FILE).is_file() for v in _version_dirs(path)):
        raise InvalidModel(f"no <version>/{PYTHON_MODEL_FILE} (e.g. 1/{PYTHON_MODEL_FILE}) in {path}")


def _link_or_copy(src: str, dst: str) -> str:
    """Hard-link model files into the repository (no copy of big weights); copy across filesystems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _write_atomic(path: Path, text: str) -> None:
    # A new inode: never writes through a hard link into the user's model files.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_python_model(src: Path, dest: Path, model_id: str) -> None:
    """Lay out a python-backend model at ``dest`` (which must not exist)."""
    check_python_model(src)
    config = python_model_config((src / CONFIG_FILE).read_text(), model_id)
    shutil.copytree(src, dest, copy_function=_link_or_copy, symlinks=False)
    _write_atomic(dest / CONFIG_FILE, config)
    (dest / MARKER_FILE).write_text(model_id)


def write_onnx_model(src: Path, dest: Path, model_id: str) -> None:
    """Lay out the python-backend wrapper of an ONNX model at ``dest`` (which must not exist)."""
    onnx_file = find_onnx_file(src)
    if onnx_file.stat().st_size == 0:
        raise InvalidModel(f"{onnx_file} is empty")
    own_config = src / CONFIG_FILE if src.is_dir() else None
    text = own_config.read_text() if own_config is not None and own_config.is_file() else None
    config = onnx_model_config(text, model_id)
    version = dest / VERSION
    version.mkdir(parents=True)
    _link_or_copy(str(onnx_file), str(version / ONNX_FILE))
    shutil.copyfile(ONNX_TEMPLATE, version / PYTHON_MODEL_FILE)
    _write_atomic(dest / CONFIG_FILE, config)
    (dest / MARKER_FILE).write_text(model_id)


def write_model(kind: str, src: Path, dest: Path, model_id: str) -> None:
    if kind == "python":
        write_python_model(src, dest, model_id)
    else:
        write_onnx_model(src, dest, model_id)


def stub_model_dir(cmdline: list[str]) -> Path | None:
    """The model folder a python-backend stub serves, from its command line
    (``triton_python_backend_stub <repo>/<model>/<version>/model.py <shm region> ...``)."""
    if len(cmdline) < 2 or not os.path.basename(cmdline[0]).startswith(STUB_BINARY):
        return None
    return Path(cmdline[1]).parent.parent


# ---- the servicer ---------------------------------------------------------------------------------------


@dataclass
class TritonAdapterConfig:
    triton_grpc_address: str
    repository_dir: Path
    triton_pid: int | None = None  # discovered from the gRPC port when None
    capacity_bytes: int = 1 << 30
    min_model_size_bytes: int = 0
    load_timeout_ms: int = 120_000
    default_model_size_bytes: int = 1 << 20
    unload_wait_s: float = 30.0  # how long unloadModel waits for a model's stub processes to exit
    max_loading_concurrency: int = 2


class _LoadFailed(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _LoadTicket:
    """Shared between a loadModel handler and the task doing the work; set when the caller went away."""

    abandoned: bool = False


@dataclass
class _ModelLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class TritonAdapter(SizeRpcs, model_runtime_pb2_grpc.ModelRuntimeServicer):
    config: TritonAdapterConfig

    def __init__(
        self,
        config: TritonAdapterConfig,
        registry: CollectorRegistry | None = None,
        store: ModelStore | None = None,
    ) -> None:
        self.config = config
        self.repository_dir = Path(config.repository_dir).absolute()
        self.repository_dir.mkdir(parents=True, exist_ok=True)
        # Where model files come from (local paths, or S3 downloads cached beside the repository: never inside
        # it, where Triton would take the cache for a model).
        self.store = store or ModelStore(
            self.repository_dir.with_name(self.repository_dir.name + "-cache"), {}
        )
        self._repository_real = Path(os.path.realpath(self.repository_dir))
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = AdapterMetrics(self.registry)
        # Triton loads models independently of each other (explicit mode polls only the named folder), so
        # loads and unloads are serialised per model id, not globally.
        self._locks: dict[str, _ModelLock] = {}
        self._sizes: dict[str, int] = {}
        self._paths: dict[str, Path] = {}
        self._triton_pid = config.triton_pid
        self._channel: grpc.aio.Channel | None = None
        self._stub: service_pb2_grpc.GRPCInferenceServiceStub | None = None
        self._background: set[asyncio.Task[int]] = set()

    # ---- plumbing -------------------------------------------------------------------------------------

    @property
    def stub(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        # Created lazily so the channel binds to the event loop the server runs on.
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.config.triton_grpc_address)
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
        return self.repository_dir / model_id

    @contextlib.asynccontextmanager
    async def _locked(self, model_id: str) -> AsyncIterator[None]:
        entry = self._locks.get(model_id)
        if entry is None:
            entry = self._locks[model_id] = _ModelLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[model_id]

    def _triton_process(self) -> psutil.Process | None:
        if self._triton_pid is None:
            port = int(self.config.triton_grpc_address.rsplit(":", 1)[1])
            self._triton_pid = find_listening_pid(port)
            if self._triton_pid is None:
                return None
        try:
            return psutil.Process(self._triton_pid)
        except psutil.Error:
            # Triton restarted (a configured pid included): find it by its port next time.
            self._triton_pid = None
            return None

    def _candidate_stubs(self) -> Iterator[psutil.Process]:
        triton = self._triton_process()
        if triton is not None:
            try:
                yield from triton.children(recursive=True)
                return
            except psutil.Error:
                pass
        # No Triton pid to start from (e.g. not allowed to see its sockets): look at every process.
        yield from psutil.process_iter()

    def stub_processes(self, model_id: str | None = None) -> list[psutil.Process]:
        """Python-backend stub processes serving ``model_id`` (every model of our repository when None)."""
        found = []
        for proc in self._candidate_stubs():
            try:
                model_dir = stub_model_dir(proc.cmdline())
            except psutil.Error:
                continue
            if model_dir is None:
                continue
            real = Path(os.path.realpath(model_dir))
            if (model_id is None and real.parent == self._repository_real) or (
                model_id is not None and real == self._repository_real / model_id
            ):
                found.append(proc)
        return found

    def stubs_rss(self, model_id: str) -> int:
        total = 0
        for proc in self.stub_processes(model_id):
            with contextlib.suppress(psutil.Error):
                total += int(proc.memory_info().rss)
        return total

    async def _wait_stubs_gone(self, model_id: str | None) -> bool:
        """Poll until no stub of ``model_id`` (or of any of our models) runs; False at the deadline."""
        deadline = time.monotonic() + self.config.unload_wait_s
        while True:
            remaining = await asyncio.to_thread(self.stub_processes, model_id)
            if not remaining:
                return True
            if time.monotonic() > deadline:
                log.warning(
                    "stub processes of %s still running %.0fs after unload: %s",
                    repr(model_id) if model_id else "the repository",
                    self.config.unload_wait_s,
                    [p.pid for p in remaining],
                )
                return False
            await asyncio.sleep(0.05)

    def _our_folders(self) -> Iterator[tuple[Path, str]]:
        for child in self.repository_dir.iterdir():
            marker = child / MARKER_FILE
            if child.is_dir() and marker.is_file():
                yield child, marker.read_text().strip() or child.name

    def _forget(self, model_id: str) -> None:
        self._sizes.pop(model_id, None)
        self._paths.pop(model_id, None)
        self.store.release(model_id)
        self.metrics.loaded_models.set(len(self._sizes))

    async def _triton_unload(self, model_id: str) -> None:
        """Unload in Triton; an unknown model counts as unloaded (Triton 2.51 answers OK anyway)."""
        try:
            await self.stub.RepositoryModelUnload(
                service_pb2.RepositoryModelUnloadRequest(model_name=model_id), timeout=_CONTROL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND or "not found" in (e.details() or "").lower():
                return
            raise

    async def _unload_and_remove(self, model_id: str) -> None:
        """Unload, wait until the model's memory is back, delete its folder. Caller holds the model's lock."""
        started = time.monotonic()
        try:
            await self._triton_unload(model_id)
        finally:
            await self._wait_stubs_gone(model_id)
            await asyncio.to_thread(self._remove_folder, model_id)
            self._forget(model_id)
        log.info("unloaded %r in %.2fs (until its stub exited)", model_id, time.monotonic() - started)

    def _remove_folder(self, model_id: str) -> None:
        folder = self.model_dir(model_id)
        if (folder / MARKER_FILE).is_file():
            shutil.rmtree(folder, ignore_errors=True)

    async def _cleanup(self, model_id: str) -> None:
        """Undo a failed or abandoned load; never raises."""
        try:
            await self._unload_and_remove(model_id)
        except grpc.aio.AioRpcError as e:
            log.warning("cleanup unload of %r failed: %s", model_id, e.details())

    # ---- loadModel ------------------------------------------------------------------------------------

    async def loadModel(
        self, request: model_runtime_pb2.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> model_runtime_pb2.LoadModelResponse:
        model_id = request.modelId
        try:
            validate_model_id(model_id)
            kind = normalize_model_type(request.modelType)
            downloads = self.store.download_count
            path = await self.store.fetch(model_id, request.modelPath, request.modelKey)
            self.metrics.downloads.inc(self.store.download_count - downloads)
        except (InvalidModel, ModelFilesError) as e:
            self.metrics.load_requests.labels(result="failure").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except StorageError as e:  # no load was attempted; nothing changes until someone fixes the storage
            self.metrics.load_requests.labels(result="failure").inc()
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        try:
            await asyncio.to_thread(check_python_model if kind == "python" else find_onnx_file, path)
        except InvalidModel as e:
            if model_id not in self._sizes:  # a loaded copy keeps its files
                self.store.release(model_id)
            self.metrics.load_requests.labels(result="failure").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

        # The work runs in its own task: if the caller cancels, the load still finishes (or fails) and is
        # then undone under the model's lock, so an unloadModel arriving right after waits for it.
        ticket = _LoadTicket()
        task = asyncio.create_task(self._load(model_id, kind, path, ticket))
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

    async def _load(self, model_id: str, kind: str, path: Path, ticket: _LoadTicket) -> int:
        async with self._locked(model_id):
            if ticket.abandoned:
                raise _LoadFailed(grpc.StatusCode.CANCELLED, "load cancelled by the caller")
            if model_id in self._sizes:
                return self._sizes[model_id]  # already loaded through this adapter
            folder = self.model_dir(model_id)
            if folder.exists() and not (folder / MARKER_FILE).is_file():
                raise _LoadFailed(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{folder} exists and was not written by the adapter; not touching it",
                )
            started = time.monotonic()
            try:
                await asyncio.to_thread(self._prepare_folder, kind, path, model_id)
                await self.stub.RepositoryModelLoad(
                    service_pb2.RepositoryModelLoadRequest(model_name=model_id),
                    timeout=self.config.load_timeout_ms / 1000,
                )
                rss = await asyncio.to_thread(self.stubs_rss, model_id)
                file_bytes = await asyncio.to_thread(files_size, path)
            except InvalidModel as e:
                await self._cleanup(model_id)
                raise _LoadFailed(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
            except grpc.aio.AioRpcError as e:
                await self._cleanup(model_id)
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise _LoadFailed(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"loading model {model_id!r} in Triton timed out"
                        f" after {self.config.load_timeout_ms} ms",
                    ) from e
                raise _LoadFailed(
                    grpc.StatusCode.INTERNAL,
                    f"Triton failed to load model {model_id!r} ({e.code().name}): {e.details()}",
                ) from e
            except BaseException:
                await asyncio.shield(self._cleanup(model_id))
                raise
            if ticket.abandoned:
                await self._cleanup(model_id)
                raise _LoadFailed(grpc.StatusCode.CANCELLED, "load cancelled by the caller")
            size = max(rss, int(file_bytes * SIZE_FACTOR), self.config.min_model_size_bytes, 1)
            self._sizes[model_id] = size
            self._paths[model_id] = path
            self.metrics.loaded_models.set(len(self._sizes))
            log.info(
                "loaded %r in %.2fs: %d bytes (stub rss %d, files %d)",
                model_id,
                time.monotonic() - started,
                size,
                rss,
                file_bytes,
            )
            return size

    def _prepare_folder(self, kind: str, path: Path, model_id: str) -> None:
        folder = self.model_dir(model_id)
        if folder.exists():  # ours (checked by the caller), left by an earlier failed attempt
            shutil.rmtree(folder)
        write_model(kind, path, folder, model_id)

    # ---- unloadModel ----------------------------------------------------------------------------------

    async def unloadModel(
        self, request: model_runtime_pb2.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> model_runtime_pb2.UnloadModelResponse:
        model_id = request.modelId
        self.metrics.unload_requests.inc()
        if not model_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "modelId is empty")
        try:
            validate_model_id(model_id)
        except InvalidModel:
            return model_runtime_pb2.UnloadModelResponse()  # could never have been loaded
        error: grpc.aio.AioRpcError | None = None
        async with self._locked(model_id):
            try:
                await self._unload_and_remove(model_id)
            except grpc.aio.AioRpcError as e:
                error = e
        if error is not None:
            await context.abort(
                error.code(), f"Triton failed to unload model {model_id!r}: {error.details()}"
            )
        return model_runtime_pb2.UnloadModelResponse()

    # ---- sizes ----------------------------------------------------------------------------------------

    # ---- runtimeStatus --------------------------------------------------------------------------------

    async def runtimeStatus(
        self, request: model_runtime_pb2.RuntimeStatusRequest, context: grpc.aio.ServicerContext
    ) -> model_runtime_pb2.RuntimeStatusResponse:
        status_type = model_runtime_pb2.RuntimeStatusResponse
        starting = status_type(status=status_type.STARTING)
        try:
            # ServerLive, not ServerReady: with Triton's default --strict-readiness=true, one model that
            # failed to load keeps ServerReady false for good, even after it was unloaded.
            live = await self.stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=5.0)
            if not live.live:
                return starting
            # The mesh asks for status when it (re)starts: anything loaded now belongs to an earlier mesh.
            await self.purge()
            version, numeric = await self._runtime_version()
        except grpc.aio.AioRpcError as e:
            log.info("Triton not ready yet: %s %s", e.code().name, e.details())
            return starting
        return status_type(
            status=status_type.READY,
            capacityInBytes=self.config.capacity_bytes,
            maxLoadingConcurrency=self.config.max_loading_concurrency,
            modelLoadingTimeoutMs=self.config.load_timeout_ms,
            defaultModelSizeInBytes=self.config.default_model_size_bytes,
            runtimeVersion=version,
            numericRuntimeVersion=numeric,
            methodInfos={
                name: status_type.MethodInfo(idInjectionPath=path) for name, path in METHOD_INFOS.items()
            },
            allowAnyMethod=False,
            limitModelConcurrency=False,
        )

    async def purge(self) -> None:
        """Unload every model Triton has loaded (it serves this adapter only) and delete our folders."""
        index = await self.stub.RepositoryIndex(
            service_pb2.RepositoryIndexRequest(), timeout=_CONTROL_TIMEOUT_S
        )
        for model in index.models:
            if model.state.upper() in ("READY", "LOADING"):
                log.info("purging leftover model %r (%s)", model.name, model.state)
                async with self._locked(model.name):
                    await self._triton_unload(model.name)
        for folder, model_id in await asyncio.to_thread(lambda: list(self._our_folders())):
            async with self._locked(model_id):
                await asyncio.to_thread(shutil.rmtree, folder, True)
        await self._wait_stubs_gone(None)
        self._sizes.clear()
        self._paths.clear()
        self.metrics.loaded_models.set(0)

    async def _runtime_version(self) -> tuple[str, int]:
        meta = await self.stub.ServerMetadata(service_pb2.ServerMetadataRequest(), timeout=5.0)
        name = meta.name or "triton"
        numeric = 0
        parts = re.findall(r"\d+", meta.version)[:3]
        if parts:
            parts += ["0"] * (3 - len(parts))
            numeric = int(parts[0]) * 1_000_000 + int(parts[1]) * 1_000 + int(parts[2])
        return (f"{name}-{meta.version}" if meta.version else name), numeric
