"""The MLServer adapter against a real MLServer process, over real gRPC."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import joblib
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.tree import DecisionTreeClassifier
from tritonclient.grpc import aio as triton_aio
from tritonclient.utils import InferenceServerException

from harness.cluster import MLServerProcess
from harness.processes import default_mlserver_bin, free_port
from protos import model_runtime_pb2 as pb
from protos import model_runtime_pb2_grpc as pb_grpc
from runtime_adapters.common.base import ModelToLoad
from runtime_adapters.common.memory import find_listening_pid, process_tree_rss
from runtime_adapters.common.model_files import files_size
from runtime_adapters.mlserver.adapter import (
    DEFAULT_MAX_LOADING_CONCURRENCY,
    LOADED_DIR,
    MLServerAdapter,
    MLServerAdapterConfig,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not default_mlserver_bin().exists(), reason="needs .venv-mlserver"),
]

REPO_ROOT = Path(__file__).resolve().parents[1]


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    """Poll ``check`` until it is true or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.05)


@dataclass
class IrisModels:
    dir_model: Path  # a directory holding model.joblib
    file_model: Path  # a bare .joblib file
    corrupt: Path  # a directory whose model.joblib is random bytes
    x: np.ndarray
    expected_dir: np.ndarray
    expected_file: np.ndarray


@pytest.fixture(scope="session")
def iris(tmp_path_factory: pytest.TempPathFactory) -> IrisModels:
    base = tmp_path_factory.mktemp("models")
    x, y = load_iris(return_X_y=True)
    logreg = LogisticRegression(max_iter=1000).fit(x, y)
    tree = DecisionTreeClassifier(random_state=0).fit(x, y)
    (base / "logreg").mkdir()
    joblib.dump(logreg, base / "logreg" / "model.joblib")
    joblib.dump(tree, base / "tree.joblib")
    (base / "corrupt").mkdir()
    (base / "corrupt" / "model.joblib").write_bytes(os.urandom(4096))
    sample = x[::10]
    return IrisModels(
        dir_model=base / "logreg",
        file_model=base / "tree.joblib",
        corrupt=base / "corrupt",
        x=sample,
        expected_dir=logreg.predict(sample),
        expected_file=tree.predict(sample),
    )


@pytest.fixture(scope="session")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServerProcess]:
    work = tmp_path_factory.mktemp("mlserver")
    with MLServerProcess.start(work / "repo", default_mlserver_bin(), work) as proc:
        yield proc


@pytest.fixture(scope="session")
async def triton(mlserver: MLServerProcess) -> AsyncIterator[triton_aio.InferenceServerClient]:
    client = triton_aio.InferenceServerClient(mlserver.grpc_address)
    yield client
    await client.close()


@dataclass
class AdapterHandle:
    adapter: MLServerAdapter
    stub: pb_grpc.ModelRuntimeStub
    registry: CollectorRegistry
    repo: Path


async def start_adapter(
    mlserver: MLServerProcess, **overrides: int
) -> tuple[AdapterHandle, Callable[[], Awaitable[None]]]:
    repo = mlserver_repo(mlserver)
    registry = CollectorRegistry()
    config = MLServerAdapterConfig(
        mlserver_grpc_address=mlserver.grpc_address,
        repository_dir=repo,
        runtime_pid=mlserver.pid,
        capacity_bytes=overrides.get("capacity_bytes", 512 << 20),
        min_model_size_bytes=overrides.get("min_model_size_bytes", 0),
        load_timeout_ms=overrides.get("load_timeout_ms", 60_000),
        default_model_size_bytes=1 << 20,
    )
    adapter = MLServerAdapter(config, registry=registry)
    server = grpc.aio.server()
    pb_grpc.add_ModelRuntimeServicer_to_server(adapter, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

    async def stop() -> None:
        await channel.close()
        await server.stop(grace=None)
        await adapter.close()

    return AdapterHandle(adapter, pb_grpc.ModelRuntimeStub(channel), registry, repo), stop


def mlserver_repo(mlserver: MLServerProcess) -> Path:
    return mlserver.log_path.parent / "repo"


def scanned(repo: Path) -> list[str]:
    """What MLServer's repository scan sees: the root's folders that are not hidden."""
    return sorted(p.name for p in repo.iterdir() if not p.name.startswith("."))


def files_left(repo: Path) -> list[Path]:
    """Every file under the repository, hidden folders included: nothing may be left behind."""
    return sorted(p for p in repo.rglob("*") if p.is_file())


def slow_model(directory: Path) -> Path:
    """Nearest neighbours that keep ~40 MB of training data: a load that takes a while."""
    x, y = load_iris(return_X_y=True)
    directory.mkdir(parents=True, exist_ok=True)
    slow = KNeighborsClassifier(n_neighbors=1).fit(np.repeat(x, 8000, axis=0), np.repeat(y, 8000))
    joblib.dump(slow, directory / "model.joblib")
    return directory


class _Pause:
    """Unpickles as ``time.sleep(seconds)``: a load that takes as long as a test needs to look at it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> tuple[Callable[[float], None], tuple[float]]:
        return time.sleep, (self.seconds,)


class _Ballast:
    """Unpickles as ``numpy.ones(count)``: memory once loaded, a few bytes on disk."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __reduce__(self) -> tuple[Callable[[int], np.ndarray], tuple[int]]:
        return np.ones, (self.count,)


def pausing_model(directory: Path, seconds: float = 3.0, megabytes: int = 0) -> Path:
    """A "model" whose load waits ``seconds`` (inside MLServer, unpickling it), then holds ``megabytes``."""
    directory.mkdir(parents=True, exist_ok=True)
    ballast = _Ballast(megabytes * (1 << 20) // 8)
    (directory / "model.joblib").write_bytes(pickle.dumps((_Pause(seconds), ballast)))
    return directory


@pytest.fixture
async def adapter(mlserver: MLServerProcess) -> AsyncIterator[AdapterHandle]:
    handle, stop = await start_adapter(mlserver)
    try:
        # Start every test from an empty runtime, whatever an earlier (failed) test left behind.
        status = await handle.stub.runtimeStatus(pb.RuntimeStatusRequest())
        assert status.status == pb.RuntimeStatusResponse.READY
        yield handle
    finally:
        await stop()


async def model_ready(client: triton_aio.InferenceServerClient, name: str) -> bool:
    try:
        return bool(await client.is_model_ready(name))
    except InferenceServerException:
        # MLServer answers UNKNOWN for a model it does not have loaded.
        return False


async def ready_models(mlserver_client: triton_aio.InferenceServerClient) -> set[str]:
    index = await mlserver_client.get_model_repository_index()
    return {m.name for m in index.models if m.state.endswith("READY")}


async def predict(client: triton_aio.InferenceServerClient, name: str, x: np.ndarray) -> np.ndarray:
    inp = triton_aio.InferInput("input-0", list(x.shape), "FP64")
    inp.set_data_from_numpy(x.astype(np.float64))
    result = await client.infer(name, [inp])
    out = result.as_numpy(result.get_response().outputs[0].name)
    assert out is not None
    return out.ravel()


def load_req(model_id: str, path: Path | str, model_type: str = "sklearn") -> pb.LoadModelRequest:
    return pb.LoadModelRequest(modelId=model_id, modelType=model_type, modelPath=str(path), modelKey="{}")


# ---- tests ----------------------------------------------------------------------------------------------


async def test_runtime_status_ready(adapter: AdapterHandle) -> None:
    status = await adapter.stub.runtimeStatus(pb.RuntimeStatusRequest())
    assert status.status == pb.RuntimeStatusResponse.READY
    assert status.capacityInBytes == 512 << 20
    assert status.maxLoadingConcurrency == DEFAULT_MAX_LOADING_CONCURRENCY
    assert status.modelLoadingTimeoutMs == 60_000
    assert status.defaultModelSizeInBytes == 1 << 20
    assert status.runtimeVersion.startswith("mlserver-1.")
    assert status.numericRuntimeVersion >= 1_000_000
    assert dict(status.methodInfos) == {
        "inference.GRPCInferenceService/ModelInfer": pb.RuntimeStatusResponse.MethodInfo(idInjectionPath=[1]),
        "inference.GRPCInferenceService/ModelMetadata": pb.RuntimeStatusResponse.MethodInfo(
            idInjectionPath=[1]
        ),
    }
    assert not status.allowAnyMethod
    assert not status.limitModelConcurrency


async def test_load_infer_unload(
    adapter: AdapterHandle, iris: IrisModels, triton: triton_aio.InferenceServerClient
) -> None:
    dir_id, file_id = "iris/logreg:v1__isvc-abc", "iris-tree"
    resp = await adapter.stub.loadModel(load_req(dir_id, iris.dir_model))
    assert resp.sizeInBytes >= int(files_size(iris.dir_model) * 1.25)
    resp2 = await adapter.stub.loadModel(load_req(file_id, f"file://{iris.file_model}", "SKLearn"))
    assert resp2.sizeInBytes >= int(files_size(iris.file_model) * 1.25)

    assert await model_ready(triton, dir_id)
    assert await model_ready(triton, file_id)
    np.testing.assert_array_equal(await predict(triton, dir_id, iris.x), iris.expected_dir)
    np.testing.assert_array_equal(await predict(triton, file_id, iris.x), iris.expected_file)

    # Loaded: out of the scanned folder, remembered in the hidden one.
    assert scanned(adapter.repo) == []
    assert adapter.adapter.loaded_marker(dir_id).read_text() == dir_id

    size = await adapter.stub.modelSize(pb.ModelSizeRequest(modelId=dir_id))
    assert size.sizeInBytes == resp.sizeInBytes
    predicted = await adapter.stub.predictModelSize(
        pb.PredictModelSizeRequest(modelId=dir_id, modelType="sklearn", modelPath=str(iris.dir_model))
    )
    assert predicted.sizeInBytes == int(files_size(iris.dir_model) * 1.25)
    assert adapter.registry.get_sample_value("modelmesh_adapter_loaded_models") == 2

    await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId=dir_id))
    assert not await model_ready(triton, dir_id)
    assert not adapter.adapter.model_dir(dir_id).exists()
    assert not adapter.adapter.loaded_marker(dir_id).exists()
    # The other model is untouched.
    np.testing.assert_array_equal(await predict(triton, file_id, iris.x), iris.expected_file)
    await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId=file_id))
    assert files_left(adapter.repo) == []
    assert adapter.registry.get_sample_value("modelmesh_adapter_loaded_models") == 0


async def test_unload_unknown_is_ok(adapter: AdapterHandle) -> None:
    await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId="never-loaded/x:1"))


async def test_invalid_requests_touch_nothing(
    adapter: AdapterHandle, iris: IrisModels, tmp_path: Path
) -> None:
    missing = tmp_path / "missing" / "model.joblib"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await adapter.stub.loadModel(load_req("m1", missing))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(missing) in (err.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await adapter.stub.loadModel(load_req("m2", iris.dir_model, "tensorflow"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unsupported model type" in (err.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await adapter.stub.loadModel(load_req("", iris.dir_model))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    assert files_left(adapter.repo) == []
    assert (
        adapter.registry.get_sample_value("modelmesh_adapter_load_requests_total", {"result": "failure"}) == 3
    )


async def test_corrupt_model_then_good_model(
    adapter: AdapterHandle, iris: IrisModels, triton: triton_aio.InferenceServerClient
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await adapter.stub.loadModel(load_req("broken", iris.corrupt))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "MLServer failed to load model 'broken'" in (err.value.details() or "")
    assert not adapter.adapter.model_dir("broken").exists()
    assert not adapter.adapter.loaded_marker("broken").exists()
    assert not await model_ready(triton, "broken")

    # Another runtime's failure (xgboost cannot read a joblib folder) passes MLServer's message through.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await adapter.stub.loadModel(load_req("xgb", iris.corrupt, "xgboost"))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert str(iris.corrupt) in (err.value.details() or "")
    assert not adapter.adapter.model_dir("xgb").exists()

    await adapter.stub.loadModel(load_req("good", iris.dir_model))
    np.testing.assert_array_equal(await predict(triton, "good", iris.x), iris.expected_dir)
    assert scanned(adapter.repo) == []
    assert files_left(adapter.repo) == [adapter.adapter.loaded_marker("good")]
    await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId="good"))


async def test_load_timeout_cleans_up(
    mlserver: MLServerProcess, triton: triton_aio.InferenceServerClient, tmp_path: Path
) -> None:
    slow_model(tmp_path / "slow")  # takes far longer to load than the timeout
    handle, stop = await start_adapter(mlserver, load_timeout_ms=20)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await handle.stub.loadModel(load_req("slow", tmp_path / "slow"))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert files_left(handle.repo) == []

        async def gone() -> bool:
            return not await model_ready(triton, "slow")

        await eventually(gone)
    finally:
        await stop()


async def test_cancelled_load_then_unload_does_not_leak(
    adapter: AdapterHandle, iris: IrisModels, triton: triton_aio.InferenceServerClient
) -> None:
    model_id = "cancel/me"
    call = adapter.stub.loadModel(load_req(model_id, iris.file_model))

    async def started() -> bool:
        return adapter.adapter.model_dir(model_id).exists() or call.done()

    await eventually(started)
    call.cancel()
    await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId=model_id))

    assert not await model_ready(triton, model_id)
    assert not adapter.adapter.model_dir(model_id).exists()

    # Nothing left running in the background can resurrect it.
    async def settled() -> bool:
        return not adapter.adapter._background

    await eventually(settled)
    assert not await model_ready(triton, model_id)
    assert files_left(adapter.repo) == []


async def test_runtime_status_purges_leftovers(
    mlserver: MLServerProcess, iris: IrisModels, triton: triton_aio.InferenceServerClient
) -> None:
    a, stop_a = await start_adapter(mlserver)
    b: AdapterHandle | None = None
    stop_b: Callable[[], Awaitable[None]] | None = None
    try:
        await a.stub.loadModel(load_req("leftover", iris.dir_model))
        # A folder someone else put in the repository must survive the purge.
        foreign = a.repo / "operator-owned"
        foreign.mkdir()
        (foreign / "notes.txt").write_text("not ours")
        await stop_a()

        b, stop_b = await start_adapter(mlserver)
        assert await model_ready(triton, "leftover")
        status = await b.stub.runtimeStatus(pb.RuntimeStatusRequest())
        assert status.status == pb.RuntimeStatusResponse.READY
        assert not await model_ready(triton, "leftover")
        assert scanned(b.repo) == ["operator-owned"]
        assert files_left(b.repo) == [b.repo / "operator-owned" / "notes.txt"]
    finally:
        if stop_b is not None:
            await stop_b()
        (mlserver_repo(mlserver) / "operator-owned" / "notes.txt").unlink(missing_ok=True)
        if (mlserver_repo(mlserver) / "operator-owned").exists():
            (mlserver_repo(mlserver) / "operator-owned").rmdir()


async def test_metrics_count_loads(adapter: AdapterHandle, iris: IrisModels) -> None:
    for i in range(3):
        await adapter.stub.loadModel(load_req(f"counted-{i}", iris.file_model))
    with pytest.raises(grpc.aio.AioRpcError):
        await adapter.stub.loadModel(load_req("counted-bad", iris.corrupt))
    for i in range(3):
        await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId=f"counted-{i}"))
    value = adapter.registry.get_sample_value
    assert value("modelmesh_adapter_load_requests_total", {"result": "success"}) == 3
    assert value("modelmesh_adapter_load_requests_total", {"result": "failure"}) == 1
    assert value("modelmesh_adapter_unload_requests_total") == 3
    assert value("modelmesh_adapter_loaded_models") == 0


async def test_main_subprocess(mlserver: MLServerProcess, tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    env = dict(os.environ, MLSERVER_REPOSITORY_DIR=str(mlserver_repo(mlserver)))
    proc = subprocess.Popen(  # noqa: ASYNC220 - startup is instant; waits below are off-loop
        [
            sys.executable,
            "-m",
            "runtime_adapters.mlserver.main",
            "--port",
            str(port),
            "--mlserver-grpc",
            mlserver.grpc_address,
            "--capacity-bytes",
            "12345678",
            "--metrics-port",
            str(metrics_port),
        ],
        cwd=REPO_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stderr.readline), timeout=30)
        assert f"adapter listening on 127.0.0.1:{port}" in line
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = await pb_grpc.ModelRuntimeStub(channel).runtimeStatus(
                pb.RuntimeStatusRequest(), timeout=30
            )
        assert status.status == pb.RuntimeStatusResponse.READY
        assert status.capacityInBytes == 12345678

        def scrape() -> str:
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                return str(r.read().decode())

        assert "modelmesh_adapter_loaded_models" in await asyncio.to_thread(scrape)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_mlserver_process_reports_exit(tmp_path: Path) -> None:
    fake = tmp_path / "fake-mlserver"
    fake.write_text("#!/bin/sh\necho boom >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(RuntimeError, match="boom"):
        MLServerProcess.start(tmp_path / "repo", fake, tmp_path)


def test_memory_helpers_find_mlserver(mlserver: MLServerProcess) -> None:
    assert find_listening_pid(mlserver.grpc_port) == mlserver.pid
    assert process_tree_rss(mlserver.pid) > 10 << 20
    assert find_listening_pid(free_port()) is None


async def test_size_is_the_measured_memory_not_the_file_size(adapter: AdapterHandle, tmp_path: Path) -> None:
    # Small on disk (compressed zeros), about 160 MB once loaded: only a real RSS measurement sees that.
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000).fit(x, y)
    model.ballast_ = np.ones(20_000_000)  # unpickled pages are written, so they count in RSS
    (tmp_path / "bloated").mkdir()
    joblib.dump(model, tmp_path / "bloated" / "model.joblib", compress=3)
    assert files_size(tmp_path / "bloated") < 2 << 20
    response = await adapter.stub.loadModel(load_req("bloated", tmp_path / "bloated"))
    try:
        assert response.sizeInBytes > 100 << 20
    finally:
        await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId="bloated"))


async def test_a_load_interrupted_by_an_adapter_restart_is_purged(
    mlserver: MLServerProcess, iris: IrisModels, triton: triton_aio.InferenceServerClient
) -> None:
    """An adapter that died mid-load leaves the load's folder in the scanned root and its marker: the next
    adapter unloads the model (MLServer may have finished loading it) and deletes both."""
    handle, stop = await start_adapter(mlserver)
    try:
        model = ModelToLoad("half-loaded", "mlserver_sklearn.SKLearnModel", iris.dir_model)
        handle.adapter._stage(model)  # what a load does before it asks MLServer
        await handle.adapter.runtime_load("half-loaded")  # MLServer loaded it; the adapter died here
        assert await model_ready(triton, "half-loaded")
        assert scanned(handle.repo) == [handle.adapter.model_dir("half-loaded").name]
    finally:
        await stop()
    handle, stop = await start_adapter(mlserver)
    try:
        status = await handle.stub.runtimeStatus(pb.RuntimeStatusRequest())
        assert status.status == pb.RuntimeStatusResponse.READY
        assert not await model_ready(triton, "half-loaded")
        assert files_left(handle.repo) == []
    finally:
        await stop()


async def test_the_scanned_folder_holds_only_the_loads_in_progress(
    adapter: AdapterHandle, iris: IrisModels, tmp_path: Path
) -> None:
    """MLServer rescans its repository on every load: with only loads in progress there, a load costs the
    same however many models the pod holds."""
    for i in range(5):
        await adapter.stub.loadModel(load_req(f"held-{i}", iris.dir_model))
    assert scanned(adapter.repo) == []
    slow = adapter.stub.loadModel(load_req("slow", pausing_model(tmp_path / "slow")))

    async def loading() -> bool:
        return adapter.adapter.model_dir("slow").exists() or slow.done()

    await eventually(loading)
    assert scanned(adapter.repo) == [adapter.adapter.model_dir("slow").name]
    settings = json.loads((adapter.adapter.model_dir("slow") / "model-settings.json").read_text())
    assert settings["name"] == "slow"
    assert settings["implementation"] == "mlserver_sklearn.SKLearnModel"
    await slow
    assert scanned(adapter.repo) == []
    assert sorted(p.name for p in (adapter.repo / LOADED_DIR).iterdir()) == sorted(
        adapter.adapter.loaded_marker(m).name for m in ["slow", *(f"held-{i}" for i in range(5))]
    )
    for model_id in ["slow", *(f"held-{i}" for i in range(5))]:
        await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId=model_id))
    assert files_left(adapter.repo) == []


async def test_an_unload_does_not_wait_behind_another_models_load(
    adapter: AdapterHandle, iris: IrisModels, triton: triton_aio.InferenceServerClient
) -> None:
    """Work is serialised per model: while a load of one model holds its lock (here for as long as the test
    likes), an unload of another goes through. (MLServer itself runs a load's unpickling on its event loop,
    so a slow model there still delays whatever MLServer answers meanwhile.)"""
    await adapter.stub.loadModel(load_req("quick", iris.dir_model))
    async with adapter.adapter._locked("slow-elsewhere"):
        await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId="quick"), timeout=20)
    assert not await model_ready(triton, "quick")


async def test_loads_of_different_models_are_sent_at_once(
    adapter: AdapterHandle, tmp_path: Path, triton: triton_aio.InferenceServerClient
) -> None:
    status = await adapter.stub.runtimeStatus(pb.RuntimeStatusRequest())
    assert status.maxLoadingConcurrency == 2
    path = pausing_model(tmp_path / "slow", seconds=1.0, megabytes=40)
    pid = adapter.adapter.config.runtime_pid
    assert pid is not None
    rss_before = process_tree_rss(pid)
    loads = [adapter.stub.loadModel(load_req(f"together-{i}", path)) for i in range(2)]

    async def both_in_progress() -> bool:
        return all(adapter.adapter.model_dir(f"together-{i}").exists() for i in range(2)) or any(
            load.done() for load in loads
        )

    await eventually(both_in_progress)
    assert not any(load.done() for load in loads), "one load finished before the other was sent"
    sizes = [(await load).sizeInBytes for load in loads]
    grown = process_tree_rss(pid) - rss_before
    # Each is its share of the RSS growth while both loaded, plus MLServer's cost per model: together what
    # both took, not the growth twice (a before/after window per load would count the other's as well).
    overheads = 2 * adapter.adapter.config.model_overhead_bytes
    assert all(size > 10 << 20 for size in sizes)
    assert 0.8 * grown <= sum(sizes) - overheads <= 1.1 * grown
    for i in range(2):
        assert await model_ready(triton, f"together-{i}")
        await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId=f"together-{i}"))


async def test_a_tiny_models_size_includes_mlservers_cost_per_model(
    adapter: AdapterHandle, iris: IrisModels
) -> None:
    response = await adapter.stub.loadModel(load_req("tiny", iris.dir_model))
    try:
        # ~1 KB of files and a load whose RSS delta is often 0: MLServer's cost per model still counts
        assert response.sizeInBytes >= adapter.adapter.config.model_overhead_bytes
        assert response.sizeInBytes > 4 * files_size(iris.dir_model)
    finally:
        await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId="tiny"))
