"""The "scale" scenario: many models, a change reaching every pod, memory, placement.

Against a real etcd (harness.cluster.EtcdServer), with the mesh's own EtcdStore and RoutingTable:

1. registration: N models created through ``EtcdStore.create_model`` (the call registerModel makes), a bounded
   number in flight, while W watchers ("pods": each its own EtcdStore, RoutingTable and ``run_watch``) follow;
   then every watcher's table is checked to hold all N records exactly as written.
2. propagation: M registry changes (a holder added to a distinct model each) on an open-loop schedule; for
   every (change, watcher) pair, the time from just before the write (the read and CAS transaction of
   ``update_model`` included: the conservative end) until that watcher's table holds the new record, taken
   by a model listener on the table (no polling).
3. pod start: a new watcher loading the whole N-model registry by snapshot, as a pod joining the mesh does.
4. router memory: RoutingTables of 10k, 50k (100k) records built with ``replace_all``, measured with
   tracemalloc; and ``table.model(id)`` lookup time at each size.
5. placement: ``choose_load_target`` over 10, 100, 1000 synthetic instance records.

The goal (§8): a change reaches every pod's table in under 100 ms p99 with 100k models; memory and placement
time grow sub-linearly. All watchers share one process and event loop with the writer, so their figures
include waiting for each other; separate pods would not.

    .venv/bin/python -m load_tests.scale [--full] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import logging
import math
import os
import platform
import random
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from harness.cluster import EtcdServer
from mesh.registry.records import InstanceRecord, ModelRecord
from mesh.registry.store import EtcdStore
from mesh.registry.view import REGISTRY, RoutingTable
from mesh.routing.placement import choose_load_target

PREFIX = "scale/modelmesh-serving/"
BASE_MS = 1_700_000_000_000  # a fixed "now", so records are reproducible
HOLDER = "scale-pod-writer"  # the holder each propagation change adds
STORAGE_KEY = '{"storage_key":"localMinIO","bucket":"modelmesh-example-models"}'
RUNTIME_TYPES: tuple[list[str], ...] = (["sklearn", "xgboost", "lightgbm"], ["triton", "onnx", "python"], [])
GIB = 1024**3


@dataclass(frozen=True)
class Sizes:
    models: int
    watchers: int
    changes: int
    memory_sizes: tuple[int, ...]


QUICK = Sizes(models=10_000, watchers=3, changes=200, memory_sizes=(10_000, 50_000))
FULL = Sizes(models=100_000, watchers=5, changes=1000, memory_sizes=(10_000, 50_000, 100_000))


# -- pure helpers --------------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / max of durations given in seconds, in milliseconds."""
    if not seconds:
        return {}
    ms = [s * 1000 for s in seconds]
    return {
        "p50": round(percentile(ms, 50), 3),
        "p99": round(percentile(ms, 99), 3),
        "max": round(max(ms), 3),
    }


def model_id(i: int) -> str:
    """Shaped like modelmesh-serving's ids: the InferenceService name and a hash."""
    return f"scale-{i:06d}__isvc-{xxhash.xxh64_hexdigest(str(i).encode())[:10]}"


def model_record(i: int, holders: int = 0) -> ModelRecord:
    """A record as registerModel writes it (not loaded, last use backdated), or held by ``holders`` pods."""
    return ModelRecord(
        type="sklearn",
        path=f"sklearn/scale/{model_id(i)}/model.joblib",
        key=STORAGE_KEY,
        last_used_ms=BASE_MS - 6 * 3600_000 + i,
        holders={f"pod-{(i + h) % 16}": BASE_MS + h for h in range(holders)},
    )


def registry_items(n: int) -> list[tuple[str, bytes, int]]:
    """n registry entries as a snapshot yields them; every tenth model is loaded on one or two pods."""
    holders = [(i // 10) % 2 + 1 if i % 10 == 0 else 0 for i in range(n)]
    return [(REGISTRY + model_id(i), model_record(i, holders[i]).to_json(), i) for i in range(n)]


def synthetic_instances(n: int, seed: int = 0) -> dict[str, InstanceRecord]:
    """n pods of mixed pools and fullness: most serve sklearn, some only Triton types, some any type."""
    rng = random.Random(seed)
    out: dict[str, InstanceRecord] = {}
    for p in range(n):
        capacity = rng.choice((4, 8, 16)) * GIB
        out[f"pod-{p:04d}"] = InstanceRecord(
            address=f"10.0.{p // 250}.{p % 250}:8033",
            runtime_types=list(rng.choices(RUNTIME_TYPES, weights=(7, 2, 1))[0]),
            capacity_bytes=capacity,
            used_bytes=int(capacity * rng.uniform(0.2, 1.05)),  # about a fifth are full for a 200 MB model
            model_count=rng.randint(0, 400),
            oldest_lru_ms=BASE_MS - rng.randint(0, 86_400_000),
            loading_count=rng.randint(0, 2),
            requests_per_min=rng.randint(0, 5000),
            shutting_down=rng.random() < 0.02,
        )
    return out


def median_per_call_s(call: Callable[[int], object], calls: int, repeats: int = 5) -> float:
    """Seconds per call: the median over ``repeats`` batches of ``calls`` calls (each gets its index)."""
    per_call = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(calls):
            call(i)
        per_call.append((time.perf_counter() - start) / calls)
    return statistics.median(per_call)


# -- the etcd half -------------------------------------------------------------------------------------------
def own_connection(store: EtcdStore) -> EtcdStore:
    """Give the store its own TCP connection to etcd, as a pod in its own process has.

    gRPC shares one connection among a process's channels with equal arguments (its global subchannel pool),
    so in-process watchers and the writer would otherwise all multiplex over one. The store's client is
    created but not yet connected: its channel options can still be extended.
    """
    options = getattr(getattr(store, "_client", None), "_options", None)
    if isinstance(options, dict):
        options["grpc.use_local_subchannel_pool"] = 1
    return store


@dataclass
class Watcher:
    """A pod's view of the mesh: its own etcd client, routing table and watch loop."""

    store: EtcdStore
    table: RoutingTable = field(default_factory=RoutingTable)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.store.run_watch(self.table, self.ready))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.store.close()


class _WatchBroken(logging.Handler):
    """Catches run_watch's "watch broken" warning: a snapshot that cannot load fails fast, not retried."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.event = asyncio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.event.set()  # the watch loop logs from the event loop's own thread


async def register(store: EtcdStore, n: int, concurrency: int) -> dict[str, Any]:
    """Create n model records, ``concurrency`` in flight; the highest revision says when all are seen."""
    next_index = 0
    created = 0
    last_revision = 0
    payload = 0  # key and value bytes, what a snapshot of the registry carries

    async def worker() -> None:
        nonlocal next_index, created, last_revision, payload
        while next_index < n:
            i = next_index
            next_index += 1
            record = model_record(i)
            existing, revision = await store.create_model(model_id(i), record)
            created += existing is None
            last_revision = max(last_revision, revision)
            payload += len(PREFIX + REGISTRY + model_id(i)) + len(record.to_json())

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    return {
        "models": n,
        "created": created,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "per_s": round(n / seconds, 1),
        "last_revision": last_revision,
        "registry_payload_bytes": payload,
    }


async def propagate(
    writer: EtcdStore, watchers: list[Watcher], models: int, changes: int, interval_s: float, timeout_s: float
) -> dict[str, Any]:
    """Change ``changes`` distinct models on an open-loop schedule; time each arrival in every table."""
    targets = [model_id(c * (models // changes)) for c in range(changes)]
    change_of = {target: c for c, target in enumerate(targets)}
    started: list[float] = [math.nan] * changes
    written: list[float] = [math.nan] * changes
    seen: dict[tuple[int, int], float] = {}
    expected = changes * len(watchers)
    all_seen = asyncio.Event()

    def listener_for(w: int) -> Callable[[str, ModelRecord | None], None]:
        def on_model(changed_id: str, record: ModelRecord | None) -> None:
            c = change_of.get(changed_id)
            if c is None or record is None or HOLDER not in record.holders or (c, w) in seen:
                return
            seen[(c, w)] = time.perf_counter()
            if len(seen) == expected:
                all_seen.set()

        return on_model

    listeners = [listener_for(w) for w in range(len(watchers))]
    for watcher, listener in zip(watchers, listeners, strict=True):
        watcher.table.model_listeners.append(listener)

    def add_holder(current: ModelRecord | None) -> ModelRecord | None:
        assert current is not None, "propagation targets registered models"
        current.holders[HOLDER] = BASE_MS
        return current

    async def change(c: int) -> None:
        started[c] = time.perf_counter()
        await writer.update_model(targets[c], add_holder)
        written[c] = time.perf_counter()

    try:
        origin = time.perf_counter()
        tasks = []
        for c in range(changes):
            # open loop: each change starts on schedule, whether or not earlier ones have finished
            await asyncio.sleep(max(0.0, origin + c * interval_s - time.perf_counter()))
            tasks.append(asyncio.create_task(change(c)))
        await asyncio.gather(*tasks)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_seen.wait(), timeout_s)
    finally:
        for watcher, listener in zip(watchers, listeners, strict=True):
            watcher.table.model_listeners.remove(listener)

    from_start = [t - started[c] for (c, _), t in seen.items()]
    from_written = [t - written[c] for (c, _), t in seen.items()]
    per_watcher = [sum(1 for (_, w) in seen if w == index) for index in range(len(watchers))]
    return {
        "propagation_ms": {
            **summary_ms(from_start),
            "watchers": len(watchers),
            "changes": changes,
            "observed": len(seen),
            "expected": expected,
            "observed_per_watcher": per_watcher,
            "interval_ms": interval_s * 1000,
            "measured_from": "just before update_model (its read and CAS transaction included)",
        },
        "write_ms": summary_ms([written[c] - started[c] for c in range(changes)]),
        # may be negative: a watcher can apply the event before the writer's reply is processed
        "after_write_ms": summary_ms(from_written),
    }


async def pod_start(endpoint: str, models: int, timeout_s: float) -> dict[str, Any]:
    """A new pod loading the registry by snapshot (run_watch's start); fails fast if the watch loop breaks."""
    watcher = Watcher(own_connection(EtcdStore(endpoint, PREFIX)))
    broken = _WatchBroken()
    store_log = logging.getLogger("mesh.registry.store")
    store_log.addHandler(broken)
    start = time.perf_counter()
    try:
        watcher.start()
        ready = asyncio.ensure_future(watcher.ready.wait())
        failed = asyncio.ensure_future(broken.event.wait())
        await asyncio.wait({ready, failed}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        seconds = time.perf_counter() - start
        ready.cancel()
        failed.cancel()
        ok = watcher.ready.is_set()
        error = None
        if not ok:
            error = broken.messages[0] if broken.messages else f"not caught up in {timeout_s:.0f} s"
        registered = sum(1 for i in range(models) if watcher.table.model(model_id(i)) is not None)
        return {"ok": ok, "seconds": round(seconds, 3), "models_loaded": registered, "error": error}
    finally:
        store_log.removeHandler(broken)
        await watcher.stop()


async def etcd_scenarios(
    endpoint: str,
    sizes: Sizes,
    concurrency: int,
    interval_s: float,
    timeout_s: float,
) -> dict[str, Any]:
    writer = own_connection(EtcdStore(endpoint, PREFIX))
    watchers = [Watcher(own_connection(EtcdStore(endpoint, PREFIX))) for _ in range(sizes.watchers)]
    try:
        for watcher in watchers:  # empty prefix: every pod is caught up before the first registration
            watcher.start()
        await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in watchers)), timeout_s)

        registration = await register(writer, sizes.models, concurrency)
        written_at = time.perf_counter()
        await asyncio.gather(
            *(w.table.wait_for_revision(registration["last_revision"], timeout_s) for w in watchers)
        )
        followed = time.perf_counter() - written_at
        models_seen = [
            sum(1 for i in range(sizes.models) if w.table.model(model_id(i)) == model_record(i))
            for w in watchers
        ]

        changes = await propagate(writer, watchers, sizes.models, sizes.changes, interval_s, timeout_s)
        start = await pod_start(endpoint, sizes.models, timeout_s)
    finally:
        await asyncio.gather(*(w.stop() for w in watchers))
        await writer.close()
    return {
        "registration": registration,
        "watchers": {
            "count": sizes.watchers,
            "models_seen": models_seen,
            "caught_up_s_after_last_write": round(followed, 3),
        },
        **changes,
        "pod_start": start,
    }


# -- the in-memory half --------------------------------------------------------------------------------------
def _lookup(table: RoutingTable, ids: list[str], i: int) -> ModelRecord | None:
    return table.model(ids[i])


def table_memory(sizes: Sequence[int], lookups: int = 100_000, seed: int = 0) -> dict[str, Any]:
    """Traced bytes of a RoutingTable of n registry records, and the time of one ``table.model`` lookup."""
    rng = random.Random(seed)
    by_size: dict[str, dict[str, float]] = {}
    lookup_ns: dict[str, float] = {}
    json_bytes: dict[str, float] = {}
    for n in sizes:
        items = registry_items(n)  # built before tracing: the table parses them into its own objects
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            table = RoutingTable()
            table.replace_all(items)
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        by_size[str(n)] = {
            "bytes": used,
            "bytes_per_model": round(used / n, 1),
            "mib_per_10k_models": round(used / n * 10_000 / 2**20, 2),
        }
        json_bytes[str(n)] = round(sum(len(value) for _, value, _ in items) / n, 1)
        ids = [model_id(rng.randrange(n)) for _ in range(lookups)]
        lookup_ns[str(n)] = round(median_per_call_s(functools.partial(_lookup, table, ids), lookups) * 1e9, 1)
        del table, items
    smallest, largest = by_size[str(min(sizes))], by_size[str(max(sizes))]
    return {
        "memory": {
            "sizes": by_size,
            "record_json_bytes_per_model": json_bytes[str(max(sizes))],
            # 1.0: memory grows linearly with models; below 1: sub-linearly
            "per_model_ratio_largest_vs_smallest": round(
                largest["bytes_per_model"] / smallest["bytes_per_model"], 3
            ),
            "method": "tracemalloc: traced bytes after replace_all minus before (records parsed from JSON)",
        },
        "lookup_ns": lookup_ns,
    }


def _place(model_ids: list[str], instances: dict[str, InstanceRecord], i: int) -> str | None:
    return choose_load_target(model_ids[i % len(model_ids)], "sklearn", instances, size_hint=200 * 2**20)


def placement_times(pod_counts: Sequence[int], work: int = 50_000, seed: int = 0) -> dict[str, Any]:
    """Median µs per ``choose_load_target`` call for each pod count (about ``work`` pods weighed a batch)."""
    rng = random.Random(seed)
    model_ids = [model_id(rng.randrange(1_000_000)) for _ in range(1000)]
    micros: dict[str, float] = {}
    for n in pod_counts:
        instances = synthetic_instances(n, seed)
        calls = max(20, work // n)
        per_call = median_per_call_s(functools.partial(_place, model_ids, instances), calls)
        micros[str(n)] = round(per_call * 1e6, 2)
    smallest, largest = min(pod_counts), max(pod_counts)
    return {
        "placement_us": micros,
        "placement_scaling": {
            "pods_ratio": largest / smallest,
            # equal to pods_ratio: linear in pods; smaller: sub-linear
            "time_ratio": round(micros[str(largest)] / micros[str(smallest)], 2),
        },
    }


# -- the scenario --------------------------------------------------------------------------------------------
async def run_scale(
    work_dir: Path,
    full: bool = False,
    *,
    models: int | None = None,
    watchers: int | None = None,
    changes: int | None = None,
    memory_sizes: Sequence[int] | None = None,
    pod_counts: Sequence[int] = (10, 100, 1000),
    concurrency: int = 64,
    change_interval_s: float = 0.005,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Run the scale scenario against an etcd started under ``work_dir``; a JSON-able dict of the figures.

    ``full`` picks the full sizes (100k models, 5 watchers, 1000 changes); the keyword arguments shrink or
    override them one by one.
    """
    base = FULL if full else QUICK
    sizes = Sizes(
        models=models if models is not None else base.models,
        watchers=watchers if watchers is not None else base.watchers,
        changes=changes if changes is not None else base.changes,
        memory_sizes=tuple(memory_sizes) if memory_sizes is not None else base.memory_sizes,
    )
    if not 0 < sizes.changes <= sizes.models:
        raise ValueError("changes must be from 1 to the number of models (each change is to another model)")
    began = time.perf_counter()
    etcd = EtcdServer.start(work_dir)
    try:
        result = await etcd_scenarios(etcd.endpoint, sizes, concurrency, change_interval_s, timeout_s)
    finally:
        etcd.process.stop()
    result.update(table_memory(sizes.memory_sizes))
    result.update(placement_times(pod_counts))
    result["setup"] = {
        "mode": "full" if full else "quick",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "etcd": "one member, data under " + str(work_dir),
        "seconds_total": round(time.perf_counter() - began, 1),
    }
    result["caveats"] = [
        "all watchers and the writer share one process and one event loop: a change's time includes waiting "
        "for the other watchers' and the writer's work; separate pods would not wait for each other",
        "one etcd member on this machine: no network between pods and etcd, no raft replication",
        "each watcher and the writer has its own etcd client and TCP connection (gRPC local subchannel pool)",
    ]
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    reg, seen, prop = result["registration"], result["watchers"], result["propagation_ms"]
    start, mem = result["pod_start"], result["memory"]
    lines = [
        f"registration: {reg['models']} models in {reg['seconds']} s = {reg['per_s']}/s "
        f"({reg['concurrency']} in flight, {prop['watchers']} watchers following); "
        f"models seen per watcher {seen['models_seen']}",
        f"propagation (write start to table, {prop['observed']}/{prop['expected']} observed): "
        f"p50 {prop.get('p50')} ms, p99 {prop.get('p99')} ms, max {prop.get('max')} ms; "
        f"write itself p50 {result['write_ms'].get('p50')} ms, p99 {result['write_ms'].get('p99')} ms",
        f"pod start (snapshot of {reg['models']} models, {reg['registry_payload_bytes']} bytes): "
        + (f"{start['seconds']} s" if start["ok"] else f"FAILED: {start['error']}"),
    ]
    for n, m in mem["sizes"].items():
        lines.append(
            f"router memory at {n} models: {m['bytes_per_model']} B/model, "
            f"{m['mib_per_10k_models']} MiB/10k; lookup {result['lookup_ns'][n]} ns"
        )
    lines.append(f"per-model memory, largest vs smallest: {mem['per_model_ratio_largest_vs_smallest']}")
    lines.append(
        "placement: "
        + ", ".join(f"{n} pods {us} µs" for n, us in result["placement_us"].items())
        + f" (time x{result['placement_scaling']['time_ratio']} for pods x"
        f"{result['placement_scaling']['pods_ratio']:g})"
    )
    lines.append(f"total {result['setup']['seconds_total']} s")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="100k models, 5 watchers, 1000 changes")
    parser.add_argument("--out", type=Path, help="write the figures as JSON to this file")
    parser.add_argument("--models", type=int)
    parser.add_argument("--watchers", type=int)
    parser.add_argument("--changes", type=int)
    parser.add_argument("--work-dir", type=Path, help="etcd's data and log (default: a temporary directory)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mesh-scale-") as scratch:
        result = asyncio.run(
            run_scale(
                args.work_dir or Path(scratch),
                args.full,
                models=args.models,
                watchers=args.watchers,
                changes=args.changes,
            )
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(summary_lines(result)))


if __name__ == "__main__":
    main()
