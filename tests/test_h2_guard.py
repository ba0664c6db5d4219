"""The header-block guard and the reset budget (pure): what a client's bytes may make h2 hold or decode."""

from __future__ import annotations

import hpack
import pytest
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, PingFrame, SettingsFrame

from mesh.fronts.h2.guard import FrameBudget, GuardViolation, HeaderBlockGuard, leading_table_updates
from mesh.fronts.h2.wire import PREFACE, ErrorCode

REQUEST = [(":method", "POST"), (":scheme", "http"), (":path", "/x"), (":authority", "a")]


def headers_frame(block: bytes, end_headers: bool = True, **kwargs: object) -> bytes:
    frame = HeadersFrame(1, data=block, **kwargs)  # type: ignore[arg-type]
    if end_headers:
        frame.flags.add("END_HEADERS")
    return bytes(frame.serialize())


def continuation(block: bytes, end_headers: bool = False) -> bytes:
    frame = ContinuationFrame(1, data=block)
    if end_headers:
        frame.flags.add("END_HEADERS")
    return bytes(frame.serialize())


def guard(max_block: int = 1000, continuations: int = 4) -> HeaderBlockGuard:
    return HeaderBlockGuard(max_block, continuations)


@pytest.mark.parametrize(
    ("block", "count"),
    [
        (b"", 0),
        (b"\x82", 0),  # an indexed header
        (b"\x20\x82", 1),  # size 0, then a header
        (b"\x20\x20", 2),
        (b"\x20\x20\x20", 3),
        (b"\x3f\xe1\x1f\x20", 2),  # 4096 as a multi-byte integer, then 0
        (b"\x3f\xe1\x1f\x3f\xe1\x1f\x3f", 3),
        (b"\x3f\xff\xff\xff\xff\x0f\x20\x20", 3),  # a 5-byte continuation
        (b"\x40\x20", 0),  # a literal with indexing, not an update
    ],
)
def test_leading_table_updates(block: bytes, count: int) -> None:
    assert leading_table_updates(block) == count


def test_an_ordinary_request_passes_in_any_split() -> None:
    block = hpack.Encoder().encode(REQUEST)
    stream = PREFACE + bytes(SettingsFrame(0).serialize()) + headers_frame(block)
    stream += bytes(DataFrame(1, data=b"x" * 3000, flags=["END_STREAM"]).serialize())
    for size in (1, 2, 7, 9, 10, 64, len(stream)):
        checker = guard()
        for start in range(0, len(stream), size):
            checker.feed(stream[start : start + size])
        assert not checker.partial


def test_a_block_over_the_byte_limit_is_refused_before_it_is_buffered() -> None:
    checker = guard(max_block=100)
    checker.feed(PREFACE + headers_frame(b"\x82" * 60, end_headers=False))
    with pytest.raises(GuardViolation) as refused:
        checker.feed(continuation(b"\x82" * 60)[:9])  # the frame header alone tells
    assert refused.value.code is ErrorCode.ENHANCE_YOUR_CALM


def test_too_many_continuation_frames() -> None:
    checker = guard(continuations=3)
    checker.feed(PREFACE + headers_frame(b"\x82", end_headers=False))
    for _ in range(3):
        checker.feed(continuation(b"\x82"))
    assert checker.block_open and checker.partial
    with pytest.raises(GuardViolation) as refused:
        checker.feed(continuation(b"\x82"))
    assert refused.value.code is ErrorCode.ENHANCE_YOUR_CALM


def test_the_last_continuation_closes_the_block() -> None:
    checker = guard()
    checker.feed(PREFACE + headers_frame(b"\x82", end_headers=False) + continuation(b"\x86", True))
    assert not checker.block_open and not checker.partial


@pytest.mark.parametrize("split", [1, 3, 100])
def test_a_table_size_update_storm_is_refused(split: int) -> None:
    checker = guard(max_block=10_000)
    data = PREFACE + headers_frame(b"\x20" * 5000)
    with pytest.raises(GuardViolation) as refused:
        for start in range(0, len(data), split):
            checker.feed(data[start : start + split])
    assert refused.value.code is ErrorCode.COMPRESSION_ERROR


def test_a_storm_spread_over_continuations_is_refused() -> None:
    checker = guard(max_block=10_000)
    checker.feed(PREFACE + headers_frame(b"\x20", end_headers=False))
    checker.feed(continuation(b"\x20"))
    with pytest.raises(GuardViolation):
        checker.feed(continuation(b"\x20" * 30, end_headers=True))


def test_two_updates_and_padding_and_priority_pass() -> None:
    checker = guard()
    block = b"\x20\x20" + hpack.Encoder().encode(REQUEST)
    frame = HeadersFrame(1, data=block, pad_length=20, depends_on=0, stream_weight=16)
    for flag in ("END_HEADERS", "PADDED", "PRIORITY"):
        frame.flags.add(flag)
    checker.feed(PREFACE + bytes(frame.serialize()))
    assert not checker.partial


def test_padding_is_not_read_as_the_block() -> None:
    """Padding bytes that look like updates must not count: only the block does."""
    checker = guard()
    frame = HeadersFrame(1, data=b"\x82", pad_length=10)
    for flag in ("END_HEADERS", "PADDED"):
        frame.flags.add(flag)
    raw = bytearray(frame.serialize())
    raw[-10:] = b"\x20" * 10
    checker.feed(PREFACE + bytes(raw))


def test_half_a_frame_is_partial() -> None:
    checker = guard()
    checker.feed(PREFACE + bytes(PingFrame(0, opaque_data=b"12345678").serialize())[:12])
    assert checker.partial
    checker.feed(bytes(PingFrame(0, opaque_data=b"12345678").serialize())[12:])
    assert not checker.partial


def test_reset_budget_allows_a_burst_then_the_rate() -> None:
    budget = FrameBudget(rate_per_s=10, burst=5)
    assert all(budget.spend(100.0) for _ in range(5))
    assert not budget.spend(100.0)
    assert budget.spend(100.2)  # 0.2 s at 10/s earned two, one of them spent paying back the overdraft
    later = FrameBudget(rate_per_s=10, burst=5)
    assert all(later.spend(100.0 + i * 0.1) for i in range(100))  # at the rate, never refused


def test_ping_and_settings_frames_past_their_budget_are_refused() -> None:
    checker = HeaderBlockGuard(1000, 4, FrameBudget(rate_per_s=10, burst=20))
    checker.feed(PREFACE, now=1.0)
    ping = bytes(PingFrame(0, opaque_data=b"12345678").serialize())
    checker.feed(ping * 20, now=1.0)
    acks = PingFrame(0, opaque_data=b"12345678")
    acks.flags.add("ACK")
    checker.feed(bytes(acks.serialize()) * 100, now=1.0)  # ACKs ask for nothing: free
    with pytest.raises(GuardViolation) as refused:
        checker.feed(bytes(SettingsFrame(0).serialize()), now=1.0)
    assert refused.value.code is ErrorCode.ENHANCE_YOUR_CALM
    later = HeaderBlockGuard(1000, 4, FrameBudget(rate_per_s=10, burst=20))
    for second in range(30):
        later.feed((PREFACE if not second else b"") + ping * 10, now=float(second))  # at the rate: fine


def test_window_updates_are_counted_however_the_bytes_are_split() -> None:
    from hyperframe.frame import WindowUpdateFrame

    data = PREFACE + bytes(WindowUpdateFrame(0, window_increment=1).serialize()) * 7
    checker = guard()
    for start in range(0, len(data), 5):
        checker.feed(data[start : start + 5])
    assert checker.window_updates == 7
