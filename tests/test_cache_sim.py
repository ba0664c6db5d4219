"""The cache simulation: the mesh's LRU matches a textbook byte-LRU, and nothing beats the offline optimum."""

from __future__ import annotations

from collections import OrderedDict

import pytest

from load_tests.cache_sim import Workload, belady_hits, gdsf_hits, lru_hits, make_workload


def textbook_lru_hits(w: Workload) -> int:
    held: OrderedDict[int, int] = OrderedDict()
    used = hits = 0
    for model in w.trace:
        if model in held:
            hits += 1
            held.move_to_end(model)
            continue
        if w.sizes[model] > w.capacity:
            continue
        while used + w.sizes[model] > w.capacity:
            _, size = held.popitem(last=False)
            used -= size
        held[model] = w.sizes[model]
        used += w.sizes[model]
    return hits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_policies_on_small_traces(seed: int) -> None:
    w = make_workload(models=200, requests=5000, alpha=1.0, room=0.1, seed=seed)
    lru, gdsf, belady = lru_hits(w), gdsf_hits(w), belady_hits(w)
    assert lru == textbook_lru_hits(w)  # the mesh's ModelCache is exactly byte-weighted LRU
    assert 0 < lru <= belady and 0 < gdsf <= belady


def test_everything_fits_means_only_first_requests_miss() -> None:
    w = make_workload(models=50, requests=2000, alpha=1.0, room=1.0, seed=3)
    distinct = len(set(w.trace))
    for policy in (lru_hits, gdsf_hits, belady_hits):
        assert policy(w) == len(w.trace) - distinct
