"""The manifests run: deploy/k8s/overlays/mlserver rendered, and every container of its etcd StatefulSet and
of two replicas of its MLServer pool launched as local processes with the manifests' own commands, arguments
and environment (harness/k8s_local.py). Models register and infer through both replicas; then one replica is
scaled down as the kubelet would (its preStop hook, then SIGTERM) while a client keeps inferring through the
other: no request fails, and its models end up served by the replica that stays."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.k8s_local import Launcher, LocalPod, of_kind, pod_ports
from harness.processes import free_port
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.conftest import Examples
from tests.support import poll_until, predict
from tests.test_k8s_manifests import rendered

pytestmark = pytest.mark.integration


@dataclass
class K8sMesh:
    launcher: Launcher
    etcd: list[LocalPod]
    pods: list[LocalPod]

    def address(self, pod: LocalPod) -> str:
        return f"127.0.0.1:{pod.port(8033)}"


def etcd_ready(pod: LocalPod) -> None:
    def healthy() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{pod.port(2379)}/health", timeout=2) as reply:
            return b'"health":"true"' in reply.read()

    pod.processes["etcd"].wait_until(healthy, 60, f"{pod.name} health")


def mesh_ready(pod: LocalPod) -> None:
    """The readiness probe: gRPC health on the probe's port says SERVING."""
    mesh = next(c for c in pod.spec["containers"] if c["name"] == "mesh")
    port = pod.port(mesh["readinessProbe"]["grpc"]["port"])

    def serving() -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    pod.processes["mesh"].wait_until(serving, 120, f"{pod.name} ready")


@pytest.fixture(scope="module")
def k8s_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sMesh]:
    docs = list(rendered("mlserver"))
    launcher = Launcher(docs, tmp_path_factory.mktemp("k8s"))
    statefulset = of_kind(docs, "StatefulSet", "etcd")
    deployment = of_kind(docs, "Deployment", "mesh-mlserver")
    service = statefulset["spec"]["serviceName"]
    members = [{2379: free_port(), 2380: free_port()} for _ in range(statefulset["spec"]["replicas"])]
    for index, ports in enumerate(members):  # the members' DNS names, on loopback
        for port, local in ports.items():
            launcher.hosts[f"etcd-{index}.{service}:{port}"] = f"127.0.0.1:{local}"
    with contextlib.ExitStack() as stack:
        etcd = []
        for index, ports in enumerate(members):
            member = launcher.start_pod(
                f"etcd-{index}", statefulset["spec"]["template"]["spec"], ports, lambda _: None
            )
            stack.callback(member.stop)
            etcd.append(member)
        for member in etcd:
            etcd_ready(member)
        pods = []
        spec = deployment["spec"]["template"]["spec"]
        for index in range(deployment["spec"]["replicas"]):
            ports = {port: free_port() for port in pod_ports(spec)}
            pod = launcher.start_pod(f"mesh-mlserver-{index}", spec, ports, mesh_ready)
            stack.callback(pod.stop)
            pods.append(pod)
        yield K8sMesh(launcher, etcd, pods)


def test_the_manifests_infer_and_drain(k8s_mesh: K8sMesh, examples: Examples) -> None:
    first, second = k8s_mesh.pods
    with grpc.insecure_channel(k8s_mesh.address(first)) as channel:
        management = mm_grpc.ModelMeshStub(channel)
        for model_id, example in (("k8s-logistic", examples.logistic), ("k8s-tree", examples.tree)):
            info = mm.ModelInfo(type="mt:sklearn", path=str(example.path))
            management.registerModel(
                mm.RegisterModelRequest(modelId=model_id, modelInfo=info, loadNow=True, sync=True),
                timeout=120,
            )
        held = {
            c.location
            for model_id in ("k8s-logistic", "k8s-tree")
            for c in management.getModelStatus(
                mm.GetStatusRequest(modelId=model_id), timeout=10
            ).modelCopyInfos
        }
    for pod in (first, second):
        client = triton.InferenceServerClient(k8s_mesh.address(pod))
        assert list(predict(client, "k8s-logistic")) == list(examples.logistic.expected)
        assert list(predict(client, "k8s-tree")) == list(examples.tree.expected)
        client.close()

    # scale down: the kubelet runs preStop, then SIGTERM, and waits terminationGracePeriodSeconds
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal served
        client = triton.InferenceServerClient(k8s_mesh.address(first))
        while not stop.is_set():
            for model_id, example in (("k8s-logistic", examples.logistic), ("k8s-tree", examples.tree)):
                try:
                    assert list(predict(client, model_id)) == list(example.expected)
                    served += 1
                except Exception as e:  # every failure counts
                    failures.append(f"{model_id}: {e}")
        client.close()

    # the replica that drains holds a model (placement spread them, or put both on one), the other serves
    holder = second if second.name in held else first
    first = first if holder is second else second
    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        poll_until(lambda: served >= 20, what="traffic before the drain")
        mesh_spec = next(c for c in holder.spec["containers"] if c["name"] == "mesh")
        pre_stop = mesh_spec["lifecycle"]["preStop"]["exec"]["command"]
        subprocess.run(pre_stop, check=True, timeout=30)
        grace = holder.spec["terminationGracePeriodSeconds"]
        holder.processes["mesh"].stop(timeout_s=grace)
        assert holder.processes["mesh"].returncode == 0, holder.processes[
            "mesh"
        ].log_tail()  # drained, not killed
        before = served
        poll_until(lambda: served >= before + 40, what="traffic after the drain")
    finally:
        stop.set()
        worker.join(60)
    assert not failures, failures[:5]
    with grpc.insecure_channel(k8s_mesh.address(first)) as channel:
        management = mm_grpc.ModelMeshStub(channel)
        for model_id in ("k8s-logistic", "k8s-tree"):
            status = management.getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=10)
            assert status.status == mm.ModelStatusInfo.LOADED
            assert {c.location for c in status.modelCopyInfos} == {first.name}, status
