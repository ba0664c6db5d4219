"""Three pods, each with its own MLServer and adapter, sharing one etcd: any pod serves any model."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import aetcd
import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from harness.cluster import LocalMesh
from mesh.registry.records import ModelRecord
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.conftest import Examples, instance_records
from tests.support import IRIS_X, Traffic, iris_input, poll_until, predict

pytestmark = pytest.mark.integration
S = mm.ModelStatusInfo.ModelStatus
V = mm.VModelStatusInfo.VModelStatus
LOADS = "modelmesh_adapter_load_requests_total"


@dataclass
class Cluster:
    mesh: LocalMesh
    channels: dict[str, grpc.Channel]

    def management(self, pod_id: str) -> mm_grpc.ModelMeshStub:
        return mm_grpc.ModelMeshStub(self.channels[pod_id])

    def infer(self, pod_id: str) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(self.mesh.stack(pod_id).pod.address)  # type: ignore[union-attr]

    def register(
        self, pod_id: str, model_id: str, path: object, type_: str = "sklearn"
    ) -> mm.ModelStatusInfo:
        info = mm.ModelInfo(type=type_, path=str(path))
        return self.management(pod_id).registerModel(
            mm.RegisterModelRequest(modelId=model_id, modelInfo=info)
        )

    def status(self, model_id: str, via: str = "pod-a") -> mm.ModelStatusInfo:
        return self.management(via).getModelStatus(mm.GetStatusRequest(modelId=model_id))

    def loads(self, result: str = "success", pods: list[str] | None = None) -> float:
        stacks = [s for s in self.mesh.stacks if pods is None or s.pod_id in pods]
        return sum(s.adapter.metric(LOADS, f'result="{result}"') for s in stacks)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with LocalMesh(tmp_path_factory.mktemp("three"), pods=3) as mesh:
        channels = {s.pod_id: grpc.insecure_channel(s.pod.address) for s in mesh.stacks}  # type: ignore[union-attr]
        poll_until(lambda: len(asyncio.run(instance_records(mesh))) == 3, what="three instance records")
        yield Cluster(mesh, channels)
        for channel in channels.values():
            channel.close()


PODS = ["pod-a", "pod-b", "pod-c"]


async def registry_record(mesh: LocalMesh, model_id: str) -> ModelRecord:
    assert mesh.etcd is not None
    async with aetcd.Client(port=mesh.etcd.client_port) as client:
        got = await client.get(f"mm/modelmesh-serving/registry/{model_id}".encode())
    assert got is not None
    return ModelRecord.from_json(got.value)


async def leader_of(mesh: LocalMesh) -> str | None:
    assert mesh.etcd is not None
    async with aetcd.Client(port=mesh.etcd.client_port) as client:
        got = await client.get(b"mm/modelmesh-serving/leader")
    return got.value.decode() if got is not None else None


def test_registered_through_one_pod_served_through_all_loaded_once(
    cluster: Cluster, examples: Examples
) -> None:
    before = cluster.loads()
    cluster.register("pod-a", "shared-iris", examples.logistic.path)
    for pod in ("pod-b", "pod-c", "pod-a"):
        assert list(predict(cluster.infer(pod), "shared-iris")) == list(examples.logistic.expected)
    assert cluster.loads() == before + 1
    status = cluster.status("shared-iris", via="pod-c")
    assert status.status == S.LOADED
    assert len(status.modelCopyInfos) == 1 and status.modelCopyInfos[0].location in PODS


async def test_concurrent_first_requests_through_every_pod_load_once(
    cluster: Cluster, examples: Examples
) -> None:
    cluster.register("pod-b", "burst-everywhere", examples.tree.path)
    before = cluster.loads()
    clients = [triton_aio.InferenceServerClient(s.pod.address) for s in cluster.mesh.stacks]  # type: ignore[union-attr]
    try:
        results = await asyncio.gather(
            *(client.infer("burst-everywhere", [iris_input()]) for client in clients for _ in range(8))
        )
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    for result in results:
        assert list(np.asarray(result.as_numpy("predict")).ravel()) == list(examples.tree.expected)
    assert cluster.loads() == before + 1


def test_a_type_no_pod_serves_is_a_clear_error(cluster: Cluster, examples: Examples) -> None:
    cluster.register("pod-a", "onnx-nowhere", examples.logistic.path, type_="onnx")
    with pytest.raises(InferenceServerException) as e:
        predict(cluster.infer("pod-b"), "onnx-nowhere")
    assert e.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert "onnx" in str(e.value.message())
    status = cluster.status("onnx-nowhere", via="pod-c")
    assert status.status == S.LOADING_FAILED
    assert "onnx" in status.errors[0]
    # an autoscaler sees it: the pool reports a model it could not place
    rest = cluster.mesh.stack("pod-a").pod.rest_address  # type: ignore[union-attr]

    def pools() -> dict[str, dict[str, int]]:
        with urllib.request.urlopen(f"http://{rest}/mesh/pools", timeout=10) as reply:
            return json.loads(reply.read())  # type: ignore[no-any-return]

    poll_until(lambda: pools()["default"]["unplaced_models"] >= 1, what="the pool reports the unplaced model")
    default = pools()["default"]
    assert default["pods"] == 3
    assert default["capacity_bytes"] == 3 * cluster.mesh.capacity_bytes


def test_a_failing_load_is_tried_on_other_pods_then_stops(cluster: Cluster, examples: Examples) -> None:
    cluster.register("pod-a", "broken-everywhere", examples.corrupt)
    failures = cluster.loads("failure")
    with pytest.raises(InferenceServerException) as e:
        predict(cluster.infer("pod-a"), "broken-everywhere")
    assert e.value.status() == "StatusCode.INTERNAL"
    assert cluster.loads("failure") == failures + 3  # one try on each pod (MM_MAX_LOAD_FAILURES = 3)
    status = cluster.status("broken-everywhere")
    assert status.status == S.LOADING_FAILED
    assert sorted(c.location for c in status.modelCopyInfos) == PODS
    assert all(c.copyStatus == S.LOADING_FAILED for c in status.modelCopyInfos)
    # three unexpired failures: no pod tries again until they expire
    with pytest.raises(InferenceServerException):
        predict(cluster.infer("pod-b"), "broken-everywhere")
    assert cluster.loads("failure") == failures + 3


def test_vmodel_transition_under_traffic_switches_with_no_failed_request(
    cluster: Cluster, examples: Examples
) -> None:
    management = cluster.management("pod-a")
    info = mm.ModelInfo(type="sklearn", path=str(examples.logistic.path))
    management.setVModel(
        mm.SetVModelRequest(vModelId="live", targetModelId="live-v1", modelInfo=info, loadNow=True, sync=True)
    )
    old, new = tuple(examples.logistic.expected), tuple(examples.flipped.expected)
    assert old != new
    with Traffic(cluster.mesh.stack("pod-c").pod.address, "live", threads=2) as traffic:  # type: ignore[union-attr]
        poll_until(lambda: len(traffic.answers) > 20, what="traffic on the old model")
        info = mm.ModelInfo(type="sklearn", path=str(examples.flipped.path))
        reply = management.setVModel(
            mm.SetVModelRequest(vModelId="live", targetModelId="live-v2", modelInfo=info)
        )
        assert reply.status in (V.TRANSITIONING, V.DEFINED)
        poll_until(
            lambda: (
                cluster.management("pod-b").getVModelStatus(mm.GetVModelStatusRequest(vModelId="live")).status
                == V.DEFINED
            ),
            what="the transition completes",
        )
        seen = len(traffic.answers)
        poll_until(lambda: len(traffic.answers) > seen + 20, what="traffic on the new model")
    assert set(traffic.outcomes) == {"ok"}, traffic.outcomes
    assert set(traffic.answers) == {old, new}
    switch = traffic.answers.index(new)
    assert new in traffic.answers[-5:] and old not in traffic.answers[switch + 10 :]  # switched, and stayed


def test_rest_requests_are_forwarded_between_pods_too(cluster: Cluster, examples: Examples) -> None:
    cluster.register("pod-a", "rest-shared", examples.flipped.path, type_="sklearn")
    predict(cluster.infer("pod-a"), "rest-shared")  # loaded on one pod
    body = json.dumps(
        {
            "inputs": [
                {"name": "input-0", "shape": [3, 4], "datatype": "FP32", "data": IRIS_X.ravel().tolist()}
            ]
        }
    ).encode()
    for stack in cluster.mesh.stacks:
        assert stack.pod is not None
        request = urllib.request.Request(
            f"http://{stack.pod.rest_address}/v2/models/rest-shared/infer",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            answer = json.loads(reply.read())
        assert answer["model_name"] == "rest-shared"
        assert [int(v) for v in answer["outputs"][0]["data"]] == list(examples.flipped.expected)
    # the public port does not take the internal header at its word: names are still resolved
    request = urllib.request.Request(
        f"http://{cluster.mesh.stacks[0].pod.rest_address}/v2/models/not-registered/infer",  # type: ignore[union-attr]
        data=body,
        headers={"Content-Type": "application/json", "mm-internal-model": "rest-shared"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=30)
    assert e.value.code == 404


def test_a_killed_pod_costs_one_reload(cluster: Cluster, examples: Examples) -> None:
    cluster.register("pod-a", "survivor", examples.tree.path)
    predict(cluster.infer("pod-a"), "survivor")
    holder = cluster.status("survivor").modelCopyInfos[0].location
    others = [p for p in PODS if p != holder]
    victim = cluster.mesh.stack(holder)
    # the whole pod dies at once: mesh, adapter and runtime (SIGKILL, no goodbye)
    victim.pod.process.kill()  # type: ignore[union-attr]
    victim.adapter.process.kill()
    victim.mlserver.process.kill()
    before = cluster.loads(pods=others)
    assert list(predict(cluster.infer(others[0]), "survivor")) == list(examples.tree.expected)
    assert list(predict(cluster.infer(others[1]), "survivor")) == list(examples.tree.expected)
    assert cluster.loads(pods=others) == before + 1
    # once its lease expires the dead pod is gone from every view, and the leader prunes its entries
    poll_until(lambda: holder not in asyncio.run(instance_records(cluster.mesh)), what="the lease expires")
    poll_until(
        lambda: holder not in asyncio.run(registry_record(cluster.mesh, "survivor")).holders,
        what="the leader prunes the dead pod from the record",
    )
    leader = asyncio.run(leader_of(cluster.mesh))
    assert leader in others
