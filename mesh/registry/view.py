"""The pod's in-memory view of the mesh's etcd records.

One owner writes it: the store's watch loop calls ``apply_put`` /
``apply_delete`` / ``replace_all`` in revision order. Everything else reads,
and the hot path reads only this view, never etcd. ``wait_for_revision`` gives
read-your-writes to a caller that has just written to etcd.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from mesh.registry.records import InstanceRecord, ModelRecord, VModelRecord

log = logging.getLogger(__name__)

REGISTRY = "registry/"
INSTANCES = "instances/"
VMODELS = "vmodels/"
LEADER = "leader"


T = TypeVar("T")


@dataclass(frozen=True)
class Versioned(Generic[T]):
    record: T
    mod_revision: int


class RoutingTable:
    def __init__(self) -> None:
        self.models: dict[str, Versioned[ModelRecord]] = {}
        self.instances: dict[str, Versioned[InstanceRecord]] = {}
        self.vmodels: dict[str, Versioned[VModelRecord]] = {}
        self.revision = 0
        self.leader: str | None = None  # the pod running cluster-wide tasks
        self._revision_changed = asyncio.Condition()
        # Called after a model record changes or goes away (model id, new record or None).
        self.model_listeners: list[Callable[[str, ModelRecord | None], None]] = []

    # -- reads ---------------------------------------------------------------
    def model(self, model_id: str) -> ModelRecord | None:
        entry = self.models.get(model_id)
        return entry.record if entry is not None else None

    def vmodel(self, vmodel_id: str) -> VModelRecord | None:
        entry = self.vmodels.get(vmodel_id)
        return entry.record if entry is not None else None

    def instance(self, pod_id: str) -> InstanceRecord | None:
        entry = self.instances.get(pod_id)
        return entry.record if entry is not None else None

    async def wait_for_revision(self, revision: int, timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s), self._revision_changed:
            await self._revision_changed.wait_for(lambda: self.revision >= revision)

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Wait until the view satisfies ``condition`` (checked after every revision it applies)."""
        async with asyncio.timeout(timeout_s), self._revision_changed:
            await self._revision_changed.wait_for(condition)

    # -- writes: the watch loop only ------------------------------------------
    def apply_put(self, relative_key: str, value: bytes, mod_revision: int) -> None:
        try:
            self._apply_put(relative_key, value, mod_revision)
        except (ValueError, TypeError) as e:  # one bad record must not stop the view from following etcd
            log.error("ignoring unreadable record %s at revision %d: %s", relative_key, mod_revision, e)

    def _apply_put(self, relative_key: str, value: bytes, mod_revision: int) -> None:
        if relative_key.startswith(REGISTRY):
            model_id = relative_key[len(REGISTRY) :]
            record = ModelRecord.from_json(value)
            self.models[model_id] = Versioned(record, mod_revision)
            self._notify_model(model_id, record)
        elif relative_key.startswith(VMODELS):
            self.vmodels[relative_key[len(VMODELS) :]] = Versioned(
                VModelRecord.from_json(value), mod_revision
            )
        elif relative_key == LEADER:
            self.leader = value.decode()
        elif relative_key.startswith(INSTANCES):
            self.instances[relative_key[len(INSTANCES) :]] = Versioned(
                InstanceRecord.from_json(value), mod_revision
            )

    def apply_delete(self, relative_key: str) -> None:
        if relative_key.startswith(REGISTRY):
            model_id = relative_key[len(REGISTRY) :]
            if self.models.pop(model_id, None) is not None:
                self._notify_model(model_id, None)
        elif relative_key.startswith(VMODELS):
            self.vmodels.pop(relative_key[len(VMODELS) :], None)
        elif relative_key == LEADER:
            self.leader = None
        elif relative_key.startswith(INSTANCES):
            self.instances.pop(relative_key[len(INSTANCES) :], None)

    def replace_all(self, items: list[tuple[str, bytes, int]]) -> None:
        """Load a full snapshot (start-up, or a watch that fell behind compaction)."""
        old_models = set(self.models)
        self.models.clear()
        self.instances.clear()
        self.vmodels.clear()
        self.leader = None
        for key, value, mod_revision in items:
            self.apply_put(key, value, mod_revision)
        for gone in old_models - set(self.models):
            self._notify_model(gone, None)

    async def advance(self, revision: int) -> None:
        async with self._revision_changed:
            if revision > self.revision:
                self.revision = revision
                self._revision_changed.notify_all()

    def _notify_model(self, model_id: str, record: ModelRecord | None) -> None:
        for listener in self.model_listeners:
            listener(model_id, record)
