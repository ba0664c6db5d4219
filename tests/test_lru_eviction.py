"""Per-pod LRU in bytes against the real runtime: capacity for two models, three in use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.cluster import LocalMesh
from protos import model_mesh_pb2 as mm
from tests.conftest import Examples, MeshClients, open_clients
from tests.support import predict
from tests.test_mesh_pod import runtime_holds

pytestmark = pytest.mark.integration
S = mm.ModelStatusInfo.ModelStatus
MIB = 1024 * 1024
# Every model is charged at least 200 MiB (iris models measure far less), so 500 MiB holds exactly two.
MODEL_FLOOR = 200 * MIB


@pytest.fixture(scope="module")
def two_model_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshClients]:
    mesh = LocalMesh(
        tmp_path_factory.mktemp("lru"),
        capacity_bytes=500 * MIB,
        min_model_size_bytes=MODEL_FLOOR,
        pod_args=["--eviction-policy=lru"],  # the default is gdsf
    )
    with mesh:
        clients = open_clients(mesh)
        yield clients
        clients.channel.close()


def held(clients: MeshClients) -> set[str]:
    return {m for m in ("m-a", "m-b", "m-c") if runtime_holds(clients, m)}


def test_least_recently_used_model_is_unloaded_and_comes_back(
    two_model_mesh: MeshClients, examples: Examples
) -> None:
    mesh = two_model_mesh
    for model_id in ("m-a", "m-b", "m-c"):
        mesh.register(model_id, examples.logistic.path)
    predict(mesh.infer, "m-a")
    predict(mesh.infer, "m-b")
    predict(mesh.infer, "m-a")  # b is now the least recently used
    assert held(mesh) == {"m-a", "m-b"}
    predict(mesh.infer, "m-c")
    assert held(mesh) == {"m-a", "m-c"}
    assert mesh.status("m-b").status == S.NOT_LOADED
    assert mesh.status("m-c").status == S.LOADED

    loads = mesh.loads()
    predictions = mesh.mesh.adapter.metric("modelmesh_adapter_size_predictions_total")
    assert predictions >= 3  # each model's first load asked for one
    assert list(predict(mesh.infer, "m-b")) == list(examples.logistic.expected)  # reloaded and served
    assert mesh.loads() == loads + 1
    # its first load's measured size is in its registry record: the reload asked for no prediction
    assert mesh.mesh.adapter.metric("modelmesh_adapter_size_predictions_total") == predictions
    assert held(mesh) == {"m-b", "m-c"}  # a was least recently used this time
    assert mesh.status("m-a").status == S.NOT_LOADED


def test_a_backdated_registration_does_not_push_out_models_in_use(
    two_model_mesh: MeshClients, examples: Examples
) -> None:
    mesh = two_model_mesh
    predict(mesh.infer, "m-b")
    predict(mesh.infer, "m-c")  # the pod is full of models used just now
    reply = mesh.register("m-late", examples.tree.path, loadNow=True, sync=True)  # last use backdated 1 h
    assert reply.status == S.NOT_LOADED
    assert "used more recently" in reply.errors[0]
    assert held(mesh) == {"m-b", "m-c"}
    assert list(predict(mesh.infer, "m-late")) == list(examples.tree.expected)  # a real request does load it


@pytest.fixture(scope="module")
def gdsf_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshClients]:
    mesh = LocalMesh(
        tmp_path_factory.mktemp("gdsf"),
        capacity_bytes=500 * MIB,
        min_model_size_bytes=MODEL_FLOOR,
        pod_args=["--eviction-policy=gdsf"],
    )
    with mesh:
        clients = open_clients(mesh)
        yield clients
        clients.channel.close()


def test_gdsf_pods_keep_the_model_used_most(gdsf_mesh: MeshClients, examples: Examples) -> None:
    mesh = gdsf_mesh
    for model_id in ("m-a", "m-b", "m-c"):
        mesh.register(model_id, examples.logistic.path)
    for _ in range(3):
        predict(mesh.infer, "m-a")
    predict(mesh.infer, "m-b")  # b is the most recent, a the most used (same sizes)
    predict(mesh.infer, "m-c")
    assert held(mesh) == {"m-a", "m-c"}  # LRU would have unloaded m-a
