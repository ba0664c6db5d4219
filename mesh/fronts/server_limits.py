"""Limits of the pod's grpc.aio servers and of its REST gateway, from the limit settings
(mesh/process/settings.py).

grpc.aio servers: ``grpc_server_options`` gives grpc core's channel arguments. ``public=True`` is a port
clients or peers connect to (the external and internal ports under ``--front=grpc``, a serving process's
share of the external port); ``public=False`` is a unix socket behind the HTTP/2 front (the relay), whose
few connections carry every client stream the front relays.

=============================  ==============================================  ===========================
setting                        grpc channel argument                           relay (public=False)
=============================  ==============================================  ===========================
max_message_bytes              grpc.max_receive_message_length,                the same
                               grpc.max_send_message_length
                               (mesh.proxy.message_size_options)
max_concurrent_streams         grpc.max_concurrent_streams (advertised in      max_connections x
                               SETTINGS; a stream past it is refused with      max_concurrent_streams
                               RST_STREAM REFUSED_STREAM)                      per connection
max_header_list_bytes          grpc.max_metadata_size (soft) and               twice the setting (what a
                               grpc.absolute_max_metadata_size (hard, also     client sent plus what the
                               advertised as MAX_HEADER_LIST_SIZE): equal, so  pods add on the way)
                               the limit is exact, not probabilistic
max_connections                grpc.max_allowed_incoming_connections (per      not set
                               port and process; a connection past it is
                               closed as it is accepted)
idle_timeout_s                 grpc.max_connection_idle_ms (no call open:      not set
                               GOAWAY, then close); grpc.keepalive_time_ms
                               (a connection silent that long is pinged)
handshake_timeout_s            grpc.server_handshake_timeout_ms (accept to     not set
                               the client's SETTINGS); grpc.keepalive_timeout_ms
                               (time for the client to answer that ping)
(fixed)                        grpc.http2.max_ping_strikes = 2,                not set
                               grpc.http2.min_ping_interval_without_data_ms =
                               5000, grpc.keepalive_permit_without_calls = 1:
                               a client pinging more often than every 5 s
                               without data gets GOAWAY ENHANCE_YOUR_CALM
                               ("too_many_pings") on its third early ping
reuse_port (argument)          grpc.so_reuseport                               the same
=============================  ==============================================  ===========================

Not mapped, because grpc core has no argument for them: ``write_buffer_bytes`` and ``max_buffered_bytes``
(grpc's flow-control windows and its resource quota bound what a connection holds), ``max_resets_per_s``
(grpc core's own rapid-reset defences: a reset stream counts against the stream limit until it is freed),
``max_header_block_bytes`` / ``max_continuation_frames`` (grpc core applies its metadata limit while it
decodes), ``request_read_timeout_s`` (a stream whose request never completes holds one of its connection's
streams until the client's deadline; the stream and connection limits bound how many).

REST gateway (aiohttp): ``RestLimits`` and ``listen``.

- ``max_message_bytes``: the body limit (``client_max_size``), counted on the bytes as they arrive:
  bodies are never decoded (``auto_decompress=False``; a ``Content-Encoding`` is the runtime's to
  decode), and a larger ``Content-Length`` is refused before the body is read. 413.
- ``max_header_list_bytes``: a request's headers may add up to this many bytes (RFC 7541 sizes: name +
  value + 32 each, as on the gRPC ports; 431); aiohttp's own parser limits (``max_line_size``,
  ``max_field_size``: half of it, ``max_headers``: a 128th of it) bound what one header block can make it
  hold before then (aiohttp's defaults at the default setting; past them aiohttp answers 400 itself).
- ``idle_timeout_s``: aiohttp's ``keepalive_timeout``: a connection waiting for a request is closed.
- ``request_read_timeout_s``: a request must arrive in full (headers and body) within this of its first
  byte: slow headers get 408 from the connection guard, a slow body 408 from the handler reading it; either
  way the connection is closed.
- ``max_connections``: connections per REST listener; one past it is answered 503 and closed.

Every error the listener answers is ``{"error": ...}`` as JSON, the parser's own (a malformed request line
or header: 400) included (``JsonErrorHandler``).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from aiohttp import StreamReader, web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_protocol import RequestHandler

from mesh.fronts.grpc_proxy import message_size_options

if TYPE_CHECKING:
    from mesh.process.settings import Settings

GRPC_INT_MAX = 2**31 - 1  # channel arguments are C ints
JSON_TYPE = "application/json"
MAX_PING_STRIKES = 2  # early pings tolerated before GOAWAY (grpc core's default)
MIN_PING_INTERVAL_MS = 5000  # pings closer than this, with no data sent in between, are early


def _ms(seconds: float) -> int:
    return max(1, min(GRPC_INT_MAX, round(seconds * 1000)))


def _count(value: int) -> int:
    # grpc core asserts that a connection cap is below INT_MAX
    return max(0, min(GRPC_INT_MAX - 1, value))


def relay_stream_limit(settings: Settings) -> int:
    """Streams one relay connection may carry: every stream the front's clients may have open at once."""
    return _count(settings.max_connections * settings.max_concurrent_streams)


def grpc_server_options(settings: Settings, *, public: bool, reuse_port: bool) -> list[tuple[str, int | str]]:
    """grpc core channel arguments of one of the pod's grpc.aio servers (the table above)."""
    # Without --serving-processes, a port in use is an error, not a silent share.
    options: list[tuple[str, int | str]] = [
        *message_size_options(settings.max_message_bytes),
        ("grpc.so_reuseport", int(reuse_port)),
    ]
    if not public:
        header_bytes = _count(2 * settings.max_header_list_bytes)
        return [
            *options,
            ("grpc.max_concurrent_streams", relay_stream_limit(settings)),
            ("grpc.max_metadata_size", header_bytes),
            ("grpc.absolute_max_metadata_size", header_bytes),
        ]
    header_bytes = _count(settings.max_header_list_bytes)
    return [
        *options,
        ("grpc.max_concurrent_streams", _count(settings.max_concurrent_streams)),
        ("grpc.max_metadata_size", header_bytes),
        ("grpc.absolute_max_metadata_size", header_bytes),
        ("grpc.max_allowed_incoming_connections", _count(settings.max_connections)),
        ("grpc.max_connection_idle_ms", _ms(settings.idle_timeout_s)),
        ("grpc.server_handshake_timeout_ms", _ms(settings.handshake_timeout_s)),
        ("grpc.keepalive_time_ms", _ms(settings.idle_timeout_s)),
        ("grpc.keepalive_timeout_ms", _ms(settings.handshake_timeout_s)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
    ]


# --- the REST gateway ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestLimits:
    """What one client may make the REST gateway hold; the defaults are mesh/process/settings.py's."""

    max_header_list_bytes: int = 16384
    max_connections: int = 4096
    idle_timeout_s: float = 300.0
    request_read_timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RestLimits:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})

    def handler_args(self) -> dict[str, Any]:
        """aiohttp's request handler arguments (``web.AppRunner(app, **handler_args)``)."""
        return {
            "keepalive_timeout": self.idle_timeout_s,
            "max_line_size": max(1024, self.max_header_list_bytes // 2),
            "max_field_size": max(1024, self.max_header_list_bytes // 2),
            "max_headers": max(16, self.max_header_list_bytes // 128),
            "auto_decompress": False,  # bodies reach the runtime as the client encoded them
            "access_log": None,
        }


def header_list_bytes(request: web.BaseRequest) -> int:
    """The request's headers as RFC 7541 counts a header list: name + value + 32 each."""
    return sum(len(name) + len(value) + 32 for name, value in request.raw_headers)


def error_bytes(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer ``{"error": message}`` that closes the connection (written below aiohttp)."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {JSON_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGuard(asyncio.Protocol):
    """One REST connection: counted against the listener's cap, its requests timed from their first byte.

    aiohttp's request handler runs inside, on the same transport. The gateway's middleware tells the guard
    when a request reaches a handler (the headers are in: the handler times the body from ``started``) and
    when the handler is done; bytes that then arrive start the next request's clock.
    """

    def __init__(self, listener: GuardedListener, inner: asyncio.Protocol) -> None:
        self._listener = listener
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._refused = False
        self._in_handler = False
        self._draining: StreamReader | None = None  # a body its handler left unread
        self._timer: asyncio.TimerHandle | None = None
        self.started: float | None = None  # loop time of the current request's first byte

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self._transport = transport
        if not self._listener.admit(self):
            self._refused = True
            transport.write(self._listener.refusal)
            transport.close()
            return
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._inner.data_received(data)
        if self._draining is not None and self._draining.is_eof():
            self._draining = None
        if self.started is None and not self._in_handler and self._draining is None:
            loop = asyncio.get_running_loop()
            self.started = loop.time()
            self._timer = loop.call_at(
                self.started + self._listener.limits.request_read_timeout_s, self._late
            )

    def eof_received(self) -> bool | None:
        return None if self._refused else self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.release(self)
        self._cancel_timer()
        if not self._refused:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self._refused:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if not self._refused:
            self._inner.resume_writing()

    def handler_started(self) -> None:
        """The request's headers are in and its handler runs: the handler times its body."""
        self._in_handler = True
        self._cancel_timer()

    def handler_done(self, body: StreamReader) -> None:
        self._in_handler = False
        self.started = None
        self._draining = None if body.is_eof() else body  # aiohttp reads the rest or closes the connection

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _late(self) -> None:
        """The request's headers did not arrive in time: 408 and close (aiohttp is still waiting for them)."""
        self._timer = None
        if self._in_handler or self._transport is None or self._transport.is_closing():
            return
        timeout = self._listener.limits.request_read_timeout_s
        self._transport.write(
            error_bytes(408, "Request Timeout", f"the request headers did not arrive within {timeout:g} s")
        )
        self._transport.close()


class JsonErrorHandler(RequestHandler):
    """aiohttp's request handler, whose own error answers (a request it cannot parse, a handler that
    crashed) are ``{"error": ...}`` like every other answer of the gateway, with the same status."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)  # logs, and refuses a late answer
        text = message if status != 500 and message else (plain.reason or "Internal Server Error")
        response = json_error(plain.status, text)
        response.force_close()
        return response


class GuardedListener:
    """A REST port: aiohttp's protocol factory behind ``ConnectionGuard``, at most ``max_connections``."""

    def __init__(self, runner: web.AppRunner, limits: RestLimits) -> None:
        self.limits = limits
        self._runner = runner
        self._connections: set[ConnectionGuard] = set()
        self._server: asyncio.Server | None = None
        self.refusal = error_bytes(
            503, "Service Unavailable", f"this port has its {limits.max_connections} connections open"
        )

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def admit(self, guard: ConnectionGuard) -> bool:
        if len(self._connections) >= self.limits.max_connections:
            return False
        self._connections.add(guard)
        return True

    def release(self, guard: ConnectionGuard) -> None:
        self._connections.discard(guard)

    async def start(
        self, host: str, port: int, backlog: int = 128, tls: ssl.SSLContext | None = None
    ) -> None:
        handlers = self._runner.server
        assert handlers is not None, "runner.setup() first"
        loop = asyncio.get_running_loop()
        handler_args = self.limits.handler_args()

        def connection() -> ConnectionGuard:
            return ConnectionGuard(self, JsonErrorHandler(handlers, loop=loop, **handler_args))

        self._server = await loop.create_server(
            connection,
            host,
            port,
            backlog=backlog,
            reuse_address=True,
            ssl=tls,
            ssl_handshake_timeout=self.limits.request_read_timeout_s if tls is not None else None,
        )

    def close(self) -> None:
        """Stop accepting; the runner's cleanup closes the connections."""
        if self._server is not None:
            self._server.close()


def guard_of(request: web.BaseRequest) -> ConnectionGuard | None:
    transport = request.transport
    guard = transport.get_protocol() if transport is not None else None
    return guard if isinstance(guard, ConnectionGuard) else None


def request_deadline(request: web.BaseRequest, timeout_s: float) -> float:
    """Loop time by which the request must be in full: ``timeout_s`` after its first byte."""
    guard = guard_of(request)
    started = guard.started if guard is not None else None
    return (started if started is not None else asyncio.get_running_loop().time()) + timeout_s


def json_response(data: object, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON answer typed exactly ``application/json``, as Triton and MLServer type theirs (JSON is UTF-8
    and has no charset parameter; the KServe SDK reads an error's message only under this exact type)."""
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers=headers, content_type=JSON_TYPE
    )


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response({"error": message}, status, headers)


def guard_middleware(max_header_list_bytes: int) -> Middleware:
    """Tells each request's ConnectionGuard when its handler runs; 431 for a header list over the limit."""

    @web.middleware
    async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        guard = guard_of(request)
        if guard is not None:
            guard.handler_started()
        try:
            size = header_list_bytes(request)
            if size > max_header_list_bytes:
                response = json_error(
                    431, f"the request headers are {size} bytes; the limit is {max_header_list_bytes}"
                )
                response.force_close()
                return response
            return await handler(request)
        finally:
            if guard is not None:
                guard.handler_done(request.content)

    return guarded


JSON_CHECK_MAX_BYTES = 1 << 20  # parsing costs the event loop ~15 ms per MiB: larger JSON goes unchecked
BINARY_HEADER = "Inference-Header-Content-Length"  # v2 binary extension: the JSON is this long


def content_encoded(headers: Mapping[str, str]) -> bool:
    """Whether the body is in a ``Content-Encoding`` (it then goes on as it came, unread by the mesh)."""
    return headers.get("Content-Encoding", "").strip().lower() not in ("", "identity")


def json_part_error(body: bytes, headers: Mapping[str, str]) -> str | None:
    """Why the JSON part of a v2 infer body is not a JSON object (None if it is, or is too long to check)."""
    raw_length = headers.get(BINARY_HEADER)
    if raw_length is None:
        document = body
    else:
        try:
            length = int(raw_length)
        except ValueError:
            return f"{BINARY_HEADER} {raw_length!r} is not a number"
        if not 0 <= length <= len(body):
            return f"{BINARY_HEADER} {length} is outside the {len(body)}-byte body"
        document = body[:length]
    if len(document) > JSON_CHECK_MAX_BYTES:
        return None
    try:
        parsed = json.loads(document)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        return f"the request body is not valid JSON: {e}"
    if not isinstance(parsed, dict):
        return "the request body is not a JSON object"
    return None


async def read_body(
    request: web.Request, max_body_bytes: int, timeout_s: float, check_json: bool = False
) -> bytes | web.Response:
    """The request's body as it came (never decoded), or the error to answer: 413, 408 or 400.

    ``check_json``: a v2 infer body's JSON part must be a JSON object, when the mesh can see it without
    decoding: an encoded body goes to the runtime unchecked. After an error the connection is not reused:
    aiohttp reads and drops what is left of the body (for up to its lingering time, so the client can read
    the answer); a slow or broken one is not waited for: the answer is sent and the connection closed.
    """
    length = request.content_length
    if length is not None and length > max_body_bytes:
        return _last(json_error(413, f"the request body is {length} bytes; the limit is {max_body_bytes}"))
    try:
        async with asyncio.timeout_at(request_deadline(request, timeout_s)):
            body = await request.read()
    except TimeoutError:
        return await _closing(
            request, json_error(408, f"the request did not arrive in full within {timeout_s:g} s")
        )
    except web.HTTPRequestEntityTooLarge:
        return _last(json_error(413, f"the request body is over the limit of {max_body_bytes} bytes"))
    except web.RequestPayloadError as e:  # a broken chunked body
        reason = str(e).strip().splitlines()[-1].strip()
        return await _closing(request, json_error(400, f"the request body could not be read: {reason}"))
    problem = (
        json_part_error(body, request.headers)
        if check_json and not content_encoded(request.headers)
        else None
    )
    return body if problem is None else json_error(400, problem)


def _last(response: web.Response) -> web.Response:
    """The connection's last answer (aiohttp drops the rest of the body, then closes)."""
    response.force_close()
    return response


async def _closing(request: web.Request, response: web.Response) -> web.Response:
    """Send ``response`` now, then close the connection: the rest of the body is not read."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()
    return response
