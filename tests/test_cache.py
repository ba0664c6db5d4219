"""Byte-weighted LRU accounting (pure)."""

from __future__ import annotations

import pytest

from mesh.cache import EvictionPolicy, ModelCache


def loaded(cache: ModelCache, model_id: str, size: int, last_used: int) -> None:
    cache.start_load(model_id, size, last_used)
    cache.finish_load(model_id, size)


def test_fits_without_eviction() -> None:
    cache = ModelCache(100)
    loaded(cache, "a", 40, 1)
    assert cache.plan_eviction(60) == []
    assert cache.used == 40 and cache.free == 60


def test_evicts_least_recently_used_first_until_enough_bytes() -> None:
    cache = ModelCache(100)
    loaded(cache, "a", 30, 1)
    loaded(cache, "b", 30, 2)
    loaded(cache, "c", 30, 3)
    assert cache.plan_eviction(40) == ["a"]
    assert cache.plan_eviction(60) == ["a", "b"]
    cache.touch("a", 10)
    assert cache.plan_eviction(40) == ["b"]


def test_size_weighting_can_require_several_small_victims() -> None:
    cache = ModelCache(100)
    loaded(cache, "s1", 10, 1)
    loaded(cache, "s2", 10, 2)
    loaded(cache, "big", 70, 3)
    assert cache.plan_eviction(25) == ["s1", "s2"]


def test_loading_and_pinned_models_are_never_victims() -> None:
    cache = ModelCache(100)
    loaded(cache, "old", 40, 1)
    cache.start_load("loading", 40, 0)
    loaded(cache, "new", 20, 5)
    assert cache.plan_eviction(20, pinned=frozenset({"old"})) == ["new"]
    assert cache.plan_eviction(70, pinned=frozenset({"old"})) is None


def test_impossible_request_returns_none() -> None:
    cache = ModelCache(100)
    loaded(cache, "a", 50, 1)
    assert cache.plan_eviction(101) is None


def test_reservation_counts_before_load_finishes_and_is_resized() -> None:
    cache = ModelCache(100)
    cache.start_load("m", 30, 1)
    assert cache.used == 30
    cache.finish_load("m", 55)
    assert cache.used == 55
    assert cache.entry("m") is not None and not cache.entry("m").loading  # type: ignore[union-attr]


def test_unloading_bytes_stay_reserved_until_unload_returns() -> None:
    cache = ModelCache(100)
    loaded(cache, "a", 60, 1)
    cache.start_unload("a")
    assert "a" not in cache
    assert cache.used == 60  # still held by the runtime
    assert cache.plan_eviction(50) is None  # nothing left to evict, bytes not yet back
    cache.finish_unload("a")
    assert cache.used == 0


def test_over_capacity_plan_with_zero_needed() -> None:
    cache = ModelCache(100)
    loaded(cache, "a", 60, 1)
    cache.start_load("b", 60, 2)  # reservation pushes usage past capacity
    assert cache.plan_eviction(0) == ["a"]


def test_touch_never_moves_back_in_time_and_ignores_unknown() -> None:
    cache = ModelCache(100)
    loaded(cache, "a", 10, 50)
    cache.touch("a", 10)
    assert cache.entry("a").last_used_ms == 50  # type: ignore[union-attr]
    cache.touch("missing", 99)
    assert "missing" not in cache


def test_oldest_last_used_ignores_loading() -> None:
    cache = ModelCache(100)
    assert cache.oldest_last_used_ms() is None
    cache.start_load("x", 10, 1)
    assert cache.oldest_last_used_ms() is None
    loaded(cache, "y", 10, 7)
    loaded(cache, "z", 10, 3)
    assert cache.oldest_last_used_ms() == 3


@pytest.mark.parametrize("order", [["a", "b", "c"], ["c", "b", "a"], ["b", "a", "c"]])
def test_eviction_order_follows_use_order(order: list[str]) -> None:
    cache = ModelCache(30)
    for t, model_id in enumerate(["a", "b", "c"]):
        loaded(cache, model_id, 10, t)
    for t, model_id in enumerate(order, start=10):
        cache.touch(model_id, t)
    assert cache.plan_eviction(30) == order


def test_backdated_load_only_evicts_models_used_before_its_time() -> None:
    cache = ModelCache(100)
    loaded(cache, "old", 50, 10)
    loaded(cache, "recent", 50, 1000)
    assert cache.plan_eviction(50, used_before_ms=500) == ["old"]
    assert cache.plan_eviction(100, used_before_ms=500) is None  # "recent" must stay
    assert cache.plan_eviction(100, used_before_ms=None) == ["old", "recent"]


def test_gdsf_keeps_what_is_used_often_per_byte() -> None:
    cache = ModelCache(100, EvictionPolicy.GDSF)
    loaded(cache, "small-hot", 10, 1)
    for t in range(2, 6):
        cache.touch("small-hot", t)  # five uses of 10 bytes
    loaded(cache, "big-cold", 80, 10)  # used once, most recently
    assert cache.plan_eviction(20) == ["big-cold"]  # LRU would evict small-hot
    lru = ModelCache(100)
    loaded(lru, "small-hot", 10, 1)
    for t in range(2, 6):
        lru.touch("small-hot", t)
    loaded(lru, "big-cold", 80, 10)
    assert lru.plan_eviction(20) == ["small-hot"]


def test_gdsf_ages_models_that_stop_being_used() -> None:
    cache = ModelCache(100, EvictionPolicy.GDSF)
    loaded(cache, "old-favourite", 50, 1)
    for t in range(2, 5):
        cache.touch("old-favourite", t)  # priority 4/50
    loaded(cache, "a", 50, 5)
    cache.start_unload("a")  # evicting sets the inflation to a's priority (1/50)
    cache.finish_unload("a")
    assert "old-favourite" in cache
    for t in range(6, 20):  # a stream of models used once each
        loaded(cache, f"new-{t}", 50, t)
        victims = cache.plan_eviction(0)
        assert victims is not None
        for victim in victims:
            cache.start_unload(victim)
            cache.finish_unload(victim)
    # each eviction raised the inflation: new arrivals end up outranking the favourite that stopped being used
    assert "old-favourite" not in cache


def test_the_request_that_caused_a_load_counts_once() -> None:
    """GDSF's frequency: a miss inserts with one use; the same request acquiring the copy is not a second."""
    cache = ModelCache(100, EvictionPolicy.GDSF)
    cache.start_load("m", 10, 1)
    cache.finish_load("m", 10)
    cache.touch("m", 2)  # the request that loaded it
    entry = cache.entry("m")
    assert entry is not None and entry.uses == 1
    cache.touch("m", 3)
    assert entry.uses == 2
