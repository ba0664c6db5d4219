"""Scenario "metrics_cost": what counting costs the hot path, metrics on against metrics off in one run.

Two one-pod meshes side by side, identical but for the metrics port (``--metrics-port``: every ModelMesh
series counted; without it only the front's path counts are kept), each with its own etcd and echo runtime,
each holding the model. The hop scenario's paths and rounds (load_tests/hop.py: the order rotates per round)
measure the pod's CPU time per request at 16 in flight; the figure compared is the median over rounds of
on / off. Run for the HTTP/2 front, for --front=grpc, and for the HTTP/2 front with two serving processes
(the worker counts too, and ships its counts to the main process every second). A scraper reads the port
every second meanwhile, as Prometheus would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import timeit
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.cluster import EtcdServer
from harness.processes import free_port
from load_tests.echo_runtime import MODEL_TYPE
from load_tests.hop import HopSettings, Route, compare_paths, infer_request, register
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


async def run_variant(work_dir: Path, settings: HopSettings, pod_args: list[str]) -> dict[str, Any]:
    metrics_port = free_port()
    with (
        one_pod_mesh(work_dir / "off", [*pod_args, "--metrics=disabled"]) as (off, echo),
        one_pod_mesh(work_dir / "on", [*pod_args, f"--metrics-port={metrics_port}"]) as (on, _),
    ):
        stop = asyncio.Event()
        scraper = asyncio.create_task(scrape_every_second(f"127.0.0.1:{metrics_port}", stop))
        routes = {"direct": Route(echo.address), "metrics-off": off, "metrics-on": on}
        try:
            summary, rounds = await compare_paths(routes, infer_request(MODEL_ID), settings)
        finally:
            stop.set()
            scrapes = await scraper
    ratios = [
        r["metrics-on"]["throughput"].extra["proxy_cpu_us_per_request"]
        / r["metrics-off"]["throughput"].extra["proxy_cpu_us_per_request"]
        for r in rounds
        if r["metrics-off"]["throughput"].extra.get("proxy_cpu_us_per_request")
        and "proxy_cpu_us_per_request" in r["metrics-on"]["throughput"].extra
    ]
    on_cpu = summary["metrics-on"].get("proxy_cpu_us_per_request")
    off_cpu = summary["metrics-off"].get("proxy_cpu_us_per_request")
    return {
        "paths": summary,
        # each path's median over rounds, then their ratio: one noisy round moves neither median much
        "cpu_ratio_on_over_off": round(on_cpu / off_cpu, 3) if on_cpu and off_cpu else None,
        "cpu_ratios": [round(r, 3) for r in ratios],  # per round, for the spread
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


async def run_metrics_cost(work_dir: Path, settings: HopSettings) -> dict[str, Any]:
    # CPU time is read in 10 ms ticks: enough requests that a tick is well under 1 % of a measurement
    settings = HopSettings(
        **{**settings.__dict__, "throughput_requests": max(8000, settings.throughput_requests)}
    )
    results: dict[str, Any] = {"settings": settings.__dict__, "counting_us_per_request": counting_cost_us()}
    for name, pod_args in VARIANTS.items():
        variant = settings
        if name.endswith("2proc"):  # several connections, so both processes get some
            variant = HopSettings(**{**settings.__dict__, "connections": 4})
        try:
            results[name] = await run_variant(work_dir / name, variant, pod_args)
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
        on, off = r["paths"]["metrics-on"], r["paths"]["metrics-off"]
        checks.append(
            (
                f"counting costs ≤ 5 % CPU per call ({name})",
                f"x{ratio} ({on.get('proxy_cpu_us_per_request')} µs on, "
                f"{off.get('proxy_cpu_us_per_request')} µs off; rounds {r['cpu_ratios']})",
                ratio <= GOAL_RATIO,
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
        on, off = r["paths"]["metrics-on"], r["paths"]["metrics-off"]
        lines.append(
            f"{name}: CPU per request x{r['cpu_ratio_on_over_off']} with metrics on "
            f"({on.get('proxy_cpu_us_per_request')} µs on, {off.get('proxy_cpu_us_per_request')} µs off); "
            f"added p50 {on.get('added_p50_ms')} ms on, {off.get('added_p50_ms')} ms off; "
            f"{on['throughput_per_s']} vs {off['throughput_per_s']} req/s; {r['scrapes']} scrapes meanwhile"
        )
    return lines
