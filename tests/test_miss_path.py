"""The loader's miss path (mesh/models/local.py) with a fake store and runtime: what a waiting request pays.

The claim runs beside the load, victims unload after it within the unload buffer, and the requests are
released before the holder record is written. Each test holds one step back with an event and checks what
has and has not happened meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest

from mesh.errors import MeshError
from mesh.models.cache import ModelCache
from mesh.models.local import LoadClaimed, ModelLoader, now_ms
from mesh.registry.records import ModelRecord
from mesh.registry.store import Unchanged
from mesh.registry.view import REGISTRY, RoutingTable

SIZE = 100


@dataclass
class Runtime:
    """Records every call in order; a load or unload of a model in ``hold`` waits for its event."""

    calls: list[str] = field(default_factory=list)
    hold: dict[str, asyncio.Event] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # what a load measures, when not SIZE

    async def predict_size(
        self, model_id: str, type_: str, path: str, key: str, timeout_s: float = 5.0
    ) -> int:
        return SIZE

    async def load(self, model_id: str, type_: str, path: str, key: str, timeout_s: float) -> int:
        self.calls.append(f"load {model_id}")
        if (held := self.hold.get(f"load {model_id}")) is not None:
            await held.wait()
        self.calls.append(f"loaded {model_id}")
        return self.sizes.get(model_id, SIZE)

    async def unload(self, model_id: str) -> None:
        self.calls.append(f"unload {model_id}")
        if (held := self.hold.get(f"unload {model_id}")) is not None:
            await held.wait()
        self.calls.append(f"unloaded {model_id}")

    async def model_ready(self, model_id: str) -> bool:
        return True


class Store:
    """Registry writes applied to the table as the watch would; a write for a model in ``hold`` waits."""

    def __init__(self, table: RoutingTable) -> None:
        self.table = table
        self.revision = 1
        self.hold: dict[str, asyncio.Event] = {}
        self.writes: list[str] = []
        self.hold_publish: asyncio.Event | None = None  # a write naming a holder waits for it

    async def update_model(
        self,
        model_id: str,
        mutate: Callable[[ModelRecord | None], ModelRecord | None],
        known: tuple[ModelRecord, int] | None = None,
    ) -> tuple[ModelRecord | None, int]:
        if (held := self.hold.get(model_id)) is not None:
            await held.wait()
        current = self.table.model(model_id)
        try:
            new = mutate(current.copy() if current is not None else None)
        except Unchanged:
            return current, self.table.revision
        assert new is not None
        if new.holders and self.hold_publish is not None:
            await self.hold_publish.wait()
        self.writes.append(f"{model_id} holders={sorted(new.holders)} loading={sorted(new.loading)}")
        self.revision += 1
        self.table.apply_put(REGISTRY + model_id, new.to_json(), self.revision)
        await self.table.advance(self.revision)
        return new, self.revision


async def loader_with(
    models: list[str], capacity: int, unload_buffer: int
) -> tuple[ModelLoader, Runtime, Store, RoutingTable]:
    table = RoutingTable()
    for model_id in models:
        table.apply_put(REGISTRY + model_id, ModelRecord(type="sklearn", path="/m").to_json(), 1)
    await table.advance(1)
    runtime, store = Runtime(), Store(table)
    loader = ModelLoader(
        "pod-a",
        store,  # type: ignore[arg-type]
        table,
        runtime,  # type: ignore[arg-type]
        ModelCache(capacity, unload_buffer_bytes=unload_buffer),
        load_timeout_s=10,
        failure_expiry_s=60,
    )
    return loader, runtime, store, table


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """A poll with a deadline: the fakes' state has no event of its own to wait on."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0)


async def test_a_full_pods_miss_loads_first_and_unloads_its_victim_after() -> None:
    loader, runtime, _, table = await loader_with(["old", "new"], capacity=2 * SIZE, unload_buffer=SIZE)
    await loader.ensure_loaded("old")  # fills the room models may take (capacity less the buffer)
    runtime.calls.clear()
    runtime.hold["load new"] = asyncio.Event()
    miss = asyncio.create_task(loader.ensure_loaded("new"))
    # the victim leaves the registry at once, but stays in the runtime while the load runs
    await until(lambda: "load new" in runtime.calls and not (table.model("old") or ModelRecord("")).holders)
    await asyncio.sleep(0.01)
    assert runtime.calls == ["load new"]
    runtime.hold["load new"].set()
    await miss
    await until(lambda: "unloaded old" in runtime.calls)
    assert runtime.calls == ["load new", "loaded new", "unload old", "unloaded old"]
    assert loader.cache.used == SIZE and loader.cache.used <= loader.cache.capacity


async def test_without_a_buffer_the_victim_unloads_before_the_load() -> None:
    loader, runtime, _, _ = await loader_with(["old", "new"], capacity=SIZE, unload_buffer=0)
    await loader.ensure_loaded("old")
    runtime.calls.clear()
    runtime.hold["unload old"] = asyncio.Event()
    miss = asyncio.create_task(loader.ensure_loaded("new"))
    await until(lambda: "unload old" in runtime.calls)
    await asyncio.sleep(0.01)
    assert runtime.calls == ["unload old"]  # the load waits: the runtime would hold twice its capacity
    runtime.hold["unload old"].set()
    await miss
    assert runtime.calls == ["unload old", "unloaded old", "load new", "loaded new"]


async def test_the_runtime_never_holds_more_than_its_capacity_under_concurrent_misses() -> None:
    models = [f"m{i}" for i in range(12)]
    loader, runtime, _, _ = await loader_with(models, capacity=4 * SIZE, unload_buffer=SIZE)
    held: set[str] = set()
    peak = 0
    loads, unloads = runtime.load, runtime.unload

    async def counted_load(model_id: str, *args: object, **kwargs: object) -> int:
        nonlocal peak
        held.add(model_id)
        peak = max(peak, len(held))
        return await loads(model_id, *args, **kwargs)  # type: ignore[arg-type]

    async def counted_unload(model_id: str) -> None:
        await asyncio.sleep(0.001 * (hash(model_id) % 3))  # unloads of different lengths
        await unloads(model_id)
        held.discard(model_id)

    runtime.load, runtime.unload = counted_load, counted_unload  # type: ignore[method-assign]
    for start in range(0, len(models), 3):
        await asyncio.gather(*(loader.ensure_loaded(m) for m in models[start : start + 3]))
    await until(lambda: not loader._unloads)
    assert peak * SIZE <= loader.cache.capacity
    assert len(held) == 3  # the models fill the capacity less the buffer


async def test_requests_are_released_before_the_holder_record_is_written() -> None:
    loader, _, store, table = await loader_with(["m"], capacity=4 * SIZE, unload_buffer=0)
    store.hold_publish = asyncio.Event()
    await asyncio.wait_for(loader.ensure_loaded("m"), 5)  # returns although the holder write is held
    record = table.model("m")
    assert loader.is_loaded("m") and record is not None
    assert set(record.loading) == {"pod-a"} and record.holders == {}
    assert store.writes == ["m holders=[] loading=['pod-a']"]
    store.hold_publish.set()
    await until(lambda: "pod-a" in (table.model("m") or ModelRecord("")).holders)
    assert store.writes == ["m holders=[] loading=['pod-a']", "m holders=['pod-a'] loading=[]"]


async def test_the_claim_is_in_flight_while_the_runtime_loads() -> None:
    loader, runtime, store, _ = await loader_with(["m"], capacity=4 * SIZE, unload_buffer=0)
    store.hold["m"] = asyncio.Event()  # etcd slow to answer the claim
    miss = asyncio.create_task(loader.ensure_loaded("m"))
    await until(lambda: "loaded m" in runtime.calls)
    assert not miss.done()  # served only once the claim has landed
    store.hold.pop("m").set()
    await miss
    assert loader.is_loaded("m")


async def test_a_lost_claim_unloads_what_was_loaded_and_names_the_holder() -> None:
    loader, runtime, store, table = await loader_with(["m"], capacity=4 * SIZE, unload_buffer=0)
    store.hold["m"] = asyncio.Event()
    miss = asyncio.create_task(loader.ensure_loaded("m"))
    await until(lambda: "loaded m" in runtime.calls)
    # meanwhile a live peer claimed the model
    table.apply_put("instances/pod-b", b'{"address": "127.0.0.1:1"}', store.revision + 1)
    rival = ModelRecord(type="sklearn", path="/m", loading={"pod-b": 1})
    table.apply_put(REGISTRY + "m", rival.to_json(), store.revision + 1)
    store.hold.pop("m").set()
    with pytest.raises(LoadClaimed) as claimed:
        await miss
    assert claimed.value.holder == "pod-b"
    assert runtime.calls[-2:] == ["unload m", "unloaded m"]
    assert not loader.is_loaded("m") and loader.cache.used == 0
    record = table.model("m")
    assert record is not None and set(record.loading) == {"pod-b"} and not record.holders


async def test_a_model_unregistered_during_its_load_is_unloaded_and_not_found() -> None:
    loader, runtime, store, table = await loader_with(["m"], capacity=4 * SIZE, unload_buffer=0)
    store.hold["m"] = asyncio.Event()
    runtime.hold["load m"] = asyncio.Event()
    miss = asyncio.create_task(loader.ensure_loaded("m"))
    await until(lambda: "load m" in runtime.calls)
    table.apply_delete(REGISTRY + "m")
    store.hold.pop("m").set()
    runtime.hold["load m"].set()
    with pytest.raises(MeshError) as failed:
        await miss
    assert failed.value.code == grpc.StatusCode.NOT_FOUND
    await until(lambda: "unloaded m" in runtime.calls)
    assert loader.cache.used == 0


def predictions_asked(runtime: Runtime) -> list[str]:
    """The models the runtime is asked to predict a size for, from now on."""
    predicted: list[str] = []
    ask = runtime.predict_size

    async def counted(model_id: str, type_: str, path: str, key: str, timeout_s: float = 5.0) -> int:
        predicted.append(model_id)
        return await ask(model_id, type_, path, key)

    runtime.predict_size = counted  # type: ignore[method-assign]
    return predicted


async def test_a_model_loaded_here_before_comes_back_without_a_size_prediction() -> None:
    loader, runtime, _, table = await loader_with(["a", "b"], capacity=SIZE, unload_buffer=0)
    predicted = predictions_asked(runtime)
    measured = {"a": SIZE - 10, "b": SIZE - 20}
    load = runtime.load

    async def measuring(model_id: str, type_: str, path: str, key: str, timeout_s: float) -> int:
        await load(model_id, type_, path, key, timeout_s)
        return measured[model_id]

    runtime.load = measuring  # type: ignore[method-assign]
    await loader.ensure_loaded("a")
    await loader.ensure_loaded("b")  # evicts a (room for one)
    await until(lambda: "a" not in loader.cache)
    await loader.ensure_loaded("a")  # loaded here before: its measured size, no prediction
    assert predicted == ["a", "b"]
    assert loader.cache.entry("a") is not None and loader.cache.entry("a").size == SIZE - 10
    # other files under the same id: asked again
    table.apply_put(REGISTRY + "b", ModelRecord(type="sklearn", path="/other").to_json(), 99)
    await loader.ensure_loaded("b")
    assert predicted == ["a", "b", "b"]


async def test_the_holder_record_carries_the_measured_size_and_a_peers_measure_spares_the_prediction() -> (
    None
):
    loader, runtime, _, table = await loader_with(["a"], capacity=SIZE, unload_buffer=0)
    predicted = predictions_asked(runtime)
    # pod-x loaded "b" before and measured it: the record says so
    measured_elsewhere = ModelRecord(type="sklearn", path="/m", size_bytes=SIZE - 30)
    table.apply_put(REGISTRY + "b", measured_elsewhere.to_json(), 2)
    await table.advance(2)
    await loader.ensure_loaded("b")
    assert predicted == []
    await until(lambda: "pod-a" in (table.model("b") or ModelRecord("")).holders)
    # the runtime's answer is what the holder record carries now (the fake runtime answers SIZE)
    record = table.model("b")
    assert record is not None and record.size_bytes == SIZE
    await loader.ensure_loaded("a")  # never measured anywhere: the runtime predicts it
    assert predicted == ["a"]
    await until(lambda: (table.model("a") or ModelRecord("")).size_bytes == SIZE)


async def test_a_copy_etcd_did_not_hear_of_keeps_serving_and_is_published_when_etcd_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mesh.errors import StoreError
    from mesh.models import local

    monkeypatch.setattr(local, "PUBLISH_RETRY_FIRST_S", 0.01)
    loader, runtime, store, table = await loader_with(["m"], capacity=2 * SIZE, unload_buffer=0)
    failures = {"left": 2}
    write = store.update_model

    async def flaky(model_id: str, mutate: Callable[..., ModelRecord | None], known: object = None) -> object:
        current = table.model(model_id)
        probe = mutate(current.copy()) if current is not None else None
        if probe is not None and probe.holders and failures["left"]:
            failures["left"] -= 1
            raise StoreError("etcd down")
        return await write(model_id, mutate)

    store.update_model = flaky  # type: ignore[method-assign]
    await loader.ensure_loaded("m")  # served although its holder record could not be written
    assert loader.is_loaded("m")
    record = table.model("m")
    assert record is not None and "pod-a" not in record.holders
    await until(lambda: (r := table.model("m")) is not None and "pod-a" in r.holders)
    assert failures["left"] == 0
    assert not [c for c in runtime.calls if c.startswith("unload")]  # the copy was never dropped
    assert loader.is_loaded("m")


async def test_a_model_is_not_evicted_between_its_load_and_its_waiting_requests() -> None:
    """A load that measured more than predicted makes room for the difference after the runtime answered.
    Meanwhile another miss must not choose the model itself as its victim: its waiting requests would find it
    gone (the churn scenario saw the runtime's NOT_FOUND, then an INTERNAL error from the reload)."""
    loader, runtime, _, _ = await loader_with(["a", "b", "big", "c"], capacity=4 * SIZE, unload_buffer=0)
    await loader.ensure_loaded("a")
    await loader.ensure_loaded("b")
    loader.cache.touch("b", now_ms() + 60_000)  # b is used last: big is the next to go (LRU), once loaded
    runtime.sizes["big"] = 3 * SIZE  # predicted: SIZE
    for victim in ("a", "b"):
        runtime.hold[f"unload {victim}"] = asyncio.Event()
    big = asyncio.create_task(loader.ensure_loaded("big"))
    await until(lambda: "loaded big" in runtime.calls and loader._unloads.keys() & {"a", "b"} != set())
    assert not big.done()  # making room for what it measured: waiting for that unload
    c = asyncio.create_task(loader.ensure_loaded("c"))  # needs room too, while big has not served yet
    await until(lambda: len(loader._unloads) == 2 or c.done())
    for held in runtime.hold.values():
        held.set()
    await asyncio.wait_for(asyncio.gather(big, c), 5)
    assert loader.is_loaded("big") and loader.is_loaded("c")
    assert "unload big" not in runtime.calls


async def test_dropping_a_copy_leaves_a_new_load_of_the_model_alone() -> None:
    """A copy reported lost, or idle, while the model loads again: the load is not the copy, and goes on."""
    loader, runtime, _, _ = await loader_with(["m"], capacity=4 * SIZE, unload_buffer=0)
    runtime.hold["load m"] = asyncio.Event()
    miss = asyncio.create_task(loader.ensure_loaded("m"))
    await until(lambda: "load m" in runtime.calls)
    await loader.unload("m", reason="lost")
    runtime.hold["load m"].set()
    await asyncio.wait_for(miss, 5)
    assert loader.is_loaded("m")
    assert "unload m" not in runtime.calls
