"""--front=h2 against real processes: etcd, the echo runtime, two mesh pods, grpcio and tritonclient clients.

The front answers the plain case itself and relays the rest to the pod's grpc.aio server; these tests
check both halves through the one port, and count which half answered (/mesh/front).
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2 as v2

from harness.cluster import EtcdServer, PodProcess
from load_tests.echo_runtime import INFER_METHOD, MODEL_TYPE
from load_tests.hop import infer_request, register
from load_tests.processes import EchoProcess, start_echo_pod
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.support import poll_until

pytestmark = pytest.mark.integration


@dataclass
class FrontPods:
    holder: PodProcess  # holds the echo models (--front=h2)
    forwarder: PodProcess  # serves no echo type: every inference goes to the holder (--front=h2)
    echo: EchoProcess

    def counts(self, pod: PodProcess) -> dict[str, int]:
        return front_counts(pod)


def front_counts(pod: PodProcess) -> dict[str, int]:
    with urllib.request.urlopen(f"http://{pod.rest_address}/mesh/front", timeout=10) as reply:
        return json.loads(reply.read())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontPods]:
    work = tmp_path_factory.mktemp("h2front")
    etcd = EtcdServer.start(work / "etcd")
    started: list[PodProcess] = []
    echoes: list[EchoProcess] = []
    try:
        echo_a = EchoProcess.start(work / "echo-a", "echo-a")
        echoes.append(echo_a)
        echo_b = EchoProcess.start(work / "echo-b", "echo-b")
        echoes.append(echo_b)
        holder = start_echo_pod(work / "pod-a", etcd, echo_a, "pod-a", extra_args=["--front=h2"])
        started.append(holder)
        forwarder = start_echo_pod(
            work / "pod-b", etcd, echo_b, "pod-b", model_types="not-" + MODEL_TYPE, extra_args=["--front=h2"]
        )
        started.append(forwarder)
        register(holder.address, "echo-1", MODEL_TYPE, "size=1000")
        yield FrontPods(holder, forwarder, echo_a)
    finally:
        for pod in started:
            pod.process.stop()
        for echo in echoes:
            echo.stop()
        etcd.process.stop()


def infer(
    address: str, body: bytes, metadata: tuple[tuple[str, str], ...] = (), timeout: float = 30
) -> bytes:
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        response: bytes = channel.unary_unary(INFER_METHOD)(body, metadata=metadata, timeout=timeout)
        return response


def model_name(response: bytes) -> str:
    parsed = v2.ModelInferResponse()
    parsed.ParseFromString(response)
    return parsed.model_name


def test_a_model_held_here_is_answered_on_the_fast_path(pods: FrontPods) -> None:
    before = pods.counts(pods.holder)
    for _ in range(20):
        assert model_name(infer(pods.holder.address, infer_request("echo-1"))) == "echo-1"
    after = pods.counts(pods.holder)
    assert after["fast"] - before["fast"] == 20
    assert after["relayed"] == before["relayed"]


def test_the_id_header_names_the_model_and_is_not_passed_to_the_runtime(pods: FrontPods) -> None:
    before = pods.counts(pods.holder)
    response = infer(pods.holder.address, infer_request("something-else"), (("mm-model-id", "echo-1"),))
    assert model_name(response) == "echo-1"  # field 1 was rewritten: the runtime answered for echo-1
    assert pods.counts(pods.holder)["fast"] == before["fast"] + 1


def test_the_management_api_and_server_calls_are_relayed_on_the_same_port(pods: FrontPods) -> None:
    before = pods.counts(pods.holder)
    with grpc.insecure_channel(pods.holder.address) as channel:
        status = mm_grpc.ModelMeshStub(channel).getModelStatus(mm.GetStatusRequest(modelId="echo-1"))
        live = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerLive",
            request_serializer=v2.ServerLiveRequest.SerializeToString,
            response_deserializer=v2.ServerLiveResponse.FromString,
        )(v2.ServerLiveRequest(), timeout=10)
    assert status.status == mm.ModelStatusInfo.LOADED
    assert live.live
    assert pods.counts(pods.holder)["relayed"] >= before["relayed"] + 2


@pytest.mark.parametrize(
    ("body", "metadata", "code"),
    [
        (infer_request("never-registered"), (), grpc.StatusCode.NOT_FOUND),
        (
            infer_request("echo-1"),
            (("mm-model-id", "a"), ("mm-vmodel-id", "b")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (b"\xff\xff\xff", (), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_errors_are_worded_by_the_general_route(
    pods: FrontPods, body: bytes, metadata: tuple[tuple[str, str], ...], code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.RpcError) as e:
        infer(pods.holder.address, body, metadata)
    assert e.value.code() == code  # type: ignore[attr-defined]


def test_a_request_larger_than_the_http2_windows_reaches_the_runtime_whole(pods: FrontPods) -> None:
    """3 MiB is many frames and far past the 64 KiB default windows: credit must be waited for, not lost."""
    before = pods.counts(pods.holder)
    body = infer_request("echo-1", payload_bytes=3 << 20)
    assert model_name(infer(pods.holder.address, body)) == "echo-1"
    assert pods.counts(pods.holder)["fast"] == before["fast"] + 1


def test_a_request_over_the_message_limit_is_refused_by_size(pods: FrontPods) -> None:
    body = infer_request("echo-1", payload_bytes=17 << 20)  # the pods' limit: 16 MiB
    with pytest.raises(grpc.RpcError) as e:
        infer(pods.holder.address, body)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]


def test_a_model_held_elsewhere_goes_straight_to_the_holder(pods: FrontPods) -> None:
    """Neither end uses grpc.aio: the forwarder's front sends to the holder's, which calls the runtime."""
    before, holder_before = pods.counts(pods.forwarder), pods.counts(pods.holder)
    assert model_name(infer(pods.forwarder.address, infer_request("echo-1"))) == "echo-1"
    after, holder_after = pods.counts(pods.forwarder), pods.counts(pods.holder)
    assert after["fast_to_peer"] == before["fast_to_peer"] + 1
    assert after["relayed"] == before["relayed"] and after["fast"] == before["fast"]
    assert holder_after["internal_fast"] == holder_before["internal_fast"] + 1
    assert holder_after["internal_relayed"] == holder_before["internal_relayed"]


def test_a_model_not_loaded_anywhere_is_loaded_through_the_relay(pods: FrontPods) -> None:
    with grpc.insecure_channel(pods.forwarder.address) as channel:
        mm_grpc.ModelMeshStub(channel).registerModel(
            mm.RegisterModelRequest(
                modelId="echo-cold", modelInfo=mm.ModelInfo(type=MODEL_TYPE, path="size=10")
            )
        )
    before = pods.counts(pods.forwarder)
    assert model_name(infer(pods.forwarder.address, infer_request("echo-cold"))) == "echo-cold"
    after = pods.counts(pods.forwarder)
    assert after["relayed"] >= before["relayed"] + 1
    assert pods.echo.stats()["loads"]["echo-cold"] == 1
    with grpc.insecure_channel(pods.forwarder.address) as channel:  # this pod's view has seen the copy
        stub = mm_grpc.ModelMeshStub(channel)
        poll_until(
            lambda: (
                stub.getModelStatus(mm.GetStatusRequest(modelId="echo-cold")).status
                == mm.ModelStatusInfo.LOADED
            ),
            what="the forwarding pod sees the loaded copy",
        )
    assert model_name(infer(pods.forwarder.address, infer_request("echo-cold"))) == "echo-cold"
    assert pods.counts(pods.forwarder)["fast_to_peer"] == after["fast_to_peer"] + 1  # loaded: now direct


async def test_many_concurrent_streams_on_one_connection_all_answer(pods: FrontPods) -> None:
    async with grpc.aio.insecure_channel(pods.holder.address) as channel:
        call = channel.unary_unary(INFER_METHOD)
        bodies = [
            infer_request("echo-1", payload_bytes=size) for size in (16, 1024, 70_000) for _ in range(100)
        ]
        answers = await asyncio.gather(*(call(body, timeout=60) for body in bodies))
    assert [model_name(a) for a in answers] == ["echo-1"] * len(bodies)


def test_a_client_that_speaks_no_http2_is_dropped_and_the_pod_serves_on(pods: FrontPods) -> None:
    host, port = pods.holder.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 64)
        received = b""
        while chunk := raw.recv(65536):  # the pod answers GOAWAY and closes the connection
            received += chunk
    assert received  # at least our SETTINGS and a GOAWAY came back before the close
    assert model_name(infer(pods.holder.address, infer_request("echo-1"))) == "echo-1"


def test_a_lost_copy_is_replayed_through_the_general_route_and_reloaded(pods: FrontPods) -> None:
    """The runtime answers NOT_FOUND for a model the pod holds (it lost it): the front does not pass it on."""
    register(pods.holder.address, "echo-lost", MODEL_TYPE, "size=1000")
    with grpc.insecure_channel(pods.echo.address) as channel:  # the runtime forgets it behind the mesh's back
        channel.unary_unary("/mmesh.ModelRuntime/unloadModel")(b"\n\x09echo-lost", timeout=10)
    before = pods.counts(pods.holder)
    assert model_name(infer(pods.holder.address, infer_request("echo-lost"))) == "echo-lost"
    after = pods.counts(pods.holder)
    assert after["replayed"] == before["replayed"] + 1
    assert pods.echo.stats()["loads"]["echo-lost"] == 2  # reloaded once


def sequential_calls(address: str, model_id: str, calls: int) -> None:
    body = infer_request(model_id)
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(INFER_METHOD)
        for _ in range(calls):
            assert model_name(call(body, timeout=30)) == model_id


def test_the_pods_loop_busy_polls(pods: FrontPods) -> None:
    """By default (--busy-poll-us 300) the loop polls before it sleeps: one call at a time, the runtime's
    answers come while it polls, and the pod is not woken for them."""
    before = pods.counts(pods.holder)
    sequential_calls(pods.holder.address, "echo-1", 200)
    after = pods.counts(pods.holder)
    assert after["fast"] - before["fast"] == 200
    assert after["busy_poll_spun"] - before["busy_poll_spun"] >= 200
    assert after["busy_poll_caught"] - before["busy_poll_caught"] >= 100


@pytest.mark.parametrize("loop_args", [["--busy-poll-us=0"], ["--event-loop=uvloop"]], ids=["off", "uvloop"])
def test_a_pod_that_does_not_busy_poll(tmp_path: Path, etcd: EtcdServer, loop_args: list[str]) -> None:
    echo = EchoProcess.start(tmp_path / "echo", "echo-np")
    try:
        pod = start_echo_pod(tmp_path / "pod", etcd, echo, "pod-np", extra_args=loop_args)
        try:
            register(pod.address, "echo-np", MODEL_TYPE, "size=1000")
            sequential_calls(pod.address, "echo-np", 50)
            counts = front_counts(pod)
            assert counts["fast"] == 50
            assert counts["busy_poll_spun"] == counts["busy_poll_caught"] == 0
        finally:
            pod.process.stop()
    finally:
        echo.stop()


def test_the_front_runs_on_uvloop(tmp_path: Path, etcd: EtcdServer) -> None:
    """uvloop's transports are not asyncio's classes: the front must not depend on that."""
    echo = EchoProcess.start(tmp_path / "echo", "echo-uv")
    try:
        pod = start_echo_pod(tmp_path / "pod", etcd, echo, "pod-uv", extra_args=["--event-loop=uvloop"])
        try:
            register(pod.address, "echo-uv", MODEL_TYPE, "size=1000")
            assert model_name(infer(pod.address, infer_request("echo-uv"))) == "echo-uv"
            assert front_counts(pod)["fast"] == 1
        finally:
            pod.process.stop()
    finally:
        echo.stop()
