"""Cache policies side by side on one trace: the mesh's own byte-LRU, GreedyDual-Size-Frequency, lfu-size
(uses per byte, decayed, remembered across evictions), and Belady.

A Zipf request trace over many models of lognormal sizes, a capacity that holds a fraction of all bytes, and
the request hit ratio each policy reaches on exactly the same trace. LRU, GDSF and lfu-size run
mesh/models/cache.py itself; Belady (evict the model whose next use is furthest away) is the offline
reference the design measures against.
This is the simulation half of the "cache" scenario; the other half (the mesh's hit ratio under the same trace
against real runtimes) belongs to the load-test harness.

    .venv/bin/python -m load_tests.cache_sim [--models 1000] [--requests 50000] [--seeds 3]
"""

from __future__ import annotations

import argparse
import heapq
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mesh.models.cache import EvictionPolicy, ModelCache

OUT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Workload:
    sizes: list[int]  # bytes per model
    trace: list[int]  # model index per request
    capacity: int


def make_workload(models: int, requests: int, alpha: float, room: float, seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    sizes = [max(1, int(s)) for s in rng.lognormal(mean=np.log(50e6), sigma=1.0, size=models)]
    ranks = np.arange(1, models + 1, dtype=float)
    weights = ranks**-alpha
    popularity = rng.permutation(models)  # popularity is independent of size
    trace = [int(popularity[i]) for i in rng.choice(models, size=requests, p=weights / weights.sum())]
    return Workload(sizes, trace, int(sum(sizes) * room))


def mesh_hits(w: Workload, policy: EvictionPolicy) -> int:
    """The mesh's own ModelCache, driven as the pod's loader drives it."""
    cache = ModelCache(w.capacity, policy)
    hits = 0
    for clock, model in enumerate(w.trace):
        key = str(model)
        if key in cache:
            hits += 1
            cache.touch(key, clock)
            continue
        if w.sizes[model] > w.capacity:
            continue
        cache.start_load(key, w.sizes[model], clock)
        for victim in cache.plan_eviction(0, frozenset({key})) or []:
            cache.start_unload(victim)
            cache.finish_unload(victim)
        cache.finish_load(key, w.sizes[model])
        cache.touch(key, clock)  # the request that loaded it is served (not counted as a second use)
    return hits


def lru_hits(w: Workload) -> int:
    return mesh_hits(w, EvictionPolicy.LRU)


def gdsf_hits(w: Workload) -> int:
    return mesh_hits(w, EvictionPolicy.GDSF)


def lfu_size_hits(w: Workload) -> int:
    return mesh_hits(w, EvictionPolicy.LFU_SIZE)


def belady_hits(w: Workload) -> int:
    """Evict the model used furthest in the future (never again first): the offline reference."""
    never = len(w.trace)
    next_use = [never] * len(w.trace)
    last_seen: dict[int, int] = {}
    for i in range(len(w.trace) - 1, -1, -1):
        next_use[i] = last_seen.get(w.trace[i], never)
        last_seen[w.trace[i]] = i
    held: dict[int, int] = {}  # model -> its next use
    heap: list[tuple[int, int]] = []  # (-next use, model)
    used = 0
    hits = 0
    for i, model in enumerate(w.trace):
        if model in held:
            hits += 1
        elif w.sizes[model] > w.capacity:
            continue
        else:
            while used + w.sizes[model] > w.capacity:
                negative_next, victim = heapq.heappop(heap)
                if held.get(victim) != -negative_next:
                    continue
                del held[victim]
                used -= w.sizes[victim]
            used += w.sizes[model]
        held[model] = next_use[i]
        heapq.heappush(heap, (-next_use[i], model))
    return hits


POLICIES: dict[str, Callable[[Workload], int]] = {
    "lru (mesh)": lru_hits,
    "gdsf (mesh)": gdsf_hits,
    "lfu-size (mesh)": lfu_size_hits,
    "belady": belady_hits,
}


@dataclass
class Row:
    policy: str
    hit_ratio_median: float
    hit_ratio_min: float
    hit_ratio_max: float
    of_belady_median: float


def run(models: int, requests: int, alpha: float, room: float, seeds: Sequence[int]) -> list[Row]:
    ratios: dict[str, list[float]] = {name: [] for name in POLICIES}
    of_belady: dict[str, list[float]] = {name: [] for name in POLICIES}
    for seed in seeds:
        workload = make_workload(models, requests, alpha, room, seed)
        hits = {name: policy(workload) for name, policy in POLICIES.items()}
        for name in POLICIES:
            ratios[name].append(hits[name] / requests)
            of_belady[name].append(hits[name] / hits["belady"])
    return [
        Row(name, statistics.median(r), min(r), max(r), statistics.median(of_belady[name]))
        for name, r in ratios.items()
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--alpha", type=float, default=1.0, help="Zipf exponent")
    parser.add_argument("--room", type=float, default=0.10, help="capacity as a fraction of all model bytes")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    rows = run(args.models, args.requests, args.alpha, args.room, range(args.seeds))
    setup = (
        f"{args.models} models (lognormal sizes, median 50 MB), {args.requests} requests, "
        f"Zipf alpha {args.alpha}, capacity {args.room:.0%} of all bytes, {args.seeds} seeds"
    )
    table = [
        "| policy | hit ratio (median) | min to max over seeds | of Belady's (median) |",
        "|---|---|---|---|",
        *(
            f"| {r.policy} | {r.hit_ratio_median:.3f} | {r.hit_ratio_min:.3f} to {r.hit_ratio_max:.3f} "
            f"| {r.of_belady_median:.2f} |"
            for r in rows
        ),
    ]
    (OUT / "cache_sim.json").write_text(
        json.dumps({"setup": setup, "rows": [asdict(r) for r in rows]}, indent=2)
    )
    (OUT / "CACHE_SIM.md").write_text(
        "# Cache policies on one trace\n\n" + setup + "\n\n" + "\n".join(table) + "\n"
    )
    print(setup)
    print("\n".join(table))


if __name__ == "__main__":
    main()
