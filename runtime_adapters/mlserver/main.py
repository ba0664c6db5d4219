"""Console entry point: ``modelmesh-mlserver-adapter``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from runtime_adapters.common.cli import adapter_parser, configure_logging, env_int, serve_adapter
from runtime_adapters.common.memory import default_capacity_bytes
from runtime_adapters.common.storage import store_from_args
from runtime_adapters.mlserver.adapter import (
    DEFAULT_MAX_LOADING_CONCURRENCY,
    DEFAULT_MODEL_OVERHEAD_BYTES,
    MLServerAdapter,
    MLServerAdapterConfig,
)


def build_parser() -> argparse.ArgumentParser:
    p = adapter_parser("modelmesh-mlserver-adapter", "mmesh.ModelRuntime adapter in front of MLServer")
    p.add_argument(
        "--mlserver-grpc",
        default=os.environ.get("MLSERVER_GRPC_ADDRESS", "127.0.0.1:8001"),
        help="MLServer gRPC host:port (env MLSERVER_GRPC_ADDRESS)",
    )
    p.add_argument(
        "--mlserver-pid",
        type=int,
        default=None,
        help="MLServer pid for memory measurement; discovered from the gRPC port if omitted",
    )
    p.add_argument(
        "--repository-dir",
        type=Path,
        default=os.environ.get("MLSERVER_REPOSITORY_DIR") or None,
        required="MLSERVER_REPOSITORY_DIR" not in os.environ,
        help="MLServer's model repository root (env MLSERVER_REPOSITORY_DIR)",
    )
    p.add_argument(
        "--max-loading-concurrency",
        type=int,
        default=env_int("MLSERVER_MAX_LOADING_CONCURRENCY", DEFAULT_MAX_LOADING_CONCURRENCY),
        help="loads the mesh may send at once (env MLSERVER_MAX_LOADING_CONCURRENCY)",
    )
    p.add_argument(
        "--model-overhead-bytes",
        type=int,
        default=env_int("MLSERVER_MODEL_OVERHEAD_BYTES", DEFAULT_MODEL_OVERHEAD_BYTES),
        help="MLServer's own memory per loaded model, added to its measured growth "
        "(env MLSERVER_MODEL_OVERHEAD_BYTES)",
    )
    return p


async def serve(args: argparse.Namespace) -> None:
    config = MLServerAdapterConfig(
        mlserver_grpc_address=args.mlserver_grpc,
        repository_dir=Path(args.repository_dir),
        runtime_pid=args.mlserver_pid,
        capacity_bytes=args.capacity_bytes
        or default_capacity_bytes(runtime_limit_bytes=args.runtime_memory_limit_bytes),
        min_model_size_bytes=args.min_model_size_bytes,
        load_timeout_ms=args.load_timeout_ms,
        default_model_size_bytes=args.default_model_size_bytes,
        max_loading_concurrency=args.max_loading_concurrency,
        model_overhead_bytes=args.model_overhead_bytes,
    )
    adapter = MLServerAdapter(config, store=store_from_args(args, config.repository_dir))
    await serve_adapter(adapter, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
