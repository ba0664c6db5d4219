"""The adapters' shared base (runtime_adapters/common/base.py) with a fake runtime: no processes, no network.

The fake runtime stands in for the runtime's v2 gRPC stub, so the base's own calls (load, unload, index,
metadata, readiness) run for real; the repository and the model file live in ``tmp_path``. Loads are held
at a gate per model, which is how the tests line up a caller going away, a second caller and an unload
against a load in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2

from protos import model_runtime_pb2 as pb
from runtime_adapters.common.base import (
    KeyedLocks,
    LoadFailed,
    LoadTasks,
    LoadTicket,
    ModelRejected,
    ModelToLoad,
    RuntimeAdapter,
    RuntimeVersion,
    state_name,
)
from runtime_adapters.common.storage import ModelStore

FILE_BYTES = 1000
LOAD_TIMEOUT_MS = 1000


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@dataclass
class FakeRuntime:
    """A v2 model server in memory: what it holds, every call it got, and knobs to hold or fail calls."""

    loaded: dict[str, str] = field(default_factory=dict)  # model name -> index state
    calls: list[str] = field(default_factory=list)  # "load m", "unload m", "remove m" (the adapter's hook)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)  # a load of m waits for gates[m]
    load_errors: dict[str, grpc.aio.AioRpcError] = field(default_factory=dict)
    unload_error: grpc.aio.AioRpcError | None = None
    status_error: grpc.aio.AioRpcError | None = None
    memory: int = 5000  # what a load measures
    ready: bool = True
    name: str = "fake"
    version: str = "1.2.3"
    loading: int = 0
    most_loading: int = 0  # the most loads the runtime ever ran at once
    load_timeouts: list[float] = field(default_factory=list)

    def gate(self, model_id: str) -> asyncio.Event:
        return self.gates.setdefault(model_id, asyncio.Event())

    # The v2 stub methods the base calls.

    async def RepositoryModelLoad(
        self, request: service_pb2.RepositoryModelLoadRequest, **call: float
    ) -> service_pb2.RepositoryModelLoadResponse:
        name = request.model_name
        self.calls.append(f"load {name}")
        self.load_timeouts.append(call["timeout"])
        self.loading += 1
        self.most_loading = max(self.most_loading, self.loading)
        try:
            if name in self.gates:
                await self.gates[name].wait()
            if name in self.load_errors:
                raise self.load_errors[name]
            self.loaded[name] = "READY"
        finally:
            self.loading -= 1
        return service_pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: service_pb2.RepositoryModelUnloadRequest, **call: float
    ) -> service_pb2.RepositoryModelUnloadResponse:
        self.calls.append(f"unload {request.model_name}")
        if self.unload_error is not None:
            raise self.unload_error
        if request.model_name not in self.loaded:
            raise rpc_error(grpc.StatusCode.NOT_FOUND, f"Model {request.model_name} not found")
        del self.loaded[request.model_name]
        return service_pb2.RepositoryModelUnloadResponse()

    async def RepositoryIndex(
        self, request: service_pb2.RepositoryIndexRequest, **call: float
    ) -> service_pb2.RepositoryIndexResponse:
        models = [
            service_pb2.RepositoryIndexResponse.ModelIndex(name=name, state=state)
            for name, state in self.loaded.items()
        ]
        return service_pb2.RepositoryIndexResponse(models=models)

    async def ServerReady(
        self, request: service_pb2.ServerReadyRequest, **call: float
    ) -> service_pb2.ServerReadyResponse:
        if self.status_error is not None:
            raise self.status_error
        return service_pb2.ServerReadyResponse(ready=self.ready)

    async def ServerMetadata(
        self, request: service_pb2.ServerMetadataRequest, **call: float
    ) -> service_pb2.ServerMetadataResponse:
        return service_pb2.ServerMetadataResponse(name=self.name, version=self.version)


@dataclass
class FakeConfig:
    repository_dir: Path
    capacity_bytes: int = 1 << 30
    min_model_size_bytes: int = 0
    load_timeout_ms: int = LOAD_TIMEOUT_MS
    default_model_size_bytes: int = 1 << 20


class FakeAdapter(RuntimeAdapter):
    """A lock per model and a fresh runtime load for every loadModel (MLServer reloads a loaded model)."""

    runtime_label = "Fake"
    runtime_name = "fake"
    memory_source = "fake memory"

    def __init__(self, config: FakeConfig, runtime: FakeRuntime) -> None:
        super().__init__(
            config, "fake:0", CollectorRegistry(), ModelStore(config.repository_dir / "cache", {})
        )
        self.runtime = runtime
        self._stub = runtime  # the fake stands in for the v2 stub

    def model_kind(self, model_type: str) -> str:
        if model_type.lower() != "fake":
            raise ModelRejected(f"unsupported model type {model_type!r}")
        return "fake-kind"

    def check_model_id(self, model_id: str) -> None:
        if " " in model_id:
            raise ModelRejected(f"model id {model_id!r} has a space")

    async def check_files(self, model: ModelToLoad) -> None:
        if model.path.suffix == ".bad":
            raise ModelRejected(f"{model.path} is not a fake model")

    def check_placement(self, model_id: str) -> None:
        if model_id.startswith("foreign"):
            raise LoadFailed(grpc.StatusCode.FAILED_PRECONDITION, f"{model_id} is someone else's")

    async def load_in_runtime(self, model: ModelToLoad) -> int:
        if model.model_id == "crash":
            raise RuntimeError("the adapter's own bug")
        if model.model_id == "late-reject":
            raise ModelRejected("the layout turned out wrong")
        await self.runtime_load(model.model_id)
        return self.runtime.memory

    async def remove_model(self, model_id: str) -> None:
        self.runtime.calls.append(f"remove {model_id}")

    async def runtime_up(self) -> bool:
        ready = await self.stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=1.0)
        return bool(ready.ready)

    async def purge(self) -> None:
        self.runtime.calls.append("purge")
        for name, _state in await self.runtime_models_in_memory():
            async with self._locked(name):
                await self.runtime_unload(name)
        self._forget_all()


class ReusingAdapter(FakeAdapter):
    """Answers a second load of a loaded model with its size (Triton's way)."""

    reuses_loaded_models = True


class OneLockAdapter(FakeAdapter):
    """One lock for every model (MLServer's way: a load rescans the whole repository)."""

    def _lock_key(self, model_id: str) -> str:
        return "all"


class Aborted(Exception):
    """What ``context.abort`` raises here (grpc raises its own AbortError)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class FakeContext:
    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise Aborted(code, details)


CONTEXT: Any = FakeContext()


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.bin"
    path.write_bytes(b"x" * FILE_BYTES)
    return path


def make(cls: type[FakeAdapter], tmp_path: Path, runtime: FakeRuntime, **config: int) -> FakeAdapter:
    return cls(FakeConfig(tmp_path / "repo", **config), runtime)


@pytest.fixture
def adapter(tmp_path: Path, runtime: FakeRuntime) -> FakeAdapter:
    return make(FakeAdapter, tmp_path, runtime)


def load_request(model_id: str, path: Path, model_type: str = "fake") -> pb.LoadModelRequest:
    return pb.LoadModelRequest(modelId=model_id, modelType=model_type, modelPath=str(path))


async def load(adapter: FakeAdapter, model_id: str, path: Path, model_type: str = "fake") -> int:
    reply = await adapter.loadModel(load_request(model_id, path, model_type), CONTEXT)
    return int(reply.sizeInBytes)


def start_load(adapter: FakeAdapter, model_id: str, path: Path) -> asyncio.Task[int]:
    return asyncio.create_task(load(adapter, model_id, path))


async def unload(adapter: FakeAdapter, model_id: str) -> None:
    await adapter.unloadModel(pb.UnloadModelRequest(modelId=model_id), CONTEXT)


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.001)


async def cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def loads(adapter: FakeAdapter, result: str) -> float:
    value = adapter.registry.get_sample_value("modelmesh_adapter_load_requests_total", {"result": result})
    return value or 0.0


def loaded_gauge(adapter: FakeAdapter) -> float | None:
    return adapter.registry.get_sample_value("modelmesh_adapter_loaded_models")


# ---- KeyedLocks and LoadTasks (pure) ----------------------------------------------------------------------


async def test_keyed_locks_serialise_one_key_not_others_and_drop_unused_keys() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    first_in = asyncio.Event()
    release_first = asyncio.Event()

    async def first() -> None:
        async with locks.hold("a"):
            order.append("first in")
            first_in.set()
            await release_first.wait()
            order.append("first out")

    async def second() -> None:
        async with locks.hold("a"):
            order.append("second in")

    tasks = [asyncio.create_task(first())]
    await first_in.wait()
    tasks.append(asyncio.create_task(second()))
    async with locks.hold("b"):  # another key is free while "a" is held
        order.append("b")
    await eventually(lambda: len(locks) == 1)
    release_first.set()
    await asyncio.gather(*tasks)
    assert order == ["first in", "b", "first out", "second in"]
    assert len(locks) == 0


async def test_keyed_locks_drop_a_key_after_an_error_and_after_a_cancelled_waiter() -> None:
    locks = KeyedLocks()
    with pytest.raises(ValueError):
        async with locks.hold("a"):
            raise ValueError("inside")
    assert len(locks) == 0

    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("a"):
            held.set()
            await release.wait()

    async def waiter() -> None:
        async with locks.hold("a"):
            raise AssertionError("a cancelled waiter never gets the lock")

    holding = asyncio.create_task(holder())
    await held.wait()
    waiting = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    await cancel(waiting)
    release.set()
    await holding
    assert len(locks) == 0


async def test_load_task_result_reaches_the_caller_and_the_task_is_forgotten() -> None:
    tasks = LoadTasks(logging.getLogger("test"))
    tickets: list[LoadTicket] = []

    async def work(ticket: LoadTicket) -> int:
        tickets.append(ticket)
        return 42

    assert await tasks.run(work) == 42
    assert not tickets[0].abandoned
    await eventually(lambda: not tasks.running)


async def test_a_cancelled_caller_leaves_its_load_running_with_the_ticket_abandoned() -> None:
    tasks = LoadTasks(logging.getLogger("test"))
    started = asyncio.Event()
    finish = asyncio.Event()
    seen: list[bool] = []

    async def work(ticket: LoadTicket) -> int:
        started.set()
        await finish.wait()
        seen.append(ticket.abandoned)  # what the load reads once the runtime answered
        return 1

    caller = asyncio.create_task(tasks.run(work))
    await started.wait()
    await cancel(caller)
    assert len(tasks.running) == 1  # the load goes on
    finish.set()
    await tasks.drain()
    assert seen == [True]
    assert not tasks.running


async def test_load_failed_is_the_callers_answer_any_other_error_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = LoadTasks(logging.getLogger("test.load_tasks"))

    async def refused(ticket: LoadTicket) -> int:
        raise LoadFailed(grpc.StatusCode.INTERNAL, "refused")

    async def broken(ticket: LoadTicket) -> int:
        raise RuntimeError("bug")

    with caplog.at_level(logging.ERROR, logger="test.load_tasks"):
        with pytest.raises(LoadFailed, match="refused"):
            await tasks.run(refused)
        await asyncio.sleep(0)
        assert not caplog.records
        with pytest.raises(RuntimeError, match="bug"):
            await tasks.run(broken)
        await asyncio.sleep(0)
    assert [r.getMessage() for r in caplog.records] == ["load task failed"]


async def test_drain_waits_for_abandoned_loads_and_swallows_their_errors() -> None:
    tasks = LoadTasks(logging.getLogger("test"))
    finish = asyncio.Event()

    async def work(ticket: LoadTicket) -> int:
        await finish.wait()
        raise LoadFailed(grpc.StatusCode.CANCELLED, "load cancelled by the caller")

    caller = asyncio.create_task(tasks.run(work))
    await asyncio.sleep(0)
    await cancel(caller)
    draining = asyncio.create_task(tasks.drain())
    await asyncio.sleep(0.01)
    assert not draining.done()
    finish.set()
    await draining
    assert not tasks.running


# ---- pure helpers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "version", "label", "numeric"),
    [
        ("mlserver", "1.7.1", "mlserver-1.7.1", 1_007_001),
        ("triton", "2.51.0", "triton-2.51.0", 2_051_000),
        ("triton", "2.51", "triton-2.51", 2_051_000),
        ("x", "v3", "x-v3", 3_000_000),
        ("x", "1.2.3.4-rc1", "x-1.2.3.4-rc1", 1_002_003),
        ("x", "", "x", 0),
        ("x", "dev", "x-dev", 0),
    ],
)
def test_runtime_version(name: str, version: str, label: str, numeric: int) -> None:
    assert RuntimeVersion.parse(name, version) == RuntimeVersion(label, numeric)


@pytest.mark.parametrize(
    ("state", "name"),
    [
        ("State.READY", "READY"),
        ("READY", "READY"),
        ("LOADING", "LOADING"),
        ("State.unavailable", "UNAVAILABLE"),
    ],
)
def test_state_name(state: str, name: str) -> None:
    assert state_name(state) == name


# ---- loadModel --------------------------------------------------------------------------------------------


async def test_load_reports_the_largest_of_memory_files_and_floor(
    tmp_path: Path, runtime: FakeRuntime, model_file: Path
) -> None:
    adapter = make(FakeAdapter, tmp_path, runtime, min_model_size_bytes=3000)
    assert await load(adapter, "m", model_file) == 5000  # measured memory
    runtime.memory = 0
    assert await load(adapter, "n", model_file) == 3000  # the floor
    adapter.config.min_model_size_bytes = 0
    assert await load(adapter, "o", model_file) == int(FILE_BYTES * 1.25)  # the files
    runtime.memory = -10  # an RSS delta can be negative
    assert await load(adapter, "p", model_file) == int(FILE_BYTES * 1.25)

    size = await adapter.modelSize(pb.ModelSizeRequest(modelId="m"), CONTEXT)
    assert size.sizeInBytes == 5000
    assert runtime.load_timeouts == [LOAD_TIMEOUT_MS / 1000] * 4
    assert set(runtime.loaded) == {"m", "n", "o", "p"}
    assert loads(adapter, "success") == 4
    assert (
        adapter.registry.get_sample_value("modelmesh_adapter_load_requests_total", {"result": "failure"})
        is None
    )  # no failure series before a failure
    assert loaded_gauge(adapter) == 4


@pytest.mark.parametrize(
    ("cls", "runtime_loads"), [(FakeAdapter, 3), (ReusingAdapter, 1)], ids=["reloads", "reuses"]
)
async def test_concurrent_loads_of_one_model(
    tmp_path: Path, runtime: FakeRuntime, model_file: Path, cls: type[FakeAdapter], runtime_loads: int
) -> None:
    """The callers queue on the model's lock: with reuse they share the first load, without it each waits
    for the one before and loads again; the runtime never runs two loads of one model at once."""
    adapter = make(cls, tmp_path, runtime)
    gate = runtime.gate("m")
    callers = [start_load(adapter, "m", model_file) for _ in range(3)]
    await eventually(lambda: runtime.calls == ["load m"])
    await asyncio.sleep(0.01)
    assert runtime.calls == ["load m"]  # the others wait for the model's lock
    gate.set()
    assert await asyncio.gather(*callers) == [5000, 5000, 5000]
    assert runtime.calls == ["load m"] * runtime_loads
    assert runtime.most_loading == 1
    assert loads(adapter, "success") == 3
    assert loaded_gauge(adapter) == 1


@pytest.mark.parametrize(
    ("cls", "most"), [(FakeAdapter, 2), (OneLockAdapter, 1)], ids=["per-model", "one-lock"]
)
async def test_loads_of_two_models_overlap_unless_one_lock_serves_all(
    tmp_path: Path, runtime: FakeRuntime, model_file: Path, cls: type[FakeAdapter], most: int
) -> None:
    adapter = make(cls, tmp_path, runtime)
    gates = [runtime.gate("a"), runtime.gate("b")]
    callers = [start_load(adapter, "a", model_file), start_load(adapter, "b", model_file)]
    await eventually(lambda: len(runtime.calls) == most)
    await asyncio.sleep(0.01)
    assert len(runtime.calls) == most
    for gate in gates:
        gate.set()
    await asyncio.gather(*callers)
    assert runtime.most_loading == most
    assert set(runtime.loaded) == {"a", "b"}


async def test_a_cancelled_caller_alone_has_its_load_undone(
    adapter: FakeAdapter, runtime: FakeRuntime, model_file: Path
) -> None:
    gate = runtime.gate("m")
    caller = start_load(adapter, "m", model_file)
    await eventually(lambda: runtime.calls == ["load m"])
    await cancel(caller)
    assert runtime.loading == 1  # the runtime is not interrupted mid-load
    gate.set()
    await eventually(lambda: not adapter._background)
    assert runtime.calls == ["load m", "unload m", "remove m"]
    assert runtime.loaded == {}
    assert "m" not in adapter._sizes
    assert loads(adapter, "failure") == 1
    assert loads(adapter, "success") == 0
    assert loaded_gauge(adapter) == 0
    assert len(adapter._locks) == 0


async def test_a_caller_cancelled_before_its_turn_never_reaches_the_runtime(
    tmp_path: Path, runtime: FakeRuntime, model_file: Path
) -> None:
    adapter = make(OneLockAdapter, tmp_path, runtime)
    gate = runtime.gate("a")
    first = start_load(adapter, "a", model_file)
    await eventually(lambda: runtime.calls == ["load a"])
    second = start_load(adapter, "b", model_file)  # waits for the one lock
    await asyncio.sleep(0.01)
    await cancel(second)
    gate.set()
    assert await first == 5000
    await eventually(lambda: not adapter._background)
    assert runtime.calls == ["load a"]
    assert set(runtime.loaded) == {"a"}
    assert (loads(adapter, "success"), loads(adapter, "failure")) == (1, 1)


async def test_a_cancelled_callers_load_is_undone_even_while_another_caller_waits(
    tmp_path: Path, runtime: FakeRuntime, model_file: Path
) -> None:
    """Each loadModel call has its own ticket: the cancelled one's load is undone, and the caller still
    waiting then loads the model itself. The waiter gets a loaded model, at the price of a second load."""
    adapter = make(ReusingAdapter, tmp_path, runtime)
    gate = runtime.gate("m")
    cancelled = start_load(adapter, "m", model_file)
    await eventually(lambda: runtime.calls == ["load m"])
    waiting = start_load(adapter, "m", model_file)
    await asyncio.sleep(0.01)
    await cancel(cancelled)
    gate.set()
    assert await waiting == 5000
    assert runtime.calls == ["load m", "unload m", "remove m", "load m"]
    assert set(runtime.loaded) == {"m"}
    assert adapter._sizes == {"m": 5000}
    assert loaded_gauge(adapter) == 1


async def test_an_unload_during_a_load_waits_for_it_then_unloads(
    adapter: FakeAdapter, runtime: FakeRuntime, model_file: Path
) -> None:
    gate = runtime.gate("m")
    loading = start_load(adapter, "m", model_file)
    await eventually(lambda: runtime.calls == ["load m"])
    unloading = asyncio.create_task(unload(adapter, "m"))
    await asyncio.sleep(0.01)
    assert not unloading.done()
    assert runtime.calls == ["load m"]  # never an unload racing a load
    gate.set()
    assert await loading == 5000
    await unloading
    assert runtime.calls == ["load m", "unload m", "remove m"]
    assert runtime.loaded == {}
    assert adapter._sizes == {}
    assert loaded_gauge(adapter) == 0


async def test_an_unload_after_an_abandoned_load_leaves_nothing(
    adapter: FakeAdapter, runtime: FakeRuntime, model_file: Path
) -> None:
    """What the mesh does after a load deadline: it unloads at once, while the load is still running."""
    gate = runtime.gate("m")
    caller = start_load(adapter, "m", model_file)
    await eventually(lambda: runtime.calls == ["load m"])
    await cancel(caller)
    unloading = asyncio.create_task(unload(adapter, "m"))
    await asyncio.sleep(0.01)
    gate.set()
    await unloading
    await eventually(lambda: not adapter._background)
    # The load undoes itself first (it held the lock), then the unload finds nothing: both are fine.
    assert runtime.calls == ["load m", "unload m", "remove m", "unload m", "remove m"]
    assert runtime.loaded == {}
    assert adapter._sizes == {}


@pytest.mark.parametrize("cls", [FakeAdapter, ReusingAdapter], ids=["reloads", "reuses"])
async def test_a_failed_load_is_reported_to_every_waiting_caller(
    tmp_path: Path, runtime: FakeRuntime, model_file: Path, cls: type[FakeAdapter]
) -> None:
    """Nothing is loaded after a failure, so each waiter makes its own attempt, and hears its failure."""
    adapter = make(cls, tmp_path, runtime)
    runtime.load_errors["m"] = rpc_error(grpc.StatusCode.UNAVAILABLE, "boom")
    gate = runtime.gate("m")
    callers = [start_load(adapter, "m", model_file) for _ in range(2)]
    await eventually(lambda: runtime.calls == ["load m"])
    gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    for result in results:
        assert isinstance(result, Aborted)
        assert result.code == grpc.StatusCode.INTERNAL
        assert result.details == "Fake failed to load model 'm' (UNAVAILABLE): boom"
    assert runtime.calls == ["load m", "unload m", "remove m"] * 2
    assert runtime.loaded == {}
    assert loads(adapter, "failure") == 2
    assert loaded_gauge(adapter) == 0


async def test_a_load_past_its_timeout_is_deadline_exceeded_and_cleaned_up(
    adapter: FakeAdapter, runtime: FakeRuntime, model_file: Path
) -> None:
    runtime.load_errors["m"] = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    with pytest.raises(Aborted) as excinfo:
        await load(adapter, "m", model_file)
    assert excinfo.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert excinfo.value.details == f"loading model 'm' in Fake timed out after {LOAD_TIMEOUT_MS} ms"
    assert runtime.calls == ["load m", "unload m", "remove m"]


async def test_a_failed_cleanup_unload_is_logged_and_the_load_error_wins(
    adapter: FakeAdapter, runtime: FakeRuntime, model_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime.load_errors["m"] = rpc_error(grpc.StatusCode.INTERNAL, "load broke")
    runtime.unload_error = rpc_error(grpc.StatusCode.UNAVAILABLE, "unload broke")
    with caplog.at_level(logging.WARNING), pytest.raises(Aborted) as excinfo:
        await load(adapter, "m", model_file)
    assert excinfo.value.code == grpc.StatusCode.INTERNAL
    assert "load broke" in excinfo.value.details
    assert runtime.calls == ["load m", "unload m", "remove m"]  # the folder goes even so
    assert "cleanup unload of 'm' failed: unload broke" in caplog.text


async def test_a_model_rejected_during_the_load_is_invalid_argument_and_cleaned_up(
    adapter: FakeAdapter, runtime: FakeRuntime, model_file: Path
) -> None:
    with pytest.raises(Aborted) as excinfo:
        await load(adapter, "late-reject", model_file)
    assert (excinfo.value.code, excinfo.value.details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the layout turned out wrong",
    )
    assert runtime.calls == ["unload late-reject", "remove late-reject"]


async def test_an_unexpected_error_cleans_up_propagates_and_is_logged(
    adapter: FakeAdapter, runtime: FakeRuntime, model_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="the adapter's own bug"):
        await load(adapter, "crash", model_file)
    await eventually(lambda: not adapter._background)
    assert runtime.calls == ["unload crash", "remove crash"]
    assert "load task failed" in caplog.text


@pytest.mark.parametrize(
    ("model_id", "model_type", "path_name", "message"),
    [
        ("", "fake", "model.bin", "modelId is empty"),
        ("has space", "fake", "model.bin", "has a space"),
        ("m", "other", "model.bin", "unsupported model type 'other'"),
        ("m", "fake", "missing.bin", "does not exist"),
        ("m", "fake", "model.bad", "is not a fake model"),
    ],
)
async def test_bad_requests_are_invalid_argument_and_touch_nothing(
    adapter: FakeAdapter,
    runtime: FakeRuntime,
    model_file: Path,
    model_id: str,
    model_type: str,
    path_name: str,
    message: str,
) -> None:
    (model_file.parent / "model.bad").write_bytes(b"x")
    with pytest.raises(Aborted) as excinfo:
        await load(adapter, model_id, model_file.parent / path_name, model_type)
    assert excinfo.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in excinfo.value.details
    assert runtime.calls == []
    assert loads(adapter, "failure") == 1
    assert not adapter._background


async def test_a_placement_refusal_keeps_its_code_and_touches_nothing(
    adapter: FakeAdapter, runtime: FakeRuntime, model_file: Path
) -> None:
    with pytest.raises(Aborted) as excinfo:
        await load(adapter, "foreign-model", model_file)
    assert excinfo.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert runtime.calls == []
    assert loads(adapter, "failure") == 1


@pytest.mark.parametrize(
    ("cls", "runtime_loads"), [(FakeAdapter, 2), (ReusingAdapter, 1)], ids=["reloads", "reuses"]
)
async def test_loading_a_loaded_model_again(
    tmp_path: Path, runtime: FakeRuntime, model_file: Path, cls: type[FakeAdapter], runtime_loads: int
) -> None:
    adapter = make(cls, tmp_path, runtime)
    assert await load(adapter, "m", model_file) == 5000
    runtime.memory = 0  # what a reload of a model already in memory measures
    second = await load(adapter, "m", model_file)
    assert runtime.calls == ["load m"] * runtime_loads
    assert second == (5000 if cls is ReusingAdapter else int(FILE_BYTES * 1.25))
    assert loaded_gauge(adapter) == 1


# ---- unloadModel ------------------------------------------------------------------------------------------


async def test_an_unload_failure_passes_the_runtimes_code_and_still_forgets_the_model(
    adapter: FakeAdapter, runtime: FakeRuntime, model_file: Path
) -> None:
    await load(adapter, "m", model_file)
    runtime.unload_error = rpc_error(grpc.StatusCode.UNAVAILABLE, "down")
    with pytest.raises(Aborted) as excinfo:
        await unload(adapter, "m")
    assert (excinfo.value.code, excinfo.value.details) == (
        grpc.StatusCode.UNAVAILABLE,
        "Fake failed to unload model 'm': down",
    )
    assert runtime.calls == ["load m", "unload m", "remove m"]
    assert adapter._sizes == {}
    assert loaded_gauge(adapter) == 0


async def test_unloads_of_unknown_unnameable_and_empty_ids(
    adapter: FakeAdapter, runtime: FakeRuntime
) -> None:
    await unload(adapter, "never-loaded")  # the runtime's NOT_FOUND counts as unloaded
    assert runtime.calls == ["unload never-loaded", "remove never-loaded"]
    await unload(adapter, "has space")  # could never have been loaded: the runtime is not asked
    assert runtime.calls == ["unload never-loaded", "remove never-loaded"]
    with pytest.raises(Aborted) as excinfo:
        await unload(adapter, "")
    assert (excinfo.value.code, excinfo.value.details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "modelId is empty",
    )
    assert adapter.registry.get_sample_value("modelmesh_adapter_unload_requests_total") == 3


async def test_runtime_unload_tolerates_not_found_in_either_spelling(adapter: FakeAdapter) -> None:
    for error in (
        rpc_error(grpc.StatusCode.NOT_FOUND, "Model m not found"),  # MLServer 1.7
        rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "model m Not Found"),  # older MLServer
    ):
        adapter.runtime.unload_error = error
        await adapter.runtime_unload("m")
    adapter.runtime.unload_error = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
    with pytest.raises(grpc.aio.AioRpcError):
        await adapter.runtime_unload("m")


# ---- runtimeStatus and close ------------------------------------------------------------------------------


async def test_runtime_status_purges_and_reports(
    adapter: FakeAdapter, runtime: FakeRuntime, model_file: Path
) -> None:
    await load(adapter, "m", model_file)
    runtime.loaded["someone-elses"] = "State.LOADING"
    runtime.loaded["on-disk-only"] = "State.UNAVAILABLE"
    status = await adapter.runtimeStatus(pb.RuntimeStatusRequest(), CONTEXT)
    assert status.status == pb.RuntimeStatusResponse.READY
    assert runtime.calls[1:] == ["purge", "unload m", "unload someone-elses"]
    assert set(runtime.loaded) == {"on-disk-only"}
    assert adapter._sizes == {}
    assert loaded_gauge(adapter) == 0
    assert (status.capacityInBytes, status.maxLoadingConcurrency) == (1 << 30, 1)
    assert (status.modelLoadingTimeoutMs, status.defaultModelSizeInBytes) == (LOAD_TIMEOUT_MS, 1 << 20)
    assert (status.runtimeVersion, status.numericRuntimeVersion) == ("fake-1.2.3", 1_002_003)
    assert {name: list(info.idInjectionPath) for name, info in status.methodInfos.items()} == {
        "inference.GRPCInferenceService/ModelInfer": [1],
        "inference.GRPCInferenceService/ModelMetadata": [1],
    }
    assert not status.allowAnyMethod
    assert not status.limitModelConcurrency

    runtime.name = ""  # a runtime that does not name itself
    status = await adapter.runtimeStatus(pb.RuntimeStatusRequest(), CONTEXT)
    assert status.runtimeVersion == "fake-1.2.3"


async def test_runtime_status_is_starting_until_the_runtime_is_up(
    adapter: FakeAdapter, runtime: FakeRuntime
) -> None:
    runtime.ready = False
    status = await adapter.runtimeStatus(pb.RuntimeStatusRequest(), CONTEXT)
    assert status.status == pb.RuntimeStatusResponse.STARTING
    runtime.ready = True
    runtime.status_error = rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")
    status = await adapter.runtimeStatus(pb.RuntimeStatusRequest(), CONTEXT)
    assert status.status == pb.RuntimeStatusResponse.STARTING
    assert "purge" not in runtime.calls


async def test_close_waits_for_an_abandoned_load_to_undo_itself(
    adapter: FakeAdapter, runtime: FakeRuntime, model_file: Path
) -> None:
    gate = runtime.gate("m")
    caller = start_load(adapter, "m", model_file)
    await eventually(lambda: runtime.calls == ["load m"])
    await cancel(caller)
    closing = asyncio.create_task(adapter.close())
    await asyncio.sleep(0.01)
    assert not closing.done()
    gate.set()
    await closing
    assert runtime.loaded == {}
    assert runtime.calls == ["load m", "unload m", "remove m"]
