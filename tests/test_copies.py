"""Copies by request rate on three pods: a hot model gets a second copy, traffic spreads, idle copies go,
and killing a holder under traffic loses no request."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from harness.cluster import LocalMesh
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.conftest import Examples, instance_records
from tests.support import Traffic, poll_until

pytestmark = pytest.mark.integration
S = mm.ModelStatusInfo.ModelStatus
# Low threshold and short intervals so a test's traffic makes a model hot within seconds.
POD_ARGS = ["--scaleup-rpm-threshold=120", "--rate-interval-s=1"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with LocalMesh(tmp_path_factory.mktemp("copies"), pods=3, pod_args=POD_ARGS) as local:
        poll_until(lambda: len(asyncio.run(instance_records(local))) == 3, what="three instance records")
        yield local


def any_pod(mesh: LocalMesh) -> str:
    """The address of a pod that is still running."""
    return next(s.pod.address for s in mesh.stacks if s.pod and s.pod.process.alive())


def status(mesh: LocalMesh, model_id: str) -> mm.ModelStatusInfo:
    with grpc.insecure_channel(any_pod(mesh)) as channel:
        return mm_grpc.ModelMeshStub(channel).getModelStatus(mm.GetStatusRequest(modelId=model_id))


def holders(mesh: LocalMesh, model_id: str) -> set[str]:
    return {c.location for c in status(mesh, model_id).modelCopyInfos if c.copyStatus == S.LOADED}


def register_and_load(mesh: LocalMesh, model_id: str, examples: Examples) -> str:
    """Register, load, and return the one pod that holds it."""
    with grpc.insecure_channel(any_pod(mesh)) as channel:
        info = mm.ModelInfo(type="sklearn", path=str(examples.tree.path))
        request = mm.RegisterModelRequest(modelId=model_id, modelInfo=info, loadNow=True, sync=True)
        assert mm_grpc.ModelMeshStub(channel).registerModel(request).status == S.LOADED
    (holder,) = holders(mesh, model_id)
    return holder


def entry_pod(mesh: LocalMesh, model_id: str) -> str:
    """A pod that does not hold the model: its requests are forwarded, so they can spread."""
    held = holders(mesh, model_id)
    return next(s.pod_id for s in mesh.stacks if s.pod and s.pod.process.alive() and s.pod_id not in held)


def rpm(mesh: LocalMesh, pod_id: str) -> int:
    return asyncio.run(instance_records(mesh))[pod_id][0].requests_per_min


def test_a_hot_model_gets_a_copy_traffic_spreads_and_idle_copies_go(
    mesh: LocalMesh, examples: Examples
) -> None:
    first = register_and_load(mesh, "hot", examples)
    entry = entry_pod(mesh, "hot")
    with Traffic(mesh.stack(entry).pod.address, "hot") as traffic:  # type: ignore[union-attr]
        poll_until(lambda: len(holders(mesh, "hot")) >= 2, timeout_s=30, what="a second copy")
        added = next(iter(holders(mesh, "hot") - {first}))
        # the new copy serves part of the traffic (its pod reports a request rate of its own)
        poll_until(lambda: rpm(mesh, added) > 0, timeout_s=15, what="traffic reaches the new copy")
    assert traffic.outcomes["ok"] > 0 and set(traffic.outcomes) == {"ok"}
    # no traffic: the extra copies go after a quiet window; the first copy stays
    poll_until(lambda: holders(mesh, "hot") == {first}, timeout_s=30, what="idle copies dropped")


def test_killing_a_holder_of_a_two_copy_model_under_traffic_loses_nothing(
    mesh: LocalMesh, examples: Examples
) -> None:
    register_and_load(mesh, "resilient", examples)
    entry = entry_pod(mesh, "resilient")
    with Traffic(mesh.stack(entry).pod.address, "resilient") as traffic:  # type: ignore[union-attr]
        poll_until(lambda: len(holders(mesh, "resilient")) >= 2, timeout_s=30, what="a second copy")
        victim = next(p for p in sorted(holders(mesh, "resilient")) if p != entry)
        served_before = traffic.outcomes["ok"]
        stack = mesh.stack(victim)
        stack.pod.process.kill()  # type: ignore[union-attr]
        stack.adapter.process.kill()
        stack.mlserver.process.kill()
        poll_until(lambda: traffic.outcomes["ok"] > served_before + 50, timeout_s=30, what="traffic goes on")
    assert set(traffic.outcomes) == {"ok"}, traffic.outcomes


def test_graceful_removal_under_traffic_loses_nothing(mesh: LocalMesh, examples: Examples) -> None:
    holder = register_and_load(mesh, "moving", examples)
    alive = [s.pod_id for s in mesh.stacks if s.pod and s.pod.process.alive()]
    entry = next(p for p in alive if p != holder)
    with Traffic(mesh.stack(entry).pod.address, "moving") as traffic:  # type: ignore[union-attr]
        poll_until(lambda: traffic.outcomes["ok"] > 20, what="traffic flows")
        leaving = mesh.stack(holder)
        leaving.pod.process.stop()  # type: ignore[union-attr]  # SIGTERM: hand over, drain, exit
        leaving.adapter.process.stop()
        leaving.mlserver.stop()
        served = traffic.outcomes["ok"]
        poll_until(lambda: traffic.outcomes["ok"] > served + 50, timeout_s=30, what="traffic goes on")
    assert set(traffic.outcomes) == {"ok"}, traffic.outcomes
    assert holder not in holders(mesh, "moving") and holders(mesh, "moving")
    assert holder not in asyncio.run(instance_records(mesh))


def test_a_pod_added_to_the_pool_takes_new_loads(mesh: LocalMesh, examples: Examples) -> None:
    mesh.add_pod("pod-d")
    poll_until(lambda: "pod-d" in asyncio.run(instance_records(mesh)), what="the new pod registers")
    # the others already hold models; the empty newcomer is the preferred target
    assert register_and_load(mesh, "fresh", examples) == "pod-d"
