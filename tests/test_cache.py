"""Byte-weighted LRU accounting (pure)."""

from __future__ import annotations

import pytest

from mesh.cache import ByteLruCache


def loaded(cache: ByteLruCache, model_id: str, size: int, last_used: int) -> None:
    cache.start_load(model_id, size, last_used)
    cache.finish_load(model_id, size)


def test_fits_without_eviction() -> None:
    cache = ByteLruCache(100)
    loaded(cache, "a", 40, 1)
    assert cache.plan_eviction(60) == []
    assert cache.used == 40 and cache.free == 60


def test_evicts_least_recently_used_first_until_enough_bytes() -> None:
    cache = ByteLruCache(100)
    loaded(cache, "a", 30, 1)
    loaded(cache, "b", 30, 2)
    loaded(cache, "c", 30, 3)
    assert cache.plan_eviction(40) == ["a"]
    assert cache.plan_eviction(60) == ["a", "b"]
    cache.touch("a", 10)
    assert cache.plan_eviction(40) == ["b"]


def test_size_weighting_can_require_several_small_victims() -> None:
    cache = ByteLruCache(100)
    loaded(cache, "s1", 10, 1)
    loaded(cache, "s2", 10, 2)
    loaded(cache, "big", 70, 3)
    assert cache.plan_eviction(25) == ["s1", "s2"]


def test_loading_and_pinned_models_are_never_victims() -> None:
    cache = ByteLruCache(100)
    loaded(cache, "old", 40, 1)
    cache.start_load("loading", 40, 0)
    loaded(cache, "new", 20, 5)
    assert cache.plan_eviction(20, pinned=frozenset({"old"})) == ["new"]
    assert cache.plan_eviction(70, pinned=frozenset({"old"})) is None


def test_impossible_request_returns_none() -> None:
    cache = ByteLruCache(100)
    loaded(cache, "a", 50, 1)
    assert cache.plan_eviction(101) is None


def test_reservation_counts_before_load_finishes_and_is_resized() -> None:
    cache = ByteLruCache(100)
    cache.start_load("m", 30, 1)
    assert cache.used == 30
    cache.finish_load("m", 55)
    assert cache.used == 55
    assert cache.entry("m") is not None and not cache.entry("m").loading  # type: ignore[union-attr]


def test_unloading_bytes_stay_reserved_until_unload_returns() -> None:
    cache = ByteLruCache(100)
    loaded(cache, "a", 60, 1)
    cache.start_unload("a")
    assert "a" not in cache
    assert cache.used == 60  # still held by the runtime
    assert cache.plan_eviction(50) is None  # nothing left to evict, bytes not yet back
    cache.finish_unload("a")
    assert cache.used == 0


def test_over_capacity_plan_with_zero_needed() -> None:
    cache = ByteLruCache(100)
    loaded(cache, "a", 60, 1)
    cache.start_load("b", 60, 2)  # reservation pushes usage past capacity
    assert cache.plan_eviction(0) == ["a"]


def test_touch_never_moves_back_in_time_and_ignores_unknown() -> None:
    cache = ByteLruCache(100)
    loaded(cache, "a", 10, 50)
    cache.touch("a", 10)
    assert cache.entry("a").last_used_ms == 50  # type: ignore[union-attr]
    cache.touch("missing", 99)
    assert "missing" not in cache


def test_oldest_last_used_ignores_loading() -> None:
    cache = ByteLruCache(100)
    assert cache.oldest_last_used_ms() is None
    cache.start_load("x", 10, 1)
    assert cache.oldest_last_used_ms() is None
    loaded(cache, "y", 10, 7)
    loaded(cache, "z", 10, 3)
    assert cache.oldest_last_used_ms() == 3


@pytest.mark.parametrize("order", [["a", "b", "c"], ["c", "b", "a"], ["b", "a", "c"]])
def test_eviction_order_follows_use_order(order: list[str]) -> None:
    cache = ByteLruCache(30)
    for t, model_id in enumerate(["a", "b", "c"]):
        loaded(cache, model_id, 10, t)
    for t, model_id in enumerate(order, start=10):
        cache.touch(model_id, t)
    assert cache.plan_eviction(30) == order


def test_backdated_load_only_evicts_models_used_before_its_time() -> None:
    cache = ByteLruCache(100)
    loaded(cache, "old", 50, 10)
    loaded(cache, "recent", 50, 1000)
    assert cache.plan_eviction(50, used_before_ms=500) == ["old"]
    assert cache.plan_eviction(100, used_before_ms=500) is None  # "recent" must stay
    assert cache.plan_eviction(100, used_before_ms=None) == ["old", "recent"]
