"""The Triton adapter against a real tritonserver (python backend; ONNX via onnxruntime), over real gRPC."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from prometheus_client import CollectorRegistry
from tritonclient.grpc import aio as triton_aio
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc
from tritonclient.utils import InferenceServerException

from harness.cluster import MotoServer
from harness.triton import (
    TritonAdapterProcess,
    TritonProcess,
    triton_installed,
    triton_python,
)
from protos import model_runtime_pb2 as pb
from protos import model_runtime_pb2_grpc as pb_grpc
from runtime_adapters.triton.adapter import MARKER_FILE, TritonAdapter, TritonAdapterConfig, stub_model_dir

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not triton_installed(), reason="needs .triton/bin/tritonserver: run deploy/local/setup-triton.sh"
    ),
]

MB = 1 << 20

ADD_ONE_CONFIG = """
name: "not-the-id"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

ADD_ONE_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (x + 1).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""

FAILING_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("this model refuses to start")

    def execute(self, requests):
        return []
"""

SLOW_MODEL = """
import time

class TritonPythonModel:
    def initialize(self, args):
        time.sleep(3)

    def execute(self, requests):
        return []
"""

# Y = X * 2 over float[batch, 3], built with the `onnx` package of the Triton runtime's environment.
MAKE_ONNX = """
import sys
import onnx
from onnx import TensorProto, helper

x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3])
y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3])
two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
graph = helper.make_graph([helper.make_node("Mul", ["X", "two"], ["Y"])], "double", [x], [y], [two])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, sys.argv[1])
"""

# A Triton onnxruntime-style config with batching: the wrapper keeps it; auto-complete adds nothing.
BATCHED_ONNX_CONFIG = """
name: "orig"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    """Poll ``check`` until it is true or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.05)


@dataclass
class Models:
    add_one: Path  # python-backend model directory
    failing: Path  # python-backend model whose initialize() raises
    slow: Path  # python-backend model that takes 3 s to initialize
    onnx_file: Path  # a bare .onnx file
    onnx_dir: Path  # <dir>/config.pbtxt (onnxruntime, batched) + <dir>/1/model.onnx
    no_model_py: Path  # config.pbtxt without a version folder


def python_model(root: Path, source: str, config: str = ADD_ONE_CONFIG) -> Path:
    (root / "1").mkdir(parents=True)
    (root / "config.pbtxt").write_text(config)
    (root / "1" / "model.py").write_text(source)
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    base = tmp_path_factory.mktemp("triton-models")
    onnx_file = base / "double.onnx"
    subprocess.run([str(triton_python()), "-c", MAKE_ONNX, str(onnx_file)], check=True, timeout=120)
    onnx_dir = base / "double-batched"
    (onnx_dir / "1").mkdir(parents=True)
    (onnx_dir / "1" / "model.onnx").write_bytes(onnx_file.read_bytes())
    (onnx_dir / "config.pbtxt").write_text(BATCHED_ONNX_CONFIG)
    no_model_py = base / "no-model-py"
    no_model_py.mkdir()
    (no_model_py / "config.pbtxt").write_text(ADD_ONE_CONFIG)
    return Models(
        add_one=python_model(base / "add-one", ADD_ONE_MODEL),
        failing=python_model(base / "failing", FAILING_MODEL),
        slow=python_model(base / "slow", SLOW_MODEL),
        onnx_file=onnx_file,
        onnx_dir=onnx_dir,
        no_model_py=no_model_py,
    )


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    work = tmp_path_factory.mktemp("triton")
    with TritonProcess.start(work / "repo", work) as proc:
        yield proc


@pytest.fixture(scope="module")
async def client(triton: TritonProcess) -> AsyncIterator[triton_aio.InferenceServerClient]:
    c = triton_aio.InferenceServerClient(triton.grpc_address)
    yield c
    await c.close()


@dataclass
class AdapterHandle:
    adapter: TritonAdapter
    stub: pb_grpc.ModelRuntimeStub
    registry: CollectorRegistry
    repo: Path


async def start_adapter(triton: TritonProcess) -> tuple[AdapterHandle, Callable[[], Awaitable[None]]]:
    registry = CollectorRegistry()
    config = TritonAdapterConfig(
        triton_grpc_address=triton.grpc_address,
        repository_dir=triton.repository_dir,
        triton_pid=triton.pid,
        capacity_bytes=512 * MB,
        load_timeout_ms=60_000,
    )
    adapter = TritonAdapter(config, registry=registry)
    server = grpc.aio.server()
    pb_grpc.add_ModelRuntimeServicer_to_server(adapter, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

    async def stop() -> None:
        await channel.close()
        await server.stop(grace=None)
        await adapter.close()

    return AdapterHandle(adapter, pb_grpc.ModelRuntimeStub(channel), registry, triton.repository_dir), stop


@pytest.fixture
async def adapter(triton: TritonProcess) -> AsyncIterator[AdapterHandle]:
    handle, stop = await start_adapter(triton)
    try:
        # Start every test from an empty runtime, whatever an earlier (failed) test left behind.
        status = await handle.stub.runtimeStatus(pb.RuntimeStatusRequest())
        assert status.status == pb.RuntimeStatusResponse.READY
        yield handle
    finally:
        await stop()


def stubs_of(triton: TritonProcess, model_id: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.Process(triton.pid).children(recursive=True):
        try:
            model_dir = stub_model_dir(proc.cmdline())
        except psutil.Error:
            continue
        if model_dir is not None and model_dir.name == model_id:
            found.append(proc)
    return found


async def loaded_in_triton(triton: TritonProcess) -> dict[str, str]:
    async with grpc.aio.insecure_channel(triton.grpc_address) as channel:
        index = await v2_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(v2.RepositoryIndexRequest())
    return {m.name: m.state for m in index.models if m.state in ("READY", "LOADING", "UNLOADING")}


async def infer_fp32(
    client: triton_aio.InferenceServerClient, model: str, name: str, out: str, x: np.ndarray
) -> np.ndarray:
    from tritonclient.grpc import InferInput

    tensor = InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = await client.infer(model, [tensor])
    array = result.as_numpy(out)
    assert array is not None
    return array


def load_request(model_id: str, path: Path, type_: str = "python") -> pb.LoadModelRequest:
    return pb.LoadModelRequest(modelId=model_id, modelType=type_, modelPath=str(path))


# ---- load / infer / unload ------------------------------------------------------------------------------


async def test_python_model_load_infer_unload(
    adapter: AdapterHandle, triton: TritonProcess, client: triton_aio.InferenceServerClient, models: Models
) -> None:
    model_id = "add-one:v1"
    reply = await adapter.stub.loadModel(load_request(model_id, models.add_one, "Triton-Python"))
    stubs = stubs_of(triton, model_id)
    assert len(stubs) == 1
    rss = stubs[0].memory_info().rss
    print(f"python model stub RSS {rss / MB:.1f} MiB, reported size {reply.sizeInBytes / MB:.1f} MiB")
    assert reply.sizeInBytes > 10 * MB
    assert 0.5 * rss < reply.sizeInBytes < 2 * rss
    sized = await adapter.stub.modelSize(pb.ModelSizeRequest(modelId=model_id))
    assert sized.sizeInBytes == reply.sizeInBytes
    folder = adapter.repo / model_id
    assert 'name: "add-one:v1"' in (folder / "config.pbtxt").read_text()

    x = np.array([1.0, 2.5, -3.0], dtype=np.float32)
    np.testing.assert_allclose(await infer_fp32(client, model_id, "INPUT0", "OUTPUT0", x), x + 1)

    await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId=model_id))
    # unloadModel returns only once the stub has exited: the memory is back at once, no polling needed.
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in stubs)
    assert not stubs_of(triton, model_id)
    assert not folder.exists()
    assert model_id not in await loaded_in_triton(triton)
    # Triton 2.51 answers NOT_FOUND for a model it does not (or no longer) serve.
    with pytest.raises(InferenceServerException) as excinfo:
        await infer_fp32(client, model_id, "INPUT0", "OUTPUT0", x)
    assert excinfo.value.status() == "StatusCode.NOT_FOUND"

    # Loads again right after the unload.
    await adapter.stub.loadModel(load_request(model_id, models.add_one))
    np.testing.assert_allclose(await infer_fp32(client, model_id, "INPUT0", "OUTPUT0", x), x + 1)
    await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId=model_id))


async def test_onnx_file_model(
    adapter: AdapterHandle, triton: TritonProcess, client: triton_aio.InferenceServerClient, models: Models
) -> None:
    model_id = "double"
    reply = await adapter.stub.loadModel(load_request(model_id, models.onnx_file, "ONNX"))
    rss = sum(p.memory_info().rss for p in stubs_of(triton, model_id))
    print(f"onnx model stub RSS {rss / MB:.1f} MiB, reported size {reply.sizeInBytes / MB:.1f} MiB")
    assert reply.sizeInBytes > 10 * MB

    # Inputs and outputs came from the ONNX graph through auto-complete.
    metadata = await client.get_model_metadata(model_id)
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("X", "FP32", [-1, 3])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [("Y", "FP32", [-1, 3])]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(await infer_fp32(client, model_id, "X", "Y", x), x * 2)

    await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId=model_id))
    assert not stubs_of(triton, model_id)
    assert not (adapter.repo / model_id).exists()


async def test_onnx_dir_with_batched_onnxruntime_config(
    adapter: AdapterHandle, triton: TritonProcess, client: triton_aio.InferenceServerClient, models: Models
) -> None:
    model_id = "double-batched"
    await adapter.stub.loadModel(load_request(model_id, models.onnx_dir, "onnx"))
    config = (await client.get_model_config(model_id)).config
    assert (config.backend, config.max_batch_size) == ("python", 8)
    x = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.float32)
    np.testing.assert_allclose(await infer_fp32(client, model_id, "X", "Y", x), x * 2)
    await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId=model_id))
    assert not stubs_of(triton, model_id)


async def test_two_models_have_their_own_stubs(
    adapter: AdapterHandle, triton: TritonProcess, models: Models
) -> None:
    await asyncio.gather(
        adapter.stub.loadModel(load_request("a", models.add_one)),
        adapter.stub.loadModel(load_request("b", models.onnx_file, "onnx")),
    )
    assert len(stubs_of(triton, "a")) == 1 and len(stubs_of(triton, "b")) == 1
    await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId="a"))
    assert not stubs_of(triton, "a")
    assert len(stubs_of(triton, "b")) == 1  # untouched
    assert set(await loaded_in_triton(triton)) == {"b"}
    await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId="b"))


# ---- errors ---------------------------------------------------------------------------------------------


async def test_unknown_unload_is_ok(adapter: AdapterHandle) -> None:
    await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId="never-loaded"))
    await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId="not a valid triton name"))


@pytest.mark.parametrize(
    ("model_id", "type_", "path_name", "message"),
    [
        ("m", "python", "missing", "does not exist"),
        ("m", "sklearn", "add_one", "unsupported model type"),
        ("has space", "python", "add_one", "not a valid Triton model name"),
        ("", "python", "add_one", "empty"),
        ("m", "python", "no_model_py", "model.py"),
        ("m", "python", "onnx_file", "directory"),
        ("m", "onnx", "add_one", "no model.onnx"),
    ],
)
async def test_bad_requests_are_invalid_argument(
    adapter: AdapterHandle,
    models: Models,
    tmp_path: Path,
    model_id: str,
    type_: str,
    path_name: str,
    message: str,
) -> None:
    path = tmp_path / "does-not-exist" if path_name == "missing" else getattr(models, path_name)
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await adapter.stub.loadModel(load_request(model_id, path, type_))
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (excinfo.value.details() or "")
    assert not (adapter.repo / model_id).exists() or not model_id


async def test_failing_model_is_internal_and_leaves_nothing(
    adapter: AdapterHandle, triton: TritonProcess, models: Models
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await adapter.stub.loadModel(load_request("failing", models.failing))
    assert excinfo.value.code() == grpc.StatusCode.INTERNAL
    assert "this model refuses to start" in (excinfo.value.details() or "")
    assert not stubs_of(triton, "failing")
    assert not (adapter.repo / "failing").exists()
    assert "failing" not in await loaded_in_triton(triton)


async def test_operator_folder_is_not_overwritten(adapter: AdapterHandle, models: Models) -> None:
    theirs = adapter.repo / "operator-model"
    theirs.mkdir()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await adapter.stub.loadModel(load_request("operator-model", models.add_one))
        assert excinfo.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert theirs.is_dir()
    finally:
        theirs.rmdir()


async def test_cancelled_load_then_unload_does_not_leak(
    adapter: AdapterHandle, triton: TritonProcess, models: Models
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await adapter.stub.loadModel(load_request("slow", models.slow), timeout=0.5)
    assert excinfo.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The mesh unloads at once; the adapter waits for the load in flight, then undoes it.
    await adapter.stub.unloadModel(pb.UnloadModelRequest(modelId="slow"))
    assert not stubs_of(triton, "slow")
    assert not (adapter.repo / "slow").exists()
    assert "slow" not in await loaded_in_triton(triton)


# ---- runtimeStatus --------------------------------------------------------------------------------------


async def test_runtime_status_purges_a_previous_adapters_models(
    triton: TritonProcess, client: triton_aio.InferenceServerClient, models: Models
) -> None:
    earlier, stop_earlier = await start_adapter(triton)
    try:
        await earlier.stub.loadModel(load_request("leftover", models.add_one))
        assert (earlier.repo / "leftover" / MARKER_FILE).is_file()
    finally:
        await stop_earlier()  # an adapter (and its mesh) went away without unloading
    assert len(stubs_of(triton, "leftover")) == 1
    theirs = triton.repository_dir / "operator-folder"
    theirs.mkdir()

    later, stop_later = await start_adapter(triton)
    try:
        status = await later.stub.runtimeStatus(pb.RuntimeStatusRequest())
        assert status.status == pb.RuntimeStatusResponse.READY
        assert status.capacityInBytes == 512 * MB
        assert status.runtimeVersion.startswith("triton-2.")
        assert status.numericRuntimeVersion >= 2_000_000
        assert status.maxLoadingConcurrency >= 1
        assert list(status.methodInfos["inference.GRPCInferenceService/ModelInfer"].idInjectionPath) == [1]
        assert list(status.methodInfos["inference.GRPCInferenceService/ModelMetadata"].idInjectionPath) == [1]
        # READY means purged: nothing loaded, no stub left, our folder gone, the operator's kept.
        assert await loaded_in_triton(triton) == {}
        assert not stubs_of(triton, "leftover")
        assert not (triton.repository_dir / "leftover").exists()
        assert theirs.is_dir()
    finally:
        theirs.rmdir()
        await stop_later()


async def test_cli_adapter_process(tmp_path: Path, triton: TritonProcess, models: Models) -> None:
    with TritonAdapterProcess.start(tmp_path, triton, capacity_bytes=256 * MB) as proc:
        assert "adapter listening on 127.0.0.1:" in proc.process.log_tail()
        async with grpc.aio.insecure_channel(proc.address) as channel:
            stub = pb_grpc.ModelRuntimeStub(channel)
            status = await stub.runtimeStatus(pb.RuntimeStatusRequest(), timeout=30)
            assert status.status == pb.RuntimeStatusResponse.READY
            assert status.capacityInBytes == 256 * MB
            reply = await stub.loadModel(load_request("cli-model", models.onnx_file, "onnx"), timeout=60)
            assert reply.sizeInBytes > 10 * MB
            assert proc.metric("modelmesh_adapter_load_requests_total", 'result="success"') == 1
            assert proc.metric("modelmesh_adapter_loaded_models") == 1
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.loadModel(load_request("cli-bad", tmp_path / "nope"), timeout=60)
            assert proc.metric("modelmesh_adapter_load_requests_total", 'result="failure"') == 1
            await stub.unloadModel(pb.UnloadModelRequest(modelId="cli-model"), timeout=60)
            assert proc.metric("modelmesh_adapter_unload_requests_total") == 1
            assert proc.metric("modelmesh_adapter_loaded_models") == 0
            assert not stubs_of(triton, "cli-model")


async def test_models_from_s3_through_the_cli_adapter(
    tmp_path: Path, triton: TritonProcess, client: triton_aio.InferenceServerClient, models: Models
) -> None:
    """s3:// paths (moto_server): a python model folder and a bare .onnx file, downloaded once each."""
    moto = MotoServer.start(tmp_path)
    try:
        credentials = moto.create_user()
        s3 = moto.client(credentials)
        s3.create_bucket(Bucket="models")
        for file in models.add_one.rglob("*"):
            if file.is_file():
                s3.upload_file(str(file), "models", f"add-one/{file.relative_to(models.add_one)}")
        s3.upload_file(str(models.onnx_file), "models", "onnx/double.onnx")
        config = tmp_path / "storage.json"
        config.write_text(json.dumps({"local-s3": moto.storage_entry(credentials, "models")}))
        args = [f"--storage-config={config}"]
        with TritonAdapterProcess.start(tmp_path, triton, 256 * MB, extra_args=args) as proc:
            async with grpc.aio.insecure_channel(proc.address) as channel:
                stub = pb_grpc.ModelRuntimeStub(channel)
                assert (await stub.runtimeStatus(pb.RuntimeStatusRequest(), timeout=30)).status == 1
                for _ in range(2):  # the second round loads from the cache
                    for model_id, path, type_ in [
                        ("s3-add-one", "s3://models/add-one", "python"),
                        ("s3-double", "s3://models/onnx/double.onnx", "onnx"),
                    ]:
                        request = pb.LoadModelRequest(
                            modelId=model_id, modelType=type_, modelPath=path, modelKey="local-s3"
                        )
                        await stub.loadModel(request, timeout=60)
                    x = np.ones(3, dtype=np.float32)
                    np.testing.assert_allclose(
                        await infer_fp32(client, "s3-add-one", "INPUT0", "OUTPUT0", x), x + 1
                    )
                    x2 = np.ones((1, 3), dtype=np.float32)
                    np.testing.assert_allclose(await infer_fp32(client, "s3-double", "X", "Y", x2), x2 * 2)
                    for model_id in ("s3-add-one", "s3-double"):
                        await stub.unloadModel(pb.UnloadModelRequest(modelId=model_id), timeout=60)
                assert proc.metric("modelmesh_adapter_downloads_total") == 2
                missing = pb.LoadModelRequest(
                    modelId="s3-missing", modelType="onnx", modelPath="s3://models/nope", modelKey="local-s3"
                )
                with pytest.raises(grpc.aio.AioRpcError) as excinfo:
                    await stub.loadModel(missing, timeout=60)
                assert excinfo.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        moto.process.stop()


def test_triton_process_stop_takes_its_stubs(tmp_path: Path, models: Models) -> None:
    """Stopping a TritonProcess stops its whole process group, stub processes included."""
    with TritonProcess.start(tmp_path / "repo", tmp_path) as server:
        target = server.repository_dir / "m"
        shutil.copytree(models.add_one, target)
        (target / "config.pbtxt").write_text(ADD_ONE_CONFIG.replace('name: "not-the-id"', ""))
        with grpc.insecure_channel(server.grpc_address) as channel:
            v2_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(
                v2.RepositoryModelLoadRequest(model_name="m"), timeout=60
            )
        children = psutil.Process(server.pid).children(recursive=True)
        assert children
    _gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive
