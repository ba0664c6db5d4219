"""The etcd store against a real etcd: CAS, the watch-fed routing table, resuming after an etcd restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from harness.cluster import EtcdServer
from mesh.registry.records import InstanceRecord, ModelRecord
from mesh.registry.store import EtcdStore, Unchanged
from mesh.registry.view import RoutingTable

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[EtcdStore]:
    s = EtcdStore(etcd.endpoint, "test/svc/")
    yield s
    await s.close()


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def watched(store: EtcdStore) -> AsyncIterator[RoutingTable]:
    table = RoutingTable()
    ready = asyncio.Event()
    task = asyncio.create_task(store.run_watch(table, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield table
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_create_is_exclusive(store: EtcdStore) -> None:
    existing, created_at = await store.create_model("m", ModelRecord(type="sklearn", path="/a"))
    assert existing is None
    existing, revision = await store.create_model("m", ModelRecord(type="sklearn", path="/b"))
    assert existing is not None and existing.path == "/a"
    assert revision == created_at
    record, _ = await store.get_model("m")
    assert record is not None and record.path == "/a"


async def test_concurrent_cas_updates_lose_nothing(etcd: EtcdServer, store: EtcdStore) -> None:
    other = EtcdStore(etcd.endpoint, "test/svc/")
    await store.create_model("counted", ModelRecord(type="t"))

    def bump(record: ModelRecord | None) -> ModelRecord | None:
        assert record is not None
        record.vmodel_refcount += 1
        return record

    try:
        await asyncio.gather(*(s.update_model("counted", bump) for _ in range(15) for s in (store, other)))
    finally:
        await other.close()
    record, _ = await store.get_model("counted")
    assert record is not None and record.vmodel_refcount == 30


async def test_update_from_the_views_copy_is_one_round_trip_and_a_stale_copy_loses_nothing(
    etcd: EtcdServer, store: EtcdStore
) -> None:
    """``known`` is tried first; when etcd moved on, the failed CAS hands back etcd's copy for the retry."""
    _, created = await store.create_model("v", ModelRecord(type="t"))
    current, revision = await store.get_model("v")
    assert current is not None
    calls = {"txn": 0, "get": 0}
    txn, get = store._txn, store.get_model

    async def counting_txn(*args: object) -> object:
        calls["txn"] += 1
        return await txn(*args)  # type: ignore[arg-type]

    async def counting_get(model_id: str) -> tuple[ModelRecord | None, int]:
        calls["get"] += 1
        return await get(model_id)

    store._txn = counting_txn  # type: ignore[method-assign]
    store.get_model = counting_get  # type: ignore[method-assign]

    def bump(record: ModelRecord | None) -> ModelRecord | None:
        assert record is not None
        record.vmodel_refcount += 1
        return record

    written, at = await store.update_model("v", bump, (current, revision))
    assert written is not None and written.vmodel_refcount == 1 and at > created
    assert calls == {"txn": 1, "get": 0}
    assert current.vmodel_refcount == 0  # the caller's copy (the view's, shared) was not edited

    # The same stale copy again: etcd is at refcount 1, so the CAS fails and the retry starts from etcd's.
    written, _ = await store.update_model("v", bump, (current, revision))
    assert written is not None and written.vmodel_refcount == 2
    assert calls == {"txn": 3, "get": 0}

    # A decision other than a write on the view's copy is taken again on etcd's.
    def only_if_unused(record: ModelRecord | None) -> ModelRecord | None:
        assert record is not None
        if record.vmodel_refcount == 0:
            raise Unchanged
        record.auto_delete = True
        return record

    written, _ = await store.update_model("v", only_if_unused, (current, revision))
    assert written is not None and written.auto_delete and written.vmodel_refcount == 2
    assert calls["get"] == 1
    stored, _ = await get("v")
    assert stored == written


async def test_update_semantics(store: EtcdStore) -> None:
    assert await store.update_model("absent", lambda r: r) == (None, 0)
    await store.create_model("x", ModelRecord(type="t"))

    def unchanged(record: ModelRecord | None) -> ModelRecord | None:
        raise Unchanged

    before, revision = await store.get_model("x")
    assert await store.update_model("x", unchanged) == (before, revision)
    deleted, _ = await store.update_model("x", lambda r: None)
    assert deleted is None
    assert (await store.get_model("x"))[0] is None


async def test_watch_feeds_the_routing_table(store: EtcdStore) -> None:
    await store.create_model("before-start", ModelRecord(type="t"))
    async with watched(store) as table:
        assert table.model("before-start") is not None  # from the snapshot
        seen: list[tuple[str, bool]] = []
        table.model_listeners.append(lambda model_id, record: seen.append((model_id, record is not None)))
        _, revision = await store.create_model("after-start", ModelRecord(type="t", path="/p"))
        await table.wait_for_revision(revision)
        assert table.model("after-start") == ModelRecord(type="t", path="/p")
        _, revision = await store.update_model("after-start", lambda r: None)
        await table.wait_for_revision(revision)
        assert table.model("after-start") is None
        assert seen == [("after-start", True), ("after-start", False)]
        await store.register_instance("pod-1", InstanceRecord(address="127.0.0.1:1"), ttl_s=5)
        await eventually(lambda: table.instance("pod-1") == InstanceRecord(address="127.0.0.1:1"))
        await store.revoke_lease()  # the lease takes the instance record with it
        await eventually(lambda: table.instance("pod-1") is None)


async def test_snapshot_reads_pages_at_one_revision(store: EtcdStore) -> None:
    for i in range(25):
        await store.create_model(f"m{i:02d}", ModelRecord(type="t", path=f"/p{i}"))
    revision, items = await store.snapshot(page_size=7)
    assert sorted(key for key, _, _ in items) == sorted(f"registry/m{i:02d}" for i in range(25))
    # a write after the first page is not in this snapshot, whatever page it would fall in
    first_revision, _ = await store.snapshot(page_size=1000)
    assert first_revision == revision
    _, latest = await store.update_model("m24", lambda r: ModelRecord(type="t", path="/changed"))
    stale_revision, stale = await store.snapshot(page_size=7)
    assert stale_revision == latest and dict((k, v) for k, v, _ in stale)["registry/m24"] == (
        ModelRecord(type="t", path="/changed").to_json()
    )


async def test_a_registry_larger_than_one_grpc_message_loads(store: EtcdStore) -> None:
    """A pod starting on a registry of 70 MB (a page of 1000 such records is over any message limit)."""
    path = "/" + "x" * 100_000
    count = 700
    for start in range(0, count, 50):
        await asyncio.gather(
            *(
                store.create_model(f"big-{i}", ModelRecord(type="t", path=path))
                for i in range(start, start + 50)
            )
        )
    async with watched(store) as table:
        assert all(table.model(f"big-{i}") == ModelRecord(type="t", path=path) for i in range(count))


async def test_watch_resumes_after_etcd_restart_without_missing_events(
    etcd: EtcdServer, store: EtcdStore
) -> None:
    async with watched(store) as table:
        _, revision = await store.create_model("one", ModelRecord(type="t"))
        await table.wait_for_revision(revision)
        etcd.restart()
        writer = EtcdStore(etcd.endpoint, "test/svc/")
        try:
            # written as soon as etcd is back, most likely before the watch has reconnected
            await writer.create_model("two", ModelRecord(type="t"))
            _, revision = await writer.update_model("one", lambda r: None)
        finally:
            await writer.close()
        await table.wait_for_revision(revision, timeout_s=15)
        assert table.model("two") is not None
        assert table.model("one") is None


async def test_a_burst_of_instance_changes_is_written_a_few_times_and_the_last_one_lands(
    store: EtcdStore,
) -> None:
    """Keep-alive publishes the instance record at most once per interval: 60 changes within about half a
    second are a handful of etcd writes, and the record etcd ends with is the latest."""
    current = InstanceRecord(address="127.0.0.1:1")
    await store.register_instance("pod-1", current, ttl_s=30)
    changed = asyncio.Event()

    async def no_new_lease() -> None:
        raise AssertionError("the lease is not lost here")

    keeping = asyncio.create_task(
        store.keep_alive("pod-1", lambda: current, 30, changed, no_new_lease, min_interval_s=0.2)
    )
    key = store._key("instances/pod-1")
    try:
        first = await store._etcd.get(key)
        assert first is not None and first.version == 1
        for used in range(1, 61):
            current = InstanceRecord(address="127.0.0.1:1", used_bytes=used)
            changed.set()
            await asyncio.sleep(0.008)

        async def written() -> Any:
            kv = await store._etcd.get(key)
            assert kv is not None
            return kv

        deadline = asyncio.get_running_loop().time() + 5
        while InstanceRecord.from_json((kv := await written()).value).used_bytes != 60:
            assert asyncio.get_running_loop().time() < deadline, "the latest record never reached etcd"
            await asyncio.sleep(0.05)
        assert 2 <= kv.version <= 1 + 6, f"{kv.version - 1} writes for 60 changes"
    finally:
        keeping.cancel()
        await asyncio.gather(keeping, return_exceptions=True)
