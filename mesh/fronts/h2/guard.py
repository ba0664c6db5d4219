"""A look at a client's frame headers before ``h2`` parses its bytes. Pure, no I/O.

``h2`` validates frames and streams, but holds up to 64 CONTINUATION frames of a header block and hands
the whole block to ``hpack``, whose decoder applies every dynamic-table-size update it finds at the start
of a block: a block of a megabyte of updates keeps the event loop busy for seconds. The guard reads only
the 9-byte frame headers (and the first bytes of each header block), so it stops such a connection before
the block is buffered or decoded:

- a header block larger than ``max_block_bytes`` or spread over more than ``max_continuations``
  CONTINUATION frames: ENHANCE_YOUR_CALM;
- more than two table-size updates at the start of a block (RFC 7541 §4.2 allows two): COMPRESSION_ERROR;
- PING and SETTINGS frames (each asks for an ACK) past their budget: ENHANCE_YOUR_CALM.

It also counts WINDOW_UPDATE frames, which the connection weighs against the streams opened and the DATA
frames it sends.

Everything else (the preface, frame sizes, which frame may follow which) is left to ``h2``.
"""

from __future__ import annotations

import struct

from mesh.fronts.h2.wire import PREFACE, ErrorCode, Flag, FrameType

_FRAME_HEADER = struct.Struct(">HBBBL")
_COUNTED = (FrameType.PING, FrameType.SETTINGS, FrameType.WINDOW_UPDATE)
# block bytes that hold three table-size updates of any 32-bit value (1 + 5 bytes each)
BLOCK_PREFIX_BYTES = 18


class GuardViolation(Exception):
    """The client's bytes break a limit: the connection ends with GOAWAY ``code``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def leading_table_updates(block: bytes) -> int:
    """How many dynamic-table-size updates ``block`` (the start of a header block) begins with."""
    count, position = 0, 0
    while position < len(block) and block[position] & 0xE0 == 0x20:
        count += 1
        if block[position] & 0x1F == 0x1F:  # a multi-byte integer: continuation bytes have the top bit set
            position += 1
            while position < len(block) and block[position] & 0x80:
                position += 1
        position += 1
    return count


class HeaderBlockGuard:
    def __init__(
        self,
        max_block_bytes: int,
        max_continuations: int,
        control_budget: FrameBudget | None = None,
        expect_preface: bool = True,
    ) -> None:
        self._max_block = max_block_bytes
        self._control = control_budget
        self.window_updates = 0
        self.header_blocks = 0  # HEADERS frames: each stream opened (or its trailers)
        self._now = 0.0
        self._max_continuations = max_continuations
        self._preface_left = len(PREFACE) if expect_preface else 0
        self._header = bytearray()  # an incomplete 9-byte frame header
        self._skip = 0  # payload bytes of the current frame still to pass over
        self._kind = -1  # the current frame's type while its payload passes
        self._headers_start = bytearray()  # the first bytes of a HEADERS frame's payload (pad + priority)
        self._headers_flags = 0
        self._headers_length = 0
        self._prefix = bytearray()  # the first bytes of the open header block
        self._block_bytes = 0
        self._continuations = 0
        self.block_open = False  # a header block has started and END_HEADERS has not come

    @property
    def partial(self) -> bool:
        """A frame or a header block has started and not yet finished."""
        return self.block_open or bool(self._skip) or bool(self._header) or bool(self._headers_start)

    def feed(self, data: bytes, now: float = 0.0) -> None:
        """Look at the next bytes of the connection; ``now`` (monotonic seconds) prices control frames."""
        self._now = now
        position, size = 0, len(data)
        if self._preface_left:
            taken = min(self._preface_left, size)
            self._preface_left -= taken
            position = taken
        unpack = _FRAME_HEADER.unpack_from
        while position < size:
            if self._skip or self._header:
                position = self._feed_partial(data, position)
                continue
            if size - position < 9:
                self._header += data[position:]
                return
            high, low, kind, flags, _ = unpack(data, position)
            length = (high << 8) | low
            position += 9
            if kind in _COUNTED:
                self._count(kind, flags)
            if kind > FrameType.CONTINUATION or (
                kind not in (FrameType.HEADERS, FrameType.CONTINUATION) and not self.block_open
            ):  # the common case (DATA, WINDOW_UPDATE, PING...): pass over the payload
                passed = min(length, size - position)
                position += passed
                if passed < length:
                    self._kind, self._skip = -1, length - passed
                continue
            self._frame_started(kind, flags, length)

    def _feed_partial(self, data: bytes, position: int) -> int:
        """Go on with a frame header or payload that an earlier read left unfinished."""
        size = len(data)
        if self._skip:
            taken = min(self._skip, size - position)
            chunk = memoryview(data)[position : position + taken]
            if self._kind == FrameType.HEADERS:
                self._take_headers_payload(chunk)
            elif self._kind == FrameType.CONTINUATION and len(self._prefix) < BLOCK_PREFIX_BYTES:
                self._add_prefix(chunk)
            self._skip -= taken
            if not self._skip:
                self._frame_done()
            return position + taken
        wanted = 9 - len(self._header)
        self._header += data[position : position + wanted]
        position += min(wanted, size - position)
        if len(self._header) == 9:
            high, low, kind, flags, _ = _FRAME_HEADER.unpack(self._header)
            self._header.clear()
            if kind in _COUNTED:
                self._count(kind, flags)
            self._frame_started(kind, flags, (high << 8) | low)
        return position

    def _count(self, kind: int, flags: int) -> None:
        if kind == FrameType.WINDOW_UPDATE:
            self.window_updates += 1
        elif not flags & Flag.ACK and self._control is not None and not self._control.spend(self._now):
            raise GuardViolation(ErrorCode.ENHANCE_YOUR_CALM, "too many PING or SETTINGS frames")

    def _frame_started(self, kind: int, flags: int, length: int) -> None:
        self._kind, self._skip = kind, length
        if kind == FrameType.HEADERS:
            self.header_blocks += 1
            self.block_open = not flags & Flag.END_HEADERS
            self._prefix.clear()
            self._block_bytes, self._continuations = length, 0
            self._headers_flags, self._headers_length = flags, length
            self._headers_start.clear()
        elif kind == FrameType.CONTINUATION and self.block_open:
            self._continuations += 1
            self._block_bytes += length
            if self._continuations > self._max_continuations:
                raise GuardViolation(
                    ErrorCode.ENHANCE_YOUR_CALM,
                    f"a header block in more than {self._max_continuations} CONTINUATION frames",
                )
            self.block_open = not flags & Flag.END_HEADERS
        elif kind == FrameType.CONTINUATION:
            self._kind = -1  # not part of a block: h2 refuses it
        else:
            self.block_open = False  # h2 refuses the interruption itself
        if self._block_bytes > self._max_block and kind in (FrameType.HEADERS, FrameType.CONTINUATION):
            raise GuardViolation(ErrorCode.ENHANCE_YOUR_CALM, f"a header block over {self._max_block} bytes")
        if not length:
            self._frame_done()

    def _take_headers_payload(self, chunk: memoryview) -> None:
        """Keep a HEADERS frame's first bytes: padding length and priority come before the block."""
        wanted = 6 + BLOCK_PREFIX_BYTES - len(self._headers_start)
        if wanted > 0:
            self._headers_start += chunk[:wanted]

    def _frame_done(self) -> None:
        if self._kind == FrameType.HEADERS:
            start = bytes(self._headers_start)
            self._headers_start.clear()
            offset, padding = 0, 0
            if self._headers_flags & Flag.PADDED and start:
                offset, padding = 1, start[0]
            if self._headers_flags & Flag.PRIORITY:
                offset += 5
            block_length = max(0, self._headers_length - offset - padding)
            self._add_prefix(memoryview(start[offset : offset + block_length]))
        if self._kind in (FrameType.HEADERS, FrameType.CONTINUATION) and (
            len(self._prefix) >= BLOCK_PREFIX_BYTES or not self.block_open
        ):
            self._check_prefix()
        self._kind = -1

    def _add_prefix(self, chunk: memoryview) -> None:
        self._prefix += chunk[: BLOCK_PREFIX_BYTES - len(self._prefix)]

    def _check_prefix(self) -> None:
        if leading_table_updates(bytes(self._prefix)) > 2:
            raise GuardViolation(
                ErrorCode.COMPRESSION_ERROR, "more than two table size updates at the start of a header block"
            )


class FrameBudget:
    """Frames of one kind a client may send: ``rate`` per second on average, ``burst`` at once (a token
    bucket). Stream resets: rapid reset (open a stream, cancel it, repeat) costs the pod a runtime call per
    stream while the client pays two frames. PING and SETTINGS: each makes the pod write an ACK. A client
    past its budget is told ENHANCE_YOUR_CALM and disconnected.
    """

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._tokens = burst
        self._at = 0.0

    def spend(self, now: float) -> bool:
        """One reset at ``now`` (monotonic seconds); False: over budget."""
        if self._at:
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        self._tokens -= 1
        return self._tokens >= 0
