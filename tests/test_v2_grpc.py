"""The KServe v2 gRPC surface through the mesh, with tritonclient: ModelStreamInfer to Triton
python-backend models, through the pod that holds them and through a pod that forwards (an MLServer pod: it
cannot load python models), a decoupled model answering one request with several responses, the model named
by header; ModelConfig and ModelStatistics as Triton answers them, RepositoryIndex from the mesh's registry,
reflection; methods a runtime lacks refused by name; and the holder dying mid-stream (last: it kills the
Triton pod)."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc
from tritonclient.utils import InferenceServerException

from harness.cluster import LocalMesh, PodProcess
from harness.demo import ADD_ONE_CONFIG, ADD_ONE_MODEL
from harness.triton import triton_installed
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.support import train_iris

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not triton_installed(), reason="needs .triton (deploy/local/setup-triton.sh)"),
]

REPEATS = 3
DECOUPLED_CONFIG = """name: "repeat"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: True }
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""
DECOUPLED_MODEL = f"""import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            sender = request.get_response_sender()
            for i in range({REPEATS}):
                out = pb_utils.Tensor("OUTPUT0", (x + i).astype(np.float32))
                sender.send(pb_utils.InferenceResponse([out]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


@dataclass
class StreamMesh:
    mesh: LocalMesh
    holder: PodProcess  # the Triton pod
    forwarder: PodProcess  # an MLServer pod: forwards python models to the holder


def python_model(directory: Path, config: str, code: str) -> Path:
    (directory / "1").mkdir(parents=True, exist_ok=True)
    (directory / "config.pbtxt").write_text(config)
    (directory / "1" / "model.py").write_text(code)
    return directory


FRONTS = {
    "h2": ["--front=h2"],  # streams relayed frame by frame to the pod's grpc.aio server
    "grpc": ["--front=grpc"],
    "grpc-workers": ["--front=grpc", "--serving-processes=2"],  # a worker relays streams to the main process
}


@pytest.fixture(scope="module", params=list(FRONTS))
def stream_mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StreamMesh]:
    work = tmp_path_factory.mktemp(f"streams-{request.param}")
    models = {
        "add-one": (python_model(work / "add-one", ADD_ONE_CONFIG, ADD_ONE_MODEL), "python"),
        "repeat": (python_model(work / "repeat", DECOUPLED_CONFIG, DECOUPLED_MODEL), "python"),
        "iris": (train_iris(work / "iris", "logistic").path, "sklearn"),
        "never-used": (python_model(work / "never-used", ADD_ONE_CONFIG, ADD_ONE_MODEL), "python"),
    }
    with LocalMesh(work / "mesh", pods=1, triton_pods=1, pod_args=FRONTS[request.param]) as mesh:
        forwarder, holder = (stack.pod for stack in mesh.stacks)
        assert forwarder is not None and holder is not None
        with grpc.insecure_channel(forwarder.address) as channel:
            stub = mm_grpc.ModelMeshStub(channel)
            for model_id, (path, type_) in models.items():
                info = mm.ModelInfo(type=type_, path=str(path))
                stub.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info), timeout=30)
        yield StreamMesh(mesh, holder, forwarder)


def tensor(values: list[float]) -> triton.InferInput:
    t = triton.InferInput("INPUT0", [len(values)], "FP32")
    t.set_data_from_numpy(np.array(values, dtype=np.float32))
    return t


def stream(
    address: str, requests: list[tuple[str, list[float]]], answers: int, headers: dict[str, str] | None = None
) -> list[tuple[str, list[float]] | Exception]:
    """Send ``requests`` (model, input) on one stream; collect ``answers`` results (or errors) in order."""
    got: queue.Queue[tuple[str, list[float]] | Exception] = queue.Queue()

    def on_result(result: triton.InferResult | None, error: InferenceServerException | None) -> None:
        if error is not None:
            got.put(error)
        else:
            assert result is not None
            out = result.as_numpy("OUTPUT0")
            got.put((result.get_response().model_name, [float(v) for v in np.asarray(out).ravel()]))

    client = triton.InferenceServerClient(address)
    client.start_stream(callback=on_result, headers=headers, stream_timeout=60)
    try:
        for i, (model, values) in enumerate(requests):
            client.async_stream_infer(model, [tensor(values)], request_id=str(i))
        results = []
        for _ in range(answers):
            result = got.get(timeout=60)
            results.append(result)
            if isinstance(result, Exception):
                break
        return results
    finally:
        client.stop_stream()
        client.close()


@pytest.mark.parametrize("through", ["holder", "forwarder"])
def test_a_stream_of_requests_is_answered_in_order(stream_mesh: StreamMesh, through: str) -> None:
    pod = stream_mesh.holder if through == "holder" else stream_mesh.forwarder
    requests = [("add-one", [float(i), float(i) + 0.5]) for i in range(20)]
    results = stream(pod.address, requests, len(requests))
    assert results == [("add-one", [i + 1.0, i + 1.5]) for i in range(20)]


@pytest.mark.parametrize("through", ["holder", "forwarder"])
def test_a_decoupled_model_answers_one_request_with_several_responses(
    stream_mesh: StreamMesh, through: str
) -> None:
    pod = stream_mesh.holder if through == "holder" else stream_mesh.forwarder
    results = stream(pod.address, [("repeat", [10.0]), ("repeat", [20.0])], 2 * REPEATS)
    assert sorted(results, key=str) == sorted(
        [("repeat", [10.0 + i]) for i in range(REPEATS)] + [("repeat", [20.0 + i]) for i in range(REPEATS)],
        key=str,
    )


def test_the_model_header_names_the_model_of_every_message(stream_mesh: StreamMesh) -> None:
    results = stream(
        stream_mesh.forwarder.address,
        [("not-a-model", [1.0]), ("neither", [2.0])],
        2,
        {"mm-model-id": "add-one"},
    )
    assert results == [("add-one", [2.0]), ("add-one", [3.0])]  # field 1 rewritten: Triton answered add-one


def test_an_unknown_model_ends_the_stream_with_not_found(stream_mesh: StreamMesh) -> None:
    [result] = stream(stream_mesh.forwarder.address, [("no-such-model", [1.0])], 1)
    assert isinstance(result, InferenceServerException)
    assert "StatusCode.NOT_FOUND" in str(result.status()) and "no-such-model" in str(result)


def test_a_runtime_without_streams_is_refused_by_name(stream_mesh: StreamMesh) -> None:
    """The iris model lives on the MLServer pod, whose adapter does not offer ModelStreamInfer."""
    [result] = stream(stream_mesh.holder.address, [("iris", [1.0])], 1)
    assert isinstance(result, InferenceServerException)
    assert "StatusCode.UNIMPLEMENTED" in str(result.status())
    assert "ModelStreamInfer is not served by the runtime mlserver" in str(result)


def test_model_config_is_tritons_own_through_the_mesh(stream_mesh: StreamMesh) -> None:
    triton_pod = stream_mesh.mesh.stacks[1]
    with (
        triton.InferenceServerClient(stream_mesh.forwarder.address) as through,
        triton.InferenceServerClient(triton_pod.runtime.grpc_address) as direct,
    ):
        config = through.get_model_config("add-one", as_json=True)  # loads it, as perf_analyzer needs
        assert config == direct.get_model_config("add-one", as_json=True)
        assert config["config"]["name"] == "add-one" and config["config"]["backend"] == "python"


def test_a_runtime_without_model_config_is_refused_by_name(stream_mesh: StreamMesh) -> None:
    with (
        triton.InferenceServerClient(stream_mesh.holder.address) as client,
        pytest.raises(InferenceServerException) as refused,
    ):
        client.get_model_config("iris")
    assert "StatusCode.UNIMPLEMENTED" in str(refused.value.status())
    assert "ModelConfig is not served by the runtime mlserver" in str(refused.value)


def test_model_statistics_count_and_a_model_never_loaded_gets_zeros_without_a_load(
    stream_mesh: StreamMesh,
) -> None:
    with triton.InferenceServerClient(stream_mesh.forwarder.address) as client:
        client.infer("add-one", [tensor([1.0])])
        stats = client.get_inference_statistics("add-one", as_json=True)["model_stats"]
        assert [s["name"] for s in stats] == ["add-one"]
        assert int(stats[0]["inference_stats"]["success"]["count"]) >= 1
        idle = client.get_inference_statistics("never-used", as_json=True)["model_stats"]
        assert [(s["name"], int(s.get("inference_count", 0))) for s in idle] == [("never-used", 0)]
    with grpc.insecure_channel(stream_mesh.forwarder.address) as channel:
        status = mm_grpc.ModelMeshStub(channel).getModelStatus(mm.GetStatusRequest(modelId="never-used"))
    assert status.status == mm.ModelStatusInfo.NOT_LOADED  # asking for statistics loaded nothing


def test_statistics_naming_no_model_are_the_pods_runtimes_own(stream_mesh: StreamMesh) -> None:
    """perf_analyzer asks for every model's statistics: a pod answers with its runtime's (Triton keeps
    them; MLServer does not, so its pod answers with none)."""
    with triton.InferenceServerClient(stream_mesh.holder.address) as client:
        client.infer("add-one", [tensor([1.0])])
        names = {s["name"] for s in client.get_inference_statistics(as_json=True)["model_stats"]}
    assert "add-one" in names
    with triton.InferenceServerClient(stream_mesh.forwarder.address) as client:
        assert client.get_inference_statistics(as_json=True).get("model_stats", []) == []


def test_the_repository_index_is_the_meshs_registry(stream_mesh: StreamMesh) -> None:
    with triton.InferenceServerClient(stream_mesh.forwarder.address) as client:
        client.infer("add-one", [tensor([1.0])])
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert set(index) == {"add-one", "repeat", "iris", "never-used"}
    assert index["add-one"]["state"] == "READY"
    assert (index["never-used"]["state"], index["never-used"]["reason"]) == ("UNAVAILABLE", "not loaded")
    with grpc.insecure_channel(stream_mesh.holder.address) as channel:
        ready = v2_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
            v2.RepositoryIndexRequest(ready=True)
        )
    assert "add-one" in {m.name for m in ready.models}
    assert all(m.state == "READY" for m in ready.models) and "never-used" not in {
        m.name for m in ready.models
    }


def test_reflection_lists_the_inference_service(stream_mesh: StreamMesh) -> None:
    with grpc.insecure_channel(stream_mesh.forwarder.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = {s.name for answer in answers for s in answer.list_services_response.service}
    assert {"inference.GRPCInferenceService", "mmesh.ModelMesh", "grpc.health.v1.Health"} <= services


def test_the_holder_dying_mid_stream_ends_it_with_unavailable(stream_mesh: StreamMesh) -> None:
    """Last in the module: it kills the Triton pod."""
    got: queue.Queue[triton.InferResult | InferenceServerException] = queue.Queue()
    client = triton.InferenceServerClient(stream_mesh.forwarder.address)
    client.start_stream(callback=lambda result, error: got.put(error if error is not None else result))
    try:
        client.async_stream_infer("add-one", [tensor([1.0])])
        first = got.get(timeout=60)
        assert not isinstance(first, InferenceServerException)
        stream_mesh.holder.process.kill()
        ended = got.get(timeout=60)
        assert isinstance(ended, InferenceServerException)
        assert "StatusCode.UNAVAILABLE" in str(ended.status())
        assert "went away mid-stream" in str(ended)
    finally:
        client.stop_stream()
        client.close()
