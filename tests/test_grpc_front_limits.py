"""Limits of the pod's grpc.aio servers (mesh/fronts/server_limits.py ``grpc_server_options``) against raw
HTTP/2.

First a grpc server in this process with the options, public and relay; then a pod with ``--front=grpc``,
whose external port is grpc.aio itself: a client holding streams past ``--max-concurrent-streams``,
connections past ``--max-connections``, a connection that never says hello, an idle one, a ping flood,
metadata past ``--max-header-list-bytes`` — each while a normal client is served on its own connection,
and the pod's open file descriptors back where they were once the attacker is gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2 as v2

from harness.cluster import EtcdServer, PodProcess
from load_tests.echo_runtime import INFER_METHOD, MODEL_TYPE
from load_tests.hop import infer_request, register
from load_tests.processes import EchoProcess, start_echo_pod
from mesh.fronts.h2.wire import ErrorCode
from mesh.fronts.server_limits import grpc_server_options
from mesh.process.settings import Settings
from tests.hostile import (
    Beside,
    RawH2,
    a_ping_flood_is_sent_away,
    a_silent_connection_is_closed,
    an_idle_connection_is_sent_away,
    connections_past_the_cap_are_closed,
    fd_count,
    open_streams,
    streams_past_the_limit_are_refused,
)
from tests.support import poll_until

STREAMS = 8  # --max-concurrent-streams
CONNECTIONS = 16  # --max-connections
HEADER_BYTES = 4096  # --max-header-list-bytes
HANDSHAKE_S = 1.0  # --handshake-timeout-s
IDLE_S = 3.0  # --idle-timeout-s
LIMIT_FLAGS = [
    f"--max-concurrent-streams={STREAMS}",
    f"--max-connections={CONNECTIONS}",
    f"--max-header-list-bytes={HEADER_BYTES}",
    f"--handshake-timeout-s={HANDSHAKE_S:g}",
    f"--idle-timeout-s={IDLE_S:g}",
]
LIMITS = Settings(
    max_concurrent_streams=STREAMS,
    max_connections=CONNECTIONS,
    max_header_list_bytes=HEADER_BYTES,
    handshake_timeout_s=HANDSHAKE_S,
    idle_timeout_s=IDLE_S,
)
ECHO_METHOD = "/test.Echo/Call"
SERVER_LIVE = "/inference.GRPCInferenceService/ServerLive"


# --- the options on a grpc server in this process -------------------------------------------------------


def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


class EchoHandler(grpc.GenericRpcHandler):
    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return grpc.unary_unary_rpc_method_handler(echo)


@dataclass
class LocalServer:
    address: str
    server: grpc.Server


def local_server(public: bool) -> Iterator[LocalServer]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=64),  # a stream waiting for its message holds a thread
        options=grpc_server_options(LIMITS, public=public, reuse_port=False),
    )
    server.add_generic_rpc_handlers((EchoHandler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield LocalServer(f"127.0.0.1:{port}", server)
    finally:
        server.stop(0)


@pytest.fixture
def public_server() -> Iterator[LocalServer]:
    yield from local_server(public=True)


@pytest.fixture
def relay_server() -> Iterator[LocalServer]:
    yield from local_server(public=False)


def call_echo(address: str, metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
    with grpc.insecure_channel(address) as channel:
        response: bytes = channel.unary_unary(ECHO_METHOD)(b"ping", metadata=metadata, timeout=10)
        return response


def test_public_options_refuse_streams_past_the_limit(public_server: LocalServer) -> None:
    client = RawH2(public_server.address)
    try:
        client.handshake()
        ids = open_streams(client, STREAMS + 4, ECHO_METHOD)
        extra = ids[STREAMS:]
        client.until(lambda: all(s in client.resets for s in extra), 10, "extra streams refused")
        assert {client.resets[s] for s in extra} == {ErrorCode.REFUSED_STREAM}
        assert not any(s in client.resets for s in ids[:STREAMS])
        assert call_echo(public_server.address) == b"ping"  # another connection is served
    finally:
        client.close()


def test_relay_options_take_every_stream_the_front_relays(relay_server: LocalServer) -> None:
    client = RawH2(relay_server.address)
    try:
        client.handshake()
        open_streams(client, 4 * STREAMS, ECHO_METHOD)
        client.settle(1.0)
        assert client.resets == {} and not client.closed
        # the relay takes what the front let through, and what the pods add to it
        assert call_echo(relay_server.address, (("x-big", "v" * (HEADER_BYTES + 1000)),)) == b"ping"
    finally:
        client.close()


def test_public_options_bound_metadata(public_server: LocalServer) -> None:
    assert call_echo(public_server.address, (("x-fits", "v" * (HEADER_BYTES // 2)),)) == b"ping"
    with pytest.raises(grpc.RpcError):
        call_echo(public_server.address, (("x-big", "v" * (HEADER_BYTES + 1000)),))


def test_public_options_close_a_silent_connection(public_server: LocalServer) -> None:
    a_silent_connection_is_closed(public_server.address, HANDSHAKE_S)


# --- a pod whose external port is grpc.aio (--front=grpc) -----------------------------------------------


@dataclass
class GrpcPod:
    pod: PodProcess
    echo: EchoProcess

    @property
    def pid(self) -> int:
        return self.pod.process.pid


@pytest.fixture(scope="module")
def grpc_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcPod]:
    work: Path = tmp_path_factory.mktemp("grpc-limits")
    etcd = EtcdServer.start(work / "etcd")
    echo: EchoProcess | None = None
    pod: PodProcess | None = None
    try:
        echo = EchoProcess.start(work / "echo", "echo")
        pod = start_echo_pod(work / "pod", etcd, echo, "pod-grpc", extra_args=["--front=grpc", *LIMIT_FLAGS])
        register(pod.address, "echo-1", MODEL_TYPE, "size=1000")
        yield GrpcPod(pod, echo)
    finally:
        if pod is not None:
            pod.process.stop()
        if echo is not None:
            echo.stop()
        etcd.process.stop()


@pytest.fixture
def served(grpc_pod: GrpcPod) -> Iterator[Beside]:
    """A normal client inferring echo-1 through its own channel for the whole test."""
    channel = grpc.insecure_channel(grpc_pod.pod.address)
    infer = channel.unary_unary(INFER_METHOD)
    request = infer_request("echo-1")

    def call() -> None:
        response = v2.ModelInferResponse()
        response.ParseFromString(infer(request, timeout=10))
        assert response.model_name == "echo-1"

    try:
        with Beside(call) as beside:
            yield beside
    finally:
        channel.close()


def fds_back(grpc_pod: GrpcPod, baseline: int) -> None:
    poll_until(lambda: fd_count(grpc_pod.pid) <= baseline + 2, 30, f"pod fds back to {baseline}")


@pytest.mark.integration
def test_a_client_past_the_stream_limit_is_refused_the_extra_streams(
    grpc_pod: GrpcPod, served: Beside
) -> None:
    baseline = fd_count(grpc_pod.pid)
    streams_past_the_limit_are_refused(grpc_pod.pod.address, SERVER_LIVE, STREAMS)
    fds_back(grpc_pod, baseline)


@pytest.mark.integration
def test_connections_past_the_cap_are_closed_as_they_arrive(grpc_pod: GrpcPod, served: Beside) -> None:
    baseline = fd_count(grpc_pod.pid)
    connections_past_the_cap_are_closed(grpc_pod.pod.address, SERVER_LIVE, CONNECTIONS)
    fds_back(grpc_pod, baseline)


@pytest.mark.integration
def test_a_connection_that_never_says_hello_is_closed(grpc_pod: GrpcPod, served: Beside) -> None:
    baseline = fd_count(grpc_pod.pid)
    a_silent_connection_is_closed(grpc_pod.pod.address, HANDSHAKE_S)
    fds_back(grpc_pod, baseline)


@pytest.mark.integration
def test_an_idle_connection_is_sent_away(grpc_pod: GrpcPod, served: Beside) -> None:
    an_idle_connection_is_sent_away(grpc_pod.pod.address, IDLE_S)


@pytest.mark.integration
def test_a_ping_flood_is_sent_away(grpc_pod: GrpcPod, served: Beside) -> None:
    a_ping_flood_is_sent_away(grpc_pod.pod.address)


@pytest.mark.integration
def test_metadata_past_the_header_limit_is_refused(grpc_pod: GrpcPod, served: Beside) -> None:
    with grpc.insecure_channel(grpc_pod.pod.address) as channel:
        infer = channel.unary_unary(INFER_METHOD)
        fits = (("x-fits", "v" * (HEADER_BYTES // 2)),)
        assert infer(infer_request("echo-1"), metadata=fits, timeout=10)
        with pytest.raises(grpc.RpcError):
            infer(infer_request("echo-1"), metadata=(("x-big", "v" * (HEADER_BYTES + 1000)),), timeout=10)
