"""etcd down for 10 s: loaded models keep serving (also through a pod that forwards), management calls
fail fast with UNAVAILABLE, and everything resumes by itself when etcd returns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest
from tritonclient.utils import InferenceServerException

from harness.cluster import LocalMesh
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.conftest import Examples, MeshClients, instance_records, open_clients
from tests.support import Traffic, poll_until, predict

pytestmark = pytest.mark.integration
S = mm.ModelStatusInfo.ModelStatus
OUTAGE_S = 10  # twice the pods' 5 s lease TTL


@pytest.fixture(scope="module")
def outage_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshClients]:
    with LocalMesh(tmp_path_factory.mktemp("outage"), pods=2) as mesh:
        poll_until(lambda: len(asyncio.run(instance_records(mesh))) == 2, what="both pods registered")
        clients = open_clients(mesh)  # pod-a
        yield clients
        clients.channel.close()


def _registered(mesh: MeshClients, model_id: str, examples: Examples) -> bool:
    try:
        mesh.register(model_id, examples.tree.path)
        return True
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return False


def test_inference_survives_an_etcd_outage(outage_mesh: MeshClients, examples: Examples) -> None:
    mesh = outage_mesh
    etcd = mesh.mesh.etcd
    assert etcd is not None
    status = mesh.register("outage-iris", examples.logistic.path, loadNow=True, sync=True)
    mesh.register("outage-cold", examples.tree.path)  # registered, not loaded
    (holder,) = [c.location for c in status.modelCopyInfos]
    forwarder = next(s for s in mesh.mesh.stacks if s.pod_id != holder)
    expected = tuple(int(v) for v in examples.logistic.expected)
    with Traffic(forwarder.pod.address, "outage-iris", threads=2) as traffic:  # type: ignore[union-attr]
        poll_until(lambda: traffic.outcomes["ok"] > 10, what="traffic flows")
        etcd.stop()
        try:
            outage_ends = time.monotonic() + OUTAGE_S
            with pytest.raises(grpc.RpcError) as e:
                mesh.register("outage-new", examples.tree.path)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "etcd" in (e.value.details() or "")
            with pytest.raises(InferenceServerException) as failed:  # a load needs etcd: it fails cleanly
                predict(mesh.infer, "outage-cold")
            assert failed.value.status() == "StatusCode.UNAVAILABLE"
            served = traffic.outcomes["ok"]
            poll_until(lambda: time.monotonic() > outage_ends, timeout_s=OUTAGE_S + 5, what="the outage")
            assert traffic.outcomes["ok"] > served  # requests kept being served during the outage
        finally:
            etcd.resume()
    assert set(traffic.outcomes) == {"ok"}, traffic.outcomes
    assert set(traffic.answers) == {expected}
    poll_until(
        lambda: _registered(mesh, "outage-new", examples), timeout_s=30, what="registration works again"
    )
    assert list(predict(mesh.infer, "outage-new")) == list(examples.tree.expected)
    poll_until(lambda: len(asyncio.run(instance_records(mesh.mesh))) == 2, what="both pods registered again")
    # every pod's watch is back: each one's view has the model registered after the outage
    for stack in mesh.mesh.stacks:
        with grpc.insecure_channel(stack.pod.address) as channel:  # type: ignore[union-attr]
            status = mm_grpc.ModelMeshStub(channel).getModelStatus

            def seen(status: object = status) -> bool:
                return status(mm.GetStatusRequest(modelId="outage-new")).status != S.NOT_FOUND  # type: ignore[operator]

            poll_until(seen, timeout_s=15, what=f"{stack.pod_id}'s view catches up")


def test_a_runtime_killed_under_its_pod_costs_a_reload_elsewhere(
    outage_mesh: MeshClients, examples: Examples
) -> None:
    mesh = outage_mesh
    status = mesh.register("runtime-victim", examples.tree.path, loadNow=True, sync=True)
    (holder,) = [c.location for c in status.modelCopyInfos]
    other = next(s for s in mesh.mesh.stacks if s.pod_id != holder)
    expected = tuple(int(v) for v in examples.tree.expected)
    with Traffic(other.pod.address, "runtime-victim", threads=2) as traffic:  # type: ignore[union-attr]
        poll_until(lambda: traffic.outcomes["ok"] > 10, what="traffic flows")
        mesh.mesh.stack(holder).mlserver.process.kill()  # the runtime dies; its pod and adapter live on
        served = traffic.outcomes["ok"]
        poll_until(lambda: traffic.outcomes["ok"] > served + 50, timeout_s=30, what="served again")
    assert set(traffic.outcomes) == {"ok"}, traffic.outcomes
    assert set(traffic.answers) == {expected}
    poll_until(
        lambda: (
            [c.location for c in mesh.status("runtime-victim").modelCopyInfos if c.copyStatus == S.LOADED]
            == [other.pod_id]
        ),
        what="the dead runtime's copy leaves the registry",
    )
    # the dead runtime's pod says so, and takes loads again once its runtime is back
    instances = asyncio.run(instance_records(mesh.mesh))
    assert instances[holder][0].runtime_ready is False
    mesh.mesh.stack(holder).mlserver.restart()
    poll_until(lambda: asyncio.run(instance_records(mesh.mesh))[holder][0].runtime_ready, what="runtime back")
