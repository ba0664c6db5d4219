"""A pod with two serving processes (--serving-processes=2) on one port, against a real etcd and runtime."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest
from tritonclient.grpc import service_pb2 as v2

from harness.cluster import EtcdServer, PodProcess
from load_tests.echo_runtime import INFER_METHOD, MODEL_TYPE
from load_tests.hop import infer_request, register
from load_tests.processes import EchoProcess, start_echo_pod, wait_for_serving_processes
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.support import poll_until

pytestmark = pytest.mark.integration


@dataclass
class TwoProcessPod:
    pod: PodProcess
    worker: psutil.Process


@pytest.fixture
def two_process_pod(tmp_path: Path) -> Iterator[TwoProcessPod]:
    with contextlib.ExitStack() as stack:
        etcd = EtcdServer.start(tmp_path / "etcd")
        stack.callback(etcd.process.stop)
        echo = EchoProcess.start(tmp_path / "echo")
        stack.callback(echo.stop)
        pod = start_echo_pod(tmp_path / "pod", etcd, echo, "pod-a", extra_args=["--serving-processes=2"])
        stack.callback(pod.process.stop)
        wait_for_serving_processes(pod, 2)
        children = psutil.Process(pod.process.pid).children()
        workers = [c for c in children if "mesh.process.serving_worker" in " ".join(c.cmdline())]
        assert len(workers) == 1, [c.cmdline() for c in children]
        yield TwoProcessPod(pod, workers[0])


def connections_on(process: psutil.Process, port: int) -> int:
    return sum(
        1 for c in process.net_connections("tcp") if c.laddr.port == port and c.status == "ESTABLISHED"
    )


def test_both_processes_serve_inference_and_the_management_api(two_process_pod: TwoProcessPod) -> None:
    pod = two_process_pod.pod
    register(pod.address, "m1", MODEL_TYPE, "size=1000")
    port = int(pod.address.rsplit(":", 1)[1])
    channels = [  # separate connections: the kernel spreads them over the two listening processes
        grpc.insecure_channel(pod.address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(24)
    ]
    try:
        for channel in channels:
            answer = v2.ModelInferResponse.FromString(
                channel.unary_unary(INFER_METHOD)(infer_request("m1"), timeout=10)
            )
            assert answer.model_name == "m1"
            status = mm_grpc.ModelMeshStub(channel).getModelStatus(
                mm.GetStatusRequest(modelId="m1"), timeout=10
            )
            assert status.status == mm.ModelStatusInfo.LOADED
            with pytest.raises(grpc.RpcError) as missing:  # errors word the same whichever process answers
                channel.unary_unary(INFER_METHOD)(infer_request("nope"), timeout=10)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        worker_connections = connections_on(two_process_pod.worker, port)
        main_connections = connections_on(psutil.Process(pod.process.pid), port)
        assert worker_connections > 0 and main_connections > 0
        assert worker_connections + main_connections >= len(channels)
    finally:
        for channel in channels:
            channel.close()


def test_worker_stops_with_the_pod_even_when_the_pod_is_killed(two_process_pod: TwoProcessPod) -> None:
    worker = two_process_pod.worker
    psutil.Process(two_process_pod.pod.process.pid).kill()  # no chance to stop its workers itself
    poll_until(lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE, 15, "worker exit")


def test_a_serving_process_that_dies_is_replaced(two_process_pod: TwoProcessPod) -> None:
    pod = two_process_pod.pod
    two_process_pod.worker.kill()
    poll_until(lambda: not two_process_pod.worker.is_running(), 10, "worker gone")

    def replaced() -> bool:
        workers = [
            c for c in psutil.Process(pod.process.pid).children() if c.pid != two_process_pod.worker.pid
        ]
        return any("mesh.process.serving_worker" in " ".join(c.cmdline()) for c in workers)

    poll_until(replaced, 15, "a new serving process")
    wait_for_serving_processes(pod, 2)
