"""The floor of any proxy on asyncio: bytes in, bytes out, one backend connection per client connection.

No HTTP/2 parsing, no routing, no accounting: what the event loop, its transports and the socket calls cost
per request. The hop scenario puts it beside nginx and the mesh, so the part of the mesh's added latency that
any asyncio proxy pays on this machine is visible apart from the mesh's own work.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

from load_tests.naive_proxy import run_proxy, until_signalled


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Side(asyncio.Protocol):
    """One end of a pumped pair: what it reads goes to the other end; a full other end pauses it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None
        self._early: list[bytes] = []  # read before the other end was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        _nodelay(transport)

    def joined(self, other: _Side) -> None:
        self.other = other
        assert other.transport is not None
        for data in self._early:
            other.transport.write(data)
        self._early.clear()

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is None or other.transport is None:
            self._early.append(data)
        else:
            other.transport.write(data)

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()


class _Client(_Side):
    def __init__(self, backend: tuple[str, int]) -> None:
        super().__init__()
        self._backend = backend
        self._connecting: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(_Side, *self._backend)
        except OSError:
            assert self.transport is not None
            self.transport.close()
            return
        assert self.transport is not None and upstream.transport is not None
        if self.transport.is_closing():  # the client left while the backend connection opened
            upstream.transport.close()
            return
        upstream.joined(self)
        self.joined(upstream)


async def serve(listen: str, backend: str) -> None:
    host, port = listen.rsplit(":", 1)
    backend_host, backend_port = backend.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client((backend_host, int(backend_port))), host, int(port))
    await until_signalled()
    server.close()
    await server.wait_closed()


def main(argv: Sequence[str] | None = None) -> None:
    run_proxy(serve, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
