"""The cache and cold-start scenarios (load_tests/cache_scenario.py, load_tests/cold_start.py) at a small size
against real processes, and their pure helpers."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from load_tests.cache_scenario import (
    load_delta,
    loads_in_pod_log,
    mesh_hit_ratio,
    pod_path_hits,
    pod_path_outcomes,
    run_cache,
    split_by_outcome,
)
from load_tests.cache_sim import lru_hits, make_workload
from load_tests.cold_start import (
    added_ms,
    load_summary,
    loads_per_model,
    logged_loads,
    pod_time_split,
    run_cold_start,
)
from mesh.models.cache import EvictionPolicy

LOADED = "2026-01-01 00:00:00,000 INFO mesh.local_models: loaded {} on pod-a (1000 bytes) in {} ms\n"


# -- pure helpers --------------------------------------------------------------------------------------------
def test_mesh_hit_ratio_counts_loads_and_refusals_as_misses() -> None:
    assert mesh_hit_ratio(400, 100) == 0.75
    assert mesh_hit_ratio(400, 100, refused=20) == 0.7
    assert mesh_hit_ratio(10, 0) == 1.0 and mesh_hit_ratio(10, 10) == 0.0
    with pytest.raises(ValueError):
        mesh_hit_ratio(0, 0)


def test_load_delta_keeps_only_models_loaded_in_between() -> None:
    assert load_delta({"a": 2, "b": 1}, {"a": 5, "b": 1, "c": 1}) == {"a": 3, "c": 1}
    assert load_delta({}, {}) == {}


@pytest.mark.parametrize("seed", [0, 1])
def test_pod_path_lru_is_cache_sims_lru(seed: int) -> None:
    # The pod's extra touch after a load carries the same clock: LRU's order, hence its hits, are unchanged.
    w = make_workload(models=100, requests=2000, alpha=1.0, room=0.1, seed=seed)
    assert pod_path_hits(w, EvictionPolicy.LRU) == lru_hits(w)
    outcomes = pod_path_outcomes(w, EvictionPolicy.GDSF)
    assert len(outcomes) == len(w.trace) and not outcomes[0]  # the first request always misses


def test_split_by_outcome_skips_failed_requests() -> None:
    per_request = [0.1, None, 0.3, 0.4]
    outcomes = [True, True, False, True]
    assert split_by_outcome(per_request, outcomes, True) == [0.1, 0.4]
    assert split_by_outcome(per_request, outcomes, False) == [0.3]


def test_pod_log_parsing() -> None:
    text = LOADED.format("m-1", 12) + LOADED.format("m-2", 205) + LOADED.format("m-1", 7)
    text += "2026-01-01 00:00:00,000 INFO x: unloaded m-3 on pod-a (5 bytes) in 1 ms\n"
    assert loads_in_pod_log(text) == Counter({"m-1": 2, "m-2": 1})
    assert logged_loads(text) == [("m-1", "pod-a", 12), ("m-2", "pod-a", 205), ("m-1", "pod-a", 7)]


def test_cold_start_load_counting() -> None:
    loads = loads_per_model(["a", "b", "c"], {"a": 1, "probe": 3}, {"b": 2})
    assert loads == {"a": 1, "b": 2, "c": 0}
    assert load_summary(loads) == {
        "max": 2,
        "models_loaded_more_than_once": 1,
        "models_never_loaded": 1,
        "total": 3,
    }
    assert added_ms([210.0, None, 250.0], 200) == [10.0, 50.0]


def test_pod_time_split_uses_only_models_loaded_once() -> None:
    logged = [("a", "pod-a", 210), ("b", "pod-b", 205), ("b", "pod-a", 220)]
    split = pod_time_split({"a": 230.0, "b": 240.0, "c": None}, logged, 200)
    assert split["claim_and_load_rpc_ms"]["p50"] == 10
    assert split["rest_ms"]["p50"] == 20.0


# -- against real processes ----------------------------------------------------------------------------------
@pytest.mark.integration
async def test_cache_scenario_small(tmp_path: Path) -> None:
    result = await run_cache(tmp_path, models=60, requests=400)
    sim, mesh = result["simulation"], result["mesh"]
    assert set(mesh) == {"lru", "gdsf", "lfu-size"}
    for policy, m in mesh.items():
        assert m["errors"] == 0, (policy, m["error_codes"])
        assert m["ok"] == m["requests"] - m["refused_oversize"] == 400 - m["refused_oversize"]
        # the loads the runtime counted are the loads the pod logged, and they make the hit ratio
        assert m["loads"] == m["loads_logged_by_pod"] > 0
        assert 0.0 <= m["hit_ratio"] <= 1.0
        assert m["hit_ratio"] == round((400 - m["loads"] - m["refused_oversize"]) / 400, 4)
        # every model requested was loaded at least once, none that was not; the pod never held more than fits
        assert m["models_loaded"] == m["distinct_models_requested"] <= m["loads"]
        assert m["loads"] - m["unloads"] == m["models_held_at_end"]
        assert 0 < m["bytes_held_at_end"] <= m["capacity_bytes"]

    # Mesh vs simulation on the same trace. Observed: equal hit counts, LRU and the pod-path GDSF (0.2975
    # and 0.485 on this trace). What could make them differ: the pod's LRU clock is wall-clock
    # milliseconds, so two requests within one millisecond tie and the tie goes to model-id order; with one
    # request in flight and a mesh hit taking about a millisecond that is rare and moves a handful of
    # evictions at most. 0.02 is 8 of the 400 requests.
    tolerance = 0.02
    assert abs(mesh["lru"]["hit_ratio"] - sim["hit_ratio"]["lru"]) <= tolerance
    assert abs(mesh["gdsf"]["hit_ratio"] - sim["hit_ratio"]["gdsf_pod_path"]) <= tolerance
    assert abs(mesh["lfu-size"]["hit_ratio"] - sim["hit_ratio"]["lfu-size_pod_path"]) <= tolerance
    # the pod really runs the policy it was given: GDSF keeps the small popular models LRU throws out
    assert mesh["gdsf"]["hits"] > mesh["lru"]["hits"]

    # Nothing beats Belady where it is the optimum's stand-in: LRU, simulated and in the mesh. GDSF is not
    # held to it: Belady (evict the model used furthest in the future) is optimal only for one size, and
    # with lognormal sizes and room for a handful of models a size-aware policy can beat it (on this very
    # trace simulated GDSF reaches 1.09 of Belady; on larger traces it stays below).
    belady = sim["hits"]["belady"]
    assert 0 < sim["hits"]["lru"] <= belady
    assert mesh["lru"]["hits"] <= belady
    assert mesh["lru"]["of_belady"] == pytest.approx(mesh["lru"]["hits"] / belady, abs=1e-4)


@pytest.mark.integration
async def test_cold_start_small(tmp_path: Path) -> None:
    load_ms = 200
    result = await run_cold_start(tmp_path, models=3, burst=10, load_ms=load_ms)
    # exactly one load per model in the whole cluster, as both runtimes counted and as the pods logged
    assert result["loads_per_model"] == {
        "max": 1,
        "models_loaded_more_than_once": 0,
        "models_never_loaded": 0,
        "total": 3,
    }
    assert sum(result["loads_by_runtime"].values()) == 3
    assert result["loads_logged_by_pods"] == 3
    assert result["errors"] == 0 and result["ok"] == result["requests"] == 30
    assert result["ok_by_pod_sent_to"] == {"pod-a": 15, "pod-b": 15}

    # the mesh cannot answer before the runtime's load finished
    firsts = result["first_response_ms_per_model"]
    assert len(firsts) == 3 and all(v is not None and v >= load_ms for v in firsts.values())
    added = result["added_ms"]["over_load_ms"]
    assert all(math.isfinite(added[k]) for k in ("p50", "p99", "min", "max"))
    assert 0 <= added["min"] <= added["p50"] <= added["p99"] <= added["max"]
    assert result["direct"]["load_rpc_ms"]["min"] >= load_ms  # the echo runtime sleeps at least load_ms
    assert result["last_response_ms"]["max"] >= result["first_response_ms"]["max"]
