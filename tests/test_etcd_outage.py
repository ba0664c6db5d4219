"""etcd down: loaded models keep serving, management calls fail fast with UNAVAILABLE, all resumes after."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest

from mesh.devcluster import LocalMesh
from protos import model_mesh_pb2 as mm
from tests.conftest import Examples, MeshClients, open_clients
from tests.support import poll_until, predict

pytestmark = pytest.mark.integration
S = mm.ModelStatusInfo.ModelStatus


@pytest.fixture(scope="module")
def outage_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshClients]:
    with LocalMesh(tmp_path_factory.mktemp("outage")) as mesh:
        clients = open_clients(mesh)
        yield clients
        clients.channel.close()


def test_inference_survives_an_etcd_outage(outage_mesh: MeshClients, examples: Examples) -> None:
    mesh = outage_mesh
    assert mesh.mesh.etcd is not None
    mesh.register("outage-iris", examples.logistic.path)
    expected = list(predict(mesh.infer, "outage-iris"))
    mesh.mesh.etcd.stop()
    try:
        deadline = time.monotonic() + 8  # longer than the pod's 5 s lease
        while time.monotonic() < deadline:
            assert list(predict(mesh.infer, "outage-iris")) == expected
        with pytest.raises(grpc.RpcError) as e:
            mesh.register("outage-new", examples.tree.path)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "etcd" in (e.value.details() or "")
    finally:
        mesh.mesh.etcd.resume()
    poll_until(
        lambda: _registered(mesh, "outage-new", examples), timeout_s=30, what="registration works again"
    )
    assert list(predict(mesh.infer, "outage-new")) == list(examples.tree.expected)
    assert list(predict(mesh.infer, "outage-iris")) == expected
    # the pod's instance record comes back on a new lease

    from tests.test_mesh_pod import instance_records

    poll_until(
        lambda: mesh.mesh.pod.pod_id in asyncio.run(instance_records(mesh.mesh)),
        what="instance re-registered",
    )  # type: ignore[union-attr]


def _registered(mesh: MeshClients, model_id: str, examples: Examples) -> bool:
    try:
        mesh.register(model_id, examples.tree.path)
        return True
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return False
