"""The HTTP/2 front in this process, over a real grpc.aio runtime and real grpc clients: what a client
connection holds and gives back (sockets, upstream connections, in-flight pins), and TCP_NODELAY.

The front's routing is faked (every model is loaded here); tests/test_h2_front.py runs it in real pods.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import h2.config
import h2.connection
import pytest
from hyperframe.frame import Frame, SettingsFrame
from tritonclient.grpc import service_pb2 as v2

from harness.processes import free_port
from mesh.fronts.grpc_proxy import MethodTable
from mesh.fronts.h2.client import FrontLimits
from mesh.fronts.h2.front import H2Front
from mesh.registry.records import InstanceRecord
from mesh.routing.decision import SERVE_HERE, Route
from mesh.routing.target import RequestTarget

INFER = "/inference.GRPCInferenceService/ModelInfer"
ANSWER = v2.ModelInferResponse(model_name="m").SerializeToString()
REQUEST_HEADERS = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", INFER),
    (":authority", "front"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]


@dataclass
class HereRouting:
    """Every model is loaded on this pod; counts the in-flight pins the front takes and gives back."""

    pod_id: str = "here"
    pins: Counter[str] = field(default_factory=Counter)

    def model_id(self, target: RequestTarget) -> str:
        return target.id

    def decide(self, model_id: str, *, only_here: bool = False) -> Route:
        return SERVE_HERE

    def instance(self, pod_id: str) -> InstanceRecord:
        raise AssertionError("no peers here")

    def acquire(self, model_id: str, pod_id: str) -> None:
        assert pod_id == self.pod_id
        self.pins[model_id] += 1

    def release(self, model_id: str, pod_id: str) -> None:
        self.pins[model_id] -= 1


@dataclass
class Runtime:
    port: int
    calls: int = 0
    hold: asyncio.Event = field(default_factory=asyncio.Event)  # cleared: calls to model "slow" wait


@dataclass
class Front:
    front: H2Front
    routing: HereRouting
    runtime: Runtime
    address: str


@pytest.fixture
async def served() -> AsyncIterator[Front]:
    runtime = Runtime(free_port())
    runtime.hold.set()

    async def infer(request: bytes, context: Any) -> bytes:
        runtime.calls += 1
        name = v2.ModelInferRequest.FromString(request).model_name
        if name == "slow":
            await runtime.hold.wait()
        if name == "long-error":  # an error message far over any client's metadata limit
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input: " + "x" * 100_000)
        return ANSWER

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{runtime.port}")
    await server.start()
    routing = HereRouting()
    front = H2Front(
        routing,
        MethodTable({INFER: [1]}, False),
        f"127.0.0.1:{runtime.port}",
        "/nonexistent/relay.sock",
        1 << 20,
        limits=FrontLimits(max_concurrent_streams=8),
    )
    port = free_port()
    await front.start("127.0.0.1", port)
    try:
        yield Front(front, routing, runtime, f"127.0.0.1:{port}")
    finally:
        runtime.hold.set()
        await front.stop(grace_s=1)
        await server.stop(None)


def request(model: str) -> bytes:
    return v2.ModelInferRequest(model_name=model).SerializeToString()


async def call(address: str, model: str = "m") -> bytes:
    async with grpc.aio.insecure_channel(address) as channel:
        answer: bytes = await channel.unary_unary(INFER)(request(model), timeout=10)
        return answer


async def until(check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def nodelay(transport: Any) -> int:
    sock = transport.get_extra_info("socket")
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


async def test_every_socket_of_the_front_has_tcp_nodelay(served: Front) -> None:
    async with grpc.aio.insecure_channel(served.address) as channel:
        assert await channel.unary_unary(INFER)(request("m"), timeout=10) == ANSWER
        (client,) = served.front.connections
        assert nodelay(client._transport) == 1
        upstreams = list(served.front.upstreams._target)
        assert upstreams and all(nodelay(e._transport) == 1 for e in upstreams)


async def test_clients_share_one_runtime_connection_and_give_everything_back(
    served: Front,
) -> None:
    for _ in range(20):
        assert await call(served.address) == ANSWER
    # bare connect + close, with and without a preface: nothing is opened for them
    for index in range(50):
        _, writer = await asyncio.open_connection(*served.address.split(":"))
        if index % 2:
            writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize())
        writer.close()
        await writer.wait_closed()
    await until(lambda: not served.front.connections)
    assert served.front.upstreams.open_connections() == 1
    assert served.runtime.calls == 20
    assert all(count == 0 for count in served.routing.pins.values())


async def test_a_cancelled_call_releases_its_pin_and_its_upstream_stream(served: Front) -> None:
    served.runtime.hold.clear()
    async with grpc.aio.insecure_channel(served.address) as channel:
        slow = asyncio.ensure_future(channel.unary_unary(INFER)(request("slow"), timeout=10))
        await until(lambda: served.routing.pins["slow"] == 1)
        slow.cancel()
        await until(lambda: served.routing.pins["slow"] == 0)
        served.runtime.hold.set()
        assert await channel.unary_unary(INFER)(request("m"), timeout=10) == ANSWER
    assert all(count == 0 for count in served.routing.pins.values())


async def test_a_closed_client_releases_streams_in_flight(served: Front) -> None:
    """A client that goes away with calls in flight: its pins and upstream streams are given back."""
    served.runtime.hold.clear()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    for stream_id in range(1, 11, 2):
        client.send_headers(stream_id, REQUEST_HEADERS)
        body = request("slow")
        client.send_data(stream_id, b"\x00" + len(body).to_bytes(4, "big") + body, end_stream=True)
    _, writer = await asyncio.open_connection(*served.address.split(":"))
    writer.write(client.data_to_send())
    await until(lambda: served.routing.pins["slow"] == 5)
    writer.close()
    await writer.wait_closed()
    await until(lambda: served.routing.pins["slow"] == 0 and not served.front.connections)
    assert served.front.upstreams.open_connections() == 1


async def test_the_front_advertises_its_stream_and_header_limits(served: Front) -> None:
    reader, writer = await asyncio.open_connection(*served.address.split(":"))
    try:
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize())
        header = await asyncio.wait_for(reader.readexactly(9), 5)
        frame, length = Frame.parse_frame_header(memoryview(header))
        frame.parse_body(memoryview(await reader.readexactly(length)))
        assert isinstance(frame, SettingsFrame)
        assert frame.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 8
        assert frame.settings[SettingsFrame.MAX_HEADER_LIST_SIZE] == FrontLimits().max_header_list_bytes
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_long_error_message_reaches_its_client_and_nothing_else_fails(served: Front) -> None:
    async with grpc.aio.insecure_channel(served.address) as channel:
        infer = channel.unary_unary(INFER)
        served.runtime.hold.clear()
        slow = asyncio.ensure_future(infer(request("slow"), timeout=10))
        await until(lambda: served.routing.pins["slow"] == 1)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await infer(request("long-error"), timeout=10)
        assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (failed.value.details() or "").startswith("bad input: xxx")
        served.runtime.hold.set()
        assert await slow == ANSWER  # the same runtime connection carried both
        assert await infer(request("m"), timeout=10) == ANSWER
    assert served.front.upstreams.open_connections() == 1


async def test_a_request_reset_in_the_read_that_brought_it_holds_no_pin(served: Front) -> None:
    """The pin is taken once the request has gone to the runtime, after the rest of the read: a reset
    that came with the request leaves nothing pinned (and is counted nowhere as served)."""
    served.runtime.hold.clear()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    body = request("slow")
    for stream_id in (1, 3):
        client.send_headers(stream_id, REQUEST_HEADERS)
        client.send_data(stream_id, b"\x00" + len(body).to_bytes(4, "big") + body, end_stream=True)
    client.reset_stream(1)  # stream 1 is reset within the same bytes; stream 3 stays
    _, writer = await asyncio.open_connection(*served.address.split(":"))
    try:
        writer.write(client.data_to_send())
        await until(lambda: served.routing.pins["slow"] == 1 and served.runtime.calls >= 1)
        assert served.routing.pins["slow"] == 1  # stream 3's only
    finally:
        writer.close()
        await writer.wait_closed()
    await until(lambda: served.routing.pins["slow"] == 0 and not served.front.connections)
    served.runtime.hold.set()
    assert await call(served.address) == ANSWER
    assert all(count == 0 for count in served.routing.pins.values())
