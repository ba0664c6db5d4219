"""What every adapter's command line shares: the common flags, logging, and serving the SPI until a signal."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Protocol

import grpc
from prometheus_client import CollectorRegistry

from protos import model_runtime_pb2_grpc
from runtime_adapters.common.listener import (
    ListenerLimits,
    add_listener_arguments,
    spi_server_options,
    start_metrics_server,
)
from runtime_adapters.common.storage import add_storage_arguments

log = logging.getLogger("modelmesh.adapter")


class Adapter(Protocol):
    registry: CollectorRegistry

    async def close(self) -> None: ...


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def adapter_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with the flags every adapter takes; the caller adds its runtime's own."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--host", default="127.0.0.1", help="address to bind the adapter's gRPC port")
    p.add_argument("--port", type=int, default=env_int("ADAPTER_PORT", 8085), help="env ADAPTER_PORT")
    p.add_argument(
        "--capacity-bytes",
        type=int,
        default=env_int("MM_CAPACITY_BYTES", 0),
        help="bytes of model memory to offer the mesh (env MM_CAPACITY_BYTES; default: the container's "
        "memory limit from its cgroup, minus 20%% or at least 256 MiB for the runtime itself)",
    )
    p.add_argument(
        "--runtime-memory-limit-bytes",
        type=int,
        default=env_int("RUNTIME_MEMORY_LIMIT_BYTES", 0),
        help="the runtime container's memory limit, for the default capacity when the runtime has a "
        "container of its own (env RUNTIME_MEMORY_LIMIT_BYTES; default: this container's cgroup limit)",
    )
    p.add_argument("--min-model-size-bytes", type=int, default=0)
    p.add_argument("--default-model-size-bytes", type=int, default=1 << 20)
    p.add_argument("--load-timeout-ms", type=int, default=120_000)
    p.add_argument("--metrics-port", type=int, default=0, help="serve /metrics on 127.0.0.1:PORT (0 = off)")
    p.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    add_listener_arguments(p)
    add_storage_arguments(p)
    return p


# S3 and HTTP clients that log request headers (signed credentials) at DEBUG: never below INFO.
HEADER_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "aiohttp.client")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    for name in HEADER_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger().level))


async def serve_adapter(adapter: Adapter, args: argparse.Namespace) -> None:
    """Serve mmesh.ModelRuntime (and /metrics) until SIGTERM or SIGINT."""
    limits = ListenerLimits.from_args(args)
    metrics = None
    if args.metrics_port:
        metrics = start_metrics_server("127.0.0.1", args.metrics_port, adapter.registry, limits)
    server = grpc.aio.server(options=spi_server_options(limits))
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
    if metrics is not None:
        metrics.shutdown()
        metrics.server_close()
    await adapter.close()
