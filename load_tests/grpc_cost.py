"""Scenario "grpc_cost": what one grpc.aio unary call costs, with gRPC's default experiments and without the
event-engine poller for Python.

Every hop of a miss but the front is a Python grpc.aio call (client -> management API, pod -> adapter,
pod -> etcd, adapter -> MLServer), so the mesh's CPU per miss is mostly these. Each arm is a grpc.aio server
process (an empty ModelRuntime.unloadModel) and a grpc.aio client process making sequential calls, both
started with the arm's GRPC_EXPERIMENTS; the arms alternate round by round. Reported per arm: the call's p50
and the CPU per call of the server and the client (medians over rounds).

The second arm is cheaper, and not used: with it, a grpc.aio listener under a CONTINUATION flood lets its
normal clients' p99 go to about 100 ms (tests/test_hostile_clients.py, --front=grpc: three runs of four fail
their 50 ms bound; none with the defaults).

    .venv/bin/python -m load_tests.grpc_cost [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from load_tests.cpu import cpu_seconds
from protos import model_runtime_pb2 as spi
from protos import model_runtime_pb2_grpc as spi_grpc

REPO = Path(__file__).resolve().parents[1]
ARMS = {"grpc_default": "", "poller_off": "-event_engine_poller_for_python"}
WARM_UP_CALLS = 50


class EmptyRuntime(spi_grpc.ModelRuntimeServicer):
    async def unloadModel(
        self, request: spi.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> spi.UnloadModelResponse:
        return spi.UnloadModelResponse()


async def serve() -> None:
    server = grpc.aio.server()
    spi_grpc.add_ModelRuntimeServicer_to_server(EmptyRuntime(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def call(port: int, calls: int) -> None:
    """Sequential calls after a warm-up; one line per call (its seconds) once "go" is read from stdin."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = spi_grpc.ModelRuntimeStub(channel)
        request = spi.UnloadModelRequest(modelId="m")
        for _ in range(WARM_UP_CALLS):
            await stub.unloadModel(request, timeout=10)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            await stub.unloadModel(request, timeout=10)
            times.append(time.perf_counter() - start)
        print(json.dumps(times), flush=True)  # before the channel closes: its teardown is not counted


def _child(experiments: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "GRPC_EXPERIMENTS": experiments, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "load_tests.grpc_cost", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def measure_arm(experiments: str, calls: int) -> dict[str, float]:
    """One round of one arm: p50 of the call, server and client CPU per call (µs)."""
    server = _child(experiments, "serve")
    client: subprocess.Popen[str] | None = None
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        client = _child(experiments, "call", "--port", str(port), "--calls", str(calls))
        assert client.stdout is not None and client.stdin is not None
        if client.stdout.readline().strip() != "ready":
            raise RuntimeError("the grpc_cost client did not start")
        server_cpu, client_cpu = cpu_seconds([server.pid], False), cpu_seconds([client.pid], False)
        client.stdin.write("go\n")
        client.stdin.flush()
        times = json.loads(client.stdout.readline())
        server_cpu = cpu_seconds([server.pid], False) - server_cpu
        client_cpu = cpu_seconds([client.pid], False) - client_cpu
        return {
            "p50_us": round(1e6 * statistics.median(times), 1),
            "server_cpu_us": round(1e6 * server_cpu / calls, 1),
            "client_cpu_us": round(1e6 * client_cpu / calls, 1),
        }
    finally:
        for process in (client, server):
            if process is not None:
                process.kill()
                process.wait()


def run_grpc_cost(rounds: int = 5, calls: int = 1000) -> dict[str, Any]:
    by_arm: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for round_ in range(rounds):
        order = list(ARMS) if round_ % 2 == 0 else list(reversed(ARMS))
        for arm in order:
            by_arm[arm].append(measure_arm(ARMS[arm], calls))
    result: dict[str, Any] = {"calls": calls, "rounds": by_arm}
    for arm, measured in by_arm.items():
        result[arm] = {key: statistics.median(m[key] for m in measured) for key in measured[0]}
    default, off = result["grpc_default"], result["poller_off"]
    result["server_cpu_ratio"] = round(off["server_cpu_us"] / default["server_cpu_us"], 2)
    result["client_cpu_ratio"] = round(off["client_cpu_us"] / default["client_cpu_us"], 2)
    result["p50_ratio"] = round(off["p50_us"] / default["p50_us"], 2)
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    default, off = result["grpc_default"], result["poller_off"]
    return [
        f"a grpc.aio unary call between two processes (gRPC's defaults, as the mesh runs): p50 "
        f"{default['p50_us']} µs, server CPU {default['server_cpu_us']} µs, client CPU "
        f"{default['client_cpu_us']} µs; medians of {len(result['rounds']['grpc_default'])} rounds of "
        f"{result['calls']} calls",
        f"without the event-engine poller for Python ({ARMS['poller_off']}), in the same rounds: p50 "
        f"{off['p50_us']} µs (x{result['p50_ratio']}), server {off['server_cpu_us']} µs "
        f"(x{result['server_cpu_ratio']}), client {off['client_cpu_us']} µs (x{result['client_cpu_ratio']}); "
        "not used: a grpc.aio listener serves its normal clients worse under a CONTINUATION flood with it",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("mode", nargs="?", choices=("run", "serve", "call"), default="run")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if args.mode == "serve":
        asyncio.run(serve())
    elif args.mode == "call":
        asyncio.run(call(args.port, args.calls))
    else:
        print("\n".join(summary_lines(run_grpc_cost(args.rounds, args.calls))))


if __name__ == "__main__":
    main()
