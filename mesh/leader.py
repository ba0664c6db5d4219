"""Cluster-wide tasks, run by one pod at a time: the holder of the ``leader`` key (on its lease).

Prunes registry entries that name pods without an instance record (a pod that
died mid-load or before it could leave the registry; routing already ignores
them, this keeps the records and statuses honest), and drives every vmodel
transition still under way.
"""

from __future__ import annotations

import asyncio
import logging

from mesh.records import ModelRecord
from mesh.routing import RoutingTable
from mesh.store import EtcdStore, StoreError, Unchanged
from mesh.transitions import Transitions

log = logging.getLogger(__name__)


def without_dead_pods(record: ModelRecord, live: set[str]) -> ModelRecord:
    """The record without holder or loading entries of dead pods (pure); Unchanged if there are none."""
    dead = [p for p in (*record.holders, *record.loading) if p not in live]
    if not dead:
        raise Unchanged
    for pod in dead:
        record.holders.pop(pod, None)
        record.loading.pop(pod, None)
    return record


class LeaderTasks:
    def __init__(
        self, pod_id: str, store: EtcdStore, table: RoutingTable, transitions: Transitions, interval_s: float
    ) -> None:
        self._pod_id = pod_id
        self._store = store
        self._table = table
        self._transitions = transitions
        self._interval_s = interval_s

    @property
    def leading(self) -> bool:
        return self._table.leader == self._pod_id

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                if self._table.leader is None and await self._store.campaign(self._pod_id):
                    log.info("%s is the leader", self._pod_id)
                if self.leading:
                    await self.prune()
                    self._transitions.sweep()
            except (StoreError, TimeoutError) as e:
                log.warning("leader tasks skipped: %s", e)

    async def prune(self) -> None:
        live = set(self._table.instances)
        for model_id, entry in list(self._table.models.items()):
            record = entry.record
            if all(p in live for p in (*record.holders, *record.loading)):
                continue
            log.info("pruning dead pods from %s", model_id)
            await self._store.update_model(
                model_id, lambda r: without_dead_pods(r, live) if r is not None else None
            )
