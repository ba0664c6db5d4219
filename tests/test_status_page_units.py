"""The status page's pure parts (mesh/status_page: has the snapshot changed, the event stream's bytes, the
shared feed) and its handlers against aiohttp's test server with a fake snapshot: the page and its assets,
events at once and on every change, heartbeats, the cap on streams (503 JSON) and the slots that closed,
slow, expired and shut-down streams give back; and the streams behind the REST port's own guard."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from harness.processes import free_port
from mesh.fronts.rest import json_errors
from mesh.fronts.server_limits import GuardedListener, RestLimits, guard_middleware
from mesh.registry.records import InstanceRecord, LoadFailure, ModelRecord, VModelRecord
from mesh.registry.snapshot import mesh_status
from mesh.status_page import (
    CSP,
    EventLimits,
    StatusFeed,
    StatusPage,
    changed,
    sse_comment,
    sse_event,
    sse_retry,
    status_routes,
)

FAST = EventLimits(check_interval_s=0.02, heartbeat_s=60.0, write_timeout_s=2.0, retry_ms=500)
READ_S = 5.0  # the longest any one read of a stream may take in these tests


def a_snapshot(now_ms: int = 1_000_000, **extra_models: ModelRecord) -> dict[str, Any]:
    """What Router.mesh_status answers, from records (the real function)."""
    models = {
        "held": ModelRecord(type="sklearn", holders={"pod-a": now_ms - 10}),
        "busy": ModelRecord(type="sklearn", loading={"pod-a": now_ms - 5}),
        "bad": ModelRecord(type="sklearn", failures={"pod-a": LoadFailure(now_ms - 100, "no such file")}),
        **extra_models,
    }
    instances = {"pod-a": InstanceRecord(address="h:1", capacity_bytes=1000, used_bytes=250, model_count=1)}
    vmodels = {"v": VModelRecord(active="held", target="busy")}
    return mesh_status(models, instances, vmodels, {"pod-a"}, "pod-a", now_ms, 60_000)


@dataclass
class FakeMesh:
    """A snapshot callable whose answer the test changes; counts its calls."""

    snapshot: dict[str, Any] = field(default_factory=a_snapshot)
    calls: int = 0
    fail: bool = False

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("the view is gone")
        return self.snapshot


# --- pure ---------------------------------------------------------------------------------------------


def test_only_a_new_clock_is_no_change() -> None:
    before = a_snapshot(1_000_000)
    assert changed(None, before)
    assert not changed(before, a_snapshot(1_000_000))
    assert not changed(before, {**before, "time_ms": 2_000_000})
    moved = json.loads(json.dumps(before))
    moved["pods"][0]["used_bytes"] += 1
    assert changed(before, moved)
    assert changed(before, a_snapshot(1_000_000, new=ModelRecord(type="sklearn")))


def parse_events(raw: bytes) -> list[dict[str, str]]:
    """Server-sent events as a browser reads them (fields per event; data lines joined by newlines)."""
    events = []
    for block in raw.decode().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = fields[name] + "\n" + value if name == "data" and name in fields else value
        if fields:
            events.append(fields)
    return events


def test_an_event_carries_its_name_id_and_every_line_of_its_data() -> None:
    raw = sse_event('{"a":1}', "snapshot", 7)
    assert raw == b'event: snapshot\nid: 7\ndata: {"a":1}\n\n'
    assert parse_events(sse_event("one\ntwo\r\nthree\rfour", "x", 1)) == [
        {"event": "x", "id": "1", "data": "one\ntwo\nthree\nfour"}
    ]
    # data cannot end the event early or forge a field
    assert parse_events(sse_event("a\n\nevent: forged\nid: 99", "snapshot", 2)) == [
        {"event": "snapshot", "id": "2", "data": "a\n\nevent: forged\nid: 99"}
    ]


def test_comments_and_retry_are_not_events() -> None:
    assert sse_comment("heartbeat") == b": heartbeat\n\n"
    assert sse_comment("a\nb") == b": a\n: b\n\n"
    assert sse_retry(1500) == b"retry: 1500\n\n"
    assert parse_events(sse_comment("x\ndata: y") + sse_retry(10)) == [{"retry": "10"}]


def test_the_feed_asks_once_per_interval_and_counts_only_changes() -> None:
    mesh = FakeMesh()
    now = [0.0]
    feed = StatusFeed(mesh, max_age_s=1.0, clock=lambda: now[0])
    version, payload = feed.current()
    assert version == 1 and json.loads(payload) == mesh.snapshot
    assert feed.current() == (1, payload) and mesh.calls == 1  # fresh enough: not asked again
    now[0] = 1.0
    mesh.snapshot = {**mesh.snapshot, "time_ms": 5}
    assert feed.current() == (1, payload) and mesh.calls == 2  # asked; only the clock moved
    now[0] = 2.0
    mesh.snapshot = a_snapshot(extra=ModelRecord(type="sklearn"))
    version, newer = feed.current()
    assert version == 2 and json.loads(newer)["models"]["registered"] == 4


def test_a_failing_snapshot_keeps_the_last_picture() -> None:
    mesh = FakeMesh()
    now = [0.0]
    feed = StatusFeed(mesh, max_age_s=1.0, clock=lambda: now[0])
    first = feed.current()
    mesh.fail = True
    now[0] = 5.0
    assert feed.current() == first


# --- the handlers -------------------------------------------------------------------------------------


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], StatusPage, FakeMesh]]:
    mesh = FakeMesh()
    page = StatusPage(mesh, EventLimits(**{**FAST.__dict__, "max_streams": 2}))
    app = web.Application()
    app.add_routes(page.routes())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client, page, mesh


class EventReader:
    """Reads one stream's events and comments as they come."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def next_event(self, timeout_s: float = READ_S) -> dict[str, str]:
        async with asyncio.timeout(timeout_s):
            while True:
                block = await self._block()
                comments = [line[1:].strip() for line in block.split("\n") if line.startswith(":")]
                self.comments.extend(comments)
                events = parse_events(block.encode() + b"\n\n")
                if events and "data" in events[0]:
                    return events[0]

    async def next_comment(self, timeout_s: float = READ_S) -> str:
        seen = len(self.comments)
        async with asyncio.timeout(timeout_s):
            while len(self.comments) == seen:
                block = await self._block()
                assert not any(line.startswith("data") for line in block.split("\n")), block
                self.comments.extend(line[1:].strip() for line in block.split("\n") if line.startswith(":"))
        return self.comments[seen]

    async def _block(self) -> str:
        lines: list[str] = []
        while True:
            line = await self.response.content.readline()
            if not line:
                raise EOFError("the stream ended")
            text = line.decode().rstrip("\n")
            if not text:
                return "\n".join(lines)
            lines.append(text)


@asynccontextmanager
async def stream(client: TestClient[web.Request, web.Application]) -> AsyncIterator[EventReader]:
    async with client.get("/status/events") as response:
        assert response.status == 200, await response.text()
        yield EventReader(response)


async def until(check: Any, timeout_s: float = READ_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 (the handlers' state, polled)
            await asyncio.sleep(0.01)


async def test_the_page_and_its_assets_are_served_from_the_package(served: Any) -> None:
    client, _, _ = served
    async with client.get("/status") as page:
        assert page.status == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
        assert page.headers["Content-Security-Policy"] == CSP
        html = await page.text()
    assert '<script src="/status/static/status.js"' in html and "status.css" in html
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere
    for name, kind in (("status.js", "text/javascript"), ("status.css", "text/css")):
        async with client.get(f"/status/static/{name}") as asset:
            assert asset.status == 200 and asset.headers["Content-Type"] == f"{kind}; charset=utf-8"
            assert len(await asset.read()) > 1000
    script = await (await client.get("/status/static/status.js")).text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "document.write" not in script
    async with client.get("/status/static/..%2F__init__.py") as missing:
        assert missing.status == 404 and missing.headers["Content-Type"] == "application/json"
        assert "error" in await missing.json()


async def test_a_stream_sends_the_snapshot_at_once_and_each_change(served: Any) -> None:
    client, _, mesh = served
    async with client.get("/status/events") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-store"
        assert (await response.content.readline()) == b"retry: 500\n"
        reader = EventReader(response)
        first = await reader.next_event()
        assert first["event"] == "snapshot" and first["id"] == "1"
        assert json.loads(first["data"]) == mesh.snapshot
        mesh.snapshot = a_snapshot(extra=ModelRecord(type="sklearn"))
        second = await reader.next_event()
        assert second["id"] == "2" and json.loads(second["data"])["models"]["registered"] == 4
        mesh.snapshot = a_snapshot(extra=ModelRecord(type="sklearn", holders={"pod-a": 1}))
        third = json.loads((await reader.next_event())["data"])
        assert "extra" in third["pods"][0]["models"]


async def test_an_unchanged_snapshot_sends_only_heartbeats() -> None:
    mesh = FakeMesh()
    page = StatusPage(mesh, EventLimits(**{**FAST.__dict__, "heartbeat_s": 0.1}))
    app = web.Application()
    app.add_routes(page.routes())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client, stream(client) as reader:
        await reader.next_event()
        mesh.snapshot = {**mesh.snapshot, "time_ms": mesh.snapshot["time_ms"] + 1000}  # the clock only
        assert await reader.next_comment() == "heartbeat"
        assert await reader.next_comment() == "heartbeat"  # next_comment fails on any event between


async def test_streams_share_one_snapshot_per_interval() -> None:
    mesh = FakeMesh()
    page = StatusPage(mesh, EventLimits(**{**FAST.__dict__, "check_interval_s": 0.2}))
    app = web.Application()
    app.add_routes(page.routes())
    async with (
        TestClient(TestServer(app, host="127.0.0.1")) as client,
        stream(client) as a,
        stream(client) as b,
        stream(client) as c,
    ):
        for reader in (a, b, c):
            await reader.next_event()
        before = mesh.calls
        await asyncio.sleep(1.0)
        # three streams looking five times a second ask at most ~twice per interval between them
        assert mesh.calls - before <= 12, mesh.calls - before


async def test_streams_past_the_cap_are_refused_and_a_closed_one_frees_its_slot(served: Any) -> None:
    client, page, _ = served
    async with stream(client) as one:
        await one.next_event()
        async with stream(client) as two:
            await two.next_event()
            assert page.open_streams == 2
            async with client.get("/status/events") as third:
                assert third.status == 503 and third.headers["Content-Type"] == "application/json"
                assert "2 status event streams are open" in (await third.json())["error"]
                assert third.headers["Retry-After"] == "5"
            async with client.get("/status") as page_itself:  # the page and everything else still answer
                assert page_itself.status == 200
        await until(lambda: page.open_streams == 1)  # the client went away: its slot is free
        async with stream(client) as again:
            assert json.loads((await again.next_event())["data"])["leader"] == "pod-a"
    await until(lambda: page.open_streams == 0)


async def test_a_client_that_drops_its_socket_frees_its_slot(served: Any) -> None:
    client, page, _ = served
    for _ in range(5):  # more than the cap, one after another
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(b"GET /status/events HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(READ_S):
            assert b"200 OK" in await reader.readuntil(b"\r\n\r\n")
            await reader.readuntil(b"event: snapshot")
        writer.transport.abort()  # no FIN handshake: the socket is just gone
        await until(lambda: page.open_streams == 0)


async def test_a_client_that_does_not_read_loses_its_stream() -> None:
    big = "m" * 1000
    counter = iter(range(10**9))

    def growing() -> dict[str, Any]:  # a new ~2 MB picture every time it is asked
        n = next(counter)
        return {"time_ms": n, "n": n, "models": [f"{big}-{n}-{i}" for i in range(2000)]}

    page = StatusPage(growing, EventLimits(**{**FAST.__dict__, "write_timeout_s": 0.5}))
    app = web.Application()
    app.add_routes(page.routes())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        sock = socket.create_connection(("127.0.0.1", client.port))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /status/events HTTP/1.1\r\nHost: x\r\n\r\n")
            await until(lambda: page.open_streams == 1)
            await until(lambda: page.open_streams == 0, timeout_s=30)  # never read: dropped
        finally:
            sock.close()


async def test_a_stream_ends_cleanly_after_its_lifetime() -> None:
    mesh = FakeMesh()
    page = StatusPage(mesh, EventLimits(**{**FAST.__dict__, "max_stream_s": 0.3}))
    app = web.Application()
    app.add_routes(page.routes())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client, stream(client) as reader:
        await reader.next_event()
        async with asyncio.timeout(READ_S):
            rest = await reader.response.content.read()  # the end of the chunked body: EOF
        assert parse_events(rest) == []
        assert page.open_streams == 0


async def test_a_server_shutting_down_ends_its_streams_at_once() -> None:
    mesh = FakeMesh()
    page = StatusPage(mesh, FAST)
    app = web.Application()
    app.add_routes(page.routes())
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(server.make_url("/status/events")) as response,
        ):
            await EventReader(response).next_event()
            loop = asyncio.get_running_loop()
            started = loop.time()
            await server.close()  # the runner's cleanup would wait 60 s for a handler that runs on
            assert loop.time() - started < 3.0
            with suppress(aiohttp.ClientError):
                await response.content.read()
        assert page.open_streams == 0
    finally:
        await server.close()


async def test_status_routes_serves_the_page_and_the_stream() -> None:
    app = web.Application()
    app.add_routes(status_routes(FakeMesh(), FAST))
    paths = {route.resource.canonical for route in app.router.routes() if route.resource is not None}
    assert {"/status", "/status/events", "/status/static/{name}"} <= paths


@pytest.fixture
def guarded_limits() -> Iterator[RestLimits]:
    # the REST port's connection guard with short timeouts: a stream must outlive them
    yield RestLimits(max_connections=8, idle_timeout_s=0.3, request_read_timeout_s=0.3)


async def test_a_stream_behind_the_rest_port_s_guard_outlives_its_timeouts(
    guarded_limits: RestLimits,
) -> None:
    mesh = FakeMesh()
    page = StatusPage(mesh, FAST)
    app = web.Application(middlewares=[json_errors, guard_middleware(guarded_limits.max_header_list_bytes)])
    app.add_routes(page.routes())
    runner = web.AppRunner(app, **guarded_limits.handler_args())
    await runner.setup()
    listener = GuardedListener(runner, guarded_limits)
    port = free_port()
    await listener.start("127.0.0.1", port)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/status/events") as response,
        ):
            reader = EventReader(response)
            await reader.next_event()
            await asyncio.sleep(1.0)  # past the request-read and idle timeouts
            mesh.snapshot = a_snapshot(extra=ModelRecord(type="sklearn"))
            assert (await reader.next_event())["id"] == "2"
        await until(lambda: page.open_streams == 0)
        assert listener.open_connections <= 1
    finally:
        listener.close()
        await runner.cleanup()
