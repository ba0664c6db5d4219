"""The cache's byte accounting and its eviction policies: LRU, GDSF and lfu-size (pure)."""

from __future__ import annotations

import math

import pytest

from mesh.models.cache import EvictionPolicy, ModelCache, default_unload_buffer


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
    assert cache.plan_eviction(50) == []  # nothing more to evict: the bytes come back with the unload
    cache.start_load("b", 50, 2)
    assert cache.must_wait_for_unloads()  # 110 bytes held if "b" loaded now
    cache.finish_unload("a")
    assert cache.used == 50 and not cache.must_wait_for_unloads()


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


# -- lfu-size: uses per byte, decayed, remembered across evictions -----------------------------------------
LFU = EvictionPolicy.LFU_SIZE


def served(cache: ModelCache, model_id: str, size: int, clock: int) -> None:
    """One request for ``model_id`` as the pod serves it: a miss loads it first, then the request is a use."""
    if model_id not in cache:
        cache.start_load(model_id, size, clock)
        cache.finish_load(model_id, size)
    cache.touch(model_id, clock)


def evicted(cache: ModelCache, model_id: str) -> None:
    cache.start_unload(model_id)
    cache.finish_unload(model_id)


def test_lfu_size_is_a_policy_by_name() -> None:
    assert EvictionPolicy("lfu-size") is LFU


def test_lfu_size_keeps_what_is_used_often_per_byte() -> None:
    cache = ModelCache(100, LFU)
    for t in range(1, 6):
        served(cache, "small-hot", 10, t)  # five uses of 10 bytes
    served(cache, "big-cold", 80, 10)  # one use, the most recent
    assert cache.plan_eviction(20) == ["big-cold"]
    served(cache, "big-cold", 80, 11)
    assert cache.plan_eviction(20) == ["big-cold"]  # two uses of 80 bytes: still fewer per byte


def test_lfu_size_the_request_that_caused_a_load_counts_once() -> None:
    cache = ModelCache(100, LFU)
    cache.start_load("m", 10, 1)
    entry = cache.entry("m")
    assert entry is not None
    loaded_with = entry.frequency
    cache.finish_load("m", 10)
    cache.touch("m", 1)  # the request that loaded it
    assert entry.uses == 1 and entry.frequency == loaded_with
    cache.touch("m", 2)
    assert entry.uses == 2 and entry.frequency > loaded_with


def returning_favourite(history_limit: int) -> ModelCache:
    """ "fav" is used seven times and evicted; "rival" (same size) is used twice; then "fav" comes back."""
    cache = ModelCache(100, LFU, history_limit=history_limit)
    for t in range(7):
        served(cache, "fav", 50, t)
    evicted(cache, "fav")
    served(cache, "rival", 50, 10)
    served(cache, "rival", 50, 11)
    served(cache, "fav", 50, 12)  # the miss that brings it back
    return cache


def test_lfu_size_a_returning_model_resumes_its_frequency() -> None:
    cache = returning_favourite(history_limit=16)
    fav, rival = cache.entry("fav"), cache.entry("rival")
    assert fav is not None and rival is not None
    assert fav.uses == 1  # uses since this load, as GDSF counts them
    assert fav.frequency > 3 * rival.frequency  # about seven uses (decayed a little) against two
    assert cache.remembered_frequency("fav") is None  # taken back out of the history
    assert cache.plan_eviction(50) == ["rival"]


def test_lfu_size_without_the_history_a_returning_model_starts_again_from_one_use() -> None:
    # The same sequence with the history turned off: "fav" is back to one use and goes first. (GDSF
    # likewise restarts its count at 1 and keeps no history.)
    cache = returning_favourite(history_limit=0)
    fav, rival = cache.entry("fav"), cache.entry("rival")
    assert fav is not None and rival is not None and fav.frequency < rival.frequency
    assert cache.history_size == 0
    assert cache.plan_eviction(50) == ["fav"]
    gdsf = ModelCache(100, EvictionPolicy.GDSF)
    for t in range(7):
        served(gdsf, "fav", 50, t)
    evicted(gdsf, "fav")
    served(gdsf, "fav", 50, 12)
    assert gdsf.entry("fav").uses == 1 and gdsf.history_size == 0  # type: ignore[union-attr]


def test_lfu_size_the_history_is_bounded_forgetting_the_earliest_departures() -> None:
    cache = ModelCache(1000, LFU, history_limit=3)
    for i in range(10):
        served(cache, f"m{i}", 10, i)
        evicted(cache, f"m{i}")
        assert cache.history_size == min(i + 1, 3)
    assert [m for m in (f"m{i}" for i in range(10)) if cache.remembered_frequency(m) is not None] == [
        "m7",
        "m8",
        "m9",
    ]


def test_lfu_size_a_second_departure_counts_as_the_latest() -> None:
    cache = ModelCache(1000, LFU, history_limit=2)
    for model_id in ("a", "b"):
        served(cache, model_id, 10, 1)
        evicted(cache, model_id)
    served(cache, "a", 10, 2)  # back, resuming its frequency, and out again: now the latest departure
    evicted(cache, "a")
    served(cache, "c", 10, 3)
    evicted(cache, "c")
    assert cache.remembered_frequency("b") is None
    assert cache.remembered_frequency("a") is not None and cache.remembered_frequency("c") is not None


def test_lfu_size_history_stays_bounded_on_a_long_trace() -> None:
    cache = ModelCache(300, LFU, history_limit=20)
    for t in range(2000):
        model_id = f"m{(t * 7919) % 97}"
        served(cache, model_id, 10 + (t * 31) % 90, t)
        for victim in cache.plan_eviction(0) or []:
            evicted(cache, victim)
        assert cache.history_size <= 20 and cache.used <= cache.capacity


def test_lfu_size_a_use_weighs_twice_one_made_a_half_life_earlier() -> None:
    # One model held: the half-life is half_life_per_model (10) uses of it.
    cache = ModelCache(100, LFU, half_life_per_model=10)
    cache.start_load("a", 10, 0)  # the first use (nothing held yet: the half-life is 10 as well)
    cache.finish_load("a", 10)
    cache.touch("a", 0)
    entry = cache.entry("a")
    assert entry is not None
    increments = [entry.frequency]
    for t in range(1, 11):
        before = entry.frequency
        cache.touch("a", t)
        increments.append(entry.frequency - before)
    assert increments[10] / increments[0] == pytest.approx(2.0)


def test_lfu_size_an_old_favourite_that_stops_being_used_gives_way() -> None:
    def after_a_quiet_spell(half_life_per_model: float) -> list[str] | None:
        cache = ModelCache(100, LFU, half_life_per_model=half_life_per_model)
        for t in range(8):
            served(cache, "old-favourite", 50, t)  # eight uses, then no more
        for t in range(8, 14):
            served(cache, "newcomer", 50, t)  # six uses since
        return cache.plan_eviction(50)

    assert after_a_quiet_spell(half_life_per_model=1) == ["old-favourite"]  # recent uses weigh more
    assert after_a_quiet_spell(half_life_per_model=1e12) == ["newcomer"]  # no decay: plain counts, 6 < 8


def test_lfu_size_decay_rescales_without_overflow_or_changing_the_order() -> None:
    # A tiny half-life makes every use weigh 2**100 or more times the one before: without rescaling the
    # frequencies would overflow to inf after a handful of rounds and every model would tie.
    cache = ModelCache(30, LFU, half_life_per_model=0.01)
    for model_id in ("a", "b", "c"):
        served(cache, model_id, 10, 0)
    for t in range(1, 200):
        for model_id in ("b", "c", "a"):
            cache.touch(model_id, t)
    frequencies = [cache.entry(m).frequency for m in ("a", "b", "c")]  # type: ignore[union-attr]
    assert all(math.isfinite(f) and 0 < f < 2.0**200 for f in frequencies)
    assert cache.plan_eviction(30) == ["b", "c", "a"]  # the last used is worth by far the most


def test_lfu_size_evictions_follow_frequency_per_byte() -> None:
    cache = ModelCache(100, LFU, half_life_per_model=1e12)  # no decay: plain counts, easy to read
    for model_id, size, uses in (("a", 40, 4), ("b", 20, 1), ("c", 10, 2), ("d", 30, 6)):
        for t in range(uses):
            served(cache, model_id, size, t)
    # per byte: a 0.1, b 0.05, c 0.2, d 0.2 (c's uses are older, so by a hair it is worth less)
    assert cache.plan_eviction(10) == ["b"]
    assert cache.plan_eviction(30) == ["b", "a"]
    assert cache.plan_eviction(70) == ["b", "a", "c"]
    assert cache.plan_eviction(71) == ["b", "a", "c", "d"]
    assert cache.plan_eviction(30, pinned=frozenset({"b"})) == ["a"]
    assert cache.plan_eviction(81, pinned=frozenset({"b"})) is None  # a, c and d free only 80


def test_lfu_size_a_huge_batch_of_reported_uses_neither_overflows_nor_loses_the_order() -> None:
    # Another serving process reports its uses in one touch: with one model held the half-life is 10 uses,
    # so a million uses is 2**100000 in weight, far past what a float holds.
    cache = ModelCache(100, LFU)
    served(cache, "busy", 50, 1)
    cache.touch("busy", 2, uses=1_000_000)
    served(cache, "idle", 50, 3)
    cache.touch("idle", 4, uses=2)
    busy, idle = cache.entry("busy"), cache.entry("idle")
    assert busy is not None and idle is not None
    assert math.isfinite(busy.frequency) and math.isfinite(idle.frequency)
    assert busy.uses == 1_000_001
    assert cache.plan_eviction(50) == ["idle"]


# -- the unload buffer --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "concurrency", "default_size", "expected"),
    [
        (1000, 2, 100, 100),  # 2 x 100 / 2, within 10..100
        (1000, 1, 100, 50),  # 1 x 100 / 2
        (1000, 4, 100, 100),  # 4 x 100 / 4
        (1000, 8, 100, 100),  # 8 x 100 / 4 = 200: held to a tenth
        (1000, 2, 4, 10),  # 4 bytes: raised to a hundredth
        (1000, 0, 100, 50),  # no concurrency reported: one load at a time
        (0, 2, 100, 0),
    ],
)
def test_default_unload_buffer_follows_modelmesh_rule(
    capacity: int, concurrency: int, default_size: int, expected: int
) -> None:
    assert default_unload_buffer(capacity, concurrency, default_size) == expected


def test_unload_buffer_is_kept_free_and_advertised_capacity_excludes_it() -> None:
    cache = ModelCache(100, unload_buffer_bytes=20)
    assert cache.model_capacity == 80
    loaded(cache, "a", 50, 1)
    assert cache.plan_eviction(30) == []
    assert cache.plan_eviction(31) == ["a"]  # 81 bytes of models would eat into the buffer


def test_a_load_starts_while_its_victims_unload_within_the_buffer() -> None:
    cache = ModelCache(100, unload_buffer_bytes=20)
    loaded(cache, "a", 20, 1)
    loaded(cache, "b", 60, 2)
    cache.start_load("c", 20, 3)
    assert cache.plan_eviction(0) == ["a"]
    cache.start_unload("a")
    assert cache.used == 100 and not cache.must_wait_for_unloads()  # the runtime holds at most the capacity
    cache.start_load("d", 20, 4)  # a second miss while "a" is still unloading
    assert cache.plan_eviction(0) == ["b"]
    cache.start_unload("b")
    assert cache.must_wait_for_unloads()  # 40 of models and 80 unloading: 120 held, over the capacity
    cache.finish_unload("a")
    assert not cache.must_wait_for_unloads() and cache.used == 100  # 40 of models, 60 still unloading
    cache.finish_unload("b")
    assert cache.used == 40


def test_planning_counts_unloads_under_way_as_gone() -> None:
    """Two loads planned while one victim still unloads evict one model each, never a cascade."""
    cache = ModelCache(100)
    for i in range(10):
        loaded(cache, f"m{i}", 10, i)
    cache.start_load("x", 10, 20)
    assert cache.plan_eviction(0) == ["m0"]
    cache.start_unload("m0")
    cache.start_load("y", 10, 21)
    assert cache.plan_eviction(0) == ["m1"]  # not m1 and m2: m0's bytes are on their way back


def test_unload_buffer_never_exceeds_capacity() -> None:
    cache = ModelCache(100, unload_buffer_bytes=500)
    assert cache.unload_buffer == 100 and cache.model_capacity == 0


@pytest.mark.parametrize("seed", range(20))
def test_running_totals_match_the_entries_after_any_sequence(seed: int) -> None:
    import random

    rng = random.Random(seed)
    cache = ModelCache(1000, EvictionPolicy.LFU_SIZE, unload_buffer_bytes=50)
    for step in range(300):
        model_id = f"m{rng.randrange(12)}"
        action = rng.randrange(4)
        if action == 0 and model_id not in cache:
            cache.start_load(model_id, rng.randrange(1, 100), step)
        elif action == 1 and model_id in cache:
            cache.finish_load(model_id, rng.randrange(1, 100))
        elif action == 2:
            cache.start_unload(model_id)
        else:
            cache.finish_unload(model_id)
        entries = [cache.entry(m) for m in cache.model_ids()]
        assert cache.occupied == sum(e.size for e in entries if e is not None)
        assert cache.used == cache.occupied + sum(cache._unloading.values())


def test_taken_counts_the_buffer_or_the_unloads_beyond_it() -> None:
    cache = ModelCache(100, unload_buffer_bytes=20)
    assert cache.taken == 20  # empty: only the buffer is spoken for
    loaded(cache, "a", 50, 1)
    loaded(cache, "b", 30, 2)
    assert cache.taken == 100  # full: a new model must evict
    cache.start_unload("a")
    assert cache.taken == 80  # "a"'s 50 bytes unloading: more than the buffer
    cache.finish_unload("a")
    assert cache.taken == 50 and cache.used == 30
