"""HTTP/2 framing and header blocks, as much as a gRPC front needs (RFC 9113, RFC 7541). Pure, no I/O.

Header blocks are written as literals without indexing: they change no encoder state, so the block for a
given header list is computed once and reused. Blocks read from a peer go through ``hpack``'s decoder; a
block decoded while the peer's dynamic table stays as it was means the same headers the next time it
arrives, so steady traffic (the same few blocks, all indexed) skips the decoder.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from enum import IntEnum

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = struct.Struct(">HBBBL")  # length (24 bits as 16 + 8), type, flags, stream id
WINDOW_INCREMENT = struct.Struct(">L")
SETTING = struct.Struct(">HL")
DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_FRAME = (1 << 24) - 1
MAX_WINDOW = (1 << 31) - 1

Headers = tuple[tuple[bytes, bytes], ...]


class FrameType(IntEnum):
    DATA = 0
    HEADERS = 1
    PRIORITY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PUSH_PROMISE = 5
    PING = 6
    GOAWAY = 7
    WINDOW_UPDATE = 8
    CONTINUATION = 9


class Flag:
    END_STREAM = 0x1
    ACK = 0x1
    END_HEADERS = 0x4
    PADDED = 0x8
    PRIORITY = 0x20


class Setting(IntEnum):
    HEADER_TABLE_SIZE = 1
    ENABLE_PUSH = 2
    MAX_CONCURRENT_STREAMS = 3
    INITIAL_WINDOW_SIZE = 4
    MAX_FRAME_SIZE = 5
    MAX_HEADER_LIST_SIZE = 6


class ErrorCode(IntEnum):
    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    STREAM_CLOSED = 5
    FRAME_SIZE_ERROR = 6
    REFUSED_STREAM = 7
    CANCEL = 8
    SETTINGS_TIMEOUT = 4
    COMPRESSION_ERROR = 9
    CONNECT_ERROR = 10
    ENHANCE_YOUR_CALM = 11


class ProtocolError(Exception):
    """The peer broke HTTP/2: the connection ends with GOAWAY."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame(kind: FrameType, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return FRAME_HEADER.pack(size >> 8, size & 0xFF, kind, flags, stream_id) + payload


def settings_frame(settings: dict[Setting, int]) -> bytes:
    return frame(FrameType.SETTINGS, 0, 0, b"".join(SETTING.pack(k, v) for k, v in settings.items()))


def parse_settings(payload: bytes) -> dict[int, int]:
    if len(payload) % 6:
        raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS length is not a multiple of 6")
    return dict(SETTING.iter_unpack(payload))


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(FrameType.WINDOW_UPDATE, 0, stream_id, WINDOW_INCREMENT.pack(increment))


def rst_stream(stream_id: int, code: ErrorCode) -> bytes:
    return frame(FrameType.RST_STREAM, 0, stream_id, WINDOW_INCREMENT.pack(code))


def goaway(last_stream_id: int, code: ErrorCode, message: str = "") -> bytes:
    return frame(FrameType.GOAWAY, 0, 0, struct.pack(">LL", last_stream_id, code) + message.encode())


def data_frames(stream_id: int, data: bytes, max_frame: int, end_stream: bool) -> list[bytes]:
    """``data`` cut into DATA frames of at most ``max_frame`` bytes; END_STREAM on the last."""
    if not data:
        return [frame(FrameType.DATA, Flag.END_STREAM if end_stream else 0, stream_id)]
    out = []
    for start in range(0, len(data), max_frame):
        last = start + max_frame >= len(data)
        flags = Flag.END_STREAM if end_stream and last else 0
        out.append(frame(FrameType.DATA, flags, stream_id, data[start : start + max_frame]))
    return out


def headers_frames(stream_id: int, block: bytes, max_frame: int, end_stream: bool) -> bytes:
    """One HEADERS frame, with CONTINUATION frames when the block is larger than a frame."""
    end = Flag.END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        return frame(FrameType.HEADERS, Flag.END_HEADERS | end, stream_id, block)
    chunks = [block[i : i + max_frame] for i in range(0, len(block), max_frame)]
    out = [frame(FrameType.HEADERS, end, stream_id, chunks[0])]
    for index, chunk in enumerate(chunks[1:], start=2):
        flags = Flag.END_HEADERS if index == len(chunks) else 0
        out.append(frame(FrameType.CONTINUATION, flags, stream_id, chunk))
    return b"".join(out)


def strip_padding(flags: int, payload: bytes, kind: FrameType) -> bytes:
    """A HEADERS or DATA payload without its padding (and a HEADERS payload without its priority)."""
    if flags & Flag.PADDED:
        if not payload or payload[0] >= len(payload):
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
        payload = payload[1 : len(payload) - payload[0]]
    if kind is FrameType.HEADERS and flags & Flag.PRIORITY:
        payload = payload[5:]
    return payload


FrameHandler = Callable[[int, int, int, bytes], None]  # type, flags, stream id, payload


class FrameReader:
    """Cuts a byte stream into frames; calls ``on_frame`` for each complete one."""

    def __init__(self, on_frame: FrameHandler, max_frame: int, expect_preface: bool) -> None:
        self._buffer = bytearray()
        self._on_frame = on_frame
        self._max_frame = max_frame
        self._preface = expect_preface

    @property
    def buffered(self) -> int:
        """Bytes of a frame (or the preface) that has not arrived whole."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if self._preface:
            if len(buffer) < len(PREFACE):
                return
            if buffer[: len(PREFACE)] != PREFACE:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            del buffer[: len(PREFACE)]
            self._preface = False
        position, size = 0, len(buffer)
        unpack = FRAME_HEADER.unpack_from
        while size - position >= 9:
            high, low, kind, flags, stream_id = unpack(buffer, position)
            length = (high << 8) | low
            if length > self._max_frame:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} bytes")
            end = position + 9 + length
            if end > size:
                break
            self._on_frame(kind, flags, stream_id & MAX_WINDOW, bytes(buffer[position + 9 : end]))
            position = end
        if position:
            del buffer[:position]


def _prefixed_int(value: int) -> bytes:
    """An HPACK integer with a 7-bit prefix (string lengths, Huffman bit clear)."""
    if value < 127:
        return bytes((value,))
    out = bytearray((127,))
    value -= 127
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class BlockEncoder:
    """Header lists to header blocks of literals without indexing; remembers the frequent ones.

    The first block starts with a dynamic-table-size update to 0 (RFC 7541 §6.3): the encoder keeps no
    table, and says so, so a peer that advertised a table of 0 bytes sees its rule kept and a peer's decoder
    knows from the first block on that the same bytes mean the same headers.
    """

    def __init__(self, remembered: int = 512) -> None:
        self._blocks: dict[Headers, bytes] = {}
        self._remembered = remembered
        self._announced = False

    def encode(self, headers: Headers) -> bytes:
        block = self._blocks.get(headers)
        if block is None:
            block = b"".join(
                b"\x00" + _prefixed_int(len(name)) + name + _prefixed_int(len(value)) + value
                for name, value in headers
            )
            if len(self._blocks) < self._remembered:
                self._blocks[headers] = block
        if not self._announced:
            self._announced = True
            return b"\x20" + block
        return block


class BlockDecoder:
    """Header blocks from one peer (one connection's HPACK state) to header lists.

    The front advertises SETTINGS_HEADER_TABLE_SIZE = 0 to its upstreams. Once the peer's encoder has
    followed (the table-size update RFC 7541 §4.2 requires), its blocks name only the static table: a
    block means the same headers every time it arrives, so the frequent ones are remembered.
    """

    def __init__(self, remembered: int = 512, max_header_list_bytes: int = 16 << 20) -> None:
        # The pod's own upstreams: a long error message in their trailers is passed on, not a protocol error.
        self._decoder = hpack.Decoder(max_header_list_size=max_header_list_bytes)
        self._known: dict[bytes, Headers] = {}
        self._remembered = remembered

    @property
    def static_only(self) -> bool:
        """The peer's dynamic table is 0 bytes: a block means the same headers whenever it comes."""
        return self._decoder.header_table_size == 0

    def decode(self, block: bytes) -> Headers:
        known = self._known.get(block)
        if known is not None:
            return known
        try:
            headers: Headers = tuple(
                (bytes(name), bytes(value)) for name, value in self._decoder.decode(block, raw=True)
            )
        except hpack.OversizedHeaderListError as e:
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, f"header list too large: {e}") from e
        except hpack.HPACKError as e:
            raise ProtocolError(ErrorCode.COMPRESSION_ERROR, f"bad header block: {e}") from e
        if self._decoder.header_table_size == 0 and len(self._known) < self._remembered:
            self._known[block] = headers
        return headers


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


MAX_GRPC_MESSAGE = 4096  # grpc clients refuse trailers over 8 KiB (their metadata limit) by default


def clipped_trailers(headers: Headers) -> Headers:
    """``headers`` with a grpc-message over ``MAX_GRPC_MESSAGE`` bytes cut short, so the client gets the
    code and the start of the message instead of a metadata-size error."""
    for name, value in headers:
        if name == b"grpc-message" and len(value) > MAX_GRPC_MESSAGE:
            cut = value[:MAX_GRPC_MESSAGE]
            cut = cut[: cut.rfind(b"%")] if b"%" in cut[-2:] else cut  # no half percent-escape
            return tuple((k, cut + b"...") if k == b"grpc-message" else (k, v) for k, v in headers)
    return headers


def grpc_error_headers(code: int, message: str) -> Headers:
    """A trailers-only gRPC response: the status in the one header block."""
    return (
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", str(code).encode()),
        (b"grpc-message", _percent_encode(message)),
    )


def _percent_encode(message: str) -> bytes:
    """grpc-message is percent-encoded UTF-8 (the gRPC HTTP/2 spec)."""
    out = bytearray()
    for byte in message.encode():
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)
