"""Cluster-wide tasks, run by one pod at a time: the holder of the ``leader`` key (on its lease).

Prunes registry entries that name pods without an instance record (a pod that
died mid-load or before it could leave the registry; routing already ignores
them, this keeps the records and statuses honest), and drives every vmodel
transition still under way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

from mesh.cluster.transitions import Transitions
from mesh.registry.records import ModelRecord
from mesh.registry.store import EtcdStore, StoreError, Unchanged
from mesh.registry.view import RoutingTable

log = logging.getLogger(__name__)


def without_dead_pods(record: ModelRecord, live: Collection[str], seen: Collection[str]) -> ModelRecord:
    """The record without holder or loading entries of dead pods (pure); Unchanged if there are none.

    Only pods in ``seen`` (named when the prune was decided) are candidates: an entry written since,
    by a pod that joined after the leader's view was taken, is left alone.
    """
    dead = [p for p in (*record.holders, *record.loading) if p not in live and p in seen]
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
        for model_id, entry in list(self._table.models.items()):
            named = {*entry.record.holders, *entry.record.loading}
            dead = {p for p in named if p not in self._table.instances}
            if not dead:
                continue
            log.info("pruning dead pods %s from %s", sorted(dead), model_id)

            def prune(record: ModelRecord | None, dead: set[str] = dead) -> ModelRecord | None:
                if record is None:
                    raise Unchanged
                return without_dead_pods(record, self._table.instances, dead)

            await self._store.update_model(model_id, prune)
