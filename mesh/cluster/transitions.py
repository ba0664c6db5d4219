"""Drives vmodel transitions: load the target, then switch the vmodel to it in one CAS.

Any pod that sets a new target starts the drive at once; the leader sweeps all
vmodels in transition every interval, so a transition whose pod died, or whose
target failed and whose failure has since expired, still completes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mesh.cluster.vmodels import complete_transition, mark_failed, needed_models
from mesh.errors import MeshError
from mesh.registry.store import EtcdStore, RecordSet, StoreError
from mesh.registry.view import RoutingTable
from mesh.routing.router import Router

log = logging.getLogger(__name__)


class Transitions:
    def __init__(self, store: EtcdStore, table: RoutingTable, router: Router) -> None:
        self._store = store
        self._table = table
        self._router = router
        self._driving: dict[tuple[str, str], asyncio.Task[None]] = {}

    def drive(self, vmodel_id: str, target: str) -> asyncio.Task[None]:
        """Start (or join) the transition of ``vmodel_id`` to ``target``."""
        key = (vmodel_id, target)
        task = self._driving.get(key)
        if task is None:
            task = asyncio.create_task(self._drive(vmodel_id, target))
            self._driving[key] = task
            task.add_done_callback(lambda _: self._driving.pop(key, None))
        return task

    async def _drive(self, vmodel_id: str, target: str) -> None:
        try:
            await self._router.load_somewhere(target)
        except (MeshError, TimeoutError) as e:
            log.warning("vmodel %s: target %s failed to load: %s", vmodel_id, target, e)
            await self._update(vmodel_id, target, lambda rs: mark_failed(rs, vmodel_id, target, True))
            return
        alive = self._router.alive
        await self._update(vmodel_id, target, lambda rs: complete_transition(rs, vmodel_id, target, alive))
        log.info("vmodel %s now serves %s", vmodel_id, target)

    async def _update(self, vmodel_id: str, target: str, mutate: Callable[[RecordSet], None]) -> None:
        try:
            revision = await self._store.update_records([vmodel_id], needed_models(vmodel_id, target), mutate)
            await self._table.wait_for_revision(revision)
        except (StoreError, TimeoutError) as e:
            log.warning("vmodel %s: could not record the transition: %s", vmodel_id, e)

    def sweep(self) -> None:
        """Leader: drive every vmodel still in transition (loaded targets switch, failed ones retry)."""
        for vmodel_id, entry in list(self._table.vmodels.items()):
            if entry.record.in_transition:
                self.drive(vmodel_id, entry.record.target)

    async def close(self) -> None:
        for task in list(self._driving.values()):
            task.cancel()
        await asyncio.gather(*self._driving.values(), return_exceptions=True)
