"""HTTP/2 framing and header blocks (mesh/fronts/h2/wire.py): pure, against the hpack reference codec."""

from __future__ import annotations

import hpack
import pytest

from mesh.fronts.h2.wire import (
    PREFACE,
    BlockDecoder,
    BlockEncoder,
    ErrorCode,
    Flag,
    FrameReader,
    FrameType,
    ProtocolError,
    Setting,
    data_frames,
    frame,
    grpc_error_headers,
    headers_frames,
    parse_settings,
    settings_frame,
    strip_padding,
)

Frames = list[tuple[int, int, int, bytes]]


def reader(expect_preface: bool = False, max_frame: int = 16_384) -> tuple[FrameReader, Frames]:
    seen: Frames = []
    return FrameReader(lambda *f: seen.append(f), max_frame, expect_preface), seen


def test_frames_are_cut_from_any_split_of_the_stream() -> None:
    stream = (
        PREFACE
        + frame(FrameType.HEADERS, Flag.END_HEADERS, 1, b"abc")
        + frame(FrameType.DATA, Flag.END_STREAM, 1, b"x" * 300)
        + frame(FrameType.PING, 0, 0, b"12345678")
    )
    for step in (1, 7, 9, 10, 64, len(stream)):
        read, seen = reader(expect_preface=True)
        for start in range(0, len(stream), step):
            read.feed(stream[start : start + step])
        assert seen == [
            (FrameType.HEADERS, Flag.END_HEADERS, 1, b"abc"),
            (FrameType.DATA, Flag.END_STREAM, 1, b"x" * 300),
            (FrameType.PING, 0, 0, b"12345678"),
        ], step


def test_a_wrong_preface_is_a_protocol_error() -> None:
    read, _ = reader(expect_preface=True)
    with pytest.raises(ProtocolError) as e:
        read.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert e.value.code is ErrorCode.PROTOCOL_ERROR


def test_a_frame_over_the_limit_is_refused() -> None:
    read, _ = reader(max_frame=100)
    with pytest.raises(ProtocolError) as e:
        read.feed(frame(FrameType.DATA, 0, 1, b"x" * 101))
    assert e.value.code is ErrorCode.FRAME_SIZE_ERROR


def test_the_reserved_bit_of_the_stream_id_is_ignored() -> None:
    read, seen = reader()
    raw = bytearray(frame(FrameType.DATA, 0, 3, b"a"))
    raw[5] |= 0x80
    read.feed(bytes(raw))
    assert seen[0][2] == 3


@pytest.mark.parametrize("size", [0, 1, 16_384, 16_385, 50_000])
def test_data_is_cut_to_the_peers_frame_size_with_end_stream_once(size: int) -> None:
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    read, seen = reader()
    read.feed(b"".join(data_frames(5, payload, 16_384, end_stream=True)))
    assert b"".join(f[3] for f in seen) == payload
    assert all(len(f[3]) <= 16_384 for f in seen)
    assert [f[1] & Flag.END_STREAM for f in seen] == [0] * (len(seen) - 1) + [Flag.END_STREAM]


def test_a_large_header_block_goes_on_in_continuation_frames() -> None:
    block = b"h" * 40_000
    read, seen = reader()
    read.feed(headers_frames(7, block, 16_384, end_stream=True))
    assert [f[0] for f in seen] == [FrameType.HEADERS, FrameType.CONTINUATION, FrameType.CONTINUATION]
    assert seen[0][1] & Flag.END_STREAM and not seen[0][1] & Flag.END_HEADERS
    assert seen[-1][1] & Flag.END_HEADERS
    assert b"".join(f[3] for f in seen) == block


def test_padding_and_priority_are_removed() -> None:
    padded = bytes([3]) + b"body" + b"\0\0\0"
    assert strip_padding(Flag.PADDED, padded, FrameType.DATA) == b"body"
    with_priority = bytes([2]) + b"\0\0\0\1\x10" + b"blk" + b"\0\0"
    assert strip_padding(Flag.PADDED | Flag.PRIORITY, with_priority, FrameType.HEADERS) == b"blk"
    with pytest.raises(ProtocolError):
        strip_padding(Flag.PADDED, bytes([9]) + b"ab", FrameType.DATA)


def test_settings_round_trip_and_bad_length() -> None:
    raw = settings_frame({Setting.INITIAL_WINDOW_SIZE: 1 << 20, Setting.MAX_FRAME_SIZE: 32_768})
    assert parse_settings(raw[9:]) == {4: 1 << 20, 5: 32_768}
    with pytest.raises(ProtocolError):
        parse_settings(b"\0\4\0")


@pytest.mark.parametrize(
    "headers",
    [
        ((b":status", b"200"), (b"content-type", b"application/grpc")),
        ((b"grpc-status", b"0"),),
        ((b"x-long", b"v" * 300), (b"n" * 130, b"")),  # lengths past the 7-bit prefix
    ],
)
def test_encoded_blocks_decode_with_the_reference_decoder(headers: tuple[tuple[bytes, bytes], ...]) -> None:
    block = BlockEncoder().encode(headers)
    assert tuple(hpack.Decoder().decode(block, raw=True)) == headers


def test_encoded_blocks_leave_the_peers_table_alone() -> None:
    """Literals without indexing: the same block means the same headers on any connection, at any time."""
    decoder = hpack.Decoder()
    block = BlockEncoder().encode(((b"a", b"1"), (b"b", b"2")))
    decoder.decode(block)
    assert len(decoder.header_table.dynamic_entries) == 0


def test_the_first_block_announces_an_empty_table_and_later_blocks_are_remembered() -> None:
    """A peer's decoder learns from the first block that this encoder keeps no table: from then on the same
    bytes are the same headers, and the peer's BlockDecoder skips decoding them."""
    encoder, decoder = BlockEncoder(), BlockDecoder()
    headers = ((b":status", b"200"), (b"content-type", b"application/grpc"))
    first, second = encoder.encode(headers), encoder.encode(headers)
    assert first == b"\x20" + second  # a dynamic-table-size update to 0, once
    assert decoder.decode(first) == headers
    assert decoder.static_only
    assert decoder.decode(second) is decoder.decode(second)  # remembered, not decoded again


def test_decoder_remembers_blocks_only_while_the_table_stands_still() -> None:
    encoder = hpack.Encoder()
    decoder = BlockDecoder()
    first = encoder.encode([(b":path", b"/a"), (b"x-id", b"one")])  # inserts into the table
    second = encoder.encode([(b":path", b"/a"), (b"x-id", b"one")])  # all indexed now
    assert decoder.decode(first) == ((b":path", b"/a"), (b"x-id", b"one"))
    assert decoder.decode(second) == ((b":path", b"/a"), (b"x-id", b"one"))
    assert decoder.decode(second) == ((b":path", b"/a"), (b"x-id", b"one"))  # remembered
    # a new insertion shifts every dynamic index: the same bytes now mean something else
    third = encoder.encode([(b"x-id", b"two")])
    assert decoder.decode(third) == ((b"x-id", b"two"),)
    fourth = encoder.encode([(b":path", b"/a"), (b"x-id", b"one")])
    assert decoder.decode(fourth) == ((b":path", b"/a"), (b"x-id", b"one"))
    # a block that inserts is never remembered: decoded twice it would insert twice
    again = hpack.Encoder()
    fresh = BlockDecoder()
    inserting = again.encode([(b"x-new", b"v")])
    fresh.decode(inserting)
    assert fresh.decode(inserting) == ((b"x-new", b"v"),)


def test_a_broken_block_is_a_compression_error() -> None:
    with pytest.raises(ProtocolError) as e:
        BlockDecoder().decode(b"\xff\xff\xff\xff")
    assert e.value.code is ErrorCode.COMPRESSION_ERROR


def test_grpc_error_headers_percent_encode_the_message() -> None:
    headers = dict(grpc_error_headers(5, "model not found: a%b é"))
    assert headers[b"grpc-status"] == b"5"
    assert headers[b"grpc-message"] == b"model not found: a%25b %C3%A9"


def test_long_grpc_messages_are_clipped_on_an_escape_boundary() -> None:
    from mesh.fronts.h2.wire import MAX_GRPC_MESSAGE, clipped_trailers

    short = ((b"grpc-status", b"3"), (b"grpc-message", b"bad"))
    assert clipped_trailers(short) is short
    long = ((b"grpc-status", b"3"), (b"grpc-message", b"a" * (MAX_GRPC_MESSAGE - 1) + b"%C3%A9" * 10))
    clipped = dict(clipped_trailers(long))
    assert clipped[b"grpc-status"] == b"3"
    assert clipped[b"grpc-message"] == b"a" * (MAX_GRPC_MESSAGE - 1) + b"..."
