"""etcd access: the registry and instance records, CAS updates, the pod's lease, the watch loop.

Every write is a compare-and-swap on the key's mod revision, so pods never
overwrite each other. The watch loop is the only writer of the RoutingTable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from aetcd import rpc

from mesh.errors import StoreError
from mesh.registry.etcd import (
    PUT,
    EtcdConfig,
    EtcdConnection,
    UncertainWrite,
    WatchCompacted,
    created_at,
    modified_at,
)
from mesh.registry.records import InstanceRecord, ModelRecord, VModelRecord
from mesh.registry.view import INSTANCES, LEADER, REGISTRY, VMODELS, RoutingTable

log = logging.getLogger(__name__)

__all__ = ["EtcdStore", "RecordSet", "StoreError", "Unchanged"]

INSTANCE_PUBLISH_INTERVAL_S = 0.1  # the least time between two writes of a pod's instance record
SNAPSHOT_PAGE = 1000  # keys per read; a page too large for one message is read again in halves


def _prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix`` (etcd's convention)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


# A mutation returns the new record, None to delete the key, or raises to abort.
Mutation = Callable[[ModelRecord | None], ModelRecord | None]


class Unchanged(Exception):
    """Raised by a Mutation that has nothing to write."""


@dataclass
class RecordSet:
    """Model and vmodel records read for one transaction; a mutation edits them in place (None deletes)."""

    models: dict[str, ModelRecord | None]
    vmodels: dict[str, VModelRecord | None]

    def encoded(self) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        for model_id, model in self.models.items():
            out[REGISTRY + model_id] = model.to_json() if model is not None else None
        for vmodel_id, vmodel in self.vmodels.items():
            out[VMODELS + vmodel_id] = vmodel.to_json() if vmodel is not None else None
        return out


class EtcdStore:
    def __init__(
        self, etcd: str | EtcdConfig, prefix: str, timeout_s: float = 5.0, reload_interval_s: float = 10.0
    ) -> None:
        config = EtcdConfig.from_endpoints(etcd) if isinstance(etcd, str) else etcd
        self._etcd = EtcdConnection(config, timeout_s, reload_interval_s)
        root = config.root_prefix.strip("/")
        self.prefix = (root + "/" if root else "") + prefix.rstrip("/") + "/"
        self._lease: int | None = None  # the lease's id
        self._instance_written = b""

    async def close(self) -> None:
        await self._etcd.close()

    def _key(self, relative: str) -> bytes:
        return (self.prefix + relative).encode()

    # -- snapshot and watch -------------------------------------------------------
    async def snapshot(self, page_size: int = SNAPSHOT_PAGE) -> tuple[int, list[tuple[str, bytes, int]]]:
        """Every key under the prefix at one revision, read in pages.

        One read of a large registry would exceed gRPC's message limit; pages after the first are read
        at the first page's revision, so the whole is one consistent view.
        """
        start, end = self.prefix.encode(), _prefix_end(self.prefix.encode())
        cut = len(self.prefix)
        revision = 0  # 0: the newest, for the first page
        items: list[tuple[str, bytes, int]] = []
        while True:
            request = rpc.RangeRequest(key=start, range_end=end, limit=page_size, revision=revision)
            try:
                result = await self._etcd.range(request)
            except StoreError as e:
                if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and page_size > 1:
                    page_size //= 2  # unusually large records
                    continue
                raise
            revision = revision or result.header.revision
            items.extend((kv.key.decode()[cut:], kv.value, kv.mod_revision) for kv in result.kvs)
            if not result.more or not result.kvs:
                return revision, items
            start = result.kvs[-1].key + b"\0"

    async def run_watch(self, table: RoutingTable, ready: asyncio.Event) -> None:
        """Keep ``table`` equal to etcd: a snapshot, then one watch over the prefix.

        A broken watch (etcd restarted, network) resumes from the last revision
        seen; only a compacted revision forces a new snapshot.
        """
        next_revision: int | None = None
        cut = len(self.prefix)
        start, end = self.prefix.encode(), _prefix_end(self.prefix.encode())
        while True:
            try:
                if next_revision is None:
                    revision, items = await self.snapshot()
                    table.replace_all(items)
                    await table.advance(revision)
                    next_revision = revision + 1
                    ready.set()
                async for event in self._etcd.watch(start, end, next_revision):
                    key = event.kv.key.decode()[cut:]
                    if event.type == PUT:
                        table.apply_put(key, event.kv.value, event.kv.mod_revision)
                    else:
                        table.apply_delete(key)
                    next_revision = event.kv.mod_revision + 1
                    await table.advance(event.kv.mod_revision)
            except asyncio.CancelledError:
                raise
            except WatchCompacted:
                log.warning("watch fell behind compaction; reloading the snapshot")
                next_revision = None
            except Exception as e:  # etcd down or restarting: retry from where we were
                log.warning("etcd watch broken (%s); resuming from revision %s", e, next_revision)
                await asyncio.sleep(0.5)

    async def current_revision(self) -> int:
        """etcd's revision now (a linearizable read): what this pod's view must reach to be current."""
        result = await self._etcd.range(rpc.RangeRequest(key=self.prefix.encode(), count_only=True))
        return int(result.header.revision)

    # -- registry -----------------------------------------------------------------
    async def _txn(self, compare: list[Any], success: list[Any], failure: list[Any]) -> Any:
        """One etcd transaction; the raw response carries the revision it was applied at.

        The store needs that revision to wait for its own write in the routing table.
        """
        return await self._etcd.txn(rpc.TxnRequest(compare=compare, success=success, failure=failure))

    async def create_model(self, model_id: str, record: ModelRecord) -> tuple[ModelRecord | None, int]:
        """Create the record if absent.

        Returns (None, revision of the create) when created, else (the existing record, its mod revision).
        """
        key, value = self._key(REGISTRY + model_id), record.to_json()
        while True:
            try:
                response = await self._txn(
                    compare=[created_at(key, 0)],
                    success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))],
                    failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
                )
                break
            except UncertainWrite:  # was it ours? the record holds exactly what we wrote only if so
                got = await self._etcd.get(key)
                if got is None:
                    continue
                if got.value == value and got.create_revision == got.mod_revision:
                    return None, got.mod_revision
                return ModelRecord.from_json(got.value), got.mod_revision
        if response.succeeded:
            return None, response.header.revision
        kvs = response.responses[0].response_range.kvs
        if not kvs:  # deleted between the compare and now: cannot happen inside one transaction
            raise StoreError(f"registry record {model_id} vanished inside a transaction")
        return ModelRecord.from_json(kvs[0].value), kvs[0].mod_revision

    async def get_model(self, model_id: str) -> tuple[ModelRecord | None, int]:
        got = await self._etcd.get(self._key(REGISTRY + model_id))
        if got is None:
            return None, 0
        return ModelRecord.from_json(got.value), got.mod_revision

    async def update_model(
        self, model_id: str, mutate: Mutation, known: tuple[ModelRecord, int] | None = None
    ) -> tuple[ModelRecord | None, int]:
        """Read-modify-write with CAS, retried on conflict.

        ``known``: the record and mod revision the caller's view holds. The first write is tried on a
        copy of it, one round trip when the view is current; anything else the mutation decides on it
        (nothing to write, an error) is decided again on etcd's copy, since the view may lag. A CAS that
        fails returns etcd's copy, which the next try uses.

        Returns the record as written (None if deleted or absent) and the
        revision at which that state holds.
        """
        key = self._key(REGISTRY + model_id)
        fresh: tuple[ModelRecord | None, int] | None = None
        if known is not None:
            try:
                guessed = mutate(known[0].copy())
            except Exception:  # decided on a copy that may be stale: decided again below
                guessed = None
            if guessed is not None:
                written, fresh = await self._put_if_unmodified(key, guessed, known[1])
                if written is not None:
                    return guessed, written
        while True:
            current, mod_revision = fresh if fresh is not None else await self.get_model(model_id)
            fresh = None
            try:
                new = mutate(current)
            except Unchanged:
                return current, mod_revision
            if new is None and current is None:
                return None, mod_revision
            if new is None:
                op = rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))
                try:
                    response = await self._txn([modified_at(key, mod_revision)], [op], [])
                except UncertainWrite:
                    continue  # read again: applied or not, the mutation sees what is there now
                if response.succeeded:
                    return None, response.header.revision
                continue
            written, fresh = await self._put_if_unmodified(key, new, mod_revision)
            if written is not None:
                return new, written

    async def _put_if_unmodified(
        self, key: bytes, record: ModelRecord, mod_revision: int
    ) -> tuple[int | None, tuple[ModelRecord | None, int] | None]:
        """Write ``record`` if the key is still at ``mod_revision``: (the write's revision, None), or
        (None, etcd's copy now) when it is not, or (None, None) when the outcome is unknown (read again)."""
        try:
            response = await self._txn(
                [modified_at(key, mod_revision)],
                [rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=record.to_json()))],
                [rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
            )
        except UncertainWrite:
            return None, None  # applied or not, the mutation sees what is there now
        if response.succeeded:
            return response.header.revision, None
        kvs = response.responses[0].response_range.kvs
        if not kvs:
            return None, (None, 0)
        return None, (ModelRecord.from_json(kvs[0].value), kvs[0].mod_revision)

    async def update_records(
        self,
        vmodel_ids: Iterable[str],
        models_needed: Callable[[dict[str, VModelRecord | None]], Iterable[str]],
        mutate: Callable[[RecordSet], None],
    ) -> int:
        """One CAS transaction over vmodel and model records, retried on conflict.

        The vmodels are read first; ``models_needed`` names the model records to
        read with them. ``mutate`` edits the RecordSet in place (None deletes;
        raising Unchanged writes nothing). Returns the revision of the write.
        """
        while True:
            vmodels: dict[str, VModelRecord | None] = {}
            revisions: dict[bytes, int] = {}
            for vmodel_id in vmodel_ids:
                got = await self._etcd.get(self._key(VMODELS + vmodel_id))
                vmodels[vmodel_id] = VModelRecord.from_json(got.value) if got else None
                revisions[self._key(VMODELS + vmodel_id)] = got.mod_revision if got else 0
            models: dict[str, ModelRecord | None] = {}
            for model_id in set(models_needed(vmodels)):
                models[model_id], revisions[self._key(REGISTRY + model_id)] = await self.get_model(model_id)
            records = RecordSet(models=models, vmodels=vmodels)
            before = records.encoded()
            try:
                mutate(records)
            except Unchanged:
                return max(revisions.values(), default=0)
            ops = []
            for relative, value in records.encoded().items():
                if value == before.get(relative):
                    continue
                key = self._key(relative)
                ops.append(
                    rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))
                    if value is not None
                    else rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))
                )
                revisions.setdefault(key, 0)  # a record the mutation added: it must still be absent
            if not ops:
                return max(revisions.values(), default=0)
            compare = [modified_at(key, rev) for key, rev in revisions.items()]
            try:
                response = await self._txn(compare, ops, [])
            except UncertainWrite:
                continue  # read again, as after a conflict
            if response.succeeded:
                return int(response.header.revision)

    # -- instance record on the pod's lease -----------------------------------------
    async def register_instance(self, pod_id: str, record: InstanceRecord, ttl_s: int) -> None:
        self._lease = await self._etcd.grant_lease(ttl_s)
        self._instance_written = b""  # a new lease holds nothing until the put succeeds
        await self.put_instance(pod_id, record)

    async def put_instance(self, pod_id: str, record: InstanceRecord) -> None:
        assert self._lease is not None, "register_instance first"
        value = record.to_json()
        await self._etcd.put(
            rpc.PutRequest(key=self._key(INSTANCES + pod_id), value=value, lease=self._lease)
        )
        self._instance_written = value

    async def keep_alive(
        self,
        pod_id: str,
        record: Callable[[], InstanceRecord],
        ttl_s: int,
        changed: asyncio.Event,
        on_new_lease: Callable[[], Awaitable[None]],
        min_interval_s: float = INSTANCE_PUBLISH_INTERVAL_S,
    ) -> None:
        """Refresh the lease every third of its TTL, and publish the record when it changes (``changed``),
        at most once per ``min_interval_s``: a pod that loads and evicts tens of models a second writes its
        record (and every pod's watch reads it) a few times a second, not twice per load.

        A lost lease (etcd was down longer than the TTL) is granted again.
        """
        next_refresh = asyncio.get_running_loop().time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    changed.wait(), max(0.0, next_refresh - asyncio.get_running_loop().time())
                )
            changed.clear()
            try:
                assert self._lease is not None
                if asyncio.get_running_loop().time() >= next_refresh:
                    next_refresh = asyncio.get_running_loop().time() + ttl_s / 3
                    if await self._etcd.refresh_lease(self._lease) <= 0:
                        log.warning("lease expired; registering the instance again")
                        await self.register_instance(pod_id, record(), ttl_s)
                        await on_new_lease()
                        continue
                if (latest := record()).to_json() != self._instance_written:
                    await self.put_instance(pod_id, latest)
                    await asyncio.sleep(min_interval_s)  # changes meanwhile go out together, next round
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("lease keep-alive failed: %s", e)

    async def campaign(self, pod_id: str) -> bool:
        """Become the leader if nobody is: the key lives on this pod's lease, so it goes when the pod does."""
        assert self._lease is not None, "register_instance first"
        key = self._key(LEADER)
        try:
            response = await self._txn(
                compare=[created_at(key, 0)],
                success=[
                    rpc.RequestOp(
                        request_put=rpc.PutRequest(key=key, value=pod_id.encode(), lease=self._lease)
                    )
                ],
                failure=[],
            )
        except UncertainWrite:
            got = await self._etcd.get(key)
            return got is not None and got.value == pod_id.encode() and got.lease == self._lease
        return bool(response.succeeded)

    async def revoke_lease(self) -> None:
        if self._lease is not None:
            await self._etcd.revoke_lease(self._lease)
            self._lease = None
