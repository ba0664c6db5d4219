"""Notices when this pod's runtime dies and when it comes back.

Polls the runtime's own v2 ServerReady (not the adapter's runtimeStatus, which
purges models). When it stops answering, the pod forgets its copies (they died
with the runtime), leaves the registry and refuses loads, so requests go to
other pods; when the runtime is back, the adapter is asked for its status again
(which purges whatever is left) and the pod takes loads again.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from mesh.models.local import ModelLoader
from mesh.models.runtime_client import RuntimeClient

log = logging.getLogger(__name__)

SERVER_READY = "/inference.GRPCInferenceService/ServerReady"
READY_TRUE = b"\x08\x01"  # ServerReadyResponse{ready: true}


class RuntimeWatch:
    def __init__(
        self, runtime: RuntimeClient, loader: ModelLoader, interval_s: float = 1.0, misses_to_down: int = 3
    ) -> None:
        self._runtime = runtime
        self._loader = loader
        self._interval_s = interval_s
        self._misses_to_down = misses_to_down

    async def ready(self) -> bool:
        try:
            # generous: a busy runtime on a loaded machine is slow, not dead
            answer = await self._runtime.method(SERVER_READY)(b"", timeout=max(2.0, 2 * self._interval_s))
        except grpc.aio.AioRpcError:
            return False
        return bool(answer == READY_TRUE)

    async def run(self) -> None:
        misses = 0
        while True:
            await asyncio.sleep(self._interval_s)
            if await self.ready():
                misses = 0
                if self._loader.runtime_down:
                    log.warning("the runtime is back: taking loads again")
                    try:
                        await self._runtime.wait_ready(timeout_s=60)  # the adapter purges what is left
                    except TimeoutError as e:
                        log.error("adapter not ready after the runtime came back: %s", e)
                        continue
                    self._loader.runtime_back()
                continue
            misses += 1
            if misses == self._misses_to_down and not self._loader.runtime_down:
                log.error("the runtime stopped answering: dropping this pod's copies")
                await self._loader.runtime_lost()
