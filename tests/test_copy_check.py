"""The copy check (mesh/models/copies.py) and the loader's use of it, with a fake runtime: a runtime's "not
found" drops a copy only when the runtime's own ModelReady says it lost the model, and one ModelReady
answers every request that saw the "not found" at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from mesh.models.cache import ModelCache
from mesh.models.copies import REMEMBERED_ANSWERS, CopyCheck
from mesh.models.local import ModelLoader
from mesh.registry.records import ModelRecord
from mesh.registry.store import Unchanged
from mesh.registry.view import REGISTRY, RoutingTable

CONCURRENT = 50
BAD_VERSION = "NOT_FOUND Model m with version 7 not found"  # what a request for a missing version gets
LOST = "NOT_FOUND Model m with version  not found"  # what any request gets once the runtime lost the model


@dataclass
class FakeRuntime:
    """ModelReady answers ``ready`` once ``answer`` is set (so callers pile up on one question)."""

    ready: bool = True
    fail: bool = False  # ModelReady raises, as MLServer's UNKNOWN for a model it does not have
    answer: asyncio.Event = field(default_factory=asyncio.Event)
    questions: list[str] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)

    async def model_ready(self, model_id: str) -> bool:
        self.questions.append(model_id)
        await self.answer.wait()
        if self.fail:
            raise RuntimeError("Unexpected <class 'mlserver.errors.ModelNotFound'>")
        return self.ready

    async def predict_size(
        self, model_id: str, type_: str, path: str, key: str, timeout_s: float = 5.0
    ) -> int:
        return 1000

    async def load(self, model_id: str, type_: str, path: str, key: str, timeout_s: float) -> int:
        self.loads.append(model_id)
        return 1000

    async def unload(self, model_id: str) -> None:
        self.unloads.append(model_id)


class FakeStore:
    """Registry writes applied straight to the table, as the watch would."""

    def __init__(self, table: RoutingTable) -> None:
        self._table = table
        self._revision = 0

    async def update_model(
        self,
        model_id: str,
        mutate: Callable[[ModelRecord | None], ModelRecord | None],
        known: tuple[ModelRecord, int] | None = None,
    ) -> tuple[ModelRecord | None, int]:
        current = self._table.model(model_id)
        try:
            new = mutate(current)
        except Unchanged:
            return current, self._table.revision
        assert new is not None  # the loader never deletes records
        self._revision += 1
        self._table.apply_put(REGISTRY + model_id, new.to_json(), self._revision)
        await self._table.advance(self._revision)
        return new, self._revision


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# -- CopyCheck: single flight, verdicts, rate limit ------------------------------------------------
async def test_concurrent_callers_share_one_question_and_ready_means_not_lost() -> None:
    runtime = FakeRuntime(ready=True)
    check = CopyCheck(runtime.model_ready)
    callers = [asyncio.create_task(check.lost("m", 1, BAD_VERSION)) for _ in range(CONCURRENT)]
    await settle()
    assert runtime.questions == ["m"]  # every caller waits on the one question
    runtime.answer.set()
    assert await asyncio.gather(*callers) == [False] * CONCURRENT
    assert check.questions == 1


@pytest.mark.parametrize("fail", [False, True], ids=["ready-false", "modelready-error"])
async def test_not_ready_or_an_error_means_lost_and_stays_lost_for_that_copy(fail: bool) -> None:
    runtime = FakeRuntime(ready=False, fail=fail)
    runtime.answer.set()
    check = CopyCheck(runtime.model_ready)
    assert (
        await asyncio.gather(*(check.lost("m", 1, BAD_VERSION) for _ in range(CONCURRENT)))
        == [True] * CONCURRENT
    )
    assert await check.lost("m", 1, BAD_VERSION)  # no second question for a copy found lost
    assert runtime.questions == ["m"]


async def test_the_same_answer_for_a_ready_copy_is_asked_about_again_only_after_a_second() -> None:
    runtime = FakeRuntime(ready=True)
    runtime.answer.set()
    clock = Clock()
    check = CopyCheck(runtime.model_ready, recheck_after_s=1.0, clock=clock)
    assert not await check.lost("m", 1, BAD_VERSION)
    clock.now += 0.9
    for _ in range(100):  # a stream of bad-version requests within the second
        assert not await check.lost("m", 1, BAD_VERSION)
    assert len(runtime.questions) == 1
    clock.now += 0.2
    assert not await check.lost("m", 1, BAD_VERSION)
    assert len(runtime.questions) == 2
    clock.now += 0.2
    runtime.ready = False  # the runtime lost it after the second question: still, once per second at most
    assert not await check.lost("m", 1, BAD_VERSION)
    assert len(runtime.questions) == 2
    clock.now += 1.0
    assert await check.lost("m", 1, BAD_VERSION)
    assert len(runtime.questions) == 3


async def test_another_answer_is_asked_about_at_once_so_a_real_loss_is_not_hidden() -> None:
    runtime = FakeRuntime(ready=True)
    runtime.answer.set()
    clock = Clock()
    check = CopyCheck(runtime.model_ready, recheck_after_s=1.0, clock=clock)
    assert not await check.lost("m", 1, BAD_VERSION)
    runtime.ready = False  # a moment later the runtime restarts without the model
    clock.now += 0.1
    assert await check.lost("m", 1, LOST)  # a good request's "not found": asked, and found lost
    assert await check.lost("m", 1, BAD_VERSION)  # and the copy stays lost for everyone
    assert len(runtime.questions) == 2


async def test_the_answers_remembered_per_copy_are_bounded() -> None:
    runtime = FakeRuntime(ready=True)
    runtime.answer.set()
    check = CopyCheck(runtime.model_ready, clock=Clock())
    versions = [f"NOT_FOUND Model m with version {v} not found" for v in range(REMEMBERED_ANSWERS + 1)]
    for said in versions:  # every new answer is one question
        assert not await check.lost("m", 1, said)
    assert len(runtime.questions) == REMEMBERED_ANSWERS + 1
    assert not await check.lost("m", 1, versions[-1])  # remembered
    assert not await check.lost("m", 1, versions[0])  # forgotten first: asked again
    assert len(runtime.questions) == REMEMBERED_ANSWERS + 2


async def test_a_new_copy_is_asked_about_at_once_and_models_are_separate() -> None:
    runtime = FakeRuntime(ready=True)
    runtime.answer.set()
    check = CopyCheck(runtime.model_ready, clock=Clock())
    assert not await check.lost("m", 1, BAD_VERSION)
    assert not await check.lost("m", 2, BAD_VERSION)  # another load of the model: its own question
    assert not await check.lost("other", 3, BAD_VERSION)
    assert runtime.questions == ["m", "m", "other"]
    check.forget("m")
    assert not await check.lost("m", 2, BAD_VERSION)
    assert runtime.questions == ["m", "m", "other", "m"]


async def test_a_caller_that_gives_up_does_not_cancel_the_question_for_the_others() -> None:
    runtime = FakeRuntime(ready=True)
    check = CopyCheck(runtime.model_ready)
    impatient = asyncio.create_task(check.lost("m", 1, BAD_VERSION))
    patient = asyncio.create_task(check.lost("m", 1, BAD_VERSION))
    await settle()
    impatient.cancel()  # its client's deadline passed
    await settle()
    runtime.answer.set()
    assert await patient is False
    assert impatient.cancelled()
    assert runtime.questions == ["m"]


# -- the loader: what a verdict does to the copy ----------------------------------------------------
async def loader_holding(model_id: str, runtime: FakeRuntime) -> tuple[ModelLoader, RoutingTable]:
    table = RoutingTable()
    table.apply_put(REGISTRY + model_id, ModelRecord(type="sklearn", path="/m").to_json(), 1)
    await table.advance(1)
    loader = ModelLoader(
        "pod-a",
        FakeStore(table),  # type: ignore[arg-type]
        table,
        runtime,  # type: ignore[arg-type]
        ModelCache(1 << 20),
        load_timeout_s=10,
        failure_expiry_s=60,
    )
    await loader.ensure_loaded(model_id)
    return loader, table


def holders(table: RoutingTable, model_id: str) -> set[str]:
    record = table.model(model_id)
    assert record is not None
    return set(record.holders)


async def test_ready_keeps_the_copy_and_lost_drops_it_once_however_many_requests_saw_it() -> None:
    runtime = FakeRuntime(ready=True)
    loader, table = await loader_holding("m", runtime)
    generation = loader.copy_generation("m")
    assert generation is not None

    # the runtime has the model: every "not found" was the requests' own; nothing changes
    callers = [asyncio.create_task(loader.copy_lost("m", generation, BAD_VERSION)) for _ in range(CONCURRENT)]
    await settle()
    runtime.answer.set()
    assert await asyncio.gather(*callers) == [False] * CONCURRENT
    assert loader.is_loaded("m") and holders(table, "m") == {"pod-a"}
    assert runtime.questions == ["m"] and runtime.unloads == []
    assert loader.copy_generation("m") == generation

    # the runtime lost it: every request's "not found" now reads so; one question, one drop
    runtime.ready, runtime.answer = False, asyncio.Event()
    callers = [asyncio.create_task(loader.copy_lost("m", generation, LOST)) for _ in range(CONCURRENT)]
    await settle()
    runtime.answer.set()
    assert await asyncio.gather(*callers) == [True] * CONCURRENT
    assert runtime.questions == ["m", "m"]
    assert runtime.unloads == ["m"]  # dropped once, not once per request
    assert not loader.is_loaded("m") and holders(table, "m") == set()
    assert loader.copy_generation("m") is None

    # reloaded: a new copy; a late "not found" from the old one drops nothing and asks nothing
    await loader.ensure_loaded("m")
    reloaded = loader.copy_generation("m")
    assert reloaded is not None and reloaded != generation
    assert await loader.copy_lost("m", generation, LOST)
    assert loader.is_loaded("m") and runtime.unloads == ["m"] and len(runtime.questions) == 2
    assert runtime.loads == ["m", "m"]
    await loader.close()
