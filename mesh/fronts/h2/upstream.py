"""The front's upstream connections: to this pod's runtime, to its relay (grpc.aio on a unix socket) and to
each peer's internal port. They belong to the pod, not to a client: every client connection's streams are
multiplexed over them, a target gets another connection only when the ones it has are at the peer's
MAX_CONCURRENT_STREAMS, and closing a client connection resets its upstream streams but closes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import TYPE_CHECKING

from mesh.fronts.h2.endpoint import H2Endpoint, WriteBatch
from mesh.fronts.h2.wire import Headers

if TYPE_CHECKING:
    from mesh.fronts.h2.front import ClientStream

log = logging.getLogger(__name__)

RUNTIME = "runtime"
RELAY = "relay"
CONNECT_TIMEOUT_S = 5.0
MAX_CONNECTIONS_PER_TARGET = 16


class Upstreams:
    """Connections per target, and which client stream each upstream stream answers."""

    def __init__(
        self, runtime_address: str, relay_path: str, batch: WriteBatch, peer_ssl: ssl.SSLContext | None = None
    ) -> None:
        self._peer_ssl = peer_ssl  # peers' internal ports: mutual TLS when the pods have certificates
        host, _, port = runtime_address.rpartition(":")
        self._runtime = (host, int(port))
        self._relay_path = relay_path
        self._batch = batch
        self._pools: dict[str, list[H2Endpoint]] = {}
        self._opening: dict[str, asyncio.Task[H2Endpoint]] = {}
        self._streams: dict[H2Endpoint, dict[int, ClientStream]] = {}
        self._target: dict[H2Endpoint, str] = {}
        self._waiting: set[asyncio.Task[None]] = set()

    # -- sending ------------------------------------------------------------------------------
    def send(self, stream: ClientStream, to: str, headers: Headers, body: bytes, end_stream: bool) -> None:
        endpoint = self._ready(to)
        if endpoint is not None:
            self._start(stream, endpoint, headers, body, end_stream)
            return
        waiter = asyncio.ensure_future(self._send_when_open(stream, to, headers, body, end_stream))
        self._waiting.add(waiter)
        waiter.add_done_callback(self._waiting.discard)

    def detach(self, stream: ClientStream) -> None:
        if stream.upstream is not None:
            self._streams.get(stream.upstream, {}).pop(stream.upstream_id, None)
            stream.upstream = None

    def close(self) -> None:
        for task in list(self._waiting) + list(self._opening.values()):
            task.cancel()
        for endpoint in list(self._target):
            endpoint.hard_close()

    def open_connections(self) -> int:
        return len(self._target)

    def _ready(self, to: str) -> H2Endpoint | None:
        """A connection to ``to`` with room for one more stream, or None (one is being opened)."""
        pool = self._pools.get(to, [])
        for endpoint in pool:
            if endpoint.accepting and len(self._streams.get(endpoint, ())) < endpoint.peer_max_streams:
                return endpoint
        if to not in self._opening and len(pool) >= MAX_CONNECTIONS_PER_TARGET:
            open_ones = [e for e in pool if e.accepting]
            if open_ones:  # at the cap: the least loaded one (the peer refuses what it cannot take)
                return min(open_ones, key=lambda e: len(self._streams.get(e, ())))
        return None

    async def _send_when_open(
        self, stream: ClientStream, to: str, headers: Headers, body: bytes, end_stream: bool
    ) -> None:
        while True:
            try:
                endpoint = await asyncio.shield(self._opened(to))
            except (OSError, ConnectionError, TimeoutError) as e:
                log.warning("front: cannot reach the %s: %s", to, e)
                if stream.connection.alive(stream):
                    with self._batch:
                        stream.connection.upstream_lost(stream, to, e)
                return
            if not stream.connection.alive(stream):
                return  # the client gave up meanwhile
            ready = self._ready(to)
            if ready is None and endpoint.accepting:
                ready = endpoint  # opened for this stream
            if ready is not None:
                late = stream.connection.late_body(stream)
                with self._batch:
                    self._start(stream, ready, headers, body + late, end_stream or stream.ended)
                return

    def _opened(self, to: str) -> asyncio.Task[H2Endpoint]:
        task = self._opening.get(to)
        if task is None:
            task = asyncio.ensure_future(self._open(to))
            self._opening[to] = task
            task.add_done_callback(
                lambda done: self._opening.pop(to, None) if self._opening.get(to) is done else None
            )
            task.add_done_callback(_retrieve)
        return task

    def _opened_done(self, to: str, task: asyncio.Task[H2Endpoint]) -> None:
        if self._opening.get(to) is task:
            del self._opening[to]

    async def _open(self, to: str) -> H2Endpoint:
        loop = asyncio.get_running_loop()

        def endpoint() -> H2Endpoint:
            return H2Endpoint(self, client_side=True, batch=self._batch)

        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            if to == RELAY:
                _, opened = await loop.create_unix_connection(endpoint, self._relay_path)
            elif to == RUNTIME:
                _, opened = await loop.create_connection(endpoint, *self._runtime)
            else:
                host, _, port = to.rpartition(":")
                if self._peer_ssl is None:
                    _, opened = await loop.create_connection(endpoint, host, int(port))
                else:
                    _, opened = await loop.create_connection(
                        endpoint, host, int(port), ssl=self._peer_ssl, server_hostname=host
                    )
        self.add_connection(to, opened)
        return opened

    def add_connection(self, to: str, endpoint: H2Endpoint) -> None:
        """An opened connection to ``to`` joins its pool."""
        self._pools.setdefault(to, []).append(endpoint)
        self._target[endpoint] = to
        self._streams[endpoint] = {}

    def _start(
        self, stream: ClientStream, endpoint: H2Endpoint, headers: Headers, body: bytes, end_stream: bool
    ) -> None:
        stream.upstream = endpoint
        stream.upstream_id = endpoint.new_stream()
        self._streams.setdefault(endpoint, {})[stream.upstream_id] = stream
        endpoint.send_headers(stream.upstream_id, headers, end_stream and not body)
        if body:
            endpoint.send_data(stream.upstream_id, body, end_stream)

    # -- StreamHandler: what the upstream connections receive -----------------------------------
    def on_headers(self, endpoint: H2Endpoint, stream_id: int, headers: Headers, end_stream: bool) -> None:
        stream = self._streams.get(endpoint, {}).get(stream_id)
        if stream is not None:
            stream.connection.upstream_headers(stream, headers, end_stream)

    def on_data(self, endpoint: H2Endpoint, stream_id: int, data: bytes, end_stream: bool) -> None:
        stream = self._streams.get(endpoint, {}).get(stream_id)
        if stream is not None:
            stream.connection.upstream_data(stream, data, end_stream)

    def on_reset(self, endpoint: H2Endpoint, stream_id: int, code: int) -> None:
        stream = self._streams.get(endpoint, {}).pop(stream_id, None)
        if stream is not None:
            stream.upstream = None
            stream.connection.upstream_reset(stream, code)

    def on_closed(self, endpoint: H2Endpoint) -> None:
        to = self._target.pop(endpoint, "")
        with contextlib.suppress(ValueError):
            self._pools.get(to, []).remove(endpoint)
        orphans = self._streams.pop(endpoint, {})
        for stream in list(orphans.values()):
            stream.upstream = None
            stream.connection.upstream_lost(stream, to, None)

    def on_backlog(self, endpoint: H2Endpoint, high: bool) -> None:
        """The upstream is not taking what the clients send: stop reading the clients that feed it."""
        for connection in {s.connection for s in self._streams.get(endpoint, {}).values()}:
            connection.client.pause_for_upstream(high)


def _retrieve(task: asyncio.Task[H2Endpoint]) -> None:
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.exception()
