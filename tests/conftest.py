"""Fixtures that start real processes on loopback; every one is stopped even when a test fails."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aetcd
import grpc
import pytest
import tritonclient.grpc as triton

from harness.cluster import EtcdServer, LocalMesh
from mesh.registry.records import InstanceRecord
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.support import ExampleModel, train_iris


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A real etcd of the test's own, on free ports."""
    server = EtcdServer.start(tmp_path)
    try:
        yield server
    finally:
        server.process.stop()


@dataclass(frozen=True)
class Examples:
    logistic: ExampleModel
    tree: ExampleModel
    slow: ExampleModel  # large enough that loading it takes far longer than 20 ms
    flipped: ExampleModel  # predicts other labels than logistic for the same input
    missing: Path
    corrupt: Path


@pytest.fixture(scope="session")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Examples:
    root = tmp_path_factory.mktemp("models")
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.joblib").write_bytes(b"\x80\x04 this is not a joblib file" * 10)
    return Examples(
        logistic=train_iris(root / "logistic", "logistic"),
        tree=train_iris(root / "tree", "tree"),
        slow=train_iris(root / "slow", "neighbours"),
        flipped=train_iris(root / "flipped", "flipped"),
        missing=root / "does-not-exist",
        corrupt=corrupt,
    )


@dataclass
class MeshClients:
    mesh: LocalMesh
    management: mm_grpc.ModelMeshStub
    infer: triton.InferenceServerClient
    channel: grpc.Channel

    def register(
        self, model_id: str, path: Path, type_: str = "sklearn", **kwargs: object
    ) -> mm.ModelStatusInfo:
        request = mm.RegisterModelRequest(
            modelId=model_id,
            modelInfo=mm.ModelInfo(type=type_, path=str(path)),
            **kwargs,  # type: ignore[arg-type]
        )
        return self.management.registerModel(request)

    def status(self, model_id: str) -> mm.ModelStatusInfo:
        return self.management.getModelStatus(mm.GetStatusRequest(modelId=model_id))

    def loads(self) -> float:
        assert self.mesh.adapter is not None
        return self.mesh.adapter.metric("modelmesh_adapter_load_requests_total", 'result="success"')

    def unloads(self) -> float:
        assert self.mesh.adapter is not None
        return self.mesh.adapter.metric("modelmesh_adapter_unload_requests_total")

    def reconnect(self) -> None:
        assert self.mesh.pod is not None
        self.channel.close()
        self.channel = grpc.insecure_channel(self.mesh.pod.address)
        self.management = mm_grpc.ModelMeshStub(self.channel)
        self.infer = triton.InferenceServerClient(self.mesh.pod.address)


async def instance_records(mesh: LocalMesh) -> dict[str, tuple[InstanceRecord, int]]:
    """The instance records in etcd, with the lease each is attached to."""
    assert mesh.etcd is not None
    prefix = b"mm/modelmesh-serving/instances/"
    async with aetcd.Client(port=mesh.etcd.client_port) as client:
        found = await client.get_prefix(prefix)
    return {kv.key[len(prefix) :].decode(): (InstanceRecord.from_json(kv.value), kv.lease) for kv in found}


def open_clients(mesh: LocalMesh) -> MeshClients:
    assert mesh.pod is not None
    channel = grpc.insecure_channel(mesh.pod.address)
    return MeshClients(
        mesh, mm_grpc.ModelMeshStub(channel), triton.InferenceServerClient(mesh.pod.address), channel
    )


@pytest.fixture(scope="module")
def local_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshClients]:
    """etcd + MLServer + adapter + one pod with room for many models."""
    with LocalMesh(tmp_path_factory.mktemp("mesh")) as mesh:
        clients = open_clients(mesh)
        yield clients
        clients.channel.close()
