"""One client connection of the HTTP/2 front, with the front's limits.

A codec owns the protocol: frame and settings validation, the stream state machine (DATA or HEADERS after
END_STREAM, idle or even stream ids, window overflow: each answered with RST_STREAM or GOAWAY as RFC 9113
says), MAX_CONCURRENT_STREAMS and header-list limits. It is ``h2`` (python-hyper) with ``--front-codec=h2``,
or by default the front's lean codec with the same API and answers at a fraction of the CPU
(mesh/fronts/h2/server.py). This class adds what bounds a hostile client:

- header blocks are looked at before ``h2`` buffers or decodes them (mesh/fronts/h2/guard.py; the lean
  codec checks the same limits itself, as it reads each frame);
- stream resets are budgeted (rapid reset: GOAWAY ENHANCE_YOUR_CALM);
- a client that does not read is not read: past ``write_buffer_bytes`` unread, reading pauses until it
  drains, so PING and SETTINGS floods cannot make the pod queue replies;
- request bytes held for a connection past ``max_buffered_bytes`` are not acknowledged (the client waits),
  answers held past it end the connection (GOAWAY ENHANCE_YOUR_CALM);
- a connection that does not finish its handshake, a request or header block that does not arrive in time,
  and a connection idle past its timeout are closed (checked by the front's sweep);
- answers wait for the client's windows stream by stream: a WINDOW_UPDATE moves only what it allows.

When the connection closes, every stream releases what it held (FrontStreams.on_closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from mesh.fronts.h2.endpoint import WriteBatch, set_nodelay
from mesh.fronts.h2.guard import FrameBudget, GuardViolation, HeaderBlockGuard
from mesh.fronts.h2.server import LeanServerConnection, StreamGone
from mesh.fronts.h2.wire import ErrorCode, Headers, ProtocolError

if TYPE_CHECKING:
    from mesh.fronts.h2.front import FrontStreams
    from mesh.process.settings import Settings

log = logging.getLogger(__name__)

STREAM_WINDOW = 1 << 20
# A client's WINDOW_UPDATEs are weighed against the streams it opened (grpc raises each stream's window as
# it opens it) and the DATA frames sent to it: each costs the pod a parse.
WINDOW_UPDATES_FREE = 100
WINDOW_UPDATES_PER_FRAME = 10
# DATA waits for the client's window to hold this much (or the rest of the answer): a window opened a byte
# at a time must not cost a frame per byte.
MIN_DATA_FRAME = 1024  # per-stream receive window advertised to clients
CONNECTION_WINDOW = 16 << 20
_CONFIG = h2.config.H2Configuration(
    client_side=False,
    header_encoding=None,
    validate_inbound_headers=True,
    normalize_inbound_headers=False,
    validate_outbound_headers=False,  # the front's own headers, or an upstream's that its h2 stack checked
    normalize_outbound_headers=False,
)
_UNREAD, _UPSTREAM = "unread", "upstream"  # why reading a client is paused
_SENT_CLOSED = (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, StreamGone)
_BROKEN = (h2.exceptions.ProtocolError, ProtocolError)  # the client broke HTTP/2; the GOAWAY is queued
_SLICE_BYTES = 16384  # bytes handed to the codec at a time (see data_received)


@dataclass(frozen=True)
class FrontLimits:
    """What one client connection may make the pod hold; the defaults are mesh/process/settings.py's."""

    max_connections: int = 4096
    max_concurrent_streams: int = 100
    max_header_list_bytes: int = 16384
    max_header_block_bytes: int = 32768
    max_continuation_frames: int = 16
    write_buffer_bytes: int = 1 << 20
    max_buffered_bytes: int = 64 << 20
    max_resets_per_s: float = 200.0
    max_control_frames_per_s: float = 1000.0
    handshake_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    request_read_timeout_s: float = 30.0
    front_codec: str = "lean"

    @classmethod
    def from_settings(cls, settings: Settings) -> FrontLimits:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


class Codec(Protocol):
    """What this module asks of a codec: ``h2.connection.H2Connection``'s API, the part it uses."""

    @property
    def max_outbound_frame_size(self) -> int: ...
    @property
    def outbound_flow_control_window(self) -> int: ...
    def initiate_connection(self) -> None: ...
    def increment_flow_control_window(self, increment: int) -> None: ...
    def data_to_send(self) -> bytes: ...
    def receive_data(self, data: bytes) -> list[h2.events.Event]: ...
    def local_flow_control_window(self, stream_id: int) -> int: ...
    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None: ...
    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None: ...
    def reset_stream(self, stream_id: int, error_code: int = 0) -> None: ...
    def close_connection(
        self, error_code: int = 0, additional_data: bytes | None = None, last_stream_id: int | None = None
    ) -> None: ...
    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None: ...


def new_codec(limits: FrontLimits, control_budget: FrameBudget | None = None) -> Codec:
    """The protocol state of one client connection, by ``limits.front_codec``."""
    if limits.front_codec == "lean":
        return LeanServerConnection(
            limits.max_concurrent_streams,
            limits.max_header_list_bytes,
            STREAM_WINDOW,
            limits.max_header_block_bytes,
            limits.max_continuation_frames,
            control_budget,
        )
    connection = h2.connection.H2Connection(config=_CONFIG)
    connection.local_settings = h2.settings.Settings(
        client=False,
        initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_bytes,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        },
    )
    # Replacing local_settings is not a settings change h2 applies to its own decoder: set it here.
    connection.decoder.max_header_list_size = limits.max_header_list_bytes
    return connection


class FrameCounts(Protocol):
    """What the connection weighs of the frames read so far (the guard's, or the lean codec's own)."""

    window_updates: int
    header_blocks: int

    @property
    def partial(self) -> bool: ...


class _Trailers:
    __slots__ = ("headers",)

    def __init__(self, headers: Headers) -> None:
        self.headers = headers


class ClientConnection(asyncio.Protocol):
    def __init__(
        self, handler: FrontStreams, limits: FrontLimits, registry: set[ClientConnection], batch: WriteBatch
    ) -> None:
        self._handler = handler
        handler.client = self
        self._limits = limits
        self._registry = registry
        self._batch = batch
        control = FrameBudget(limits.max_control_frames_per_s, 2 * limits.max_control_frames_per_s)
        self._h2 = new_codec(limits, control)
        # The lean codec checks the guard's limits on the frames it reads; h2 needs the guard ahead of it.
        self._lean: LeanServerConnection | None = None
        self._guard: HeaderBlockGuard | None = None
        self._frames: FrameCounts
        if isinstance(self._h2, LeanServerConnection):
            self._lean = self._frames = self._h2
        else:
            guard = HeaderBlockGuard(limits.max_header_block_bytes, limits.max_continuation_frames, control)
            self._guard = self._frames = guard
        self._resets = FrameBudget(limits.max_resets_per_s, 2 * limits.max_concurrent_streams)
        self._data_sent = 0
        self._transport: asyncio.Transport | None = None
        now = time.monotonic()
        self._opened_at = now
        self._idle_since: float | None = now
        self._partial_since: float | None = None
        self._handshaken = False
        self._pending: dict[int, deque[bytearray | _Trailers]] = {}  # answers waiting for the client's window
        self._queued = 0  # answer bytes in _pending
        self._held = 0  # request bytes held for this connection's streams
        self._unacknowledged: list[tuple[int, int]] = []  # (stream, bytes) not acknowledged while over budget
        self._paused: set[str] = set()
        self._closed = False
        self._last_acted = 0  # the highest stream handed to the handler: a GOAWAY's last id (RFC 9113 §6.8)

    @property
    def streams(self) -> dict[int, object]:
        return self._handler.streams  # type: ignore[return-value]

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        if len(self._registry) >= self._limits.max_connections:
            log.warning("front: over %d connections, closing a new one", self._limits.max_connections)
            self._closed = True
            transport.close()
            return
        self._registry.add(self)
        set_nodelay(transport)
        self._transport.set_write_buffer_limits(high=self._limits.write_buffer_bytes)
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(CONNECTION_WINDOW - 65_535)
        self.flush()

    def data_received(self, data: bytes) -> None:
        # In slices: a read holds up to 256 KiB, hundreds of header blocks; a limit a slice breaks stops the
        # connection before the codec decodes the rest (a rapid reset costs the pod one slice, not one read).
        for start in range(0, len(data), _SLICE_BYTES):
            if self._closed:
                return
            self._receive(data[start : start + _SLICE_BYTES] if len(data) > _SLICE_BYTES else data)

    def _receive(self, data: bytes) -> None:
        try:
            if self._lean is not None:
                events = self._lean.receive_data(data, time.monotonic())
                self._check_window_updates()  # before any event is acted on
            else:
                assert self._guard is not None
                self._guard.feed(data, time.monotonic())
                self._check_window_updates()
                events = self._h2.receive_data(data)
        except GuardViolation as e:
            log.info("front: closing a client connection: %s", e)
            self.close(e.code, str(e))
            return
        except _BROKEN as e:  # the codec has queued the GOAWAY that says why
            log.info("front: a client broke HTTP/2: %s", e)
            self._closed = True
            self.flush()
            self._close_transport()
            return
        self._partial_since = (self._partial_since or time.monotonic()) if self._frames.partial else None
        with self._batch:
            for event in events:
                if self._closed:
                    break
                self._on_event(event)
            self._mark()

    def _check_window_updates(self) -> None:
        frames = self._frames
        allowed = WINDOW_UPDATES_FREE + WINDOW_UPDATES_PER_FRAME * (self._data_sent + frames.header_blocks)
        if frames.window_updates > allowed:
            raise GuardViolation(
                ErrorCode.ENHANCE_YOUR_CALM,
                f"{frames.window_updates} WINDOW_UPDATE frames for {self._data_sent} DATA frames sent",
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._registry.discard(self)
        self._pending.clear()
        with self._batch:
            self._handler.on_closed()

    def pause_writing(self) -> None:  # the client leaves write_buffer_bytes unread
        self._pause(_UNREAD, True)

    def resume_writing(self) -> None:
        self._pause(_UNREAD, False)

    # -- events ---------------------------------------------------------------------------------
    def _on_event(self, event: h2.events.Event) -> None:
        kind = type(event)
        if kind is h2.events.RequestReceived:
            assert isinstance(event, h2.events.RequestReceived)
            self._idle_since = None
            headers: Headers = tuple(event.headers)
            self._last_acted = max(self._last_acted, event.stream_id or 0)
            self._handler.on_request(event.stream_id, headers, event.stream_ended is not None)
        elif kind is h2.events.DataReceived:
            assert isinstance(event, h2.events.DataReceived)
            stream_id = event.stream_id or 0
            self._acknowledge(stream_id, event.flow_controlled_length or 0)
            self._handler.on_data(stream_id, event.data or b"", event.stream_ended is not None)
        elif kind is h2.events.TrailersReceived:
            assert isinstance(event, h2.events.TrailersReceived)
            self._handler.on_trailers(event.stream_id or 0, tuple(event.headers or ()))
        elif kind is h2.events.StreamReset:
            assert isinstance(event, h2.events.StreamReset)
            self._on_reset(event.stream_id or 0)
        elif kind is h2.events.WindowUpdated:
            assert isinstance(event, h2.events.WindowUpdated)
            self._drain(event.stream_id or 0)
        elif kind is h2.events.RemoteSettingsChanged:
            self._handshaken = True
            self._drain(0)
        elif kind is h2.events.ConnectionTerminated:  # the client's GOAWAY: h2 sends nothing more
            self._closed = True
            self.flush()
            self._close_transport()
        # PING (answered by h2), SETTINGS ACK, PRIORITY, unknown frames: nothing to do

    def _on_reset(self, stream_id: int) -> None:
        self._drop_pending(stream_id)
        if not self._resets.spend(time.monotonic()):
            self.close(ErrorCode.ENHANCE_YOUR_CALM, "too many stream resets")
            return
        self._handler.on_reset(stream_id)

    # -- receiving: flow control and the buffered-bytes budget --------------------------------------
    def _acknowledge(self, stream_id: int, size: int) -> None:
        if not size:
            return
        if self._held > self._limits.max_buffered_bytes:
            self._unacknowledged.append((stream_id, size))  # the client waits until held bytes drain
            return
        self._h2.acknowledge_received_data(size, stream_id)

    def holding(self, size: int) -> None:
        self._held += size

    def released(self, size: int) -> None:
        self._held -= size
        if self._unacknowledged and self._held <= self._limits.max_buffered_bytes and not self._closed:
            waiting, self._unacknowledged = self._unacknowledged, []
            for stream_id, acknowledged in waiting:
                self._h2.acknowledge_received_data(acknowledged, stream_id)
            self._mark()

    # -- sending ------------------------------------------------------------------------------------
    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None:
        if self._closed:
            return
        queued = self._pending.get(stream_id)
        if queued is not None:  # trailers after data still waiting for the client's window
            queued.append(_Trailers(headers))
            return
        try:
            self._h2.send_headers(stream_id, headers, end_stream=end_stream)
        except _SENT_CLOSED:
            return  # the client reset or closed the stream meanwhile
        self._mark()

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> int:
        """Send ``data`` as the client's windows allow; the bytes that went now (the rest queue, and the
        handler hears of them in ``on_sent`` as they go)."""
        if self._closed:
            return 0
        queued = self._pending.get(stream_id)
        sent = 0
        if queued is None:
            sent_now = self._send_now(stream_id, data, end_stream)
            self._mark()
            if sent_now is None:
                return 0
            if sent_now == len(data):
                return sent_now
            sent = sent_now
            queued = self._pending[stream_id] = deque()
            data = data[sent:]
        queued.append(bytearray(data))
        if end_stream:
            queued.append(_Trailers(()))
        self._queued += len(data)
        self._check_budget()
        return sent

    def reset(self, stream_id: int, code: ErrorCode = ErrorCode.CANCEL) -> None:
        self._drop_pending(stream_id)
        if self._closed:
            return
        try:
            self._h2.reset_stream(stream_id, code)
        except _SENT_CLOSED:
            return
        self._mark()

    def stream_closed(self, stream_id: int) -> None:
        if not self._handler.streams:
            self._idle_since = time.monotonic()

    def close(self, code: ErrorCode = ErrorCode.NO_ERROR, message: str = "") -> None:
        """GOAWAY ``code`` and close the socket (what was written still goes out)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(*_BROKEN):
            self._h2.close_connection(
                error_code=code,
                additional_data=message.encode()[:256] or None,
                last_stream_id=self._last_acted,
            )
        self.flush()
        self._close_transport()

    def flush(self) -> None:
        data = self._h2.data_to_send()
        transport = self._transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)
            if not self._closed and transport.get_write_buffer_size() > self._limits.max_buffered_bytes:
                self.close(ErrorCode.ENHANCE_YOUR_CALM, "answers not read")

    def pause_for_upstream(self, pause: bool) -> None:
        self._pause(_UPSTREAM, pause)

    def _mark(self) -> None:
        if not self._batch.defer(self):
            self.flush()

    def _send_now(self, stream_id: int, data: bytes | bytearray, end_stream: bool) -> int | None:
        """Send what the windows allow now; how many bytes went (None: the stream is gone)."""
        h2conn = self._h2
        try:
            if not data:
                h2conn.send_data(stream_id, b"", end_stream=end_stream)
                return 0
            sent, size = 0, len(data)
            while sent < size:
                room = min(h2conn.local_flow_control_window(stream_id), h2conn.max_outbound_frame_size)
                if room < min(MIN_DATA_FRAME, size - sent):
                    return sent
                piece = min(room, size - sent)
                last = sent + piece == size
                h2conn.send_data(stream_id, bytes(data[sent : sent + piece]), end_stream=end_stream and last)
                self._data_sent += 1
                sent += piece
            return sent
        except _SENT_CLOSED:
            return None

    def _drain(self, stream_id: int) -> None:
        """Send queued answers the windows now allow: one stream, or (connection window) each in turn."""
        if not self._pending:
            return
        if stream_id:
            if stream_id in self._pending:
                self._drain_stream(stream_id)
        else:
            for queued_id in list(self._pending):
                if self._h2.outbound_flow_control_window <= 0:
                    break
                self._drain_stream(queued_id)
        self._mark()

    def _drain_stream(self, stream_id: int) -> None:
        queued = self._pending[stream_id]
        while queued:
            part = queued[0]
            if isinstance(part, _Trailers):
                self._pending.pop(stream_id, None)
                try:
                    if part.headers:
                        self._h2.send_headers(stream_id, part.headers, end_stream=True)
                    else:
                        self._h2.send_data(stream_id, b"", end_stream=True)
                except _SENT_CLOSED:
                    pass
                return
            sent = self._send_now(stream_id, part, False)
            if sent is None:
                self._drop_pending(stream_id)
                return
            self._queued -= sent
            if sent:
                self._handler.on_sent(stream_id, sent)
            if sent < len(part):
                del part[:sent]
                return
            queued.popleft()
        self._pending.pop(stream_id, None)

    def _drop_pending(self, stream_id: int) -> None:
        queued = self._pending.pop(stream_id, None)
        if queued:
            self._queued -= sum(len(p) for p in queued if not isinstance(p, _Trailers))

    def _check_budget(self) -> None:
        unread = self._transport.get_write_buffer_size() if self._transport is not None else 0
        if self._queued + unread > self._limits.max_buffered_bytes:
            self.close(ErrorCode.ENHANCE_YOUR_CALM, "answers not read")

    def _pause(self, reason: str, pause: bool) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        was_paused = bool(self._paused)
        if pause:
            self._paused.add(reason)
        else:
            self._paused.discard(reason)
        if bool(self._paused) != was_paused and not transport.is_closing():
            (transport.pause_reading if self._paused else transport.resume_reading)()

    def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- timeouts (the front's sweep) -----------------------------------------------------------------
    def check_timeouts(self, now: float) -> None:
        limits = self._limits
        if self._closed:
            return
        if not self._handshaken and now - self._opened_at > limits.handshake_timeout_s:
            self.close(ErrorCode.NO_ERROR, "no HTTP/2 preface and SETTINGS in time")
        elif self._partial_since is not None and now - self._partial_since > limits.request_read_timeout_s:
            self.close(ErrorCode.NO_ERROR, "a frame or header block not finished in time")
        elif self._idle_since is not None and now - self._idle_since > limits.idle_timeout_s:
            self.close(ErrorCode.NO_ERROR, "idle")
        else:
            for stream in list(self._handler.streams.values()):
                if (
                    stream.buffered
                    and not stream.ended
                    and now - stream.started > limits.request_read_timeout_s
                ):
                    with self._batch:
                        self._handler.timed_out(stream.id)
