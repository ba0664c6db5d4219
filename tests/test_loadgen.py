"""The load generator and the report arithmetic of load_tests/ (pure; a fake call where timing matters)."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest

from load_tests.echo_runtime import EchoModel, parse_model_path
from load_tests.hop import summarize_rounds
from load_tests.loadgen import LoadResult, closed_loop, open_loop, percentile, round_robin, summarize
from load_tests.profile_hot_path import summarize_samples


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([], 0.5, 0.0),
        ([5.0], 0.99, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 0.75, 3.0),
        ([float(i) for i in range(1, 101)], 0.99, 99.0),
        ([float(i) for i in range(1, 101)], 1.0, 100.0),
    ],
)
def test_nearest_rank_percentile(values: list[float], fraction: float, expected: float) -> None:
    assert percentile(values, fraction) == expected


def test_summary_counts_errors_and_orders_percentiles() -> None:
    result = summarize("closed", 4, [0.001 * i for i in range(1, 201)], Counter({"UNAVAILABLE": 3}), 2.0)
    assert (result.sent, result.ok, result.errors) == (203, 200, {"UNAVAILABLE": 3})
    assert result.throughput == 100.0
    assert result.p50_ms <= result.p90_ms <= result.p99_ms <= result.max_ms == 200.0


async def test_closed_loop_keeps_n_in_flight_and_stops_at_the_request_bound() -> None:
    in_flight = 0
    most = 0

    async def call(body: bytes) -> bytes:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return body

    result = await closed_loop(call, [b"a", b"b"], concurrency=5, max_requests=60, max_seconds=30)
    assert result.ok == 60 and most == 5 and not result.errors


async def test_closed_loop_stops_at_the_time_bound_and_counts_grpc_errors() -> None:
    class Failed(grpc.aio.AioRpcError):
        def __init__(self) -> None:
            super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata())

    turn = 0

    async def call(body: bytes) -> bytes:
        nonlocal turn
        turn += 1
        await asyncio.sleep(0.002)
        if turn % 2:
            raise Failed()
        return body

    result = await closed_loop(call, [b"x"], concurrency=2, max_requests=10**9, max_seconds=0.2)
    assert result.duration_s < 1.0
    assert result.errors["RESOURCE_EXHAUSTED"] > 0 and result.ok > 0


async def test_open_loop_charges_queueing_to_the_server() -> None:
    """A server that takes 20 ms for each of 10 requests offered every 1 ms, one at a time: the last request
    waited for the nine before it, and the open loop reports that wait (a closed loop would not)."""
    lock = asyncio.Lock()

    async def call(body: bytes) -> bytes:
        async with lock:
            await asyncio.sleep(0.02)
        return body

    result = await open_loop(call, [b"x"], rate_per_s=1000, max_requests=10, max_seconds=5)
    assert result.ok == 10 and result.extra["offered"] == 10
    assert result.max_ms >= 150  # ~200 ms of queue behind the last one


async def test_round_robin_spreads_requests() -> None:
    seen: list[str] = []

    def make(name: str):  # type: ignore[no-untyped-def]
        async def call(body: bytes) -> bytes:
            seen.append(name)
            return body

        return call

    call = round_robin([make("a"), make("b"), make("c")])
    for _ in range(6):
        await call(b"")
    assert seen == ["a", "b", "c", "a", "b", "c"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("size=10", EchoModel(10)),
        ("size=10;load_ms=5", EchoModel(10, 5)),
        ("load_ms=5;size=7", EchoModel(7, 5)),
        ("size=1;infer_ms=300", EchoModel(1, 0, 300)),
    ],
)
def test_echo_model_paths(path: str, expected: EchoModel) -> None:
    assert parse_model_path(path) == expected


@pytest.mark.parametrize("path", ["", "load_ms=5", "size=-1", "size=ten", "colour=red;size=1", "size"])
def test_bad_echo_model_paths(path: str) -> None:
    with pytest.raises(ValueError):
        parse_model_path(path)


def _result(p50: float, p99: float, throughput: float) -> LoadResult:
    return LoadResult("closed", 1, 10, 10, {}, 1.0, throughput, p50, p50, p99, p99)


def test_hop_summary_pairs_each_round_with_direct() -> None:
    rounds = [
        {
            "direct": {"latency": _result(1.0, 2.0, 0), "throughput": _result(3.0, 5.0, 1000)},
            "nginx": {"latency": _result(1.2, 2.5, 0), "throughput": _result(3.5, 6.0, 900)},
            "mesh-local": {"latency": _result(1.6, 3.0, 0), "throughput": _result(5.0, 9.0, 500)},
        },
        {
            "direct": {"latency": _result(2.0, 3.0, 0), "throughput": _result(3.0, 5.0, 800)},
            "nginx": {"latency": _result(2.2, 3.4, 0), "throughput": _result(3.5, 6.0, 720)},
            "mesh-local": {"latency": _result(2.6, 4.0, 0), "throughput": _result(5.0, 9.0, 400)},
        },
    ]
    summary = summarize_rounds(rounds)
    assert summary["nginx"]["added_p50_ms"] == pytest.approx(0.2)
    assert summary["mesh-local"]["added_p50_ms"] == pytest.approx(0.6)
    assert summary["mesh-local"]["throughput_ratio"] == pytest.approx(0.5)
    assert summary["mesh_vs_nginx_added_p50"] == pytest.approx(3.0)
    assert "added_p50_ms" not in summary["direct"]


def test_profile_summary_splits_mesh_code_from_the_rest() -> None:
    lines = [
        "run (asyncio/runners.py:1);Handle._run (asyncio/events.py:80) 60",
        "main (mesh/process/pod.py:224);forward (mesh/fronts/grpc_proxy.py:10);"
        "call_runtime (/w/mesh/fronts/grpc_proxy.py:20) 30",
        "Thread._bootstrap (threading.py:1);Thread.run (threading.py:982) 10",
        "garbage",
    ]
    summary = summarize_samples(lines)
    assert summary["samples"] == 100
    assert summary["mesh_code_pct"] == 30.0
    assert summary["grpc_poller_thread_pct"] == 10.0
    assert summary["top_self_pct"]["Handle._run (asyncio/events.py:80)"] == 60.0
    assert summary["top_mesh_inclusive_pct"]["forward (mesh/fronts/grpc_proxy.py:10)"] == 30.0
    assert "main (mesh/process/pod.py:224)" not in summary["top_mesh_inclusive_pct"]
