"""Scenario "hop": what one pass through the mesh costs, next to calling the runtime directly and nginx.

One small model on a fast backend; every path is measured in the same run,
round-robin over rounds (the order rotates, so drift on a shared machine hits
each path alike), and each figure is the median over rounds with its spread:

- direct:      client -> runtime
- nginx:       client -> nginx ``grpc_pass`` -> runtime
- python-proxy: client -> load_tests/naive_proxy.py (the floor of a grpc.aio proxy) -> runtime (echo only)
- asyncio-pump: client -> load_tests/byte_pump.py (bytes through asyncio, no HTTP/2: the floor of any
  asyncio proxy) -> runtime (echo only)
- mesh-local:  client -> the pod that holds the model -> its runtime
- mesh-remote: client -> a pod without the model -> the holder's internal port -> runtime

Per round and path: latency at one request in flight (p50/p99), then
throughput at ``concurrency`` in flight, with the CPU time the proxy processes
spent per request (a figure far less noisy than latency on a shared machine).
"Added" is the path's figure minus direct's in the same round.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as v2

from harness.cluster import EtcdServer, LocalMesh
from harness.demo import ADD_ONE_CONFIG, ADD_ONE_MODEL
from load_tests.cpu import cpu_seconds
from load_tests.echo_runtime import INFER_METHOD, MODEL_TYPE
from load_tests.loadgen import Call, LoadResult, closed_loop, raw_call, round_robin, warm_up
from load_tests.processes import (
    EchoProcess,
    FloorProxyProcess,
    NginxProcess,
    start_echo_pod,
    wait_for_serving_processes,
)
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """One way to reach the model: the address a client calls, and the proxy processes on the way."""

    address: str
    proxy_pids: tuple[int, ...] = ()  # their CPU time per request is measured (children included)
    credentials: grpc.ChannelCredentials | None = None  # TLS to the address


@dataclass(frozen=True)
class HopSettings:
    rounds: int = 3
    latency_requests: int = 1000  # one in flight
    throughput_requests: int = 4000
    concurrency: int = 16
    max_seconds: float = 20.0  # per measurement
    connections: int = 1  # client connections per path, used in turn (serving processes need several)


def infer_request(model_id: str, payload_bytes: int = 1024) -> bytes:
    """A ModelInfer request with one FP32 tensor of ``payload_bytes`` (raw contents)."""
    count = payload_bytes // 4
    tensor = v2.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32", shape=[count])
    return v2.ModelInferRequest(
        model_name=model_id, inputs=[tensor], raw_input_contents=[bytes(payload_bytes)]
    ).SerializeToString()


def register(
    mesh_address: str,
    model_id: str,
    model_type: str,
    path: str,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Register and load (sync) through the management API (over TLS with ``credentials``)."""
    channel = (
        grpc.secure_channel(mesh_address, credentials) if credentials else grpc.insecure_channel(mesh_address)
    )
    with channel:
        mm_grpc.ModelMeshStub(channel).registerModel(
            mm.RegisterModelRequest(
                modelId=model_id, modelInfo=mm.ModelInfo(type=model_type, path=path), loadNow=True, sync=True
            ),
            timeout=120,
        )


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else 0.0


def _spread(values: list[float]) -> list[float]:
    return [round(min(values), 3), round(max(values), 3)] if values else []


def summarize_rounds(rounds: list[dict[str, dict[str, LoadResult]]]) -> dict[str, Any]:
    """Per path: medians over rounds of latency, throughput, and of the differences to direct."""
    summary: dict[str, Any] = {}
    for path in rounds[0]:
        latency = [r[path]["latency"] for r in rounds]
        load = [r[path]["throughput"] for r in rounds]
        entry: dict[str, Any] = {
            "p50_ms": _median([x.p50_ms for x in latency]),
            "p99_ms": _median([x.p99_ms for x in latency]),
            "p50_spread_ms": _spread([x.p50_ms for x in latency]),
            "throughput_per_s": _median([x.throughput for x in load]),
            "throughput_spread": _spread([x.throughput for x in load]),
            "loaded_p50_ms": _median([x.p50_ms for x in load]),
            "loaded_p99_ms": _median([x.p99_ms for x in load]),
            "errors": sum(sum(x.errors.values()) for x in latency + load),
        }
        cpu = [x.extra["proxy_cpu_us_per_request"] for x in load if "proxy_cpu_us_per_request" in x.extra]
        if cpu:
            entry["proxy_cpu_us_per_request"] = _median(cpu)
        cpu_at_one = [
            x.extra["proxy_cpu_us_per_request"] for x in latency if "proxy_cpu_us_per_request" in x.extra
        ]
        if cpu_at_one:
            entry["proxy_cpu_us_at_one_in_flight"] = _median(cpu_at_one)
        if path != "direct":
            direct_latency = [r["direct"]["latency"] for r in rounds]
            direct_load = [r["direct"]["throughput"] for r in rounds]
            entry["added_p50_ms"] = _median(
                [x.p50_ms - d.p50_ms for x, d in zip(latency, direct_latency, strict=False)]
            )
            entry["added_p99_ms"] = _median(
                [x.p99_ms - d.p99_ms for x, d in zip(latency, direct_latency, strict=False)]
            )
            entry["throughput_ratio"] = _median(
                [x.throughput / d.throughput for x, d in zip(load, direct_load, strict=False) if d.throughput]
            )
        summary[path] = entry
    nginx, floor, mesh = summary.get("nginx"), summary.get("python-proxy"), summary.get("mesh-local")
    if nginx and mesh and nginx["added_p50_ms"] > 0:
        summary["mesh_vs_nginx_added_p50"] = round(mesh["added_p50_ms"] / nginx["added_p50_ms"], 2)
    if floor and mesh and floor.get("proxy_cpu_us_per_request"):
        summary["mesh_vs_python_proxy_cpu"] = round(
            mesh["proxy_cpu_us_per_request"] / floor["proxy_cpu_us_per_request"], 2
        )
    return summary


async def measured_load(
    call: Call, body: bytes, in_flight: int, requests: int, max_seconds: float, pids: tuple[int, ...]
) -> LoadResult:
    """A closed loop of ``in_flight`` requests, with the CPU the proxy processes spent per request."""
    before = cpu_seconds(pids)
    result = await closed_loop(call, [body], in_flight, requests, max_seconds)
    if pids and result.ok:
        result.extra["proxy_cpu_us_per_request"] = round((cpu_seconds(pids) - before) / result.ok * 1e6, 1)
    return result


async def measured_throughput(
    call: Call, body: bytes, settings: HopSettings, pids: tuple[int, ...]
) -> LoadResult:
    return await measured_load(
        call, body, settings.concurrency, settings.throughput_requests, settings.max_seconds, pids
    )


async def measured_latency(
    call: Call, body: bytes, settings: HopSettings, pids: tuple[int, ...]
) -> LoadResult:
    """One request in flight (the proxies sleep between reads here)."""
    return await measured_load(call, body, 1, settings.latency_requests, settings.max_seconds, pids)


async def compare_paths(
    routes: dict[str, Route], body: bytes, settings: HopSettings
) -> tuple[dict[str, Any], list[dict[str, dict[str, LoadResult]]]]:
    # separate connections (a local subchannel pool each), so SO_REUSEPORT can spread them over processes
    options = [("grpc.use_local_subchannel_pool", 1)]

    def open_channel(route: Route) -> grpc.aio.Channel:
        if route.credentials is None:
            return grpc.aio.insecure_channel(route.address, options=options)
        return grpc.aio.secure_channel(route.address, route.credentials, options=options)

    channels = {
        path: [open_channel(route) for _ in range(settings.connections)] for path, route in routes.items()
    }
    try:
        calls = {
            path: round_robin([raw_call(c, INFER_METHOD) for c in chans]) for path, chans in channels.items()
        }
        for call in calls.values():
            await warm_up(call, body)
        rounds: list[dict[str, dict[str, LoadResult]]] = []
        order = list(calls)
        for index in range(settings.rounds):
            shift = index % len(order)
            this_round: dict[str, dict[str, LoadResult]] = {}
            for path in order[shift:] + order[:shift]:
                call = calls[path]
                this_round[path] = {
                    "latency": await measured_latency(call, body, settings, routes[path].proxy_pids),
                    "throughput": await measured_throughput(call, body, settings, routes[path].proxy_pids),
                }
            rounds.append({path: this_round[path] for path in order})
        return summarize_rounds(rounds), rounds
    finally:
        for chans in channels.values():
            for channel in chans:
                await channel.close()


@contextlib.contextmanager
def echo_paths(
    work_dir: Path,
    model_id: str = "hop-echo",
    serving_processes: int = 1,
    pod_args: list[str] | None = None,
    nginx_workers: int = 1,
) -> Iterator[dict[str, Route]]:
    """etcd, two echo pods (only pod-a serves the model's type, so pod-b always forwards) and nginx."""
    pod_args = [f"--serving-processes={serving_processes}", *(pod_args or [])]
    with contextlib.ExitStack() as stack:
        etcd = EtcdServer.start(work_dir / "etcd")
        stack.callback(etcd.process.stop)
        echo_a = EchoProcess.start(work_dir / "echo-a", "echo-a")
        stack.callback(echo_a.stop)
        echo_b = EchoProcess.start(work_dir / "echo-b", "echo-b")
        stack.callback(echo_b.stop)
        pod_a = start_echo_pod(work_dir / "pod-a", etcd, echo_a, "pod-a", extra_args=pod_args)
        stack.callback(pod_a.process.stop)
        pod_b = start_echo_pod(
            work_dir / "pod-b", etcd, echo_b, "pod-b", model_types="not-" + MODEL_TYPE, extra_args=pod_args
        )
        stack.callback(pod_b.process.stop)
        nginx = NginxProcess.start(work_dir / "nginx", echo_a.address, workers=nginx_workers)
        stack.callback(nginx.stop)
        naive = FloorProxyProcess.start(work_dir / "naive-proxy", echo_a.address)
        stack.callback(naive.stop)
        pump = FloorProxyProcess.start(work_dir / "byte-pump", echo_a.address, module="byte_pump")
        stack.callback(pump.stop)
        register(pod_a.address, model_id, MODEL_TYPE, "size=1000000")
        wait_for_serving_processes(pod_a, serving_processes)
        wait_for_serving_processes(pod_b, serving_processes)
        yield {
            "direct": Route(echo_a.address),
            "nginx": Route(nginx.address, (nginx.process.pid,)),
            "python-proxy": Route(naive.address, (naive.process.pid,)),
            "asyncio-pump": Route(pump.address, (pump.process.pid,)),
            "mesh-local": Route(pod_a.address, (pod_a.process.pid,)),
            "mesh-remote": Route(pod_b.address, (pod_b.process.pid, pod_a.process.pid)),
        }


@contextlib.contextmanager
def triton_paths(
    work_dir: Path, model_id: str = "hop-triton", pod_args: list[str] | None = None
) -> Iterator[dict[str, Route]]:
    """A Triton pod holding a python-backend model; an echo pod (no python type) forwards to it."""
    source = work_dir / "models" / "add-one"
    (source / "1").mkdir(parents=True, exist_ok=True)
    (source / "config.pbtxt").write_text(ADD_ONE_CONFIG)  # the adapter renames it to the model id
    (source / "1" / "model.py").write_text(ADD_ONE_MODEL)
    pod_args = pod_args or []
    with (
        LocalMesh(work_dir / "mesh", pods=0, triton_pods=1, pod_args=pod_args) as mesh,
        contextlib.ExitStack() as stack,
    ):
        assert mesh.etcd is not None
        holder = mesh.stacks[0]
        assert holder.pod is not None
        echo = EchoProcess.start(work_dir / "echo-b", "echo-b")
        stack.callback(echo.stop)
        remote = start_echo_pod(work_dir / "pod-b", mesh.etcd, echo, "pod-b", extra_args=pod_args)
        stack.callback(remote.process.stop)
        nginx = NginxProcess.start(work_dir / "nginx", holder.runtime.grpc_address)
        stack.callback(nginx.stop)
        register(holder.pod.address, model_id, "python", str(source))
        yield {
            "direct": Route(holder.runtime.grpc_address),
            "nginx": Route(nginx.address, (nginx.process.pid,)),
            "mesh-local": Route(holder.pod.address, (holder.pod.process.pid,)),
            "mesh-remote": Route(remote.address, (remote.process.pid, holder.pod.process.pid)),
        }


# Each backend twice: the pods' external port served by grpc.aio (--front=grpc), then by the HTTP/2 front;
# echo twice more: the HTTP/2 front with its loop sleeping at once (what busy polling buys), and on
# python-hyper's h2 instead of its own codec (what each costs).
HOP_BACKENDS = ("echo", "echo-h2", "echo-h2sleep", "echo-h2lib", "triton", "triton-h2")
FRONT_ARGS = {
    "": ["--front=grpc"],
    "h2": ["--front=h2", "--front-codec=lean"],
    "h2sleep": ["--front=h2", "--front-codec=lean", "--busy-poll-us=0"],  # what busy polling buys
    "h2lib": ["--front=h2", "--front-codec=h2"],
}


async def run_hop(
    work_dir: Path, settings: HopSettings, backends: tuple[str, ...] = HOP_BACKENDS
) -> dict[str, Any]:
    results: dict[str, Any] = {"settings": settings.__dict__}
    for backend in backends:
        runtime, _, front = backend.partition("-")
        model_id = f"hop-{runtime}"
        pod_args = FRONT_ARGS[front]
        try:
            if runtime == "echo":
                context = echo_paths(work_dir / backend, model_id, pod_args=pod_args)
            else:
                context = triton_paths(work_dir / backend, model_id, pod_args=pod_args)
            with context as addresses:
                summary, _ = await compare_paths(addresses, infer_request(model_id), settings)
        except Exception as e:  # one backend failing must not lose the other's figures
            log.exception("hop on %s failed", backend)
            summary = {"error": f"{type(e).__name__}: {e}"}
        results[backend] = summary
    return results
