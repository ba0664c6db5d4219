"""Copies by request rate, checked every interval on each pod for the copies it holds.

A copy serving more than the threshold asks placement for one more copy on
another pod (never two on one pod, never while a copy is loading). An extra
copy that served nothing for a whole window is dropped, by the pods that
loaded it later than the first holder, so the last copy is never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import grpc

from mesh.models.local import ModelLoader
from mesh.models.rates import RateTracker, hot_models, should_drop_idle_copy
from mesh.outcomes import COPY_HEADER, LOAD_METHOD
from mesh.registry.status import live_copies
from mesh.registry.view import RoutingTable
from mesh.routing.peers import PeerHealth, PeerPool
from mesh.routing.placement import choose_load_target

log = logging.getLogger(__name__)


class CopyScaler:
    def __init__(
        self,
        pod_id: str,
        table: RoutingTable,
        loader: ModelLoader,
        rates: RateTracker,
        peers: PeerPool,
        health: PeerHealth,
        threshold_per_min: float,
    ) -> None:
        self._pod_id = pod_id
        self._table = table
        self._loader = loader
        self._rates = rates
        self._peers = peers
        self._health = health
        self._threshold = threshold_per_min
        self._adding: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._rates.interval_s)
            self._rates.tick()
            try:
                await self.step()
            except Exception:
                log.exception("copy scaling step failed")

    async def step(self) -> None:
        live = self._health.live_instances()
        held = [m for m in self._loader.cache.model_ids() if self._loader.is_loaded(m)]
        rates = {m: self._rates.per_minute(m) for m in held}
        for model_id in hot_models(rates, self._threshold):
            record = self._table.model(model_id)
            if record is None or live_copies(record.loading, live):
                continue  # a copy is on its way already
            has_copy = set(live_copies(record.holders, live)) | {self._pod_id}
            target = choose_load_target(model_id, record.type, live, exclude=has_copy)
            if target is not None:
                log.info(
                    "%s serves %.0f req/min here: adding a copy on %s", model_id, rates[model_id], target
                )
                self._spawn(self._add_copy(model_id, live[target].internal_address))
        for model_id in held:
            current = self._table.model(model_id)
            holders = live_copies(current.holders, live) if current else {}
            if should_drop_idle_copy(self._pod_id, holders, self._rates.idle(model_id)):
                log.info("dropping the idle extra copy of %s", model_id)
                await self._loader.unload(model_id, reason="idle")
                self._rates.forget(model_id)

    async def hand_over(self, timeout_s: float) -> None:
        """Before this pod stops: every model it holds without another copy gets one elsewhere."""
        live = {p: r for p, r in self._health.live_instances().items() if p != self._pod_id}
        moves = []
        for model_id in self._loader.cache.model_ids():
            record = self._table.model(model_id)
            if record is None or not self._loader.is_loaded(model_id) or live_copies(record.holders, live):
                continue
            target = choose_load_target(model_id, record.type, live)
            if target is not None:
                log.info("handing %s over to %s", model_id, target)
                moves.append(self._add_copy(model_id, live[target].internal_address))
        if moves:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*moves), timeout_s)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._adding.add(task)
        task.add_done_callback(self._adding.discard)

    async def _add_copy(self, model_id: str, address: str) -> None:
        try:
            await self._peers.call(address, LOAD_METHOD, b"", model_id, ((COPY_HEADER, "1"),), None)
        except grpc.aio.AioRpcError as e:
            log.warning("extra copy of %s on %s failed: %s", model_id, address, e.details())
