"""Scenario "metrics_cost": what counting costs the hot path, metrics on against metrics off in one run.

Two one-pod meshes side by side, identical but for the metrics port (``--metrics-port``: every ModelMesh
series counted; ``--metrics=disabled``: only the front's path counts are kept), each with its own etcd and
echo runtime, each holding the model. Each round measures the pod's CPU time per request at 16 in flight on
one, then the other (the order alternates); the figure is the median over rounds of on / off, so drift on
this shared machine cancels within a round. Run for the HTTP/2 front, for --front=grpc, and for the HTTP/2
front with two serving processes (the worker counts too, and ships its counts to the main process every
second). A scraper reads the port
every second meanwhile, as Prometheus would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import timeit
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from harness.cluster import EtcdServer
from harness.processes import free_port
from load_tests.echo_runtime import INFER_METHOD, MODEL_TYPE
from load_tests.hop import HopSettings, Route, infer_request, measured_throughput, register
from load_tests.loadgen import LoadResult, raw_call, round_robin, warm_up
from load_tests.processes import EchoProcess, start_echo_pod, wait_for_serving_processes
from mesh.observe.metrics import MeshMetrics, UncountedMetrics

log = logging.getLogger(__name__)
MODEL_ID = "metrics-cost"
VARIANTS = {
    "h2": ["--front=h2"],
    "grpc": ["--front=grpc"],
    "h2-2proc": ["--front=h2", "--serving-processes=2"],
}
GOAL_RATIO = 1.05  # counting may cost at most 5 % more CPU per call


@contextlib.contextmanager
def one_pod_mesh(work_dir: Path, pod_args: list[str]) -> Iterator[tuple[Route, EchoProcess]]:
    with contextlib.ExitStack() as stack:
        etcd = EtcdServer.start(work_dir / "etcd")
        stack.callback(etcd.process.stop)
        echo = EchoProcess.start(work_dir / "echo")
        stack.callback(echo.stop)
        pod = start_echo_pod(work_dir / "pod", etcd, echo, "pod", extra_args=pod_args)
        stack.callback(pod.process.stop)
        processes = 2 if "--serving-processes=2" in pod_args else 1
        wait_for_serving_processes(pod, processes)
        register(pod.address, MODEL_ID, MODEL_TYPE, "size=1000000")
        yield Route(pod.address, (pod.process.pid,)), echo


async def scrape_every_second(address: str, stop: asyncio.Event) -> int:
    """Scrapes until ``stop``; returns how many succeeded."""
    scrapes = 0
    while not stop.is_set():
        try:
            await asyncio.to_thread(_scrape, address)
            scrapes += 1
        except OSError as e:
            log.warning("scrape of %s failed: %s", address, e)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    return scrapes


def _scrape(address: str) -> None:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
        answer.read()


async def cpu_rounds(
    routes: dict[str, Route], body: bytes, settings: HopSettings, rounds: int
) -> dict[str, list[LoadResult]]:
    """Throughput at ``settings.concurrency`` in flight, each path in turn, the order alternating per round:
    the pod's CPU time per request of each (what counting would add to)."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = {
        path: [grpc.aio.insecure_channel(route.address, options=options) for _ in range(settings.connections)]
        for path, route in routes.items()
    }
    try:
        calls = {
            path: round_robin([raw_call(c, INFER_METHOD) for c in chans]) for path, chans in channels.items()
        }
        for call in calls.values():
            await warm_up(call, body)
        results: dict[str, list[LoadResult]] = {path: [] for path in routes}
        order = list(routes)
        for index in range(rounds):
            for path in order if index % 2 == 0 else order[::-1]:
                results[path].append(
                    await measured_throughput(calls[path], body, settings, routes[path].proxy_pids)
                )
        return results
    finally:
        for chans in channels.values():
            for channel in chans:
                await channel.close()


async def run_variant(
    work_dir: Path, settings: HopSettings, pod_args: list[str], rounds: int
) -> dict[str, Any]:
    metrics_port = free_port()
    with (
        one_pod_mesh(work_dir / "off", [*pod_args, "--metrics=disabled"]) as (off, _),
        one_pod_mesh(work_dir / "on", [*pod_args, f"--metrics-port={metrics_port}"]) as (on, _),
    ):
        stop = asyncio.Event()
        scraper = asyncio.create_task(scrape_every_second(f"127.0.0.1:{metrics_port}", stop))
        try:
            measured = await cpu_rounds({"off": off, "on": on}, infer_request(MODEL_ID), settings, rounds)
        finally:
            stop.set()
            scrapes = await scraper

    def cpu(path: str) -> list[float]:
        return [float(r.extra.get("proxy_cpu_us_per_request", 0.0)) for r in measured[path]]

    on_cpu, off_cpu = cpu("on"), cpu("off")
    ratios = [a / b for a, b in zip(on_cpu, off_cpu, strict=True) if a and b]
    return {
        "cpu_us_on": round(statistics.median(on_cpu), 1),
        "cpu_us_off": round(statistics.median(off_cpu), 1),
        # per round (the two measured seconds apart), then the median: drift on the machine cancels
        "cpu_ratio_on_over_off": round(statistics.median(ratios), 3) if ratios else None,
        "cpu_ratios": [round(r, 3) for r in ratios],
        "throughput_on": round(statistics.median([r.throughput for r in measured["on"]]), 1),
        "throughput_off": round(statistics.median([r.throughput for r in measured["off"]]), 1),
        "errors": sum(sum(r.errors.values()) for results in measured.values() for r in results),
        "scrapes": scrapes,
    }


def counting_cost_us(requests: int = 200_000) -> dict[str, float]:
    """What the hot path's own counting calls cost per request in this process (the front's request and
    runtime-call observations), with metrics on and off: the part of the difference that is not noise."""
    path = "/inference.GRPCInferenceService/ModelInfer"
    costs = {}
    for name, metrics in (("on", MeshMetrics()), ("off", UncountedMetrics())):

        def observe(metrics: MeshMetrics = metrics) -> None:
            metrics.request(path, 0, 0.4, 1100, 40, "m")
            metrics.invoked(path, 0, 0.2, "m")
            metrics.front_stream("external", "fast")

        costs[name] = round(timeit.timeit(observe, number=requests) / requests * 1e6, 3)
    return costs


async def run_metrics_cost(work_dir: Path, settings: HopSettings, rounds: int = 15) -> dict[str, Any]:
    # CPU time is read in 10 ms ticks: enough requests that a tick is well under 1 % of a measurement
    settings = HopSettings(
        **{**settings.__dict__, "throughput_requests": max(6000, settings.throughput_requests)}
    )
    results: dict[str, Any] = {
        "settings": {**settings.__dict__, "rounds": rounds},
        "counting_us_per_request": counting_cost_us(),
    }
    for name, pod_args in VARIANTS.items():
        variant = settings
        if name.endswith("2proc"):  # several connections, so both processes get some
            variant = HopSettings(**{**settings.__dict__, "connections": 4})
        try:
            results[name] = await run_variant(work_dir / name, variant, pod_args, rounds)
        except Exception as e:  # one variant failing must not lose the others' figures
            log.exception("metrics_cost %s failed", name)
            results[name] = {"error": f"{type(e).__name__}: {e}"}
    return results


def goal_checks(result: dict[str, Any]) -> list[tuple[str, str, bool | None, str]]:
    checks = []
    for name in VARIANTS:
        r = result.get(name)
        if not r or "error" in r or r.get("cpu_ratio_on_over_off") is None:
            continue
        ratio = r["cpu_ratio_on_over_off"]
        checks.append(
            (
                f"counting costs ≤ 5 % CPU per call ({name})",
                f"x{ratio} (median of {len(r['cpu_ratios'])} rounds; {r['cpu_us_on']} µs on, "
                f"{r['cpu_us_off']} µs off)",
                ratio <= GOAL_RATIO and not r["errors"],
                f"+{(ratio - 1):.0%}",
            )
        )
    return checks


def summary_lines(result: dict[str, Any]) -> list[str]:
    counting = result.get("counting_us_per_request", {})
    lines = [
        f"the hot path's counting calls alone: {counting.get('on')} µs per request with metrics on, "
        f"{counting.get('off')} µs off (timed in process)"
    ]
    for name in VARIANTS:
        r = result.get(name)
        if not r:
            continue
        if "error" in r:
            lines.append(f"{name}: failed: {r['error']}")
            continue
        lines.append(
            f"{name}: CPU per request x{r['cpu_ratio_on_over_off']} with metrics on (per round: "
            f"{r['cpu_ratios']}); medians {r['cpu_us_on']} µs on, {r['cpu_us_off']} µs off; "
            f"{r['throughput_on']} vs {r['throughput_off']} req/s; {r['scrapes']} scrapes meanwhile"
        )
    return lines
