"""Raw-bytes calls to other pods' internal ports.

The internal protocol is the external one plus a few ``mm-internal-*`` headers:
the concrete model id is already resolved, so the receiving pod serves it
itself (loading it if needed) and never forwards again. One channel per peer,
made on first use inside the event loop; in-flight counts pick the least busy copy.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

import grpc

from mesh.errors import MeshError, Reroute
from mesh.records import InstanceRecord
from mesh.routing import RoutingTable

INTERNAL_PREFIX = "mm-internal-"
# Set on a peer's own UNAVAILABLE answer (its runtime is down): the peer itself is fine.
RUNTIME_DOWN_TRAILER = "mm-internal-runtime-down"
# The concrete model id a forwarded request is for.
INTERNAL_MODEL_HEADER = "mm-internal-model"
# Set by a pod that would not load a model because another pod has claimed the load: that pod's id.
REDIRECT_TRAILER = "mm-internal-redirect"
# Set on errors that are a failed load (so the sender may try another pod), not the runtime's answer.
LOAD_FAILED_TRAILER = "mm-internal-load-failed"
# On LOAD_METHOD: load an extra copy even though other pods hold the model (scale-up by request rate).
COPY_HEADER = "mm-internal-copy"
# Pods the sender found unreachable for this request, comma-separated.
AVOID_HEADER = "mm-internal-avoid"
# Internal-only method: make sure the model is loaded on the receiving pod (management ensureLoaded).
LOAD_METHOD = "/mmesh.internal.Peer/ensureLoaded"

Metadata = Sequence[tuple[str, str | bytes]]


class Passthrough(Exception):
    """A final answer from a runtime or a peer, returned to the client as it came."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(error.details())
        self.code = error.code()
        self.details = error.details() or ""


def peer_outcome(error: grpc.aio.AioRpcError) -> Exception:
    """What a peer's error means for the request: try another pod (Reroute), or return it (Passthrough)."""
    redirect = trailer(error, REDIRECT_TRAILER)
    if error.code() == grpc.StatusCode.ABORTED and redirect:
        return Reroute(MeshError(error.code(), error.details() or ""), exclude=False, prefer=redirect)
    if error.code() == grpc.StatusCode.UNAVAILABLE or (
        error.code() == grpc.StatusCode.INTERNAL and trailer(error, LOAD_FAILED_TRAILER)
    ):
        # Every answer a pod gives itself carries an mm-internal trailer; without one, the pod never answered.
        # A pod whose runtime is down answers, but cannot serve anything either.
        answered = any(k.startswith(INTERNAL_PREFIX) for k, _ in error.trailing_metadata() or ())
        useless = not answered or trailer(error, RUNTIME_DOWN_TRAILER) is not None
        return Reroute(MeshError(error.code(), error.details() or ""), unreachable=useless)
    return Passthrough(error)


def trailer(error: grpc.aio.AioRpcError, key: str) -> str | None:
    for k, v in error.trailing_metadata() or ():
        if k == key:
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


class PeerHealth:
    """Which pods count as alive: an instance record in etcd, and no recent failure to answer.

    A pod that stops answering keeps its instance record until its lease runs
    out; meanwhile requests must not keep trying it, nor wait for its loads.
    """

    def __init__(self, table: RoutingTable, suspect_s: float) -> None:
        self._table = table
        self._suspect_s = suspect_s
        self._down_until: dict[str, float] = {}

    def alive(self, pod_id: str) -> bool:
        if pod_id not in self._table.instances:
            return False
        until = self._down_until.get(pod_id)
        if until is None:
            return True
        if time.monotonic() >= until:
            del self._down_until[pod_id]
            return True
        return False

    def unreachable(self, pod_id: str) -> None:
        self._down_until[pod_id] = time.monotonic() + self._suspect_s

    def live_instances(self) -> dict[str, InstanceRecord]:
        return {p: v.record for p, v in self._table.instances.items() if self.alive(p)}


class PeerPool:
    def __init__(self, max_message_bytes: int) -> None:
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._inflight: Counter[str] = Counter()

    def inflight(self, address: str) -> int:
        return self._inflight[address]

    async def call(
        self,
        address: str,
        method: str,
        body: bytes,
        model_id: str,
        metadata: Metadata,
        timeout_s: float | None,
        avoid: frozenset[str] = frozenset(),
    ) -> bytes:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=self._options)
            self._channels[address] = channel
        call = channel.unary_unary(method)
        self._inflight[address] += 1
        try:
            headers = [*metadata, (INTERNAL_MODEL_HEADER, model_id)]
            if avoid:
                headers.append((AVOID_HEADER, ",".join(sorted(avoid))))
            response: bytes = await call(body, timeout=timeout_s, metadata=headers)
            return response
        finally:
            self._inflight[address] -= 1

    async def forget(self, address: str) -> None:
        """A peer went away: close its channel."""
        channel = self._channels.pop(address, None)
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        for address in list(self._channels):
            await self.forget(address)
