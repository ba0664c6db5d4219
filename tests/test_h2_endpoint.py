"""One HTTP/2 connection end (mesh/fronts/h2/endpoint.py) over a fake transport: flow control, settings,
batching.

The real thing (grpc peers on both sides) is tests/test_h2_front.py; here each rule is driven exactly.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from mesh.fronts.h2.endpoint import STREAM_RECEIVE_WINDOW, STREAM_REFILL_AT, H2Endpoint, WriteBatch
from mesh.fronts.h2.wire import (
    PREFACE,
    BlockEncoder,
    Flag,
    FrameReader,
    FrameType,
    Headers,
    Setting,
    frame,
    settings_frame,
    window_update,
)

Frame = tuple[int, int, int, bytes]


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.paused = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_headers(self, endpoint: H2Endpoint, stream_id: int, headers: Headers, end: bool) -> None:
        self.events.append(("headers", stream_id, headers, end))

    def on_data(self, endpoint: H2Endpoint, stream_id: int, data: bytes, end: bool) -> None:
        self.events.append(("data", stream_id, data, end))

    def on_reset(self, endpoint: H2Endpoint, stream_id: int, code: int) -> None:
        self.events.append(("reset", stream_id, code))

    def on_closed(self, endpoint: H2Endpoint) -> None:
        self.events.append(("closed",))

    def on_backlog(self, endpoint: H2Endpoint, high: bool) -> None:
        self.events.append(("backlog", high))


def frames_written(transport: FakeTransport, skip_preface: bool = False) -> list[Frame]:
    seen: list[Frame] = []
    raw = b"".join(transport.writes)
    if skip_preface:
        raw = raw.removeprefix(PREFACE)
    FrameReader(lambda *f: seen.append(f), 1 << 24, expect_preface=False).feed(raw)
    transport.writes.clear()
    return seen


async def client_endpoint(batch: WriteBatch | None = None) -> tuple[H2Endpoint, FakeTransport, Recorder]:
    recorder = Recorder()
    endpoint = H2Endpoint(recorder, client_side=True, batch=batch)
    transport = FakeTransport()
    endpoint.connection_made(transport)
    opening = frames_written(transport, skip_preface=True)
    assert [f[0] for f in opening] == [FrameType.SETTINGS, FrameType.WINDOW_UPDATE]
    return endpoint, transport, recorder


HEADERS: Headers = ((b":method", b"POST"), (b":path", b"/x.Y/Z"))


async def test_data_beyond_the_peers_window_waits_for_window_update() -> None:
    endpoint, transport, _ = await client_endpoint()
    stream = endpoint.new_stream()
    endpoint.send_headers(stream, HEADERS)
    endpoint.send_data(stream, b"a" * 100_000, end_stream=True)
    sent = frames_written(transport)
    data = [f for f in sent if f[0] == FrameType.DATA]
    assert sum(len(f[3]) for f in data) == 65_535  # the default windows, no more
    assert all(len(f[3]) <= 16_384 for f in data)
    assert not any(f[1] & Flag.END_STREAM for f in data)
    endpoint.data_received(window_update(0, 50_000) + window_update(stream, 50_000))
    rest = [f for f in frames_written(transport) if f[0] == FrameType.DATA]
    assert sum(len(f[3]) for f in rest) == 100_000 - 65_535
    assert rest[-1][1] & Flag.END_STREAM


async def test_a_larger_initial_window_from_settings_releases_queued_data() -> None:
    endpoint, transport, _ = await client_endpoint()
    endpoint.data_received(window_update(0, 1 << 20))  # the connection has room, the stream not yet
    stream = endpoint.new_stream()
    endpoint.send_headers(stream, HEADERS)
    endpoint.send_data(stream, b"b" * 70_000, end_stream=True)
    frames_written(transport)
    endpoint.data_received(settings_frame({Setting.INITIAL_WINDOW_SIZE: 1 << 20}))
    sent = frames_written(transport)
    assert (FrameType.SETTINGS, Flag.ACK, 0, b"") in sent
    assert sum(len(f[3]) for f in sent if f[0] == FrameType.DATA) == 70_000 - 65_535


async def test_trailers_wait_behind_queued_data() -> None:
    endpoint, transport, _ = await client_endpoint()
    stream = endpoint.new_stream()
    endpoint.send_headers(stream, HEADERS)
    endpoint.send_data(stream, b"c" * 70_000)
    endpoint.send_headers(stream, ((b"grpc-status", b"0"),), end_stream=True)
    first = frames_written(transport)
    assert [f[0] for f in first].count(FrameType.HEADERS) == 1  # the trailers are held
    endpoint.data_received(window_update(0, 10_000) + window_update(stream, 10_000))
    after = frames_written(transport)
    assert [f[0] for f in after][-1] == FrameType.HEADERS and after[-1][1] & Flag.END_STREAM


async def test_the_peers_max_frame_size_is_honoured() -> None:
    endpoint, transport, _ = await client_endpoint()
    endpoint.data_received(settings_frame({Setting.MAX_FRAME_SIZE: 32_768}))
    frames_written(transport)
    stream = endpoint.new_stream()
    endpoint.send_headers(stream, HEADERS)
    endpoint.send_data(stream, b"d" * 60_000, end_stream=True)
    data = [f for f in frames_written(transport) if f[0] == FrameType.DATA]
    assert [len(f[3]) for f in data] == [32_768, 60_000 - 32_768]


async def test_a_backlog_beyond_the_limit_asks_the_other_side_to_pause() -> None:
    endpoint, _, recorder = await client_endpoint()
    stream = endpoint.new_stream()
    endpoint.send_headers(stream, HEADERS)
    endpoint.send_data(stream, b"e" * (9 << 20))  # the peer never opens its window
    assert ("backlog", True) in recorder.events
    recorder.events.clear()
    endpoint.data_received(  # the peer takes it all: the end of the backlog is told once
        frame(FrameType.WINDOW_UPDATE, 0, 0, struct.pack(">L", 16 << 20))
        + frame(FrameType.WINDOW_UPDATE, 0, stream, struct.pack(">L", 16 << 20))
        + frame(FrameType.WINDOW_UPDATE, 0, 0, struct.pack(">L", 1000))
    )
    assert recorder.events == [("backlog", False)]


async def test_frames_are_delivered_and_ping_is_answered() -> None:
    endpoint, transport, recorder = await client_endpoint()
    block = BlockEncoder().encode(((b":status", b"200"),))
    endpoint.data_received(
        frame(FrameType.HEADERS, 0, 1, block[:3])
        + frame(FrameType.CONTINUATION, Flag.END_HEADERS, 1, block[3:])
        + frame(FrameType.DATA, Flag.END_STREAM, 1, b"answer")
        + frame(FrameType.PING, 0, 0, b"01234567")
        + frame(FrameType.RST_STREAM, 0, 3, struct.pack(">L", 8))
    )
    assert recorder.events == [
        ("headers", 1, ((b":status", b"200"),), False),
        ("data", 1, b"answer", True),
        ("reset", 3, 8),
    ]
    assert (FrameType.PING, Flag.ACK, 0, b"01234567") in frames_written(transport)


async def test_a_broken_peer_gets_goaway_and_the_connection_closes() -> None:
    endpoint, transport, _ = await client_endpoint()
    endpoint.data_received(frame(FrameType.CONTINUATION, Flag.END_HEADERS, 1, b"x"))  # no HEADERS first
    assert frames_written(transport)[-1][0] == FrameType.GOAWAY
    assert transport.closed


async def test_writes_inside_a_batch_go_out_as_one() -> None:
    batch = WriteBatch()
    endpoint, transport, _ = await client_endpoint(batch)
    stream = endpoint.new_stream()
    with batch:
        endpoint.send_headers(stream, HEADERS)
        endpoint.send_data(stream, b"f" * 10, end_stream=True)
        assert transport.writes == []
    assert len(transport.writes) == 1
    assert [f[0] for f in frames_written(transport)] == [FrameType.HEADERS, FrameType.DATA]


async def test_work_after_a_batch_runs_once_its_writes_are_out() -> None:
    batch = WriteBatch()
    endpoint, transport, _ = await client_endpoint(batch)
    stream = endpoint.new_stream()
    seen: list[int] = []

    def bookkeeping() -> None:
        seen.append(len(transport.writes))  # the answer went out before this ran
        batch.after(lambda: seen.append(-1))  # work queued by work runs in the same batch
        endpoint.send_data(stream, b"late", end_stream=True)  # and what it writes goes out too

    with batch:
        endpoint.send_headers(stream, HEADERS)
        batch.after(bookkeeping)
        assert seen == [] and transport.writes == []
    assert seen == [1, -1]
    assert [f[0] for f in frames_written(transport)] == [FrameType.HEADERS, FrameType.DATA]
    batch.after(lambda: seen.append(0))  # no batch open: at once
    assert seen == [1, -1, 0]


@pytest.mark.parametrize("after", [0, 5])
async def test_no_stream_ids_are_reused(after: int) -> None:
    endpoint, _, _ = await client_endpoint()
    for _ in range(after):
        endpoint.new_stream()
    ids = [endpoint.new_stream() for _ in range(3)]
    assert ids == sorted(set(ids)) and all(i % 2 == 1 for i in ids)


async def test_a_streams_receive_window_is_credited_only_as_its_bytes_are_passed_on() -> None:
    endpoint, transport, recorder = await client_endpoint()
    transport.writes.clear()
    stream = endpoint.new_stream()
    endpoint.send_headers(stream, HEADERS)
    frames_written(transport)
    chunk = b"x" * 16_384
    for _ in range(40):  # 640 KiB arrive: nothing is given back until the handler passes bytes on
        endpoint.data_received(frame(FrameType.DATA, 0, stream, chunk))
    assert not [f for f in frames_written(transport) if f[0] == FrameType.WINDOW_UPDATE and f[2] == stream]
    endpoint.consumed(stream, STREAM_REFILL_AT - 1)
    assert not [f for f in frames_written(transport) if f[2] == stream]
    endpoint.consumed(stream, 1)
    updates = [f for f in frames_written(transport) if f[0] == FrameType.WINDOW_UPDATE]
    assert updates == [(FrameType.WINDOW_UPDATE, 0, stream, struct.pack(">I", STREAM_REFILL_AT))]
    endpoint.consumed(stream, 100)  # below the refill point again: held
    assert not frames_written(transport)
    endpoint.data_received(frame(FrameType.DATA, Flag.END_STREAM, stream, b""))
    endpoint.consumed(stream, STREAM_REFILL_AT)  # after the end: a WINDOW_UPDATE would be an error
    assert not frames_written(transport)
    assert len([e for e in recorder.events if e[0] == "data"]) == 41


async def test_the_stream_window_advertised_to_upstreams_is_finite() -> None:
    recorder = Recorder()
    endpoint = H2Endpoint(recorder, client_side=True)
    transport = FakeTransport()
    endpoint.connection_made(transport)
    settings = frames_written(transport, skip_preface=True)[0]
    values = dict(struct.iter_unpack(">HI", settings[3]))
    assert values[Setting.INITIAL_WINDOW_SIZE] == STREAM_RECEIVE_WINDOW < (1 << 31) - 1


async def test_padding_is_given_back_at_once() -> None:
    endpoint, transport, _ = await client_endpoint()
    transport.writes.clear()
    stream = endpoint.new_stream()
    endpoint.send_headers(stream, HEADERS)
    frames_written(transport)
    padded = bytes([200]) + b"d" * 10 + bytes(200)
    for _ in range(STREAM_REFILL_AT // 201 + 1):
        endpoint.data_received(frame(FrameType.DATA, Flag.PADDED, stream, padded))
    updates = [f for f in frames_written(transport) if f[0] == FrameType.WINDOW_UPDATE and f[2] == stream]
    assert len(updates) == 1  # the padding alone reached the refill point
