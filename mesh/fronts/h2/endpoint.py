"""The front's end of an upstream HTTP/2 connection (to the runtime, the relay or a peer): framing,
SETTINGS, PING, flow control, header blocks.

Clients are served through ``h2`` (mesh/fronts/h2/client.py); this lean codec talks only to the pod's own
upstreams, which are grpc servers, and costs a fraction of ``h2``'s CPU per call. What streams mean is
left to a ``StreamHandler`` (mesh/fronts/h2/upstream.py). Sending respects the peer's windows and frame
size: DATA that does not fit waits for its WINDOW_UPDATE. Receiving opens a wide connection window, topped
up as bytes arrive, and a per-stream window of ``STREAM_RECEIVE_WINDOW`` that the handler credits as it
passes bytes on (``consumed``): an answer the client reads slowly stops the upstream (and through it the
runtime) instead of piling up here. A backlog the peer will not take pauses reading the clients that feed
it (see ``on_backlog``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

from mesh.fronts.h2.wire import (
    DEFAULT_MAX_FRAME,
    DEFAULT_WINDOW,
    MAX_FRAME,
    MAX_WINDOW,
    PREFACE,
    WINDOW_INCREMENT,
    BlockDecoder,
    BlockEncoder,
    ErrorCode,
    Flag,
    FrameReader,
    FrameType,
    Headers,
    ProtocolError,
    Setting,
    data_frames,
    frame,
    goaway,
    headers_frames,
    parse_settings,
    rst_stream,
    settings_frame,
    strip_padding,
    window_update,
)

log = logging.getLogger(__name__)


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY on a TCP transport: a small write must not wait for the peer's delayed ACK (40 ms)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


RECEIVE_WINDOW = MAX_WINDOW  # per connection: topped up as bytes arrive
REFILL_AT = 1 << 30
# Per stream: what an upstream may send before the front has passed it on. Above any common unary answer
# (those never wait for a WINDOW_UPDATE), small enough that a slow stream holds little here.
STREAM_RECEIVE_WINDOW = 1 << 20
STREAM_REFILL_AT = STREAM_RECEIVE_WINDOW // 2
BACKLOG_HIGH = 8 << 20  # queued bytes the peer's windows do not let us send yet


class StreamHandler(Protocol):
    """What one connection's streams mean; every call names the endpoint it came from."""

    def on_headers(
        self, endpoint: H2Endpoint, stream_id: int, headers: Headers, end_stream: bool
    ) -> None: ...
    def on_data(self, endpoint: H2Endpoint, stream_id: int, data: bytes, end_stream: bool) -> None: ...
    def on_reset(self, endpoint: H2Endpoint, stream_id: int, code: int) -> None: ...
    def on_closed(self, endpoint: H2Endpoint) -> None: ...
    def on_backlog(self, endpoint: H2Endpoint, high: bool) -> None: ...


class Flushable(Protocol):
    def flush(self) -> None: ...


class WriteBatch:
    """Writes made while frames are handled go out together: one send per connection per event.

    A response's HEADERS, DATA and trailers, produced while handling one read from the runtime, become
    one write to the client instead of three. Upstream endpoints hand their bytes over (``add``); client
    connections, whose bytes ``h2`` holds, ask to be flushed at the end (``defer``). Bookkeeping that no
    answer waits for (metrics, the request log, pins) runs after the writes (``after``): on one request
    in flight it is off the request's path.
    """

    def __init__(self) -> None:
        self._depth = 0
        self._pending: dict[H2Endpoint, list[bytes]] = {}
        self._deferred: dict[Flushable, None] = {}
        self._after: list[Callable[[], None]] = []

    def __enter__(self) -> None:
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and (self._pending or self._deferred or self._after):
            self.flush()

    def add(self, endpoint: H2Endpoint, data: bytes) -> bool:
        """Hold ``data`` for ``endpoint`` if a batch is open; False: write it now."""
        if not self._depth:
            return False
        self._pending.setdefault(endpoint, []).append(data)
        return True

    def defer(self, connection: Flushable) -> bool:
        """Flush ``connection`` when the batch ends; False: no batch is open, flush it now."""
        if not self._depth:
            return False
        self._deferred[connection] = None
        return True

    def after(self, work: Callable[[], None]) -> None:
        """Run ``work`` once the batch's writes have gone out; no batch open: now."""
        if self._depth:
            self._after.append(work)
        else:
            work()

    def flush(self, only: H2Endpoint | None = None) -> None:
        for endpoint in [only] if only is not None else list(self._pending):
            chunks = self._pending.pop(endpoint, None)
            if chunks:
                endpoint.write_now(b"".join(chunks))
        if only is None:
            while self._deferred:
                deferred, self._deferred = self._deferred, {}
                for connection in deferred:
                    connection.flush()
            if self._after:
                self._depth += 1  # what the work writes goes out with the next batch's turn, below
                try:
                    while self._after:
                        work, self._after = self._after, []
                        for each in work:
                            each()
                finally:
                    self._depth -= 1
                if self._pending or self._deferred:
                    self.flush()


class _Outgoing:
    __slots__ = ("end_queued", "queue", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.queue: deque[tuple[bool, bytes]] = deque()  # (is a trailers block, bytes)
        self.end_queued = False


class H2Endpoint(asyncio.Protocol):
    def __init__(self, handler: StreamHandler, client_side: bool, batch: WriteBatch | None = None) -> None:
        self._handler = handler
        self._batch = batch or WriteBatch()
        self._client_side = client_side  # True: we opened the connection (streams we start are odd)
        self._reader = FrameReader(self._on_frame, DEFAULT_MAX_FRAME, expect_preface=not client_side)
        self._decoder = BlockDecoder()
        self.encoder = BlockEncoder()
        self._transport: asyncio.Transport | None = None
        self._peer_window = DEFAULT_WINDOW  # connection send window
        self._peer_initial = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME
        self._outgoing: dict[int, _Outgoing] = {}
        self._backlog = 0
        self._backlogged = False  # the handler was told of a backlog and not yet of its end
        self._consumed = 0
        # per stream the peer may still send on: bytes passed on and not yet given back
        self._stream_consumed: dict[int, int] = {}
        self._partial: tuple[int, int, bytearray] | None = None  # stream, flags, block: CONTINUATION pending
        self._next_stream = 1
        self.peer_max_streams = MAX_WINDOW  # the peer's MAX_CONCURRENT_STREAMS (unlimited until it says)
        self.open = True
        self.accepting = True  # False after the peer's GOAWAY: start no new streams here
        self.last_stream_id = 0  # the highest stream the peer started (for our GOAWAY)

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        set_nodelay(self._transport)
        # No dynamic table from the peer: its header blocks then mean the same every time (BlockDecoder).
        settings = settings_frame(
            {
                Setting.HEADER_TABLE_SIZE: 0,
                Setting.INITIAL_WINDOW_SIZE: STREAM_RECEIVE_WINDOW,
                Setting.ENABLE_PUSH: 0,
            }
        )
        opening = (PREFACE if self._client_side else b"") + settings
        self.write_now(opening + window_update(0, RECEIVE_WINDOW - DEFAULT_WINDOW))

    def data_received(self, data: bytes) -> None:
        try:
            with self._batch:
                self._reader.feed(data)
        except ProtocolError as e:
            log.warning("HTTP/2 protocol error from a peer: %s", e)
            self.abort(e.code, str(e))

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = self.accepting = False
        self._handler.on_closed(self)

    def pause_writing(self) -> None:  # the kernel's buffer is full: let the other side wait too
        self._handler.on_backlog(self, True)

    def resume_writing(self) -> None:
        self._handler.on_backlog(self, False)

    # -- sending ------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if not self._batch.add(self, data):
            self.write_now(data)

    def write_now(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def new_stream(self) -> int:
        stream_id = self._next_stream
        self._next_stream += 2
        self._stream_consumed[stream_id] = 0
        if self._next_stream > MAX_WINDOW:
            self.accepting = False  # ids run out: the next stream goes on a new connection
        return stream_id

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None:
        if self._transport is None or not self.open:
            return
        if stream_id not in self._outgoing and not end_stream:
            self._outgoing[stream_id] = _Outgoing(self._peer_initial)
        block = self.encoder.encode(headers)
        queued = self._outgoing.get(stream_id)
        if queued is not None and queued.queue:  # trailers after data still waiting for credit
            queued.queue.append((True, block))
            queued.end_queued = True
            return
        self._write(headers_frames(stream_id, block, self._peer_max_frame, end_stream))
        if end_stream:
            self._outgoing.pop(stream_id, None)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        outgoing = self._outgoing.get(stream_id)
        if self._transport is None or not self.open or outgoing is None:
            return
        size = len(data)
        if not outgoing.queue and size <= outgoing.window and size <= self._peer_window:
            outgoing.window -= size
            self._peer_window -= size
            if size <= self._peer_max_frame:  # the common case: one frame
                flags = Flag.END_STREAM if end_stream else 0
                self._write(frame(FrameType.DATA, flags, stream_id, data))
            else:
                self._write(b"".join(data_frames(stream_id, data, self._peer_max_frame, end_stream)))
            if end_stream:
                del self._outgoing[stream_id]
            return
        outgoing.queue.append((False, data))
        outgoing.end_queued = end_stream
        self._backlog += size
        if self._backlog > BACKLOG_HIGH:
            self._backlogged = True
            self._handler.on_backlog(self, True)
        self._flush()

    def consumed(self, stream_id: int, size: int) -> None:
        """``size`` bytes the peer sent on ``stream_id`` have been passed on: let it send that much more."""
        total = self._stream_consumed.get(stream_id)
        if total is None:
            return  # the peer ended or reset the stream: nothing more to let it send
        total += size
        if total >= STREAM_REFILL_AT and self._transport is not None and self.open:
            self._write(window_update(stream_id, total))
            total = 0
        self._stream_consumed[stream_id] = total

    def reset(self, stream_id: int, code: ErrorCode = ErrorCode.CANCEL) -> None:
        self._stream_consumed.pop(stream_id, None)
        outgoing = self._outgoing.pop(stream_id, None)
        if outgoing is not None:
            self._backlog -= sum(len(chunk) for trailers, chunk in outgoing.queue if not trailers)
        if self._transport is not None and self.open:
            self._write(rst_stream(stream_id, code))

    def abort(self, code: ErrorCode, message: str = "") -> None:
        if self._transport is not None and self.open:
            self._write(goaway(self.last_stream_id, code, message))
            self._batch.flush(self)
            self._transport.close()
        self.open = self.accepting = False

    def close(self) -> None:
        """GOAWAY with no error: streams in flight finish, the peer starts no more."""
        if self._transport is not None and self.open:
            self._write(goaway(self.last_stream_id, ErrorCode.NO_ERROR))
        self.accepting = False

    def hard_close(self) -> None:
        if self._transport is not None:
            self._batch.flush(self)
            self._transport.close()
        self.open = self.accepting = False

    def pause_reading(self, pause: bool) -> None:
        if self._transport is not None and self.open:
            (self._transport.pause_reading if pause else self._transport.resume_reading)()

    def _flush(self) -> None:
        """Send what the windows now allow, stream by stream."""
        assert self._transport is not None
        writes: list[bytes] = []
        for stream_id in list(self._outgoing):
            outgoing = self._outgoing[stream_id]
            while outgoing.queue:
                trailers, chunk = outgoing.queue[0]
                if trailers:
                    writes.append(headers_frames(stream_id, chunk, self._peer_max_frame, True))
                    outgoing.queue.popleft()
                    del self._outgoing[stream_id]
                    break
                allowed = min(len(chunk), outgoing.window, self._peer_window)
                if allowed <= 0 and chunk:
                    break
                piece, rest = chunk[:allowed], chunk[allowed:]
                last = not rest and len(outgoing.queue) == 1 and outgoing.end_queued
                writes.extend(data_frames(stream_id, piece, self._peer_max_frame, last))
                outgoing.window -= len(piece)
                self._peer_window -= len(piece)
                self._backlog -= len(piece)
                if rest:
                    outgoing.queue[0] = (False, rest)
                else:
                    outgoing.queue.popleft()
                    if last:
                        del self._outgoing[stream_id]
                        break
        if writes:
            self._write(b"".join(writes))
        if self._backlogged and self._backlog <= BACKLOG_HIGH // 2:  # once, not at every window update
            self._backlogged = False
            self._handler.on_backlog(self, False)

    # -- receiving ----------------------------------------------------------------------------
    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._partial is not None and kind != FrameType.CONTINUATION:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "a header block was interrupted")
        if kind == FrameType.DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == FrameType.HEADERS:
            block = strip_padding(flags, payload, FrameType.HEADERS)
            if not self._client_side and stream_id > self.last_stream_id:
                self.last_stream_id = stream_id
                self._stream_consumed[stream_id] = 0
            if flags & Flag.END_STREAM:
                self._stream_consumed.pop(stream_id, None)
            if flags & Flag.END_HEADERS:
                self._handler.on_headers(
                    self, stream_id, self._decoder.decode(block), bool(flags & Flag.END_STREAM)
                )
            else:
                self._partial = (stream_id, flags, bytearray(block))
        elif kind == FrameType.CONTINUATION:
            if self._partial is None or self._partial[0] != stream_id:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
            self._partial[2].extend(payload)
            if flags & Flag.END_HEADERS:
                started, first_flags, block_parts = self._partial
                self._partial = None
                headers = self._decoder.decode(bytes(block_parts))
                self._handler.on_headers(self, started, headers, bool(first_flags & Flag.END_STREAM))
        elif kind == FrameType.SETTINGS:
            if not flags & Flag.ACK:
                self._apply_settings(parse_settings(payload))
        elif kind == FrameType.PING:
            if not flags & Flag.ACK and self._transport is not None:
                self._write(frame(FrameType.PING, Flag.ACK, 0, payload))
        elif kind == FrameType.WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == FrameType.RST_STREAM:
            code = WINDOW_INCREMENT.unpack(payload[:4])[0] if len(payload) >= 4 else ErrorCode.CANCEL
            self._outgoing.pop(stream_id, None)
            self._stream_consumed.pop(stream_id, None)
            self._handler.on_reset(self, stream_id, code)
        elif kind == FrameType.GOAWAY:
            self.accepting = False
        elif kind == FrameType.PUSH_PROMISE:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "push is disabled")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 allows

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._consumed += len(payload)
        if self._consumed >= REFILL_AT and self._transport is not None:
            self._write(window_update(0, self._consumed))
            self._consumed = 0
        data = payload
        if flags & Flag.PADDED:
            data = strip_padding(flags, payload, FrameType.DATA)
            self.consumed(stream_id, len(payload) - len(data))  # padding counts against the window
        if flags & Flag.END_STREAM:
            self._stream_consumed.pop(stream_id, None)
        self._handler.on_data(self, stream_id, data, bool(flags & Flag.END_STREAM))

    def _apply_settings(self, settings: dict[int, int]) -> None:
        if Setting.INITIAL_WINDOW_SIZE in settings:
            value = settings[Setting.INITIAL_WINDOW_SIZE]
            if value > MAX_WINDOW:
                raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "initial window over 2^31-1")
            delta = value - self._peer_initial
            self._peer_initial = value
            for outgoing in self._outgoing.values():
                outgoing.window += delta
        if Setting.MAX_FRAME_SIZE in settings:
            value = settings[Setting.MAX_FRAME_SIZE]
            if not DEFAULT_MAX_FRAME <= value <= MAX_FRAME:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"MAX_FRAME_SIZE of {value}")
            self._peer_max_frame = value
        if Setting.MAX_CONCURRENT_STREAMS in settings:
            self.peer_max_streams = settings[Setting.MAX_CONCURRENT_STREAMS]
        if self._transport is not None:
            self._write(frame(FrameType.SETTINGS, Flag.ACK, 0))
        self._flush()

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong length")
        increment = WINDOW_INCREMENT.unpack(payload)[0] & MAX_WINDOW
        if stream_id == 0:
            if not increment or self._peer_window + increment > MAX_WINDOW:
                raise ProtocolError(
                    ErrorCode.FLOW_CONTROL_ERROR, "connection WINDOW_UPDATE of 0 or past 2^31-1"
                )
            self._peer_window += increment
        elif (outgoing := self._outgoing.get(stream_id)) is not None:
            if not increment or outgoing.window + increment > MAX_WINDOW:
                self.reset(stream_id, ErrorCode.FLOW_CONTROL_ERROR)
                self._handler.on_reset(self, stream_id, ErrorCode.FLOW_CONTROL_ERROR)
                return
            outgoing.window += increment
        self._flush()
