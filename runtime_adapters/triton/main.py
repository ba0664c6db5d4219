"""Console entry point: ``modelmesh-triton-adapter`` (or ``python -m runtime_adapters.triton.main``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from prometheus_client import start_http_server

from protos import model_runtime_pb2_grpc
from runtime_adapters.common.memory import default_capacity_bytes
from runtime_adapters.common.storage import add_storage_arguments, store_from_args
from runtime_adapters.triton.adapter import TritonAdapter, TritonAdapterConfig

log = logging.getLogger("modelmesh.triton_adapter")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelmesh-triton-adapter", description="mmesh.ModelRuntime adapter in front of Triton"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind the adapter's gRPC port")
    p.add_argument("--port", type=int, default=_env_int("ADAPTER_PORT", 8085), help="env ADAPTER_PORT")
    p.add_argument(
        "--triton-grpc",
        default=os.environ.get("TRITON_GRPC_ADDRESS", "127.0.0.1:8001"),
        help="Triton gRPC host:port (env TRITON_GRPC_ADDRESS)",
    )
    p.add_argument(
        "--triton-pid",
        type=int,
        default=None,
        help="tritonserver pid, to find the models' stub processes; discovered from the gRPC port if omitted",
    )
    p.add_argument(
        "--repository-dir",
        type=Path,
        default=os.environ.get("TRITON_REPOSITORY_DIR") or None,
        required="TRITON_REPOSITORY_DIR" not in os.environ,
        help="Triton's --model-repository (env TRITON_REPOSITORY_DIR)",
    )
    p.add_argument(
        "--capacity-bytes",
        type=int,
        default=_env_int("MM_CAPACITY_BYTES", 0),
        help="bytes of model memory to offer the mesh (env MM_CAPACITY_BYTES; default: the container's "
        "memory limit from its cgroup, minus 20%% or at least 256 MiB for the runtime itself)",
    )
    p.add_argument("--min-model-size-bytes", type=int, default=0)
    p.add_argument("--default-model-size-bytes", type=int, default=1 << 20)
    p.add_argument("--load-timeout-ms", type=int, default=120_000)
    p.add_argument(
        "--unload-wait-s",
        type=float,
        default=30.0,
        help="how long an unload waits for the model's stub processes to exit",
    )
    p.add_argument("--max-loading-concurrency", type=int, default=2)
    p.add_argument("--metrics-port", type=int, default=0, help="serve /metrics on 127.0.0.1:PORT (0 = off)")
    p.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    add_storage_arguments(p)
    return p


async def serve(args: argparse.Namespace) -> None:
    config = TritonAdapterConfig(
        triton_grpc_address=args.triton_grpc,
        repository_dir=Path(args.repository_dir),
        triton_pid=args.triton_pid,
        capacity_bytes=args.capacity_bytes or default_capacity_bytes(),
        min_model_size_bytes=args.min_model_size_bytes,
        load_timeout_ms=args.load_timeout_ms,
        default_model_size_bytes=args.default_model_size_bytes,
        unload_wait_s=args.unload_wait_s,
        max_loading_concurrency=args.max_loading_concurrency,
    )
    adapter = TritonAdapter(config, store=store_from_args(args, config.repository_dir))
    if args.metrics_port:
        start_http_server(args.metrics_port, addr="127.0.0.1", registry=adapter.registry)

    server = grpc.aio.server()
    model_runtime_pb2_grpc.add_ModelRuntimeServicer_to_server(adapter, server)
    server.add_insecure_port(f"{args.host}:{args.port}")
    await server.start()
    print(f"adapter listening on {args.host}:{args.port}", file=sys.stderr, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await server.stop(grace=5)
    await adapter.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
