"""The floor: the least a Python grpc.aio proxy does — any unary method, raw bytes, to one backend.

No model lookup, no headers, no accounting. The hop scenario puts it next to
the mesh, so the mesh's own logic (what it adds beyond this) is visible apart
from the cost of the grpc.aio server and client themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import grpc


class Forward(grpc.GenericRpcHandler):
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            upstream = self._channel.unary_unary(method)

            async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                response: bytes = await upstream(request)
                return response

            handler = self._handlers[method] = grpc.unary_unary_rpc_method_handler(forward)
        return handler


async def serve(listen: str, backend: str) -> None:
    channel = grpc.aio.insecure_channel(backend)  # inside the running loop, as grpc.aio requires
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((Forward(channel),))
    server.add_insecure_port(listen)
    await server.start()
    await until_signalled()
    await server.stop(grace=1)
    await channel.close()


async def until_signalled() -> None:
    """Return at SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def run_proxy(
    serve: Callable[[str, str], Coroutine[Any, Any, None]], description: str, argv: Sequence[str] | None
) -> None:
    """The command line of a floor proxy: --listen and --backend, then ``serve`` until signalled."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--backend", required=True, help="host:port")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, args.backend))


def main(argv: Sequence[str] | None = None) -> None:
    run_proxy(serve, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
