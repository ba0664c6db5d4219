"""A miss on this pod's view is confirmed against etcd before NOT_FOUND: a model registered through another
pod a moment ago is found even when this pod's watch has not delivered it yet (real etcd)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from harness.cluster import EtcdServer
from mesh.errors import MeshError
from mesh.registry.records import ModelRecord
from mesh.registry.store import EtcdStore
from mesh.registry.view import RoutingTable
from mesh.routing.router import Router
from mesh.routing.target import RequestTarget, TargetKind

pytestmark = pytest.mark.integration

FRESH = RequestTarget(TargetKind.NAME, "fresh")


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[EtcdStore]:
    s = EtcdStore(etcd.endpoint, "view/svc/", timeout_s=2.0)
    yield s
    await s.close()


def router(table: RoutingTable, store: EtcdStore) -> Router:
    # resolution reads only the table and the revision source: the serving collaborators are not used
    unused: Any = None
    return Router("pod-a", table, unused, unused, unused, 60.0, 3, registry_revision=store.current_revision)


@contextlib.asynccontextmanager
async def watch(store: EtcdStore, table: RoutingTable) -> AsyncIterator[None]:
    task = asyncio.create_task(store.run_watch(table, asyncio.Event()))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_current_revision_is_etcds_latest(store: EtcdStore) -> None:
    _, written = await store.create_model("m", ModelRecord(type="sklearn"))
    assert await store.current_revision() == written


async def test_a_model_the_watch_has_not_delivered_yet_is_found(store: EtcdStore) -> None:
    await store.create_model("fresh", ModelRecord(type="sklearn"))
    table = RoutingTable()  # the watch starts late: this pod's view lags the registration
    mesh = router(table, store)
    with pytest.raises(MeshError):
        mesh.model_id(FRESH)  # the view alone does not know the model
    async with watch(store, table):
        assert await mesh.model_id_after_miss(FRESH) == "fresh"


async def test_an_unknown_model_is_still_not_found(store: EtcdStore) -> None:
    table = RoutingTable()
    mesh = router(table, store)
    async with watch(store, table):
        with pytest.raises(MeshError) as e:
            await mesh.model_id_after_miss(RequestTarget(TargetKind.NAME, "never-registered"))
    assert e.value.code is grpc.StatusCode.NOT_FOUND


async def test_a_view_that_cannot_catch_up_answers_not_found_in_bounded_time(store: EtcdStore) -> None:
    await store.create_model("fresh", ModelRecord(type="sklearn"))
    mesh = router(RoutingTable(), store)  # no watch at all: the view never reaches etcd's revision
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await mesh.view_current(timeout_s=0.3)
    with pytest.raises(MeshError) as e:
        await mesh.model_id_after_miss(FRESH)
    assert e.value.code is grpc.StatusCode.NOT_FOUND
    assert loop.time() - started < 10


async def test_etcd_down_leaves_the_answer_to_the_view(etcd: EtcdServer, store: EtcdStore) -> None:
    table = RoutingTable()
    mesh = router(table, store)
    etcd.stop()
    with pytest.raises(MeshError) as e:
        await mesh.model_id_after_miss(FRESH)
    assert e.value.code is grpc.StatusCode.NOT_FOUND
