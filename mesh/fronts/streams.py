"""Bidirectional streams through the mesh (ModelStreamInfer): the client's messages to an upstream call (the
runtime, a peer's internal port, the main process), the upstream's answers back, as raw bytes.

The relay itself holds at most one message each way: a client message is read only once the upstream
call has taken the one before, an upstream answer only once the handler's ``yield`` has returned. Below it
only the transports' windows hold bytes (grpc's on each hop, the HTTP/2 front's per stream), so a client
that reads slowly holds the runtime back end to end (tests/test_stream_flow_control.py). A stream is never
retried: once messages have gone, another pod cannot take over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import grpc

from mesh.errors import MeshError
from mesh.outcomes import Passthrough


def unchanged(message: bytes) -> bytes:
    return message


async def relay_stream(
    call: grpc.aio.StreamStreamCall,
    requests: AsyncIterator[bytes],
    splice: Callable[[bytes], bytes] = unchanged,
) -> AsyncIterator[bytes]:
    """Pump ``requests`` (each through ``splice``) into ``call`` and yield its answers until it ends.

    The upstream's error, if it ends with one, is raised as ``grpc.aio.AioRpcError``; leaving early (the
    client went away, a deadline) cancels the upstream call.
    """

    async def forward() -> None:
        async for message in requests:
            await call.write(splice(message))
        await call.done_writing()

    sending = asyncio.ensure_future(forward())
    try:
        while True:
            answer = await call.read()
            if answer is grpc.aio.EOF:
                break
            yield answer
        code = await call.code()
        if code != grpc.StatusCode.OK:  # ended with a status but no more messages
            raise grpc.aio.AioRpcError(
                code, await call.initial_metadata(), await call.trailing_metadata(), await call.details()
            )
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sending  # a write into an upstream that ended fails: the read above says why
        call.cancel()


def stream_error(error: grpc.aio.AioRpcError, upstream: str) -> Exception:
    """An upstream's error mid-stream: gone (UNAVAILABLE, said so), or its own answer to pass on."""
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        return MeshError(grpc.StatusCode.UNAVAILABLE, f"{upstream} went away mid-stream: {error.details()}")
    return Passthrough.of(error)
