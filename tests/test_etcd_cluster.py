"""A 3-pod mesh on a real 3-member etcd cluster: members killed under load, the raft leader among them.

Clients keep inferring and registering through all three pods meanwhile; every call must succeed and every
registration must be there afterwards, seen alike by every pod.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from tritonclient.grpc import service_pb2 as v2

from harness.cluster import EtcdCluster, EtcdMember, PodProcess
from load_tests.echo_runtime import INFER_METHOD, MODEL_TYPE
from load_tests.hop import infer_request
from load_tests.processes import EchoProcess, start_echo_pod
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.support import poll_until

pytestmark = pytest.mark.integration


@dataclass
class ClusterMesh:
    etcd: EtcdCluster
    pods: list[PodProcess]


@pytest.fixture(scope="module")
def cluster_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterMesh]:
    root = tmp_path_factory.mktemp("etcd-cluster")
    with contextlib.ExitStack() as stack:
        etcd = EtcdCluster.start(root / "etcd")
        stack.callback(etcd.stop)
        pods = []
        for name in ("a", "b", "c"):
            echo = EchoProcess.start(root / f"echo-{name}", f"echo-{name}")
            stack.callback(echo.stop)
            pod = start_echo_pod(root / name, etcd, echo, f"pod-{name}")
            stack.callback(pod.process.stop)
            pods.append(pod)
        with grpc.insecure_channel(pods[0].address) as channel:
            for i in range(3):
                register(mm_grpc.ModelMeshStub(channel), f"warm-{i}", load=True)
        yield ClusterMesh(etcd, pods)


def register(stub: mm_grpc.ModelMeshStub, model_id: str, load: bool = False) -> None:
    stub.registerModel(
        mm.RegisterModelRequest(
            modelId=model_id,
            modelInfo=mm.ModelInfo(type=MODEL_TYPE, path="size=1000"),
            loadNow=load,
            sync=load,
        ),
        timeout=30,
    )


@dataclass
class Traffic:
    """Inference and registrations through every pod, on threads, until stopped."""

    pods: list[PodProcess]
    inferred: int = 0
    registered: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _loop(self, work: Callable[[grpc.Channel, int], None], pod: PodProcess) -> None:
        with grpc.insecure_channel(pod.address) as channel:
            for n in itertools.count():
                if self._stop.is_set():
                    return
                try:
                    work(channel, n)
                except grpc.RpcError as e:
                    self.failures.append(f"{pod.pod_id}: {e.code().name}: {e.details()}")

    def _infer(self, channel: grpc.Channel, n: int) -> None:
        model_id = f"warm-{n % 3}"
        answer = channel.unary_unary(INFER_METHOD)(infer_request(model_id), timeout=20)
        assert v2.ModelInferResponse.FromString(answer).model_name == model_id
        self.inferred += 1

    def _register(self, pod: PodProcess) -> Callable[[grpc.Channel, int], None]:
        def work(channel: grpc.Channel, n: int) -> None:
            model_id = f"{pod.pod_id}-model-{n}"
            register(mm_grpc.ModelMeshStub(channel), model_id)
            self.registered.append(model_id)

        return work

    def start(self) -> Traffic:
        for pod in self.pods:
            for work in (self._infer, self._register(pod)):
                thread = threading.Thread(target=self._loop, args=(work, pod), daemon=True)
                thread.start()
                self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def survives(mesh: ClusterMesh, kill: Callable[[], EtcdMember]) -> EtcdMember:
    """Kill a member while traffic runs; traffic goes on; returns the member killed."""
    traffic = Traffic(mesh.pods).start()
    try:
        poll_until(lambda: len(traffic.registered) >= 10 and traffic.inferred >= 50, what="traffic flowing")
        member = kill()
        before = len(traffic.registered), traffic.inferred
        poll_until(
            lambda: len(traffic.registered) >= before[0] + 30 and traffic.inferred >= before[1] + 100,
            timeout_s=60,
            what="registrations and inference go on without the member",
        )
    finally:
        traffic.stop()
    assert not traffic.failures, traffic.failures[:5]
    for pod in mesh.pods:  # nothing lost: every pod sees every registration
        with grpc.insecure_channel(pod.address) as channel:
            stub = mm_grpc.ModelMeshStub(channel)
            missing = [
                m
                for m in traffic.registered
                if stub.getModelStatus(mm.GetStatusRequest(modelId=m), timeout=10).status
                == mm.ModelStatusInfo.NOT_FOUND
            ]
        assert not missing, (pod.pod_id, missing[:5])
    return member


def test_a_follower_member_killed_under_load(cluster_mesh: ClusterMesh) -> None:
    etcd = cluster_mesh.etcd
    leader = etcd.leader()

    def kill_a_follower() -> EtcdMember:
        follower = next(m for m in etcd.members if m is not leader)
        follower.process.kill()
        return follower

    killed = survives(cluster_mesh, kill_a_follower)
    etcd.resume(killed)  # back for the next test: three members again


def test_the_leader_member_killed_under_load(cluster_mesh: ClusterMesh) -> None:
    etcd = cluster_mesh.etcd
    poll_until(lambda: all(etcd.healthy(m) for m in etcd.members), what="three healthy members")

    def kill_the_leader() -> EtcdMember:
        leader = etcd.leader()
        leader.process.kill()
        return leader

    killed = survives(cluster_mesh, kill_the_leader)
    assert etcd.leader() is not killed  # the two left elected another
    etcd.resume(killed)


def test_without_quorum_reads_still_serve_and_writes_fail_clearly(cluster_mesh: ClusterMesh) -> None:
    """Two of three members gone: no quorum. Inference of loaded models goes on (no etcd on its path);
    a registration fails with UNAVAILABLE naming etcd; once a member is back, registrations work again."""
    etcd = cluster_mesh.etcd
    poll_until(lambda: all(etcd.healthy(m) for m in etcd.members), what="three healthy members")
    gone = etcd.members[:2]
    for member in gone:
        member.process.kill()
    try:
        with grpc.insecure_channel(cluster_mesh.pods[2].address) as channel:
            answer = channel.unary_unary(INFER_METHOD)(infer_request("warm-0"), timeout=20)
            assert v2.ModelInferResponse.FromString(answer).model_name == "warm-0"
            with pytest.raises(grpc.RpcError) as refused:
                register(mm_grpc.ModelMeshStub(channel), "no-quorum")
            assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            assert (
                "etcd" in (refused.value.details() or "")
                or refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            )
    finally:
        etcd.resume(gone[0])
    with grpc.insecure_channel(cluster_mesh.pods[2].address) as channel:
        stub = mm_grpc.ModelMeshStub(channel)
        poll_until(lambda: _registers(stub, "after-quorum"), timeout_s=60, what="registrations work again")
    etcd.resume(gone[1])


def _registers(stub: mm_grpc.ModelMeshStub, model_id: str) -> bool:
    try:
        register(stub, model_id)
        return True
    except grpc.RpcError:
        return False
