"""The server end of a client's HTTP/2 connection, lean: the part of ``h2``'s ``H2Connection`` API the front
uses (mesh/fronts/h2/client.py), at a fraction of its CPU per call. Pure, no I/O.

``h2`` costs the front about 150 µs per call on this machine, more than the rest of the front together
(load_tests/RESULTS.md); this codec does what a gRPC server's connection needs and no more, and answers
what ``h2`` answers: every RFC 9113 connection error with GOAWAY and its code, every stream error with
RST_STREAM, malformed requests (pseudo-headers, characters, connection-specific fields) refused. The
hostile-client suite runs against both codecs.

What it leaves out, as a gRPC front does not need it: server push, PRIORITY (parsed and checked, not
honoured), a dynamic HPACK table for what it sends (its blocks are literals), client-side streams.
It advertises SETTINGS_HEADER_TABLE_SIZE 0: a client's repeated header blocks are then byte-identical and
decoded (and checked) once.

Events are ``h2.events`` objects with the fields the front reads; errors the caller may see are
``StreamGone`` (the stream is closed or reset: nothing to send on it) and ``ProtocolError`` from
``receive_data`` (the client broke HTTP/2; the GOAWAY is queued).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import h2.events

from mesh.fronts.h2.guard import BLOCK_PREFIX_BYTES, FrameBudget, leading_table_updates
from mesh.fronts.h2.wire import (
    DEFAULT_MAX_FRAME,
    DEFAULT_WINDOW,
    MAX_FRAME,
    MAX_WINDOW,
    SETTING,
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
    frame,
    goaway,
    headers_frames,
    parse_settings,
    rst_stream,
    strip_padding,
    window_update,
)

CLOSED_REMEMBERED = 256  # closed streams whose late frames get STREAM_CLOSED rather than PROTOCOL_ERROR
VALIDATED_REMEMBERED = 512  # distinct request header lists whose check is remembered

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")  # RFC 9110 token, lower case (RFC 9113 §8.2.1)
_VALUE = re.compile(rb"(?:[^\x00\r\n\t ](?:[^\x00\r\n]*[^\x00\r\n\t ])?)?")  # no NUL/CR/LF, no edge spaces
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


class StreamGone(Exception):
    """The stream is closed (ended both ways or reset): nothing more can be sent on it."""


class _StreamError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def header_problem(headers: Headers, trailers: bool) -> str | None:
    """Why ``headers`` is not a well-formed request header list (or trailer list); None if it is."""
    regular = False
    pseudo: set[bytes] = set()
    for name, value in headers:
        if name[:1] == b":":
            if trailers:
                return f"pseudo-header {name!r} in trailers"
            if regular:
                return f"pseudo-header {name!r} after a regular field"
            if name not in _REQUEST_PSEUDO:
                return f"pseudo-header {name!r} in a request"
            if name in pseudo:
                return f"pseudo-header {name!r} twice"
            pseudo.add(name)
            if name == b":path" and not value:
                return "empty :path"
        else:
            regular = True
            if not _TOKEN.fullmatch(name):
                return f"field name {name[:64]!r} is not a lower-case token"
            if name in _CONNECTION_SPECIFIC:
                return f"connection-specific field {name!r}"
            if name == b"te" and value != b"trailers":
                return "te other than trailers"
        if not _VALUE.fullmatch(value):
            return f"field {name[:64]!r} has a value with NUL, CR, LF or surrounding spaces"
    if not trailers and not {b":method", b":scheme", b":path"} <= pseudo:
        return "a request without :method, :scheme and :path"
    return None


@dataclass(slots=True)
class _Stream:
    send_window: int  # what this end may still send on the stream
    receive_window: int  # what the client may still send
    unacknowledged: int = 0  # bytes consumed and not yet given back in a WINDOW_UPDATE
    remote_ended: bool = False
    local_ended: bool = False


class LeanServerConnection:
    """Beside the protocol, the limits mesh/fronts/h2/guard.py sets ahead of ``h2``, checked on the frames as
    they are read (no second pass over the bytes): a header block's bytes and CONTINUATION frames, the
    table-size updates at its start, PING and SETTINGS frames against ``control_budget``; and the counts the
    connection weighs (``window_updates``, ``header_blocks``, ``partial``)."""

    def __init__(
        self,
        max_concurrent_streams: int,
        max_header_list_bytes: int,
        stream_window: int,
        max_block_bytes: int = 1 << 30,
        max_continuations: int = 1 << 30,
        control_budget: FrameBudget | None = None,
    ) -> None:
        self._max_block = max_block_bytes
        self._max_continuations = max_continuations
        self._control = control_budget
        self._now = 0.0
        self._block_bytes = 0
        self._continuations = 0
        self.window_updates = 0
        self.header_blocks = 0  # HEADERS frames: each stream opened (or its trailers)
        self._max_streams = max_concurrent_streams
        self._max_header_list = max_header_list_bytes
        self._stream_window = stream_window
        self._out = bytearray()
        self._events: list[h2.events.Event] = []
        self._reader = FrameReader(self._on_frame, DEFAULT_MAX_FRAME, expect_preface=True)
        self._decoder = BlockDecoder(max_header_list_bytes=max_header_list_bytes)
        self._encoder = BlockEncoder()
        self._validated: set[Headers] = set()
        self._streams: dict[int, _Stream] = {}
        self._closed_streams: dict[int, None] = {}  # recently closed, oldest first
        self._highest = 0  # the highest stream id the client has opened
        self._block: bytearray | None = None  # a header block waiting for its CONTINUATION frames
        self._block_stream = 0
        self._block_flags = 0
        self._got_settings = False
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME
        self._send_window = DEFAULT_WINDOW
        self._receive_window = DEFAULT_WINDOW
        self._receive_target = DEFAULT_WINDOW
        self._unacknowledged = 0
        self._ended = False  # a GOAWAY was sent or received: frames are no longer read

    # -- h2.H2Connection's API, the part the front uses -------------------------------------------
    @property
    def max_outbound_frame_size(self) -> int:
        return self._peer_max_frame

    @property
    def outbound_flow_control_window(self) -> int:
        return self._send_window

    def initiate_connection(self) -> None:
        self._out += frame(
            FrameType.SETTINGS,
            0,
            0,
            b"".join(
                SETTING.pack(code, value)
                for code, value in (
                    (Setting.HEADER_TABLE_SIZE, 0),
                    (Setting.MAX_CONCURRENT_STREAMS, self._max_streams),
                    (Setting.INITIAL_WINDOW_SIZE, self._stream_window),
                    (Setting.MAX_HEADER_LIST_SIZE, self._max_header_list),
                )
            ),
        )

    def increment_flow_control_window(self, increment: int) -> None:
        self._receive_window += increment
        self._receive_target += increment
        self._out += window_update(0, increment)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def partial(self) -> bool:
        """A frame or a header block has started and not yet finished."""
        return self._block is not None or self._reader.buffered > 0

    def receive_data(self, data: bytes, now: float = 0.0) -> list[h2.events.Event]:
        """The events of ``data``; ``now`` (monotonic seconds) prices PING and SETTINGS frames."""
        if self._ended:
            return []
        self._now = now
        events: list[h2.events.Event] = []
        self._events = events
        try:
            self._reader.feed(data)
        except ProtocolError as e:
            self.close_connection(e.code, str(e).encode()[:256])
            raise
        return events

    def local_flow_control_window(self, stream_id: int) -> int:
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_ended:
            raise StreamGone(stream_id)
        return min(self._send_window, stream.send_window)

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_ended:
            raise StreamGone(stream_id)
        self._out += headers_frames(
            stream_id, self._encoder.encode(headers), self._peer_max_frame, end_stream
        )
        if end_stream:
            self._end_local(stream_id, stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_ended:
            raise StreamGone(stream_id)
        size = len(data)
        if size > min(self._send_window, stream.send_window) or size > self._peer_max_frame:
            raise ValueError(f"{size} bytes past the window or frame size on stream {stream_id}")
        self._send_window -= size
        stream.send_window -= size
        self._out += frame(FrameType.DATA, Flag.END_STREAM if end_stream else 0, stream_id, data)
        if end_stream:
            self._end_local(stream_id, stream)

    def reset_stream(self, stream_id: int, error_code: int = ErrorCode.NO_ERROR) -> None:
        if self._streams.pop(stream_id, None) is None:
            raise StreamGone(stream_id)
        self._remember_closed(stream_id)
        self._out += rst_stream(stream_id, ErrorCode(error_code))

    def close_connection(
        self,
        error_code: int = ErrorCode.NO_ERROR,
        additional_data: bytes | None = None,
        last_stream_id: int | None = None,
    ) -> None:
        if self._ended:
            return
        self._ended = True
        last = self._highest if last_stream_id is None else last_stream_id
        self._out += goaway(last, ErrorCode(error_code), (additional_data or b"").decode(errors="replace"))

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        """The front has taken ``acknowledged_size`` bytes of a stream's DATA: the client may send more."""
        self._unacknowledged += acknowledged_size
        if self._unacknowledged >= self._receive_target // 2:
            self._out += window_update(0, self._unacknowledged)
            self._receive_window += self._unacknowledged
            self._unacknowledged = 0
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_ended:
            return
        stream.unacknowledged += acknowledged_size
        if stream.unacknowledged >= self._stream_window // 2:
            self._out += window_update(stream_id, stream.unacknowledged)
            stream.receive_window += stream.unacknowledged
            stream.unacknowledged = 0

    # -- receiving ---------------------------------------------------------------------------------
    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._ended:
            return
        if self._block is not None and kind != FrameType.CONTINUATION:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "a header block interrupted by another frame")
        if not self._got_settings and (kind != FrameType.SETTINGS or flags & Flag.ACK):
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "the client's first frame is not SETTINGS")
        if kind == FrameType.WINDOW_UPDATE:
            self.window_updates += 1
        elif (
            (kind == FrameType.PING or kind == FrameType.SETTINGS)
            and not flags & Flag.ACK
            and self._control is not None
            and not self._control.spend(self._now)
        ):
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "too many PING or SETTINGS frames")
        try:
            if kind == FrameType.DATA:
                self._on_data(flags, stream_id, payload)
            elif kind == FrameType.HEADERS:
                self._on_headers(flags, stream_id, payload)
            elif kind == FrameType.CONTINUATION:
                self._on_continuation(flags, stream_id, payload)
            elif kind == FrameType.WINDOW_UPDATE:
                self._on_window_update(stream_id, payload)
            elif kind == FrameType.RST_STREAM:
                self._on_rst_stream(stream_id, payload)
            elif kind == FrameType.SETTINGS:
                self._on_settings(flags, stream_id, payload)
            elif kind == FrameType.PING:
                self._on_ping(flags, stream_id, payload)
            elif kind == FrameType.PRIORITY:
                self._on_priority(stream_id, payload)
            elif kind == FrameType.GOAWAY:
                self._on_goaway(stream_id, payload)
            elif kind == FrameType.PUSH_PROMISE:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
            # other frame types are ignored (RFC 9113 §4.1)
        except _StreamError as e:
            self._stream_error(stream_id, e.code)

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)  # padding included: it counts against the windows
        if size > self._receive_window:
            raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "DATA past the connection's window")
        self._receive_window -= size
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_ended:
            if stream is None and stream_id > self._highest:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            self.acknowledge_received_data(size, 0)  # nobody will read it: the connection gets it back
            raise _StreamError(ErrorCode.STREAM_CLOSED, "DATA after END_STREAM")
        if size > stream.receive_window:
            self.acknowledge_received_data(size, 0)
            raise _StreamError(ErrorCode.FLOW_CONTROL_ERROR, "DATA past the stream's window")
        stream.receive_window -= size
        body = strip_padding(flags, payload, FrameType.DATA)
        ended = self._end_remote(stream_id, stream) if flags & Flag.END_STREAM else None
        self._events.append(
            h2.events.DataReceived(
                stream_id=stream_id, data=body, flow_controlled_length=size, stream_ended=ended
            )
        )

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        if not stream_id % 2:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"HEADERS on even stream {stream_id} from a client")
        if flags & Flag.PRIORITY and len(payload) >= 5 + (1 if flags & Flag.PADDED else 0):
            start = 1 if flags & Flag.PADDED else 0
            if WINDOW_INCREMENT.unpack_from(payload, start)[0] & MAX_WINDOW == stream_id:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"stream {stream_id} depends on itself")
        self.header_blocks += 1
        self._block_bytes, self._continuations = len(payload), 0
        self._check_block_size()
        block = strip_padding(flags, payload, FrameType.HEADERS)
        if flags & Flag.END_HEADERS:
            self._on_block(stream_id, flags, block)
        else:
            self._block, self._block_stream, self._block_flags = bytearray(block), stream_id, flags

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._block is None or stream_id != self._block_stream:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without a header block to continue")
        self._continuations += 1
        if self._continuations > self._max_continuations:
            raise ProtocolError(
                ErrorCode.ENHANCE_YOUR_CALM,
                f"a header block in more than {self._max_continuations} CONTINUATION frames",
            )
        self._block_bytes += len(payload)
        self._check_block_size()
        self._block += payload
        if flags & Flag.END_HEADERS:
            block, self._block = bytes(self._block), None
            self._on_block(stream_id, self._block_flags, block)

    def _check_block_size(self) -> None:
        if self._block_bytes > self._max_block:
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, f"a header block over {self._max_block} bytes")

    def _on_block(self, stream_id: int, flags: int, block: bytes) -> None:
        if leading_table_updates(block[:BLOCK_PREFIX_BYTES]) > 2:  # hpack would apply each: refused first
            raise ProtocolError(
                ErrorCode.COMPRESSION_ERROR, "more than two table size updates at the start of a header block"
            )
        headers = self._decoder.decode(block)  # even for a stream refused below: HPACK state moves on
        end_stream = bool(flags & Flag.END_STREAM)
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers
            if stream.remote_ended:
                raise _StreamError(ErrorCode.STREAM_CLOSED, "HEADERS after END_STREAM")
            if not end_stream:
                raise _StreamError(ErrorCode.PROTOCOL_ERROR, "trailers without END_STREAM")
            if header_problem(headers, trailers=True):
                raise _StreamError(ErrorCode.PROTOCOL_ERROR, "malformed trailers")
            trailers_end = self._end_remote(stream_id, stream)
            self._events.append(
                h2.events.TrailersReceived(
                    stream_id=stream_id, headers=list(headers), stream_ended=trailers_end
                )
            )
            return
        if stream_id <= self._highest:
            if stream_id in self._closed_streams:
                raise _StreamError(ErrorCode.STREAM_CLOSED, "HEADERS on a closed stream")
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"stream {stream_id} after {self._highest}")
        self._highest = stream_id
        if len(self._streams) >= self._max_streams:
            self._out += rst_stream(stream_id, ErrorCode.REFUSED_STREAM)
            self._remember_closed(stream_id)
            return
        if headers not in self._validated:
            if header_problem(headers, trailers=False):
                self._out += rst_stream(stream_id, ErrorCode.PROTOCOL_ERROR)
                self._remember_closed(stream_id)
                return
            if len(self._validated) < VALIDATED_REMEMBERED and self._decoder.static_only:
                self._validated.add(headers)
        stream = self._streams[stream_id] = _Stream(self._peer_initial_window, self._stream_window)
        ended = self._end_remote(stream_id, stream) if end_stream else None
        request = h2.events.RequestReceived(stream_id=stream_id, headers=headers, stream_ended=ended)  # type: ignore[arg-type]  # a tuple: the front keeps it as it is
        self._events.append(request)

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of other than 4 bytes")
        increment = WINDOW_INCREMENT.unpack(payload)[0] & MAX_WINDOW
        if not stream_id:
            if not increment:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "connection window past 2^31-1")
        else:
            stream = self._streams.get(stream_id)
            if stream is None:
                if stream_id > self._highest:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
                return  # a closed stream: late, harmless
            if not increment:
                raise _StreamError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                raise _StreamError(ErrorCode.FLOW_CONTROL_ERROR, "stream window past 2^31-1")
        self._events.append(h2.events.WindowUpdated(stream_id=stream_id, delta=increment))

    def _on_rst_stream(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM of other than 4 bytes")
        if not stream_id or stream_id > self._highest:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        if self._streams.pop(stream_id, None) is None:
            return
        self._remember_closed(stream_id)
        code = WINDOW_INCREMENT.unpack(payload)[0]
        self._events.append(h2.events.StreamReset(stream_id=stream_id, error_code=code, remote_reset=True))

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & Flag.ACK:
            if payload:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            # The client's encoder may go on with its table: like h2, this end does not insist (its blocks
            # are decoded all the same; only repeated blocks of a table-less encoder skip the decoder).
            return
        for code, value in parse_settings(payload).items():
            if code == Setting.ENABLE_PUSH and value > 1:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"ENABLE_PUSH of {value}")
            if code == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, f"INITIAL_WINDOW_SIZE of {value}")
                delta, self._peer_initial_window = value - self._peer_initial_window, value
                for stream in self._streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "a stream window past 2^31-1")
            elif code == Setting.MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= MAX_FRAME:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"MAX_FRAME_SIZE of {value}")
                self._peer_max_frame = value
            # HEADER_TABLE_SIZE: this end's blocks use no dynamic table; the rest concern pushes and
            # what the client accepts, which a gRPC answer stays within
        self._got_settings = True
        self._out += frame(FrameType.SETTINGS, Flag.ACK, 0)
        self._events.append(h2.events.RemoteSettingsChanged())

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, f"PING of {len(payload)} bytes")
        if not flags & Flag.ACK:
            self._out += frame(FrameType.PING, Flag.ACK, 0, payload)

    def _on_priority(self, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            raise _StreamError(ErrorCode.FRAME_SIZE_ERROR, "PRIORITY of other than 5 bytes")
        if WINDOW_INCREMENT.unpack_from(payload)[0] & MAX_WINDOW == stream_id:
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, f"stream {stream_id} depends on itself")

    def _on_goaway(self, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        self._ended = True
        event = h2.events.ConnectionTerminated()
        event.last_stream_id, event.error_code = (
            WINDOW_INCREMENT.unpack_from(payload)[0] & MAX_WINDOW,
            WINDOW_INCREMENT.unpack_from(payload, 4)[0],
        )
        self._events.append(event)

    # -- stream states -----------------------------------------------------------------------------
    def _stream_error(self, stream_id: int, code: ErrorCode) -> None:
        """RST_STREAM ``code``; a stream the front knows of is reported reset (it lets go of it)."""
        self._out += rst_stream(stream_id, code)
        if self._streams.pop(stream_id, None) is not None:
            self._remember_closed(stream_id)
            self._events.append(
                h2.events.StreamReset(stream_id=stream_id, error_code=code, remote_reset=False)
            )

    def _end_remote(self, stream_id: int, stream: _Stream) -> h2.events.StreamEnded:
        stream.remote_ended = True
        if stream.local_ended:
            self._close(stream_id)
        return h2.events.StreamEnded(stream_id=stream_id)

    def _end_local(self, stream_id: int, stream: _Stream) -> None:
        stream.local_ended = True
        if stream.remote_ended:
            self._close(stream_id)

    def _close(self, stream_id: int) -> None:
        del self._streams[stream_id]
        self._remember_closed(stream_id)

    def _remember_closed(self, stream_id: int) -> None:
        closed = self._closed_streams
        closed[stream_id] = None
        if len(closed) > CLOSED_REMEMBERED:
            del closed[next(iter(closed))]
