"""Raw-bytes calls to other pods' internal ports.

The internal protocol is the external one plus a few ``mm-internal-*`` headers:
the concrete model id is already resolved, so the receiving pod serves it
itself (loading it if needed) and never forwards again. One channel per peer,
made on first use inside the event loop (the caller counts its calls in the in-flight book).
"""

from __future__ import annotations

import asyncio
import time

import grpc

from mesh.outcomes import AVOID_HEADER, INTERNAL_MODEL_HEADER, Metadata
from mesh.registry.records import InstanceRecord
from mesh.registry.view import RoutingTable
from mesh.tls import ReloadingChannelCredentials

RETIRED_CHANNEL_GRACE_S = 120.0  # calls in flight on a channel a rotation replaced may take this long


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
    """One grpc.aio channel per peer address. With TLS, a rotation of this pod's certificate (or of the
    pods' authority) makes the next call open a new channel; the old one finishes its calls in flight."""

    def __init__(
        self, max_message_bytes: int, credentials: ReloadingChannelCredentials | None = None
    ) -> None:
        self._credentials = credentials  # mutual TLS to peers' internal ports, when pods have certificates
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._channels: dict[str, tuple[grpc.aio.Channel, int]] = {}  # address -> (channel, its generation)
        self._retiring: dict[asyncio.Task[None], grpc.aio.Channel] = {}  # closing, their calls finishing

    def channel(self, address: str) -> grpc.aio.Channel:
        """The channel to ``address``, made with the current credentials."""
        generation = self._credentials.generation if self._credentials is not None else 0
        known = self._channels.get(address)
        if known is not None:
            if known[1] == generation:
                return known[0]
            self._retire(known[0])
        channel = (
            grpc.aio.insecure_channel(address, options=self._options)
            if self._credentials is None
            else grpc.aio.secure_channel(address, self._credentials.credentials, options=self._options)
        )
        self._channels[address] = (channel, generation)
        return channel

    def _retire(self, channel: grpc.aio.Channel) -> None:
        task = asyncio.ensure_future(channel.close(grace=RETIRED_CHANNEL_GRACE_S))
        self._retiring[task] = channel
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    def stream(
        self,
        address: str,
        method: str,
        model_id: str,
        metadata: Metadata,
        timeout_s: float | None,
        avoid: frozenset[str] = frozenset(),
    ) -> grpc.aio.StreamStreamCall:
        """A raw-bytes bidirectional stream to the peer's internal port, for the concrete ``model_id``."""
        return self.channel(address).stream_stream(method)(
            timeout=timeout_s, metadata=_internal_headers(metadata, model_id, avoid)
        )

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
        call = self.channel(address).unary_unary(method)
        headers = _internal_headers(metadata, model_id, avoid)
        response: bytes = await call(body, timeout=timeout_s, metadata=headers)
        return response

    async def forget(self, address: str) -> None:
        """A peer went away: close its channel."""
        known = self._channels.pop(address, None)
        if known is not None:
            await known[0].close()

    async def close(self) -> None:
        for address in list(self._channels):
            await self.forget(address)
        for channel in list(self._retiring.values()):
            await channel.close()  # now: a stopping pod does not wait out the grace


def _internal_headers(
    metadata: Metadata, model_id: str, avoid: frozenset[str]
) -> list[tuple[str, str | bytes]]:
    headers = [*metadata, (INTERNAL_MODEL_HEADER, model_id)]
    if avoid:
        headers.append((AVOID_HEADER, ",".join(sorted(avoid))))
    return headers
