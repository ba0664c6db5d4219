"""The load generator: raw-bytes gRPC unary calls, closed loop (N in flight) or open loop (fixed rate).

Requests are serialised once and sent as bytes through a grpc.aio channel with
no (de)serializers, so the client spends as little CPU per call as Python
allows: on a 2-core machine every cycle the client burns is taken from the
server under test. A run is bounded both in requests and in time.

Open-loop latency is measured from each request's scheduled start, not from
when the client got round to sending it, so a server that falls behind is
charged for the queue it causes (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc

Call = Callable[[bytes], Awaitable[bytes]]
Metadata = Sequence[tuple[str, str]]


@dataclass
class LoadResult:
    mode: str  # "closed" or "open"
    level: float  # requests in flight (closed) or offered requests per second (open)
    sent: int
    ok: int
    errors: dict[str, int]
    duration_s: float
    throughput: float  # successful requests per second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * fraction // 1))  # ceil(n * fraction), at least the first
    return sorted_values[int(min(rank, len(sorted_values))) - 1]


def summarize(
    mode: str, level: float, latencies_s: list[float], errors: Counter[str], duration_s: float
) -> LoadResult:
    ordered = sorted(latencies_s)
    ms = [v * 1000 for v in ordered]
    return LoadResult(
        mode=mode,
        level=level,
        sent=len(ordered) + sum(errors.values()),
        ok=len(ordered),
        errors=dict(errors),
        duration_s=round(duration_s, 3),
        throughput=round(len(ordered) / duration_s, 1) if duration_s > 0 else 0.0,
        p50_ms=round(percentile(ms, 0.50), 3),
        p90_ms=round(percentile(ms, 0.90), 3),
        p99_ms=round(percentile(ms, 0.99), 3),
        max_ms=round(ms[-1], 3) if ms else 0.0,
    )


def raw_call(
    channel: grpc.aio.Channel, method: str, metadata: Metadata = (), timeout_s: float = 30.0
) -> Call:
    """A bytes-in, bytes-out callable for one method (the channel must belong to the running loop)."""
    multicallable = channel.unary_unary(method)
    headers = tuple(metadata) or None

    async def call(body: bytes) -> bytes:
        response: bytes = await multicallable(body, timeout=timeout_s, metadata=headers)
        return response

    return call


def round_robin(calls: Sequence[Call]) -> Call:
    """One callable over several (connections): each request takes the next."""
    if len(calls) == 1:
        return calls[0]
    turn = itertools.cycle(calls)

    async def call(body: bytes) -> bytes:
        return await next(turn)(body)

    return call


def _error_name(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name
    return type(error).__name__


async def closed_loop(
    call: Call, bodies: Sequence[bytes], concurrency: int, max_requests: int, max_seconds: float
) -> LoadResult:
    """``concurrency`` workers, each sending its next request when the last one returns.

    ``bodies`` are sent in turn (a trace: request i carries ``bodies[i % len]``).
    """
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    next_index = 0
    clock = time.perf_counter
    start = clock()
    stop_at = start + max_seconds

    async def worker() -> None:
        nonlocal next_index
        while next_index < max_requests and clock() < stop_at:
            body = bodies[next_index % len(bodies)]
            next_index += 1
            sent = clock()
            try:
                await call(body)
            except (TimeoutError, grpc.aio.AioRpcError) as e:
                errors[_error_name(e)] += 1
                continue
            latencies.append(clock() - sent)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize("closed", concurrency, latencies, errors, clock() - start)


async def open_loop(
    call: Call, bodies: Sequence[bytes], rate_per_s: float, max_requests: int, max_seconds: float
) -> LoadResult:
    """Requests start at a fixed rate whatever the server does; each is its own task."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    clock = time.perf_counter
    interval = 1.0 / rate_per_s
    count = min(max_requests, int(max_seconds * rate_per_s))
    start = clock()
    pending: set[asyncio.Task[None]] = set()

    async def one(body: bytes, scheduled: float) -> None:
        try:
            await call(body)
        except (TimeoutError, grpc.aio.AioRpcError) as e:
            errors[_error_name(e)] += 1
            return
        latencies.append(clock() - scheduled)

    for index in range(count):
        scheduled = start + index * interval
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(bodies[index % len(bodies)], scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    result = summarize("open", rate_per_s, latencies, errors, clock() - start)
    result.extra["offered"] = count
    return result


async def warm_up(call: Call, body: bytes, requests: int = 200, concurrency: int = 4) -> None:
    """Open connections, fill caches and JIT-free paths before anything is timed."""
    result = await closed_loop(call, [body], concurrency, requests, max_seconds=30.0)
    if not result.ok:
        raise RuntimeError(f"every warm-up request failed: {result.errors}")
