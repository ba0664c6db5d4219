"""The HTTP/2 front (``--front h2``): the external gRPC port (and the internal one), a stream at a time.

A grpc.aio server spends about half a millisecond of CPU on every call it proxies (load_tests:
RESULTS.md); this front takes the common call off it. Per stream, top to bottom:

  receive HEADERS + DATA -> ModelInfer / ModelMetadata in one uncompressed message? -> resolve the model
  (mm-* header or field 1) -> the route decision (mesh/routing/decision.py): serve here, or forward to a
  peer that holds it? -> here: write the concrete id into field 1 and send the frames to the runtime; to
  a peer: send them to its internal port -> pass the answer back.

Every other stream (the management API, health, reflection, server-level calls, models not loaded
anywhere, errors, streaming) is relayed frame by frame, unchanged, to the pod's grpc.aio server on its
unix socket, which does what it always did. An answer the general route would act on (the runtime lost
the model or is down; a peer redirected, failed the load or is down) is not passed on: the request is
replayed through the relay, which repairs the copy or goes to another pod. On the internal port
(``internal=True``) the peer names the model, and only a model loaded here takes the fast path.

Clients are served through ``h2`` (mesh/fronts/h2/client.py), which checks every frame against RFC 9113; the
front's own limits (mesh/fronts/h2/guard.py, ``FrontLimits``) bound what one client can make the pod hold.
Upstream connections (the runtime, the relay, each peer) are the pod's, shared by every client
connection (mesh/fronts/h2/upstream.py); a client connection holds only its own socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.trace import Span

from mesh.errors import MeshError, Reroute
from mesh.fronts.grpc_proxy import V2_SERVICE, MethodTable
from mesh.fronts.h2.client import ClientConnection, FrontLimits
from mesh.fronts.h2.endpoint import H2Endpoint, WriteBatch
from mesh.fronts.h2.upstream import RELAY, RUNTIME, Upstreams
from mesh.fronts.h2.wire import ErrorCode, Headers, clipped_trailers, grpc_error_headers, header
from mesh.observe.logs import RequestLog
from mesh.observe.metrics import CANCELLED, UNKNOWN, MeshMetrics, UncountedMetrics
from mesh.observe.tracing import Tracing, end_span
from mesh.outcomes import AVOID_HEADER, INTERNAL_MODEL_HEADER, from_http2_trailers
from mesh.registry.records import InstanceRecord
from mesh.routing.decision import ForwardTo, Route, ServeHere
from mesh.routing.target import RequestTarget, TargetError, TargetKind, request_target
from mesh.routing.wire import WireFormatError, with_model_id

log = logging.getLogger(__name__)

FAST_METHODS = (V2_SERVICE + "ModelInfer", V2_SERVICE + "ModelMetadata")
_DROPPED_UPSTREAM = (b"mm-", b"content-length")
INTERNAL_MODEL = INTERNAL_MODEL_HEADER.encode()
AVOID = AVOID_HEADER.encode()
V2_PATH = V2_SERVICE.encode()
FRONT_PATHS = ("fast", "fast_to_peer", "relayed", "replayed")
SWEEP_S = 0.5  # how often connections are checked against their timeouts
REQUEST_VIEWS_KEPT = 256  # distinct request header lists remembered (then forgotten all at once)
LISTEN_BACKLOG = 4096  # connections the kernel queues before accept: a connect burst waits, not fails


class FrontRouting(Protocol):
    """What the front asks of the routing: mesh/routing/router.py's Router in the main process, and a serving
    worker's own view in the others."""

    pod_id: str

    def model_id(self, target: RequestTarget) -> str: ...
    def decide(self, model_id: str, *, only_here: bool = False) -> Route: ...
    def instance(self, pod_id: str) -> InstanceRecord: ...
    def acquire(self, model_id: str, pod_id: str) -> None: ...
    def release(self, model_id: str, pod_id: str) -> None: ...


@dataclass(slots=True, eq=False)
class ClientStream:
    """One client stream and where it went."""

    connection: FrontStreams
    id: int
    headers: Headers
    buffered: bool  # a fast-path candidate: held until the request is complete
    started: float  # monotonic time of its HEADERS (the request-read timeout)
    body: bytearray = field(default_factory=bytearray)
    upstream: H2Endpoint | None = None
    upstream_id: int = 0
    model_id: str | None = None  # on the fast path: in flight for the model (released at the end)
    served_by: str = ""  # on the fast path: the pod serving it (this one, or a peer that holds the model)
    via_peer: bool = False  # on the fast path to a peer that holds the model
    ended: bool = False  # the client has sent all of its request
    response_headers: Headers | None = None
    response_body: bytearray = field(default_factory=bytearray)
    # what the metrics need (external inference streams): bytes each way, the answer's status
    path: str = ""
    counted: bool = False
    request_bytes: int = 0  # DATA bytes, one 5-byte gRPC prefix taken off when counted
    response_bytes: int = 0
    status: int = UNKNOWN  # until trailers say otherwise; a reset is CANCELLED
    sent_at: float = 0.0  # when the fast path sent it to the runtime (invoke_model)
    ms: float = 0.0  # how long it took, HEADERS to the end
    span: Span | None = None  # the fast path's span, when tracing is on


@dataclass(frozen=True, slots=True)
class RequestView:
    upstream: Headers  # what goes on to the runtime or a peer: no mm-* headers, no content-length
    named: tuple[tuple[str, str], ...] | None  # the mm-* headers, decoded; None: a binary one (the relay's)


@dataclass(frozen=True, slots=True)
class FastRoute:
    model_id: str
    pod: str  # the pod that serves it: this one, or a peer that holds the model
    body: bytes  # the gRPC message, with the concrete id in field 1 (to a peer: as the client sent it)
    peer_address: str | None = None  # None: this pod's runtime; else the holder's internal port


class H2Front:
    def __init__(
        self,
        router: FrontRouting,
        methods: MethodTable,
        runtime_address: str,
        relay_path: str,
        max_message_bytes: int,
        internal: bool = False,
        limits: FrontLimits | None = None,
        metrics: MeshMetrics | None = None,
        requests: RequestLog | None = None,
        tracing: Tracing | None = None,
        peer_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self._router = router
        self.tracing = tracing or Tracing.off()
        self.metrics = metrics or UncountedMetrics()
        self.requests = requests or RequestLog(router.pod_id)  # fast-path requests; the relay logs the rest
        self._internal = internal  # the internal port: peers name the model; served here or relayed
        self.max_message_bytes = max_message_bytes
        self.limits = limits or FrontLimits()
        self._fast = frozenset(
            m for m in FAST_METHODS if methods.refusal(m) is None and methods.id_path(m) == [1]
        )
        self.batch = WriteBatch()  # every write made while one read is handled goes out once per socket
        self.upstreams = Upstreams(runtime_address, relay_path, self.batch, peer_ssl)
        self._server: asyncio.base_events.Server | None = None
        self._sweeping: asyncio.Task[None] | None = None
        self.connections: set[ClientConnection] = set()
        self.accepting = True
        self._port = "internal" if internal else "external"
        self.refused_connections = 0
        self._idle = asyncio.Event()  # set when no stream is in flight (waited for on stop)
        self._views: dict[Headers, RequestView] = {}

    async def start(
        self, host: str, port: int, reuse_port: bool = False, tls: ssl.SSLContext | None = None
    ) -> None:
        """Listen; with ``tls``, clients speak TLS (ALPN h2), decrypted before the codec sees a byte."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(FrontStreams(self), self.limits, self.connections, self.batch),
            sock=listening_socket(host, port, reuse_port),
            backlog=LISTEN_BACKLOG,  # create_server listens again, with 100 unless told
            ssl=tls,
            ssl_handshake_timeout=self.limits.handshake_timeout_s if tls is not None else None,
        )
        self._sweeping = asyncio.create_task(self._sweep())

    async def stop(self, grace_s: float) -> None:
        """No new connections or streams; streams in flight get ``grace_s`` to finish; then GOAWAY."""
        self.accepting = False
        if self._server is not None:
            self._server.close()
        if any(c.streams for c in self.connections):
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        for connection in list(self.connections):
            connection.close(ErrorCode.NO_ERROR)
        if self._sweeping is not None:
            self._sweeping.cancel()
            await asyncio.gather(self._sweeping, return_exceptions=True)
        self.upstreams.close()

    async def _sweep(self) -> None:
        """Timeouts, checked for every connection twice a second rather than a timer per stream."""
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic()
            for connection in list(self.connections):
                connection.check_timeouts(now)

    # -- the decision ------------------------------------------------------------------------
    def fast_route(self, headers: Headers, body: bytes) -> FastRoute | None:
        """Where the request goes without the general route (the runtime here, or a holding peer), or None."""
        if len(body) < 5 or body[0] != 0:  # compressed, or no message: the relay handles it
            return None
        size = int.from_bytes(body[1:5], "big")
        if size != len(body) - 5 or size > self.max_message_bytes:
            return None
        if self._internal:
            return self._internal_route(headers, body)
        message = body[5:]
        named = self.request_view(headers).named
        if named is None:
            return None
        try:
            target = request_target(named, message)
            model_id = self._router.model_id(target)
            route = self._router.decide(model_id)
            if isinstance(route, ForwardTo):  # the peer writes the id into field 1 itself
                return FastRoute(model_id, route.pod, body, self._router.instance(route.pod).internal_address)
            if isinstance(route, ServeHere):
                field1 = target.id if target.kind is TargetKind.NAME else None
                return FastRoute(
                    model_id, self._router.pod_id, _with_model_id(body, message, model_id, field1)
                )
            return None  # a load, or an error: the general route's
        except (TargetError, MeshError, Reroute, WireFormatError):
            return None  # the relay words the error

    def request_view(self, headers: Headers) -> RequestView:
        """What the fast path reads of a request's headers. Remembered per header list: a client's repeated
        header blocks decode to the same list (mesh/fronts/h2/wire.py, BlockDecoder)."""
        view = self._views.get(headers)
        if view is None:
            named = tuple(
                (k.decode("latin-1"), v.decode("utf-8", "replace"))
                for k, v in headers
                if k.startswith(b"mm-")
            )
            view = RequestView(
                tuple((k, v) for k, v in headers if not k.startswith(_DROPPED_UPSTREAM)),
                None if any(key.endswith("-bin") for key, _ in named) else named,
            )
            if len(self._views) >= REQUEST_VIEWS_KEPT:
                self._views.clear()
            self._views[headers] = view
        return view

    def _internal_route(self, headers: Headers, body: bytes) -> FastRoute | None:
        """A peer's forwarded request: straight to the runtime when the model is loaded here.

        Anything the peer handler has to decide (a load, the peer's avoid list) is relayed to it.
        """
        model = header(headers, INTERNAL_MODEL)
        if model is None or header(headers, AVOID) is not None:
            return None
        model_id = model.decode("utf-8", "replace")
        if not isinstance(self._router.decide(model_id, only_here=True), ServeHere):
            return None
        try:
            return FastRoute(model_id, self._router.pod_id, _with_model_id(body, body[5:], model_id))
        except WireFormatError:
            return None

    @property
    def internal(self) -> bool:
        return self._internal

    def count(self, path: str) -> None:
        self.metrics.front_streams.inc((self._port, path))

    @property
    def counts(self) -> dict[str, int]:
        """Streams per path on this port (/mesh/front), as this process counted them."""
        counted = self.metrics.front_streams.by_labels
        return {path: int(counted.get((self._port, path), 0)) for path in FRONT_PATHS}

    def counts_requests(self, path: bytes | None) -> bool:
        """Inference streams on the external port are ModelMesh's api_request (and invoke_model when the
        fast path sends them to this pod's runtime)."""
        return not self._internal and path is not None and path.startswith(V2_PATH)

    def is_fast_method(self, path: str) -> bool:
        return path in self._fast

    def serving(self, model_id: str, pod_id: str) -> None:
        self._router.acquire(model_id, pod_id)

    def served(self, model_id: str, pod_id: str) -> None:
        self._router.release(model_id, pod_id)

    def stream_done(self) -> None:
        if not any(c.streams for c in self.connections):
            self._idle.set()


class FrontStreams:
    """What one client connection's streams mean: the fast path, the relay, replays.

    ``ClientConnection`` (h2) calls ``on_*`` for the client's streams; ``Upstreams`` calls ``upstream_*``
    for the answers. Every stream ends in ``_finish``, which releases what it held.
    """

    def __init__(self, front: H2Front) -> None:
        self._front = front
        self.client: ClientConnection  # set by ClientConnection itself
        self.streams: dict[int, ClientStream] = {}

    # -- the client's side --------------------------------------------------------------------
    def on_request(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        if not self._front.accepting:
            self.client.reset(stream_id, ErrorCode.REFUSED_STREAM)
            return
        path = header(headers, b":path")
        stream = ClientStream(self, stream_id, headers, False, time.monotonic(), ended=end_stream)
        stream.path = path.decode("latin-1") if path is not None else ""
        stream.buffered = buffered = self._front.is_fast_method(stream.path)
        stream.counted = self._front.counts_requests(path)
        self.streams[stream_id] = stream
        if not buffered:
            self._relay_stream(stream, b"", end_stream)
        elif end_stream:
            self._complete(stream)

    def on_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.ended = stream.ended or end_stream
        stream.request_bytes += len(data)
        if not stream.buffered:
            if stream.upstream is None:  # the relay is still connecting: sent when it is open
                stream.body += data
                self.client.holding(len(data))
                return
            stream.upstream.send_data(stream.upstream_id, data, end_stream)
            return
        stream.body += data
        self.client.holding(len(data))
        if len(stream.body) > self._front.max_message_bytes + 5:  # too big: the relay refuses it
            self._unbuffer(stream)
            self._relay_stream(stream, self._take_body(stream), end_stream)
        elif end_stream:
            self._complete(stream)

    def on_trailers(self, stream_id: int, headers: Headers) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.ended = True
        if stream.buffered:
            self._complete(stream)
        elif stream.upstream is not None:
            stream.upstream.send_headers(stream.upstream_id, headers, True)

    def on_reset(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.status = CANCELLED
            self._cancel_upstream(stream)
            self._finish(stream)

    def on_closed(self) -> None:
        """The client connection is gone: every stream releases what it held, upstream streams reset."""
        for stream in list(self.streams.values()):
            stream.status = CANCELLED
            self._cancel_upstream(stream)
            self._finish(stream)

    def timed_out(self, stream_id: int) -> None:
        """A buffered request that did not arrive in full in time."""
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.status = CANCELLED
            self.client.reset(stream_id, ErrorCode.CANCEL)
            self._finish(stream)

    # -- the answers --------------------------------------------------------------------------
    def upstream_headers(self, stream: ClientStream, headers: Headers, end_stream: bool) -> None:
        if end_stream:
            headers = clipped_trailers(headers)
            stream.status = _status(headers)
        if not stream.buffered:  # relayed: straight back
            self.client.send_headers(stream.id, headers, end_stream)
            if end_stream:
                self._finish(stream)
            return
        if not end_stream:
            stream.response_headers = headers
            return
        if stream.sent_at:  # this pod's runtime answered the fast path
            invoked = (stream.path, stream.status, (time.monotonic() - stream.sent_at) * 1000)
            self._front.batch.after(lambda: self._front.metrics.invoked(*invoked, stream.model_id or ""))
            stream.sent_at = 0.0
        if from_http2_trailers(headers, stream.via_peer).route_decides:
            self._replay(stream)
            return
        if stream.via_peer:  # the peer's own trailers are not the client's business
            headers = tuple((k, v) for k, v in headers if not k.startswith(b"mm-internal-"))
        if stream.response_headers is not None:
            self.client.send_headers(stream.id, stream.response_headers)
            self.client.send_data(stream.id, bytes(stream.response_body))
            stream.response_bytes = len(stream.response_body)
        self.client.send_headers(stream.id, headers, end_stream=True)
        self._finish(stream)

    def upstream_data(self, stream: ClientStream, data: bytes, end_stream: bool) -> None:
        if stream.buffered:
            stream.response_body += data
            if end_stream:  # a response without trailers is not gRPC: let the relay answer
                self._replay(stream)
            elif stream.upstream is not None:
                stream.upstream.consumed(stream.upstream_id, len(data))  # held here whole, whatever its size
            return
        sent = self.client.send_data(stream.id, data, end_stream)
        stream.response_bytes += len(data)
        if end_stream:
            self._finish(stream)
        elif sent and stream.upstream is not None:
            stream.upstream.consumed(stream.upstream_id, sent)

    def on_sent(self, stream_id: int, size: int) -> None:
        """Queued answer bytes went to the client: the upstream may send as much again."""
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.buffered and stream.upstream is not None:
            stream.upstream.consumed(stream.upstream_id, size)

    def upstream_reset(self, stream: ClientStream, code: int) -> None:
        if stream.buffered:
            self._replay(stream)
        else:
            self.client.reset(stream.id, _error_code(code))
            self._finish(stream)

    def upstream_lost(self, stream: ClientStream, to: str, error: Exception | None) -> None:
        """The upstream connection closed under the stream, or could not be opened."""
        if stream.buffered or (error is not None and to != RELAY):
            self._replay(stream)
        elif error is not None:  # the pod's own server is gone (stopping): say so as gRPC does
            self.client.send_headers(
                stream.id, grpc_error_headers(14, f"mesh pod unavailable: {error}"), True
            )
            self._finish(stream)
        else:
            self.client.reset(stream.id, ErrorCode.INTERNAL_ERROR)
            self._finish(stream)

    def alive(self, stream: ClientStream) -> bool:
        return self.streams.get(stream.id) is stream

    def late_body(self, stream: ClientStream) -> bytes:
        """Request data that arrived while the relay was connecting (relayed streams only)."""
        return b"" if stream.buffered else self._take_body(stream)

    # -- routes ---------------------------------------------------------------------------------
    def _complete(self, stream: ClientStream) -> None:
        """The whole request is here: the runtime answers it directly, or the relay does."""
        route = self._front.fast_route(stream.headers, bytes(stream.body))
        if route is None:
            self._unbuffer(stream)
            self._relay_stream(stream, self._take_body(stream), True)
            return
        headers = self._front.request_view(stream.headers).upstream
        if self._front.tracing.enabled:
            headers = self._trace(stream, route, headers)
        if route.peer_address is not None:
            stream.via_peer = True
            headers = (*headers, (INTERNAL_MODEL, route.model_id.encode()))
            self._front.upstreams.send(stream, route.peer_address, headers, route.body, True)
        else:
            stream.sent_at = time.monotonic()
            self._front.upstreams.send(stream, RUNTIME, headers, route.body, True)
        self._front.batch.after(lambda: self._serving(stream, route))

    def _serving(self, stream: ClientStream, route: FastRoute) -> None:
        """The in-flight pin and counts of a stream sent on the fast path, taken once the request has gone
        out (before any answer can come: both run in the same turn of the loop)."""
        if not self.alive(stream):
            return  # finished (reset) within the same read: nothing to pin
        stream.model_id, stream.served_by = route.model_id, route.pod
        self._front.serving(route.model_id, route.pod)
        self._front.count("fast" if route.peer_address is None else "fast_to_peer")

    def _trace(self, stream: ClientStream, route: FastRoute, headers: Headers) -> Headers:
        """The fast path's span; what goes on carries its traceparent (the runtime's, the peer's parent)."""
        span = stream.span = self._front.tracing.start(
            "mesh.serve" if self._front.internal else "mesh.inference",
            stream.headers,
            **{"rpc.method": stream.path, "mesh.model_id": route.model_id, "mesh.served_by": route.pod},
        )
        assert span is not None
        return Tracing.with_traceparent(span, headers)

    def _end_span(self, stream: ClientStream, replayed: bool = False) -> None:
        if stream.span is not None:
            if replayed:  # the general route takes it over, with a span of its own
                stream.span.set_attribute("mesh.replayed", True)
                stream.span.end()
            else:
                end_span(stream.span, stream.status)
            stream.span = None

    def _relay_stream(self, stream: ClientStream, body: bytes, end_stream: bool) -> None:
        self._front.count("relayed")
        self._front.upstreams.send(stream, RELAY, stream.headers, body, end_stream)

    def _replay(self, stream: ClientStream) -> None:
        """A fast-path attempt the general route must decide: send the original request to the relay."""
        self._front.count("replayed")
        self._end_span(stream, replayed=True)
        self._front.upstreams.detach(stream)
        self._release_model(stream)
        self._unbuffer(stream)
        stream.via_peer = False
        stream.response_headers = None
        stream.response_body = bytearray()
        self._relay_stream(stream, self._take_body(stream), True)

    def _unbuffer(self, stream: ClientStream) -> None:
        stream.buffered = False

    def _take_body(self, stream: ClientStream) -> bytes:
        body = bytes(stream.body)
        stream.body = bytearray()
        self.client.released(len(body))
        return body

    def _cancel_upstream(self, stream: ClientStream) -> None:
        if stream.upstream is not None:
            stream.upstream.reset(stream.upstream_id)

    def _release_model(self, stream: ClientStream) -> None:
        if stream.model_id is not None:
            self._front.served(stream.model_id, stream.served_by)
            stream.model_id = None

    def _finish(self, stream: ClientStream) -> None:
        """The stream is over: it lets go of the connection now, and is counted once its answer is out."""
        current = self.streams.get(stream.id) is stream  # else finished before: counted then
        if current:
            del self.streams[stream.id]
            stream.ms = (time.monotonic() - stream.started) * 1000
        self._front.upstreams.detach(stream)
        if stream.body:
            self._take_body(stream)
        self.client.stream_closed(stream.id)
        self._front.batch.after(lambda: self._finished(stream, current and stream.counted))

    def _finished(self, stream: ClientStream, counted: bool) -> None:
        if counted:
            self._front.metrics.request(
                stream.path,
                stream.status,
                stream.ms,
                max(0, stream.request_bytes - 5),
                max(0, stream.response_bytes - 5) if stream.response_bytes else None,
                stream.model_id or "",
            )
            if stream.model_id is not None:  # served on the fast path (a relayed stream: the relay logs it)
                self._front.requests.served(
                    stream.path, stream.model_id, stream.served_by, stream.status, stream.ms, stream.headers
                )
        if stream.span is not None:
            self._end_span(stream)
        self._release_model(stream)
        self._front.stream_done()


def listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A listening socket the way grpc makes one, so that SO_REUSEPORT puts both in one group.

    grpc binds an IPv4 address as its v4-mapped IPv6 form on a dual-stack socket; the kernel spreads
    connections only over sockets of the same family, so the front does the same where it can. The
    socket is made with IPPROTO_TCP so that asyncio sets TCP_NODELAY on every accepted socket.
    """
    try:
        ipaddress.IPv4Address(host)
        family, address = socket.AF_INET6, ("::" if host == "0.0.0.0" else "::ffff:" + host)
    except ValueError:
        family, address = socket.AF_INET6 if ":" in host else socket.AF_INET, host
    try:
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError:  # no IPv6 here
        family, sock = socket.AF_INET, socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        address = host
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _with_model_id(body: bytes, message: bytes, model_id: str, field1: str | None = None) -> bytes:
    """``body`` (one gRPC message, ``message`` its payload) with the concrete id in field 1."""
    spliced = with_model_id(message, [1], model_id, field1)
    return body if spliced is message else b"\x00" + len(spliced).to_bytes(4, "big") + spliced


def _status(trailers: Headers) -> int:
    raw = header(trailers, b"grpc-status")
    try:
        return int(raw) if raw is not None else UNKNOWN
    except ValueError:
        return UNKNOWN


def _error_code(code: int) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.CANCEL
