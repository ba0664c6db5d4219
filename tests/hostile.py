"""Hostile HTTP/2 clients for the pod's gRPC port, and what the tests watch while they attack.

- frame builders: raw bytes for any frame, valid or not (hyperframe for the valid ones, ``raw_frame`` for
  what hyperframe would refuse to build), gRPC request header blocks (hpack);
- ``H2Socket``: a raw client connection that sends bytes and parses what comes back into frames, with a
  deadline on everything, until a GOAWAY, a reset stream or the close it waits for;
- ``fd_count`` / ``rss_bytes`` / ``RssSampler``: what the pod process holds;
- ``NormalClient``: a well-behaved client calling ModelInfer in a loop while an attack runs. It is its own
  process (``python -m tests.hostile ADDRESS MODEL_ID``) so the attacker's Python, in the test process,
  shares no interpreter lock with it and cannot skew its latencies; a thread here reads its samples;
- ``AttackWatch``: around one attack, checks that the pod's fds and memory come back and that the normal
  client was served throughout;
- ``RawH2`` and ``Beside``: a frame-by-frame client and a normal client in a thread, for the grpc.aio
  listeners (the pod's under --front=grpc, the adapter's SPI port).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

import psutil
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hpack import Encoder
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

from tests.support import poll_until

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
MIB = 1 << 20
SLOWEST_S = 5.0  # no answer to a normal client (Beside) may take longer than this during an attack
_HEADER = struct.Struct(">HBBBL")

# frame types and flags, for raw_frame
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4

__all__ = ["ErrorCodes", "SettingCodes"]


# -- frames -------------------------------------------------------------------------------------
def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """Any frame, as bytes: nothing is checked."""
    length = len(payload)
    return _HEADER.pack(length >> 8, length & 0xFF, kind, flags, stream_id & 0x7FFFFFFF) + payload


def settings(values: dict[int, int] | None = None, ack: bool = False) -> bytes:
    if ack:
        return raw_frame(SETTINGS, ACK, 0)
    payload = b"".join(struct.pack(">HL", key, value) for key, value in (values or {}).items())
    return raw_frame(SETTINGS, 0, 0, payload)


def client_preface(values: dict[int, int] | None = None) -> bytes:
    """The connection preface and the client's SETTINGS."""
    return PREFACE + settings(values)


def headers(stream_id: int, block: bytes, end_stream: bool = False, end_headers: bool = True) -> bytes:
    frame = HeadersFrame(stream_id, data=block)
    if end_stream:
        frame.flags.add("END_STREAM")
    if end_headers:
        frame.flags.add("END_HEADERS")
    return frame.serialize()


def continuation(stream_id: int, block: bytes, end_headers: bool = False) -> bytes:
    frame = ContinuationFrame(stream_id, data=block)
    if end_headers:
        frame.flags.add("END_HEADERS")
    return frame.serialize()


def data(stream_id: int, payload: bytes, end_stream: bool = False) -> bytes:
    frame = DataFrame(stream_id, data=payload)
    if end_stream:
        frame.flags.add("END_STREAM")
    return frame.serialize()


def rst_stream(stream_id: int, code: int = ErrorCodes.CANCEL) -> bytes:
    return RstStreamFrame(stream_id, error_code=code).serialize()


def window_update(stream_id: int, increment: int) -> bytes:
    """Any increment, 0 and over 2^31-1 included."""
    return raw_frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">L", increment & 0xFFFFFFFF))


def ping(payload: bytes = b"\0" * 8, ack: bool = False) -> bytes:
    """Any payload length (8 is the only valid one)."""
    return raw_frame(PING, ACK if ack else 0, 0, payload)


def grpc_message(message: bytes) -> bytes:
    """One uncompressed gRPC length-prefixed message."""
    return b"\0" + len(message).to_bytes(4, "big") + message


def request_headers(
    authority: str, path: str = INFER_PATH, extra: Iterable[tuple[str, str]] = ()
) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra,
    ]


def request_block(encoder: Encoder, authority: str, extra: Iterable[tuple[str, str]] = ()) -> bytes:
    """A ModelInfer request's header block (``encoder`` keeps the connection's dynamic table)."""
    return bytes(encoder.encode(request_headers(authority, extra=extra)))


def literal_header(name: bytes, value: bytes, indexing: bool = False) -> bytes:
    """One HPACK literal header with a new name (no Huffman): without indexing, or with (into the table)."""
    return bytes([0x40 if indexing else 0x00]) + hpack_string(name) + hpack_string(value)


def hpack_string(text: bytes) -> bytes:
    return hpack_integer(len(text), 7) + text


def hpack_integer(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out, value = bytearray([limit]), value - limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def split_block(stream_id: int, block: bytes, frame_bytes: int = 16384, end_stream: bool = False) -> bytes:
    """``block`` as one HEADERS frame and as many CONTINUATION frames as it takes."""
    pieces = [block[i : i + frame_bytes] for i in range(0, len(block), frame_bytes)] or [b""]
    out = [headers(stream_id, pieces[0], end_stream=end_stream, end_headers=len(pieces) == 1)]
    out += [continuation(stream_id, p, end_headers=i == len(pieces) - 2) for i, p in enumerate(pieces[1:])]
    return b"".join(out)


# -- a raw connection ---------------------------------------------------------------------------
def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


class H2Socket:
    """A raw client connection to ``address``: bytes out, frames in, every wait bounded by a deadline."""

    def __init__(self, address: str, rcvbuf: int | None = None, connect_timeout_s: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:  # before connect: the window the kernel offers is fixed at the handshake
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(connect_timeout_s)
            self.sock.connect(split_address(address))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.opened_at = time.monotonic()
        self.frames: list[Frame] = []
        self.bytes_sent = 0
        self.bytes_received = 0
        self.closed_at: float | None = None  # when EOF (or a reset) was seen
        self.reset_by_peer = False
        self.send_stalled = False  # a send made no progress for its whole stall time
        self._buffer = bytearray()

    def __enter__(self) -> H2Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        """Close with a TCP reset instead of a FIN."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    # -- receiving ---------------------------------------------------------------------------
    def pump(self, timeout_s: float = 0.0) -> int:
        """Read what has arrived, waiting up to ``timeout_s`` for the first byte; the bytes read."""
        if self.closed:
            return 0
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return self._read_available() if poller.poll(max(0, int(timeout_s * 1000))) else 0

    def _read_available(self) -> int:
        total = 0
        while not self.closed:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            except (ConnectionResetError, ConnectionAbortedError):
                self.reset_by_peer = True
                self._mark_closed()
                break
            if not chunk:
                self._mark_closed()
                break
            total += len(chunk)
            self._buffer += chunk
        self.bytes_received += total
        self._parse()
        return total

    def _mark_closed(self) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()

    def _parse(self) -> None:
        buffer = self._buffer
        position = 0
        while len(buffer) - position >= 9:
            length = int.from_bytes(buffer[position : position + 3], "big")
            if len(buffer) - position < 9 + length:
                break
            header = memoryview(bytes(buffer[position : position + 9]))
            body = memoryview(bytes(buffer[position + 9 : position + 9 + length]))
            position += 9 + length
            try:
                frame, _ = Frame.parse_frame_header(header)
                frame.parse_body(body)
            except HyperframeError:
                continue  # a frame hyperframe cannot parse: not one the tests look at
            self.frames.append(frame)
        del buffer[:position]

    def read_until(self, done: Callable[[H2Socket], bool], timeout_s: float) -> bool:
        """Read until ``done(self)``, the connection closes, or ``timeout_s`` passes; whether ``done``."""
        deadline = time.monotonic() + timeout_s
        while not done(self):
            remaining = deadline - time.monotonic()
            if self.closed or remaining <= 0:
                return done(self)
            self.pump(min(remaining, 0.2))
        return True

    def wait_closed(self, timeout_s: float) -> bool:
        """Read until the pod closes the connection; whether it did within ``timeout_s``."""
        return self.read_until(lambda s: s.closed, timeout_s)

    def wait_goaway(self, timeout_s: float) -> bool:
        """Read until a GOAWAY or the close."""
        return self.read_until(lambda s: s.goaway is not None or s.closed, timeout_s)

    # -- sending -----------------------------------------------------------------------------
    def send(self, payload: bytes, stall_s: float = 5.0, read: bool = True) -> bool:
        """Send all of ``payload`` (reading what arrives meanwhile, unless ``read`` is False).

        False when the connection is closed (by the pod), or when no byte could be sent for ``stall_s``
        (``send_stalled``: the pod stopped reading).
        """
        view = memoryview(payload)
        last_progress = time.monotonic()
        while view:
            if self.closed:
                return False
            waited = stall_s - (time.monotonic() - last_progress)
            if waited <= 0:
                self.send_stalled = True
                return False
            poller = select.poll()
            poller.register(self.sock, select.POLLOUT | (select.POLLIN if read else 0))
            events = 0
            for _, event in poller.poll(int(min(waited, 0.2) * 1000) + 1):
                events |= event
            if read and events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                self._read_available()
            if not events & (select.POLLOUT | select.POLLERR | select.POLLHUP):
                continue
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                self.reset_by_peer = True
                self._mark_closed()
                return False
            view = view[sent:]
            self.bytes_sent += sent
            last_progress = time.monotonic()
        return True

    # -- what came back ----------------------------------------------------------------------
    @property
    def goaway(self) -> GoAwayFrame | None:
        return next((f for f in self.frames if isinstance(f, GoAwayFrame)), None)

    @property
    def goaway_codes(self) -> list[int]:
        return [f.error_code for f in self.frames if isinstance(f, GoAwayFrame)]

    @property
    def resets(self) -> dict[int, int]:
        """Stream id -> the error code of the first RST_STREAM the pod sent for it."""
        found: dict[int, int] = {}
        for frame in self.frames:
            if isinstance(frame, RstStreamFrame):
                found.setdefault(frame.stream_id, frame.error_code)
        return found

    @property
    def server_settings(self) -> dict[int, int] | None:
        """The pod's first SETTINGS (not an ACK), or None before it came."""
        for frame in self.frames:
            if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                return dict(frame.settings)
        return None

    def ended_streams(self) -> set[int]:
        """Streams the pod ended with END_STREAM (an answer, or an error in trailers)."""
        return {
            f.stream_id
            for f in self.frames
            if isinstance(f, HeadersFrame | DataFrame) and "END_STREAM" in f.flags and f.stream_id
        }

    def data_bytes(self, stream_id: int) -> int:
        return sum(len(f.data) for f in self.frames if isinstance(f, DataFrame) and f.stream_id == stream_id)

    def pings_acked(self) -> int:
        return sum(1 for f in self.frames if isinstance(f, PingFrame) and "ACK" in f.flags)

    def summary(self) -> str:
        """What came back, for assertion messages."""
        kinds: dict[str, int] = {}
        for frame in self.frames:
            kinds[type(frame).__name__] = kinds.get(type(frame).__name__, 0) + 1
        goaways = [
            f"{code_name(f.error_code)} {bytes(f.additional_data)[:200]!r}"
            for f in self.frames
            if isinstance(f, GoAwayFrame)
        ]
        resets = sorted({code_name(code) for code in self.resets.values()})
        closed = f"closed after {self.closed_at - self.opened_at:.2f}s" if self.closed_at else "still open"
        return (
            f"frames {kinds}; GOAWAY {goaways}; RST_STREAM codes {resets}; {closed}"
            f"{' (reset)' if self.reset_by_peer else ''}; sent {self.bytes_sent} B"
            f"{', send stalled' if self.send_stalled else ''}"
        )

    def barrier(self, timeout_s: float = 2.0) -> bool:
        """A PING the pod answers only after everything sent before it: whether its ACK came (False when
        the pod closed the connection first)."""
        token = os.urandom(8)
        if not self.send(ping(token)):
            return False
        self.read_until(lambda s: s.closed or s.ping_acked(token), timeout_s)
        return self.ping_acked(token)

    def ping_acked(self, token: bytes) -> bool:
        return any(
            isinstance(f, PingFrame) and "ACK" in f.flags and bytes(f.opaque_data) == token
            for f in reversed(self.frames)
        )

    def handshake(self, values: dict[int, int] | None = None, timeout_s: float = 5.0) -> dict[int, int]:
        """Preface + SETTINGS, the pod's SETTINGS read and acknowledged; the pod's settings."""
        self.send(client_preface(values))
        got = self.read_until(lambda s: s.server_settings is not None, timeout_s)
        assert got, f"no SETTINGS from the pod: {self.summary()}"
        self.send(settings(ack=True))
        result = self.server_settings
        assert result is not None
        return result


def code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


# -- the pod process ----------------------------------------------------------------------------
def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def wait_fds_at_most(pid: int, limit: int, timeout_s: float) -> int:
    """Poll the pod's fd count until it is <= ``limit``; the last count (over ``limit`` on timeout)."""
    deadline = time.monotonic() + timeout_s
    count = fd_count(pid)
    while count > limit and time.monotonic() < deadline:
        time.sleep(0.1)
        count = fd_count(pid)
    return count


class RssSampler:
    """The pod's peak RSS while the attack runs, sampled every ``interval_s`` by a thread."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval_s
        self.start = self.peak = int(self._process.memory_info().rss)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def _sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, int(self._process.memory_info().rss))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()


# -- the normal client --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Sample:
    start: float  # time.monotonic() in the client process (the same clock as here, on Linux)
    latency_s: float
    code: str  # "OK" or the gRPC status code's name

    @property
    def end(self) -> float:
        return self.start + self.latency_s


BASELINE_SAMPLES = 500  # about 5 s of the normal client's requests


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0


@dataclass
class ServiceReport:
    """How the normal client fared in a window, against the window before it."""

    p99_before_s: float
    max_before_s: float
    p99_during_s: float
    limit_s: float
    during: int
    failures: list[Sample]
    slowest_s: float

    def problems(self, deadline_s: float) -> list[str]:
        found = []
        if self.failures:
            found.append(f"{len(self.failures)} normal requests failed: {self.failures[:5]}")
        if self.slowest_s > deadline_s:
            found.append(f"a normal request took {self.slowest_s * 1000:.0f} ms (deadline {deadline_s}s)")
        if self.p99_during_s > self.limit_s:
            found.append(
                f"normal p99 {self.p99_during_s * 1000:.1f} ms during the attack, over "
                f"{self.limit_s * 1000:.1f} ms (before: p99 {self.p99_before_s * 1000:.1f} ms, "
                f"slowest {self.max_before_s * 1000:.1f} ms)"
            )
        return found


@dataclass
class NormalClient:
    """ModelInfer for ``model_id`` every ``interval_s`` through one channel, in its own process."""

    process: subprocess.Popen[str]
    samples: list[Sample] = field(default_factory=list)
    attacks: list[tuple[float, float]] = field(default_factory=list)  # windows left out of baselines
    _reader: threading.Thread | None = None

    @classmethod
    def start(cls, address: str, model_id: str, log_path: Path, interval_s: float = 0.01) -> NormalClient:
        log: IO[bytes]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.hostile", address, model_id, str(interval_s)],
                cwd=REPO_ROOT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
        client = cls(process)
        client._reader = threading.Thread(target=client._read, daemon=True)
        client._reader.start()
        try:
            client.wait_for(lambda: any(s.code == "OK" for s in client.samples), 30, "a first answer")
        except BaseException:
            client.stop()
            raise
        return client

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            start, latency, code = line.split()
            self.samples.append(Sample(float(start), float(latency), code))

    def wait_for(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if self.process.poll() is not None:
                raise RuntimeError(f"the normal client exited ({self.process.returncode})")
            if time.monotonic() > deadline:
                raise AssertionError(f"normal client: {what} not within {timeout_s}s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def report(self, start: float, end: float, deadline_s: float = 1.0) -> ServiceReport:
        """The requests that overlapped [start, end], once every one of them has finished, against a
        baseline: the last ``BASELINE_SAMPLES`` requests before ``start`` that overlapped no earlier attack
        (nor the second after one)."""
        self.wait_for(
            lambda: any(s.start > end for s in self.samples), deadline_s + 10, "a request after the attack"
        )
        samples = list(self.samples)
        quiet: list[float] = []
        for sample in reversed(samples):
            if len(quiet) >= BASELINE_SAMPLES:
                break
            if sample.end < start and not any(
                sample.start <= e + 1.0 and sample.end >= b for b, e in self.attacks
            ):
                quiet.append(sample.latency_s)
        during = [s for s in samples if s.start <= end and s.end >= start]
        p99_before = p99(quiet)
        # A shared 2-core box: 2x the p99 before, but never less than 30 ms above it, nor under 50 ms. A
        # short attack overlaps a few requests, whose p99 is their maximum: nor under the slowest quiet
        # request (+10 ms), the box's own hiccups.
        limit = max(2 * p99_before, p99_before + 0.030, 0.050, max(quiet, default=0.0) + 0.010)
        return ServiceReport(
            p99_before_s=p99_before,
            max_before_s=max(quiet, default=0.0),
            p99_during_s=p99([s.latency_s for s in during]),
            limit_s=limit,
            during=len(during),
            failures=[s for s in during if s.code != "OK"],
            slowest_s=max((s.latency_s for s in during), default=0.0),
        )


def _normal_client_main(address: str, model_id: str, interval_s: float) -> None:
    import grpc
    from tritonclient.grpc import service_pb2 as v2

    body = v2.ModelInferRequest(
        model_name=model_id,
        inputs=[v2.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32", shape=[16])],
        raw_input_contents=[bytes(64)],
    ).SerializeToString()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(INFER_PATH)
        next_at = time.monotonic()
        while True:
            start = time.monotonic()
            try:
                call(body, timeout=5)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            end = time.monotonic()
            try:
                print(f"{start:.6f} {end - start:.6f} {code}", flush=True)
            except BrokenPipeError:
                return
            next_at = max(next_at + interval_s, end)  # paced, never bursting to catch up
            time.sleep(max(0.0, next_at - time.monotonic()))


# -- around one attack --------------------------------------------------------------------------
@dataclass
class AttackWatch:
    """The pod's fds and RSS before an attack, its peak RSS during it, and the normal client's service.

    ``with watch: <attack>`` then ``watch.check()`` (attack sockets closed by then).
    """

    pid: int
    client: NormalClient
    log_path: Path | None = None  # the pod's log: no traceback may appear in it during the attack
    ignored_log_records: tuple[str, ...] = ()  # log records (with their tracebacks) that do not count
    rss_slack: int = 30 * MIB
    fd_slack: int = 3
    fds_before: int = 0
    log_offset: int = 0
    started: float = 0.0
    ended: float = 0.0
    sampler: RssSampler | None = None

    def __enter__(self) -> AttackWatch:
        self.fds_before = fd_count(self.pid)
        if self.log_path is not None:
            self.log_offset = self.log_path.stat().st_size
        self.sampler = RssSampler(self.pid).__enter__()
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ended = time.monotonic()
        self.client.attacks.append((self.started, self.ended))
        if self.sampler is not None:
            self.sampler.__exit__()

    @property
    def rss_growth(self) -> int:
        assert self.sampler is not None
        return self.sampler.peak - self.sampler.start

    def problems(self, fd_timeout_s: float = 15.0, deadline_s: float = 1.0) -> list[str]:
        found = []
        limit = self.fds_before + self.fd_slack
        fds = wait_fds_at_most(self.pid, limit, fd_timeout_s)
        if fds > limit:
            found.append(
                f"the pod holds {fds} fds {fd_timeout_s}s after the attack (before: {self.fds_before})"
            )
        if self.rss_growth > self.rss_slack:
            found.append(f"the pod's RSS grew by {self.rss_growth / MIB:.1f} MiB during the attack")
        report = self.client.report(self.started, self.ended, deadline_s=deadline_s)
        found += report.problems(deadline_s)
        log = "".join(
            record
            for record in re.split(r"(?m)^(?=\d{4}-\d\d-\d\d )", self.new_log())
            if not any(marker in record for marker in self.ignored_log_records)
        )
        if "Traceback" in log:
            start = log.index("Traceback")
            found.append(f"a traceback in the pod's log: {log[max(0, start - 300) : start + 1500]}")
        self.client.attacks.append((self.started, time.monotonic()))  # its aftermath too, for baselines
        return found

    def new_log(self) -> str:
        """What the pod logged since the attack began."""
        if self.log_path is None:
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    def check(self, fd_timeout_s: float = 15.0) -> None:
        found = self.problems(fd_timeout_s)
        assert not found, "; ".join(found)


if __name__ == "__main__":
    _normal_client_main(sys.argv[1], sys.argv[2], float(sys.argv[3]))


# -- a raw client for the grpc.aio listeners, and a normal client beside it --------------------------
class RawH2:
    """One client connection written frame by frame (hyperframe, hpack): it does what clients must not."""

    def __init__(self, address: str, answers: bool = True) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self._answers = answers  # acknowledge the server's SETTINGS and PINGs (else: send nothing at all)
        self._encoder = Encoder()
        self._buffer = b""
        self.closed = False
        self.remote_settings = False  # the server's SETTINGS arrived (and were acknowledged)
        self.settings_acked = False  # the server acknowledged ours
        self.pings_acked: set[bytes] = set()
        self.resets: dict[int, int] = {}  # stream -> error code of the server's RST_STREAM
        self.answered: set[int] = set()  # streams the server sent HEADERS on
        self.goaway: GoAwayFrame | None = None

    def send(self, *frames: Frame) -> None:
        self.sock.sendall(b"".join(frame.serialize() for frame in frames))

    def preface(self) -> None:
        self.sock.sendall(PREFACE + SettingsFrame(0).serialize())

    def handshake(self) -> None:
        """Preface and SETTINGS both ways, then a PING round trip: the server has applied our ACK."""
        self.preface()
        self.until(lambda: self.remote_settings and self.settings_acked, 10, "SETTINGS exchanged")
        self.ping(b"hello-ok")
        self.until(lambda: b"hello-ok" in self.pings_acked, 10, "PING acknowledged")

    def ping(self, data: bytes) -> None:
        self.send(PingFrame(0, data))

    def open_stream(self, stream_id: int, path: str, extra: list[tuple[str, str]] | None = None) -> None:
        """A request's HEADERS without END_STREAM: the stream stays open, waiting for a message."""
        block = self._encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "limits-test"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *(extra or []),
            ]
        )
        self.send(HeadersFrame(stream_id, data=block, flags=["END_HEADERS"]))

    def read(self, timeout_s: float) -> None:
        """Take what arrives within ``timeout_s`` (at most one recv) and act on its frames."""
        if self.closed:
            return
        self.sock.settimeout(max(0.01, timeout_s))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        except OSError:  # reset
            data = b""
        if not data:
            self.closed = True
            return
        self._buffer += data
        while len(self._buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self._buffer[:9]))
            if len(self._buffer) < 9 + length:
                break
            frame.parse_body(memoryview(self._buffer[9 : 9 + length]))
            self._buffer = self._buffer[9 + length :]
            self._on_frame(frame)

    def _on_frame(self, frame: Frame) -> None:
        if isinstance(frame, SettingsFrame):
            if "ACK" in frame.flags:
                self.settings_acked = True
            else:
                self.remote_settings = True
                if self._answers:
                    self.send(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(frame, PingFrame):
            if "ACK" in frame.flags:
                self.pings_acked.add(bytes(frame.opaque_data))
            elif self._answers:
                self.send(PingFrame(0, frame.opaque_data, flags=["ACK"]))
        elif isinstance(frame, RstStreamFrame):
            self.resets[frame.stream_id] = frame.error_code
        elif isinstance(frame, HeadersFrame):
            self.answered.add(frame.stream_id)
        elif isinstance(frame, GoAwayFrame):
            self.goaway = frame

    def until(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                if check():
                    return
                raise AssertionError(f"{what}: not within {timeout_s}s (closed={self.closed})")
            self.read(min(remaining, 0.2))

    def settle(self, seconds: float) -> None:
        """Read whatever the server sends for ``seconds`` (to see that something does NOT happen)."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0 and not self.closed:
            self.read(min(remaining, 0.2))

    def close(self) -> None:
        self.sock.close()


class Beside:
    """A normal client calling in a loop on its own connection while an attack runs."""

    def __init__(self, call: Callable[[], None]) -> None:
        self._call = call
        self._stop = threading.Event()
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._call()
                self.latencies.append(time.monotonic() - started)
            except Exception as e:
                self.failures.append(repr(e))
            self._stop.wait(0.02)

    def __enter__(self) -> Beside:
        self._thread.start()
        poll_until(lambda: len(self.latencies) >= 3 or bool(self.failures), 30, "normal client served")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        done = len(self.latencies)
        if kind is None:  # the attack is over: the client is still served after it
            poll_until(lambda: len(self.latencies) >= done + 3 or bool(self.failures), 30, "served after")
        self._stop.set()
        self._thread.join(timeout=30)
        if kind is None:
            assert not self.failures, self.failures[:5]
            assert max(self.latencies) < SLOWEST_S, f"slowest answer {max(self.latencies):.2f}s"


def open_streams(client: RawH2, count: int, path: str) -> list[int]:
    ids = [1 + 2 * n for n in range(count)]
    for stream_id in ids:
        client.open_stream(stream_id, path)
    return ids


def said_hello(client: RawH2) -> bool:
    return client.closed or (client.remote_settings and client.settings_acked)


# -- attacks on a grpc.aio listener, each checking the answer its limit promises -----------------------------
def streams_past_the_limit_are_refused(address: str, method: str, streams: int) -> None:
    """Streams held open past ``streams`` are refused (REFUSED_STREAM); the ones within it stay open."""
    client = RawH2(address)
    try:
        client.handshake()
        ids = open_streams(client, streams + 4, method)  # each waits for a message never sent
        extra = ids[streams:]
        client.until(lambda: all(s in client.resets for s in extra), 10, "extra streams refused")
        assert {client.resets[s] for s in extra} == {ErrorCodes.REFUSED_STREAM}
        client.settle(0.5)
        assert not any(s in client.resets for s in ids[:streams]), client.resets
        assert not client.closed
    finally:
        client.close()


def connections_past_the_cap_are_closed(address: str, method: str, connections: int) -> None:
    """Connections past ``connections`` are closed as they arrive (a normal client holds one of them)."""
    clients: list[RawH2] = []
    try:
        for n in range(connections + 6):
            client = RawH2(address)
            clients.append(client)
            client.preface()
            client.until(functools.partial(said_hello, client), 10, "SETTINGS exchanged, or closed")
            if not client.closed:
                client.open_stream(1, method)  # busy: not idle
            assert n < connections or client.closed, f"connection {n + 1} past the cap was kept"
        kept = [c for c in clients if not c.closed]
        assert connections - 2 <= len(kept) <= connections - 1, len(kept)
    finally:
        for client in clients:
            client.close()
    # room again once they are gone (the server frees a closed connection's place as it sees the close)
    poll_until(functools.partial(_says_hello, address), 10, "a new connection kept after the attackers left")


def _says_hello(address: str) -> bool:
    client = RawH2(address)
    try:
        client.preface()
        client.until(functools.partial(said_hello, client), 10, "SETTINGS exchanged, or closed")
        return not client.closed
    finally:
        client.close()


def a_silent_connection_is_closed(address: str, handshake_s: float) -> None:
    """A connection that sends nothing (no preface, no SETTINGS) is closed after the handshake timeout."""
    client = RawH2(address, answers=False)
    started = time.monotonic()
    try:
        client.until(lambda: client.closed, handshake_s + 10, "closed by the server")
        assert time.monotonic() - started < handshake_s + 5
    finally:
        client.close()


def an_idle_connection_is_sent_away(address: str, idle_s: float) -> None:
    """A connection without a call gets GOAWAY after the idle timeout, then is closed."""
    client = RawH2(address)
    started = time.monotonic()
    try:
        client.handshake()
        client.until(lambda: client.goaway is not None, idle_s + 10, "GOAWAY on the idle connection")
        assert time.monotonic() - started < idle_s + 5
        client.until(lambda: client.closed, 10, "closed after GOAWAY")
    finally:
        client.close()


def a_ping_flood_is_sent_away(address: str) -> None:
    """Pings without data, closer than grpc's 5 s, get GOAWAY ENHANCE_YOUR_CALM (too_many_pings)."""
    client = RawH2(address)
    try:
        client.handshake()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the server may hang up mid-flood
            for n in range(10):
                client.ping(b"flood%03d" % n)
        client.until(lambda: client.goaway is not None, 10, "GOAWAY after the flood")
        assert client.goaway is not None
        assert client.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert b"too_many_pings" in bytes(client.goaway.additional_data)
    finally:
        client.close()
