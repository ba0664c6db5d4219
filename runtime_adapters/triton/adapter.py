"""mmesh.ModelRuntime implemented in front of a Triton Inference Server, spoken to over v2 gRPC only.

Triton runs with ``--model-control-mode=explicit``: a model is loaded only when asked, by the name of its
folder in the repository. The adapter writes ``<repository>/<model id>/`` (``config.pbtxt`` with ``name`` set
to the id, version folder ``1/``), asks Triton to load it, and deletes the folder after the unload.
What every adapter does alike (load tasks, cleanup, status codes, runtimeStatus) is in
``runtime_adapters.common.base``.

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
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
from google.protobuf import text_format
from prometheus_client import CollectorRegistry
from tritonclient.grpc import model_config_pb2, service_pb2

from runtime_adapters.common.base import MARKER_FILE as MARKER_FILE  # re-exported: tests import it here
from runtime_adapters.common.base import (
    STATUS_TIMEOUT_S,
    V2_METHOD_INFOS,
    LoadFailed,
    ModelRejected,
    ModelToLoad,
    RuntimeAdapter,
)
from runtime_adapters.common.memory import find_listening_pid
from runtime_adapters.common.storage import ModelStore

PYTHON_TYPES = frozenset({"python", "triton-python"})
ONNX_TYPES = frozenset({"onnx"})
SUPPORTED_TYPES = PYTHON_TYPES | ONNX_TYPES

CONFIG_FILE = "config.pbtxt"
ONNX_FILE = "model.onnx"
PYTHON_MODEL_FILE = "model.py"
VERSION = "1"
ONNX_TEMPLATE = Path(__file__).with_name("onnx_model.py")
STUB_BINARY = "triton_python_backend_stub"

MAX_ID_LENGTH = 200
_VALID_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@=+-]*")


class InvalidModel(ModelRejected):
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


class TritonAdapter(RuntimeAdapter):
    """One folder per model, one lock per model; a model's size is the RSS of its python-backend stubs.

    Triton loads models independently of each other (explicit mode polls only the named folder), so loads
    and unloads are serialised per model id, not globally.
    """

    config: TritonAdapterConfig
    runtime_label = "Triton"
    runtime_name = "triton"
    memory_source = "stub rss"
    # Triton answers these per model too (perf_analyzer asks for the config; tritonclient streams).
    method_infos = {
        **V2_METHOD_INFOS,
        "inference.GRPCInferenceService/ModelConfig": (1,),
        "inference.GRPCInferenceService/ModelStatistics": (1,),
        "inference.GRPCInferenceService/ModelStreamInfer": (1,),
    }
    reuses_loaded_models = True  # a second load of a model loaded through this adapter answers its size

    def __init__(
        self,
        config: TritonAdapterConfig,
        registry: CollectorRegistry | None = None,
        store: ModelStore | None = None,
    ) -> None:
        super().__init__(config, config.triton_grpc_address, registry, store)
        self._repository_real = Path(os.path.realpath(self.repository_dir))
        self._triton_pid = config.triton_pid
        self._exiting: dict[str, list[psutil.Process]] = {}  # model -> its stubs when its unload was sent

    @property
    def max_loading_concurrency(self) -> int:
        return self.config.max_loading_concurrency

    def model_dir(self, model_id: str) -> Path:
        return self.repository_dir / model_id

    # ---- checks ---------------------------------------------------------------------------------------

    def check_model_id(self, model_id: str) -> None:
        validate_model_id(model_id)

    def model_kind(self, model_type: str) -> str:
        return normalize_model_type(model_type)

    async def check_files(self, model: ModelToLoad) -> None:
        if model.kind == "python":
            await asyncio.to_thread(check_python_model, model.path)  # compiles the model's source
        else:
            find_onnx_file(model.path)

    def check_placement(self, model_id: str) -> None:
        folder = self.model_dir(model_id)
        if folder.exists() and not (folder / MARKER_FILE).is_file():
            raise LoadFailed(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{folder} exists and was not written by the adapter; not touching it",
            )

    # ---- stub processes -------------------------------------------------------------------------------

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

    async def _wait_exited(self, stubs: list[psutil.Process]) -> None:
        """Until these processes have exited (a zombie has: its memory is back), or the unload wait ends."""
        deadline = time.monotonic() + self.config.unload_wait_s
        while stubs and time.monotonic() < deadline:
            stubs = [p for p in stubs if _still_running(p)]
            if stubs:
                await asyncio.sleep(0.02)

    async def _wait_stubs_gone(self, model_id: str | None) -> bool:
        """Poll until no stub of ``model_id`` (or of any of our models) runs; False at the deadline."""
        deadline = time.monotonic() + self.config.unload_wait_s
        while True:
            remaining = await asyncio.to_thread(self.stub_processes, model_id)
            if not remaining:
                return True
            if time.monotonic() > deadline:
                self._log.warning(
                    "stub processes of %s still running %.0fs after unload: %s",
                    repr(model_id) if model_id else "the repository",
                    self.config.unload_wait_s,
                    [p.pid for p in remaining],
                )
                return False
            await asyncio.sleep(0.05)

    # ---- loading and unloading ------------------------------------------------------------------------

    async def load_in_runtime(self, model: ModelToLoad) -> int:
        await asyncio.to_thread(self._prepare_folder, model)
        await self.runtime_load(model.model_id)
        return await asyncio.to_thread(self.stubs_rss, model.model_id)

    def _prepare_folder(self, model: ModelToLoad) -> None:
        folder = self.model_dir(model.model_id)
        if folder.exists():  # ours (check_placement), left by an earlier failed attempt
            shutil.rmtree(folder)
        write_model(model.kind, model.path, folder, model.model_id)

    async def runtime_unload(self, model_id: str) -> None:
        # The stubs are found before the unload: one that is exiting may no longer show its model's folder.
        self._exiting[model_id] = await asyncio.to_thread(self.stub_processes, model_id)
        await super().runtime_unload(model_id)

    async def remove_model(self, model_id: str) -> None:
        # Triton's unload returns before the stub exits: wait until the model's memory is back.
        await self._wait_exited(self._exiting.pop(model_id, []))
        await self._wait_stubs_gone(model_id)
        await asyncio.to_thread(self._remove_folder, model_id)

    def _remove_folder(self, model_id: str) -> None:
        folder = self.model_dir(model_id)
        if (folder / MARKER_FILE).is_file():
            shutil.rmtree(folder, ignore_errors=True)

    # ---- runtimeStatus --------------------------------------------------------------------------------

    async def runtime_up(self) -> bool:
        # ServerLive, not ServerReady: with Triton's default --strict-readiness=true, one model that failed
        # to load keeps ServerReady false for good, even after it was unloaded.
        live = await self.stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=STATUS_TIMEOUT_S)
        return bool(live.live)

    async def purge(self) -> None:
        """Unload every model Triton has loaded (it serves this adapter only) and delete our folders."""
        for name, state in await self.runtime_models_in_memory():
            self._log.info("purging leftover model %r (%s)", name, state)
            async with self._locked(name):
                await self.runtime_unload(name)
        for folder, model_id in await asyncio.to_thread(lambda: list(self._our_folders())):
            async with self._locked(model_id):
                await asyncio.to_thread(shutil.rmtree, folder, True)
        await self._wait_stubs_gone(None)  # every stub, the purged models' included
        self._exiting.clear()
        self._forget_all()


def _still_running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
