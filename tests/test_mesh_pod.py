"""One mesh pod end to end: real etcd, real MLServer, the real adapter, tritonclient and grpcio stubs."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as v2
from tritonclient.utils import InferenceServerException

from mesh.models.cache import default_unload_buffer
from protos import model_mesh_pb2 as mm
from runtime_adapters.mlserver.adapter import DEFAULT_MAX_LOADING_CONCURRENCY, MLServerAdapterConfig
from tests.conftest import Examples, MeshClients, instance_records
from tests.support import iris_input, poll_until, predict, train_boosted

pytestmark = pytest.mark.integration
S = mm.ModelStatusInfo.ModelStatus


def raw_infer(
    clients: MeshClients, body: bytes, metadata: list[tuple[str, str | bytes]] | None = None
) -> bytes:
    call = clients.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    return call(body, metadata=metadata, timeout=30)  # type: ignore[no-any-return]


def infer_request(model_name: str) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=model_name)
    tensor = request.inputs.add(name="input-0", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([5.1, 3.5, 1.4, 0.2])
    return request


def runtime_holds(clients: MeshClients, model_id: str) -> bool:
    """Ask MLServer itself, not the mesh."""
    assert clients.mesh.mlserver is not None
    runtime = triton.InferenceServerClient(clients.mesh.mlserver.grpc_address)
    try:
        return bool(runtime.is_model_ready(model_id))
    except InferenceServerException:  # MLServer answers UNKNOWN for a model it does not hold
        return False


def test_register_then_infer_returns_the_models_predictions(
    local_mesh: MeshClients, examples: Examples
) -> None:
    status = local_mesh.register("iris-logistic", examples.logistic.path)
    assert status.status == S.NOT_LOADED
    assert list(predict(local_mesh.infer, "iris-logistic")) == list(examples.logistic.expected)
    local_mesh.register("iris-tree", examples.tree.path)
    assert list(predict(local_mesh.infer, "iris-tree")) == list(examples.tree.expected)
    status = local_mesh.status("iris-logistic")
    assert status.status == S.LOADED
    assert [c.location for c in status.modelCopyInfos] == [local_mesh.mesh.pod.pod_id]  # type: ignore[union-attr]


def test_header_selects_the_model_and_response_names_the_concrete_id(
    local_mesh: MeshClients, examples: Examples
) -> None:
    local_mesh.register("iris-by-header", examples.tree.path)
    result = local_mesh.infer.infer("some-alias", [iris_input()], headers={"mm-model-id": "iris-by-header"})
    assert result.get_response().model_name == "iris-by-header"
    assert list(np.asarray(result.as_numpy("predict")).ravel()) == list(examples.tree.expected)
    # field 1 is rewritten even when the client put something else there
    reply = v2.ModelInferResponse.FromString(
        raw_infer(
            local_mesh, infer_request("ignored").SerializeToString(), [("mm-model-id", "iris-by-header")]
        )
    )
    assert reply.model_name == "iris-by-header"
    reply = v2.ModelInferResponse.FromString(
        raw_infer(
            local_mesh, infer_request("ignored").SerializeToString(), [("mm-model-id-bin", b"iris-by-header")]
        )
    )
    assert reply.model_name == "iris-by-header"


def test_unknown_model_is_not_found(local_mesh: MeshClients) -> None:
    with pytest.raises(InferenceServerException) as e:
        predict(local_mesh.infer, "no-such-model")
    assert e.value.status() == "StatusCode.NOT_FOUND"
    assert "model not found" in str(e.value.message())
    with pytest.raises(grpc.RpcError) as rpc:
        raw_infer(local_mesh, infer_request("x").SerializeToString(), [("mm-vmodel-id", "no-such-vmodel")])
    assert rpc.value.code() == grpc.StatusCode.NOT_FOUND
    assert "vmodel not found" in (rpc.value.details() or "")


@pytest.mark.parametrize(
    "body,metadata,message",
    [
        (v2.ModelInferRequest(id="no-name").SerializeToString(), [], "no model id"),
        (infer_request("m").SerializeToString(), [("mm-model-id", "a"), ("mm-vmodel-id", "b")], "both"),
        (infer_request("m").SerializeToString(), [("mm-model-id", "")], "empty mm-model-id"),
        (b"\x0a\x50truncated", [], "unreadable"),
    ],
)
def test_bad_model_ids_are_invalid_argument(
    local_mesh: MeshClients, body: bytes, metadata: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(grpc.RpcError) as e:
        raw_infer(local_mesh, body, metadata)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (e.value.details() or "")


def test_register_validation_and_idempotence(local_mesh: MeshClients, examples: Examples) -> None:
    for model_id, type_ in (("", "sklearn"), ("no-type", "")):
        with pytest.raises(grpc.RpcError) as e:
            local_mesh.register(model_id, examples.logistic.path, type_=type_)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    local_mesh.register("iris-twice", examples.logistic.path)
    assert local_mesh.register("iris-twice", examples.logistic.path).status == S.NOT_LOADED  # same info: OK
    with pytest.raises(grpc.RpcError) as e:
        local_mesh.register("iris-twice", examples.tree.path)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as e:
        local_mesh.register("iris-twice", examples.logistic.path, type_="xgboost")
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert local_mesh.status("never-registered").status == S.NOT_FOUND  # a status, not an error


def test_unregister_unloads_from_the_runtime(local_mesh: MeshClients, examples: Examples) -> None:
    local_mesh.register("iris-doomed", examples.logistic.path)
    predict(local_mesh.infer, "iris-doomed")
    assert runtime_holds(local_mesh, "iris-doomed")
    local_mesh.management.unregisterModel(mm.UnregisterModelRequest(modelId="iris-doomed"))
    assert local_mesh.status("iris-doomed").status == S.NOT_FOUND
    poll_until(lambda: not runtime_holds(local_mesh, "iris-doomed"), what="MLServer unloads iris-doomed")
    with pytest.raises(InferenceServerException) as e:
        predict(local_mesh.infer, "iris-doomed")
    assert e.value.status() == "StatusCode.NOT_FOUND"
    # unknown id: a no-op
    local_mesh.management.unregisterModel(mm.UnregisterModelRequest(modelId="iris-doomed"))


async def test_burst_of_first_requests_loads_once(local_mesh: MeshClients, examples: Examples) -> None:
    local_mesh.register("iris-burst", examples.tree.path)
    before = local_mesh.loads()
    client = triton_aio.InferenceServerClient(local_mesh.mesh.pod.address)  # type: ignore[union-attr]
    try:
        results = await asyncio.gather(*(client.infer("iris-burst", [iris_input()]) for _ in range(20)))
    finally:
        await client.close()
    for result in results:
        assert list(np.asarray(result.as_numpy("predict")).ravel()) == list(examples.tree.expected)
    assert local_mesh.loads() - before == 1


def test_failed_loads_are_reported_and_the_pod_keeps_serving(
    local_mesh: MeshClients, examples: Examples
) -> None:
    local_mesh.register("iris-good", examples.logistic.path)
    local_mesh.register("iris-missing", examples.missing)
    local_mesh.register("iris-corrupt", examples.corrupt)

    with pytest.raises(InferenceServerException) as e:
        predict(local_mesh.infer, "iris-missing")
    assert e.value.status() == "StatusCode.FAILED_PRECONDITION"  # the model's definition is wrong
    assert str(examples.missing) in str(e.value.message())
    missing = local_mesh.status("iris-missing")
    assert missing.status == S.LOADING_FAILED
    assert str(examples.missing) in missing.errors[0]
    assert [c.copyStatus for c in missing.modelCopyInfos] == [S.LOADING_FAILED]

    with pytest.raises(InferenceServerException) as e:
        predict(local_mesh.infer, "iris-corrupt")
    assert e.value.status() == "StatusCode.INTERNAL"
    corrupt = local_mesh.status("iris-corrupt")
    assert corrupt.status == S.LOADING_FAILED
    assert "MLServer failed to load" in corrupt.errors[0]

    # the failure is remembered: a retry does not hammer the runtime until it expires
    before = local_mesh.loads()
    with pytest.raises(InferenceServerException):
        predict(local_mesh.infer, "iris-corrupt")
    assert local_mesh.loads() == before
    assert list(predict(local_mesh.infer, "iris-good")) == list(examples.logistic.expected)
    assert not runtime_holds(local_mesh, "iris-corrupt")


def test_ensure_loaded(local_mesh: MeshClients, examples: Examples) -> None:
    with pytest.raises(grpc.RpcError) as e:
        local_mesh.management.ensureLoaded(mm.EnsureLoadedRequest(modelId="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    local_mesh.register("iris-ensure-async", examples.tree.path)
    reply = local_mesh.management.ensureLoaded(mm.EnsureLoadedRequest(modelId="iris-ensure-async"))
    assert reply.status == S.LOADING  # answered at once, before the load is done
    poll_until(lambda: local_mesh.status("iris-ensure-async").status == S.LOADED, what="async load")
    assert runtime_holds(local_mesh, "iris-ensure-async")
    local_mesh.register("iris-ensure-sync", examples.tree.path)
    reply = local_mesh.management.ensureLoaded(mm.EnsureLoadedRequest(modelId="iris-ensure-sync", sync=True))
    assert reply.status == S.LOADED
    assert runtime_holds(local_mesh, "iris-ensure-sync")


def test_register_with_load_now_and_sync(local_mesh: MeshClients, examples: Examples) -> None:
    reply = local_mesh.register("iris-now", examples.logistic.path, loadNow=True, sync=True)
    assert reply.status == S.LOADED
    assert runtime_holds(local_mesh, "iris-now")
    reply = local_mesh.register("iris-now-broken", examples.corrupt, loadNow=True, sync=True)
    assert reply.status == S.LOADING_FAILED and reply.errors


def test_server_level_rpcs_are_answered_by_the_mesh(local_mesh: MeshClients, examples: Examples) -> None:
    client = local_mesh.infer
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "modelmesh-py"
    local_mesh.register("iris-ready-probe", examples.logistic.path)
    before = local_mesh.loads()
    assert client.is_model_ready("iris-ready-probe") is False  # registered, not loaded: and no load
    assert client.is_model_ready("not-registered") is False
    assert local_mesh.loads() == before
    predict(client, "iris-ready-probe")
    assert client.is_model_ready("iris-ready-probe") is True
    health = health_pb2_grpc.HealthStub(local_mesh.channel)
    for service in ("", "mmesh.ModelMesh"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_methods_outside_the_runtimes_method_infos_are_unimplemented(local_mesh: MeshClients) -> None:
    call = local_mesh.channel.unary_unary("/inference.GRPCInferenceService/RepositoryModelLoad")
    with pytest.raises(grpc.RpcError) as e:
        call(v2.RepositoryModelLoadRequest(model_name="x").SerializeToString(), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_oversized_request_is_resource_exhausted(local_mesh: MeshClients) -> None:
    request = infer_request("iris-logistic")
    request.raw_input_contents.append(b"\0" * (17 * 1024 * 1024))
    with pytest.raises(grpc.RpcError) as e:
        raw_infer(local_mesh, request.SerializeToString())
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_model_metadata_is_forwarded_with_the_concrete_id(
    local_mesh: MeshClients, examples: Examples
) -> None:
    local_mesh.register("iris-meta", examples.logistic.path)
    metadata = local_mesh.infer.get_model_metadata("iris-meta")
    assert metadata.name == "iris-meta"


def test_registrations_survive_a_pod_restart(local_mesh: MeshClients, examples: Examples) -> None:
    local_mesh.register("iris-durable", examples.tree.path)
    predict(local_mesh.infer, "iris-durable")
    mesh = local_mesh.mesh
    assert mesh.pod is not None
    mesh.pod.process.stop()
    poll_until(lambda: not runtime_holds(local_mesh, "iris-durable"), what="stopped pod unloads its models")
    assert mesh.pod.pod_id not in asyncio.run(
        instance_records(local_mesh.mesh)
    )  # lease revoked on the way out
    mesh.start_pod(mesh.pod.pod_id)
    local_mesh.reconnect()
    status = local_mesh.status("iris-durable")
    assert status.status == S.NOT_LOADED  # registered; the new process holds nothing yet
    assert list(predict(local_mesh.infer, "iris-durable")) == list(examples.tree.expected)


def test_deadline_passing_during_a_load_leaves_the_load_running(
    local_mesh: MeshClients, examples: Examples
) -> None:
    local_mesh.register("iris-slow", examples.slow.path)
    before = local_mesh.loads()
    with pytest.raises(InferenceServerException) as e:
        predict(local_mesh.infer, "iris-slow", client_timeout=0.02)
    assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    # nobody waits any more, yet the load completes and serves the next request without a second load
    poll_until(lambda: local_mesh.status("iris-slow").status == S.LOADED, what="abandoned load completes")
    assert list(predict(local_mesh.infer, "iris-slow")) == list(examples.slow.expected)
    assert local_mesh.loads() == before + 1


async def test_instance_record_is_published_on_a_lease(local_mesh: MeshClients) -> None:
    mesh = local_mesh.mesh
    assert mesh.pod is not None
    instance, lease = (await instance_records(local_mesh.mesh))[mesh.pod.pod_id]
    assert instance.address == mesh.pod.address
    assert instance.capacity_bytes == mesh.capacity_bytes
    # the unload buffer counts as used (ModelMesh's rule from the adapter's defaults): models fill the rest
    buffer = default_unload_buffer(
        mesh.capacity_bytes, DEFAULT_MAX_LOADING_CONCURRENCY, MLServerAdapterConfig.default_model_size_bytes
    )
    assert 0 < buffer <= instance.used_bytes
    assert lease != 0


def test_unregister_during_a_load_leaves_nothing_loaded(local_mesh: MeshClients, examples: Examples) -> None:
    loads, unloads = local_mesh.loads(), local_mesh.unloads()
    local_mesh.register("iris-fleeting", examples.slow.path)
    local_mesh.management.ensureLoaded(mm.EnsureLoadedRequest(modelId="iris-fleeting"))
    poll_until(
        lambda: [c.copyStatus for c in local_mesh.status("iris-fleeting").modelCopyInfos] == [S.LOADING],
        what="the load reaches the runtime",
    )
    local_mesh.management.unregisterModel(mm.UnregisterModelRequest(modelId="iris-fleeting"))
    assert local_mesh.status("iris-fleeting").status == S.NOT_FOUND
    # the load completes in the runtime after the unregister; the pod then takes the model out again
    poll_until(lambda: local_mesh.loads() == loads + 1, what="the runtime finishes the load")
    poll_until(lambda: local_mesh.unloads() > unloads, what="the pod unloads the unregistered model")
    assert not runtime_holds(local_mesh, "iris-fleeting")


@pytest.mark.parametrize("library", ["xgboost", "lightgbm"])
def test_xgboost_and_lightgbm_models_serve(
    local_mesh: MeshClients, tmp_path_factory: pytest.TempPathFactory, library: str
) -> None:
    model = train_boosted(tmp_path_factory.mktemp(library), library)
    local_mesh.register(f"iris-{library}", model.path, type_=library)
    result = np.asarray(local_mesh.infer.infer(f"iris-{library}", [iris_input()]).as_numpy("predict"))
    labels = (
        result.ravel() if library == "xgboost" else result.argmax(axis=1)
    )  # lightgbm answers probabilities
    assert list(labels) == list(model.expected)


def test_a_single_pod_serves_again_after_its_runtime_restarts(
    local_mesh: MeshClients, examples: Examples
) -> None:
    mesh = local_mesh.mesh
    assert mesh.mlserver is not None
    local_mesh.register("iris-phoenix", examples.tree.path)
    predict(local_mesh.infer, "iris-phoenix")
    mesh.mlserver.process.kill()
    with pytest.raises(InferenceServerException) as e:  # nowhere else to go while the runtime is down
        predict(local_mesh.infer, "iris-phoenix")
    assert e.value.status() == "StatusCode.UNAVAILABLE"
    loads = local_mesh.loads()
    mesh.mlserver.restart()
    poll_until(lambda: _serves(local_mesh, "iris-phoenix"), timeout_s=30, what="served after the restart")
    assert list(predict(local_mesh.infer, "iris-phoenix")) == list(examples.tree.expected)
    assert local_mesh.loads() == loads + 1  # one reload


def _serves(clients: MeshClients, model_id: str) -> bool:
    try:
        predict(clients.infer, model_id)
        return True
    except InferenceServerException:
        return False
