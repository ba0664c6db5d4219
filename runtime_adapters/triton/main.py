"""Console entry point: ``modelmesh-triton-adapter`` (or ``python -m runtime_adapters.triton.main``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from runtime_adapters.common.cli import adapter_parser, configure_logging, serve_adapter
from runtime_adapters.common.memory import default_capacity_bytes
from runtime_adapters.common.storage import store_from_args
from runtime_adapters.triton.adapter import TritonAdapter, TritonAdapterConfig


def build_parser() -> argparse.ArgumentParser:
    p = adapter_parser("modelmesh-triton-adapter", "mmesh.ModelRuntime adapter in front of Triton")
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
        "--unload-wait-s",
        type=float,
        default=30.0,
        help="how long an unload waits for the model's stub processes to exit",
    )
    p.add_argument("--max-loading-concurrency", type=int, default=2)
    return p


async def serve(args: argparse.Namespace) -> None:
    config = TritonAdapterConfig(
        triton_grpc_address=args.triton_grpc,
        repository_dir=Path(args.repository_dir),
        triton_pid=args.triton_pid,
        capacity_bytes=args.capacity_bytes
        or default_capacity_bytes(runtime_limit_bytes=args.runtime_memory_limit_bytes),
        min_model_size_bytes=args.min_model_size_bytes,
        load_timeout_ms=args.load_timeout_ms,
        default_model_size_bytes=args.default_model_size_bytes,
        unload_wait_s=args.unload_wait_s,
        max_loading_concurrency=args.max_loading_concurrency,
    )
    adapter = TritonAdapter(config, store=store_from_args(args, config.repository_dir))
    await serve_adapter(adapter, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
