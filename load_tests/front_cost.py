"""Scenario "front_cost": what the HTTP/2 front's fast path costs when the CPU is hot, and what waking costs.

At one request in flight a pod spends several times the CPU per request it spends at 16 in flight (hop:
RESULTS.md). Two figures tell why:

- the front's own work per request, hot: one client connection and one runtime connection over in-memory
  transports, routing that serves every model here, 6000 requests back to back. ``request_us`` is the
  client's read (HEADERS + DATA) until the request is written to the runtime and the read is done;
  ``answer_us`` the runtime's read (HEADERS, DATA, trailers) until the answer is written to the client.
  No sockets, no event loop turns, no routing table: the codec, the stream bookkeeping and the metrics.
- the wake-up penalty of this machine: one request through that same in-memory front timed back to back,
  after 0.5 ms asleep, and after 0.5 ms of busy waiting. A process that sleeps between requests, as a
  proxy at one request in flight does, runs its next request with cold caches (here: a virtual machine
  whose idle CPU halts at once).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from load_tests.hop import infer_request
from mesh.fronts.grpc_proxy import MethodTable
from mesh.fronts.h2.client import ClientConnection
from mesh.fronts.h2.endpoint import H2Endpoint
from mesh.fronts.h2.front import FrontStreams, H2Front
from mesh.fronts.h2.upstream import RUNTIME
from mesh.fronts.h2.wire import (
    PREFACE,
    BlockEncoder,
    Flag,
    FrameType,
    Setting,
    frame,
    settings_frame,
    window_update,
)
from mesh.registry.records import InstanceRecord
from mesh.routing.decision import SERVE_HERE, Route
from mesh.routing.target import RequestTarget

INFER = "/inference.GRPCInferenceService/ModelInfer"
REQUEST_HEADERS = (
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", INFER.encode()),
    (b":authority", b"127.0.0.1"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"user-agent", b"grpc-python/1.70 grpc-c/45.0.0 (linux; chttp2)"),
)


class _ServeHere:
    pod_id = "here"

    def model_id(self, target: RequestTarget) -> str:
        return target.id

    def decide(self, model_id: str, *, only_here: bool = False) -> Route:
        return SERVE_HERE

    def instance(self, pod_id: str) -> InstanceRecord:
        raise LookupError(pod_id)

    def acquire(self, model_id: str, pod_id: str) -> None:
        pass

    def release(self, model_id: str, pod_id: str) -> None:
        pass


class _Transport:
    """Keeps what is written; never closes, never pushes back."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        pass


class _InMemoryFront:
    """One client connection and one runtime connection of a front, over in-memory transports."""

    def __init__(self) -> None:
        front = H2Front(
            _ServeHere(), MethodTable({INFER: [1]}, False), "127.0.0.1:1", "/nonexistent", 1 << 20
        )
        self._client_side, self._runtime_side = _Transport(), _Transport()
        self._client = ClientConnection(FrontStreams(front), front.limits, front.connections, front.batch)
        self._client.connection_made(self._client_side)  # type: ignore[arg-type]
        self._runtime = H2Endpoint(front.upstreams, client_side=True, batch=front.batch)
        self._runtime.connection_made(self._runtime_side)  # type: ignore[arg-type]
        front.upstreams.add_connection(RUNTIME, self._runtime)
        self._runtime.data_received(
            settings_frame({Setting.INITIAL_WINDOW_SIZE: 1 << 20})
            + frame(FrameType.SETTINGS, Flag.ACK, 0)
            + window_update(0, 1 << 30)
        )
        self._client.data_received(PREFACE + settings_frame({}) + window_update(0, 1 << 24))
        self._client.data_received(frame(FrameType.SETTINGS, Flag.ACK, 0))
        body = infer_request("m")
        self._message = b"\x00" + len(body).to_bytes(4, "big") + body
        self._request_block = BlockEncoder().encode(REQUEST_HEADERS)
        encoder = BlockEncoder()
        self._answer_block = encoder.encode(((b":status", b"200"), (b"content-type", b"application/grpc")))
        self._trailers_block = encoder.encode(((b"grpc-status", b"0"),))
        self._answer = b"\x00\x00\x00\x00\x20" + bytes(32)
        self._next_stream = 1  # both connections start one stream per request

    def one_request(self) -> tuple[float, float]:
        """Seconds: the client's read until it is done (the request written to the runtime), then the
        runtime's read until it is done (the answer written to the client)."""
        stream_id = self._next_stream
        self._next_stream += 2
        # as a grpc client writes it: credit for the last answer (connection and stream), then the request
        credit = b""
        if stream_id > 2:
            credit = window_update(0, len(self._answer)) + window_update(stream_id - 2, len(self._answer))
        request = (
            credit
            + frame(FrameType.HEADERS, Flag.END_HEADERS, stream_id, self._request_block)
            + frame(FrameType.DATA, Flag.END_STREAM, stream_id, self._message)
        )
        reply = (
            window_update(0, len(self._message))
            + frame(FrameType.HEADERS, Flag.END_HEADERS, stream_id, self._answer_block)
            + frame(FrameType.DATA, 0, stream_id, self._answer)
            + frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, stream_id, self._trailers_block)
        )
        self._runtime_side.writes.clear()
        self._client_side.writes.clear()
        started = time.perf_counter()
        self._client.data_received(request)
        sent = time.perf_counter()
        self._runtime.data_received(reply)
        answered = time.perf_counter()
        if not self._runtime_side.writes or not self._client_side.writes:
            raise RuntimeError("the front did not pass the request or its answer on")
        return sent - started, answered - sent


async def front_hot_cost(requests: int = 6000, warm: int = 1000) -> dict[str, float]:
    """Median µs per request of the front's two reads, back to back (see the module docstring)."""
    front = _InMemoryFront()
    for _ in range(warm):
        front.one_request()
    timings = [front.one_request() for _ in range(requests)]
    return {
        "request_us": round(statistics.median(t[0] for t in timings) * 1e6, 1),
        "answer_us": round(statistics.median(t[1] for t in timings) * 1e6, 1),
    }


async def wake_penalty(samples: int = 2000, gap_s: float = 0.0005) -> dict[str, float]:
    """Median µs of one request through the in-memory front: back to back, after sleeping, after busy
    waiting (the same gap)."""
    front = _InMemoryFront()
    for _ in range(500):
        front.one_request()

    def timed(pause: str) -> float:
        times = []
        for _ in range(samples):
            if pause == "sleep":
                time.sleep(gap_s)
            elif pause == "busy":
                until = time.perf_counter() + gap_s
                while time.perf_counter() < until:
                    pass
            request_s, answer_s = front.one_request()
            times.append(request_s + answer_s)
        return round(statistics.median(times) * 1e6, 1)

    return {"hot_us": timed("none"), "after_sleep_us": timed("sleep"), "after_busy_wait_us": timed("busy")}


def run_front_cost(rounds: int = 5) -> dict[str, Any]:
    """Medians over ``rounds`` (each a fresh front), with every round's figures."""
    fronts = [asyncio.run(front_hot_cost()) for _ in range(rounds)]
    wakes = [asyncio.run(wake_penalty()) for _ in range(rounds)]

    def median(rows: list[dict[str, float]], key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 2)

    result: dict[str, Any] = {
        "request_us": median(fronts, "request_us"),
        "answer_us": median(fronts, "answer_us"),
        "hot_us": median(wakes, "hot_us"),
        "after_sleep_us": median(wakes, "after_sleep_us"),
        "after_busy_wait_us": median(wakes, "after_busy_wait_us"),
        "rounds": {"front": fronts, "wake": wakes},
    }
    result["front_us"] = round(result["request_us"] + result["answer_us"], 1)
    result["wake_penalty_x"] = round(result["after_sleep_us"] / result["hot_us"], 1)
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    return [
        f"the front's own work per request, hot (in memory, no sockets, routing that serves everything "
        f"here): {result['front_us']} µs — the client's read to the runtime write {result['request_us']} µs, "
        f"the runtime's answer to the client write {result['answer_us']} µs (median of "
        f"{len(result['rounds']['front'])} rounds of 6000 requests)",
        f"waking costs: that request takes {result['hot_us']} µs back to back, "
        f"{result['after_sleep_us']} µs after 0.5 ms asleep (x{result['wake_penalty_x']}) and "
        f"{result['after_busy_wait_us']} µs after 0.5 ms of busy waiting: at one request in flight (the "
        "hop's latency figures) the pod sleeps before each read, and its work there costs the slept figure",
    ]
