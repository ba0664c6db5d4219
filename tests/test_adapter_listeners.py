"""The adapter's listeners under attack (runtime_adapters/common/listener.py): a real MLServer adapter in
front of a real MLServer, its SPI port and its /metrics port attacked while a normal client keeps loading and
unloading a model through the SPI on a connection of its own.

The limits come from the adapter's flags; each test checks the answer the limit promises, that the normal
client was served within its deadline throughout (``Beside``), and that the adapter's descriptors come back.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from harness.cluster import AdapterProcess, MLServerProcess
from harness.processes import default_mlserver_bin
from protos import model_runtime_pb2 as pb
from protos import model_runtime_pb2_grpc as pb_grpc
from tests.hostile import (
    Beside,
    a_ping_flood_is_sent_away,
    a_silent_connection_is_closed,
    an_idle_connection_is_sent_away,
    connections_past_the_cap_are_closed,
    fd_count,
    streams_past_the_limit_are_refused,
)
from tests.support import poll_until, train_iris

pytestmark = pytest.mark.integration

STREAMS = 6
CONNECTIONS = 8
HEADER_BYTES = 4096
MESSAGE_BYTES = 64 * 1024
HANDSHAKE_S = 1.0
IDLE_S = 3.0
LIMIT_FLAGS = [
    f"--max-concurrent-streams={STREAMS}",
    f"--max-connections={CONNECTIONS}",
    f"--max-header-list-bytes={HEADER_BYTES}",
    f"--max-message-bytes={MESSAGE_BYTES}",
    f"--handshake-timeout-s={HANDSHAKE_S:g}",
    f"--idle-timeout-s={IDLE_S:g}",
]
HELD_METHOD = "/mmesh.ModelRuntime/predictModelSize"  # held open without its message


@dataclass
class Adapter:
    process: AdapterProcess
    model: Path

    @property
    def pid(self) -> int:
        return self.process.process.pid

    @property
    def address(self) -> str:
        return self.process.address


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Adapter]:
    work = tmp_path_factory.mktemp("adapter-listeners")
    model = train_iris(work / "models" / "iris", "logistic").path
    with MLServerProcess.start(work / "repo", default_mlserver_bin(), work) as mlserver:
        process = AdapterProcess.start(work, mlserver, work / "repo", 256 << 20, extra_args=LIMIT_FLAGS)
        try:
            yield Adapter(process, model)
        finally:
            process.process.stop()


@pytest.fixture
def served(adapter: Adapter) -> Iterator[Beside]:
    """The pod's part, on its own channel: a load and an unload of the model, again and again."""
    channel = grpc.insecure_channel(adapter.address)
    stub = pb_grpc.ModelRuntimeStub(channel)

    def call() -> None:
        loaded = stub.loadModel(
            pb.LoadModelRequest(modelId="iris-beside", modelType="sklearn", modelPath=str(adapter.model)),
            timeout=10,
        )
        assert loaded.sizeInBytes > 0
        stub.unloadModel(pb.UnloadModelRequest(modelId="iris-beside"), timeout=10)

    try:
        with Beside(call) as beside:
            yield beside
    finally:
        channel.close()


def fds_back(adapter: Adapter, baseline: int) -> None:
    poll_until(lambda: fd_count(adapter.pid) <= baseline + 2, 30, f"adapter fds back to {baseline}")


def test_streams_past_the_limit_are_refused(adapter: Adapter, served: Beside) -> None:
    baseline = fd_count(adapter.pid)
    streams_past_the_limit_are_refused(adapter.address, HELD_METHOD, STREAMS)
    fds_back(adapter, baseline)


def test_connections_past_the_cap_are_closed_as_they_arrive(adapter: Adapter, served: Beside) -> None:
    baseline = fd_count(adapter.pid)
    connections_past_the_cap_are_closed(adapter.address, HELD_METHOD, CONNECTIONS)
    fds_back(adapter, baseline)


def test_a_connection_that_never_says_hello_is_closed(adapter: Adapter, served: Beside) -> None:
    baseline = fd_count(adapter.pid)
    a_silent_connection_is_closed(adapter.address, HANDSHAKE_S)
    fds_back(adapter, baseline)


def test_an_idle_connection_is_sent_away(adapter: Adapter, served: Beside) -> None:
    an_idle_connection_is_sent_away(adapter.address, IDLE_S)


def test_a_ping_flood_is_sent_away(adapter: Adapter, served: Beside) -> None:
    a_ping_flood_is_sent_away(adapter.address)


def test_metadata_and_messages_past_their_limits_are_refused(adapter: Adapter, served: Beside) -> None:
    # predictModelSize, not runtimeStatus: that is the mesh's (re)start, which purges what is loaded
    fits = pb.PredictModelSizeRequest(modelId="iris-size", modelType="sklearn", modelPath=str(adapter.model))
    with grpc.insecure_channel(adapter.address) as channel:
        stub = pb_grpc.ModelRuntimeStub(channel)
        half = (("x-fits", "v" * (HEADER_BYTES // 2)),)
        assert stub.predictModelSize(fits, metadata=half, timeout=10).sizeInBytes > 0
        with pytest.raises(grpc.RpcError):
            stub.predictModelSize(fits, metadata=(("x-big", "v" * (HEADER_BYTES + 1000)),), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            stub.predictModelSize(
                pb.PredictModelSizeRequest(modelId="m", modelPath="x" * (MESSAGE_BYTES + 1)), timeout=10
            )
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_connect_and_close_cycles_leave_no_descriptors(adapter: Adapter, served: Beside) -> None:
    baseline = fd_count(adapter.pid)
    host, port = adapter.address.rsplit(":", 1)
    for _ in range(2000):
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    fds_back(adapter, baseline)


# -- /metrics ------------------------------------------------------------------------------------------------


def scrape(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: scraper\r\n\r\n")
        return read_all(s)


def read_all(s: socket.socket) -> bytes:
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    return answer


def test_the_metrics_port_holds_against_hostile_clients(adapter: Adapter, served: Beside) -> None:
    port = adapter.process.metrics_port
    assert b"modelmesh_adapter_loaded_models" in scrape(port)
    baseline = fd_count(adapter.pid)
    with contextlib.ExitStack() as stack:
        hostile = []  # half-sent requests fill every connection
        for _ in range(CONNECTIONS):
            s = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n")
            hostile.append(s)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:  # one more: refused
            assert read_all(extra).startswith(b"HTTP/1.0 503")
        started = time.monotonic()
        for s in hostile:  # the half-sent requests are cut off after the read timeout
            assert read_all(s) == b""  # closed without an answer
        assert time.monotonic() - started < HANDSHAKE_S + 5
    poll_until(lambda: b"200 OK" in scrape(port).split(b"\r\n", 1)[0], 10, "a scraper served again")
    big = scrape_with(port, b"GET /metrics HTTP/1.0\r\n" + b"X-Big: a\r\n" * 200 + b"\r\n")
    assert big.split(b" ")[1] in (b"400", b"431"), big[:80]
    post = scrape_with(port, b"POST /metrics HTTP/1.0\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 65536)
    assert post.split(b" ")[1] in (b"405", b"501"), post[:80]
    assert b"modelmesh_adapter_loaded_models" in scrape(port)
    fds_back(adapter, baseline)


def scrape_with(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            s.sendall(request)
        try:
            return read_all(s)
        except ConnectionResetError:
            return b""
