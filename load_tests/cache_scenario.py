"""Scenario "cache": the mesh's own hit ratio under a Zipf trace, next to LRU, GDSF and Belady simulated.

Many models of lognormal sizes (load_tests/cache_sim.py's workload: median 50 MB, sigma 1), a Zipf
(alpha 1.0) trace of requests over them, and one pod whose runtime has room for a tenth of all bytes. The
real mesh runs it: etcd, one echo runtime (load_tests/echo_runtime.py: a model path ``size=<bytes>;load_ms=
<ms>``, so a miss costs a load) and one pod in front of it. Every model is registered through the management
API (not loaded), then the trace is replayed through the pod's inference port one request at a time, so the
recency order the pod sees is exactly the trace's, as the simulation assumes. The echo runtime counts the
loads; a request that did not load is a hit:

    mesh hit ratio = (requests - loads - requests refused because the model exceeds the capacity) / requests

On the same trace, sizes and capacity: plain LRU, the mesh's GDSF (mesh/models/cache.py, driven as cache_sim
does it, and driven as the pod's request path does it) and Belady (evict the model used furthest in the
future), the offline reference. The pod runs once per eviction policy (``--eviction-policy lru`` and
``gdsf``), each time on a fresh etcd, runtime and pod. The goal: at least 95 % of Belady's hit ratio.

    .venv/bin/python -m load_tests.cache_scenario [--full] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as v2

from harness.cluster import EtcdServer
from load_tests.cache_sim import Workload, belady_hits, gdsf_hits, lfu_size_hits, lru_hits, make_workload
from load_tests.echo_runtime import INFER_METHOD, MODEL_TYPE
from load_tests.loadgen import percentile, raw_call
from load_tests.processes import EchoProcess, start_echo_pod
from mesh.models.cache import EvictionPolicy, ModelCache
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc

ALPHA = 1.0  # Zipf exponent
ROOM = 0.10  # the pod's capacity as a fraction of all model bytes
SEED = 0
LOAD_MS = 2  # what the echo runtime waits per load: a miss costs something
GOAL_OF_BELADY = 0.95


@dataclass(frozen=True)
class CacheSizes:
    models: int
    requests: int


QUICK = CacheSizes(models=300, requests=3000)
FULL = CacheSizes(models=1000, requests=20_000)


# -- pure helpers --------------------------------------------------------------------------------------------
def model_name(index: int) -> str:
    return f"cache-{index:05d}"


def echo_path(size_bytes: int, load_ms: int) -> str:
    """The echo runtime's model path: it reports ``size_bytes`` and waits ``load_ms`` per load."""
    return f"size={size_bytes};load_ms={load_ms}" if load_ms else f"size={size_bytes}"


def infer_body(model_id: str) -> bytes:
    """A minimal ModelInfer request (one FP32 value) naming the model in field 1, as the pod routes on."""
    tensor = v2.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32", shape=[1])
    return v2.ModelInferRequest(
        model_name=model_id, inputs=[tensor], raw_input_contents=[bytes(4)]
    ).SerializeToString()


def ratio(part: float, whole: float) -> float | None:
    """part / whole rounded to 4 places; None when whole is 0."""
    return round(part / whole, 4) if whole else None


def mesh_hit_ratio(requests: int, loads: int, refused: int = 0) -> float:
    """Requests that needed no load, of all requests; a refused request (model too big) is a miss."""
    if requests <= 0:
        raise ValueError("no requests")
    return (requests - loads - refused) / requests


def load_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Loads per model between two echo stats snapshots (models with none left out)."""
    return {m: n - before.get(m, 0) for m, n in after.items() if n - before.get(m, 0) > 0}


def latency_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / p99 / max / mean of durations given in seconds, in milliseconds (nearest rank)."""
    if not latencies_s:
        return {}
    ms = sorted(v * 1000 for v in latencies_s)
    return {
        "p50": round(percentile(ms, 0.50), 3),
        "p90": round(percentile(ms, 0.90), 3),
        "p99": round(percentile(ms, 0.99), 3),
        "max": round(ms[-1], 3),
        "mean": round(statistics.fmean(ms), 3),
    }


def split_by_outcome(per_request: Sequence[float | None], outcomes: Sequence[bool], hit: bool) -> list[float]:
    """The values of the requests whose outcome is ``hit`` (failed requests, None, left out)."""
    return [v for v, h in zip(per_request, outcomes, strict=True) if h is hit and v is not None]


def pod_path_outcomes(w: Workload, policy: EvictionPolicy) -> list[bool]:
    """Hit (True) or miss per request: ModelCache driven as the pod's request path drives it, on a logical
    clock (one tick per request).

    The pod touches the model once it is loaded for the very request that caused the load (``acquire``
    after ``ensure_loaded``); mesh/models/cache.py does not count that touch as a second use, so this must
    equal cache_sim.mesh_hits — a cross-check that the pod's request path and the simulation agree.
    """
    cache = ModelCache(w.capacity, policy)
    outcomes: list[bool] = []
    for clock, model in enumerate(w.trace):
        key = str(model)
        outcomes.append(key in cache)
        if key not in cache:
            if w.sizes[model] > w.capacity:
                continue  # the pod refuses the load (FAILED_PRECONDITION): a miss
            cache.start_load(key, w.sizes[model], clock)
            for victim in cache.plan_eviction(0, frozenset({key})) or []:
                cache.start_unload(victim)
                cache.finish_unload(victim)
            cache.finish_load(key, w.sizes[model])
        cache.touch(key, clock)  # the request is served: acquire() counts it as a use
    return outcomes


def pod_path_hits(w: Workload, policy: EvictionPolicy) -> int:
    return sum(pod_path_outcomes(w, policy))


def simulate(w: Workload) -> dict[str, Any]:
    """Hit ratios of the simulated policies on ``w``, and each as a fraction of Belady's."""
    requests = len(w.trace)
    hits = {
        "lru": lru_hits(w),
        "gdsf": gdsf_hits(w),
        "gdsf_pod_path": pod_path_hits(w, EvictionPolicy.GDSF),
        "lru_pod_path": pod_path_hits(w, EvictionPolicy.LRU),
        "lfu-size": lfu_size_hits(w),
        "lfu-size_pod_path": pod_path_hits(w, EvictionPolicy.LFU_SIZE),
        "belady": belady_hits(w),
    }
    return {
        "hits": hits,
        "hit_ratio": {name: round(h / requests, 4) for name, h in hits.items()},
        "of_belady": {name: ratio(h, hits["belady"]) for name, h in hits.items()},
    }


LOADED_LINE = re.compile(r"\bloaded (\S+) on (\S+) \((\d+) bytes\)")


def loads_in_pod_log(text: str) -> Counter[str]:
    """Loads per model as the pod logged them (mesh/models/local.py: "loaded <id> on <pod> (<n> bytes)")."""
    return Counter(match.group(1) for match in LOADED_LINE.finditer(text))


def etcd_slow_applies(text: str) -> int:
    """etcd's "apply request took too long" warnings (over 100 ms) in its log: a stall of etcd's own (its
    disk's fsync, usually) that lands in the mesh's latency tail."""
    return text.count('"msg":"apply request took too long"')


# -- against the real mesh -----------------------------------------------------------------------------------
async def register_models(
    address: str, paths: dict[str, str], concurrency: int = 16, timeout_s: float = 60.0
) -> None:
    """registerModel (no loadNow) for every model id -> echo path, ``concurrency`` calls in flight.

    Registering an id that exists with the same type and path is a no-op that still waits until the pod
    answering it sees the record: registering through a second pod syncs that pod's view.
    """
    slots = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = mm_grpc.ModelMeshStub(channel)

        async def one(model_id: str, path: str) -> None:
            async with slots:
                await stub.registerModel(
                    mm.RegisterModelRequest(
                        modelId=model_id, modelInfo=mm.ModelInfo(type=MODEL_TYPE, path=path)
                    ),
                    timeout=timeout_s,
                )

        await asyncio.gather(*(one(model_id, path) for model_id, path in paths.items()))


@dataclass
class Replay:
    per_request_s: list[float | None] = field(default_factory=list)  # latency per request, None: failed
    errors: Counter[str] = field(default_factory=Counter)  # status code -> count
    failed_models: Counter[str] = field(default_factory=Counter)  # model id -> failed requests
    seconds: float = 0.0

    @property
    def latencies_s(self) -> list[float]:
        return [v for v in self.per_request_s if v is not None]


async def replay(address: str, trace_ids: Sequence[str], timeout_s: float = 60.0) -> Replay:
    """Send the trace through ``address`` one request at a time, in order."""
    result = Replay()
    bodies = {model_id: infer_body(model_id) for model_id in set(trace_ids)}
    clock = time.perf_counter
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout_s)
        call = raw_call(channel, INFER_METHOD, timeout_s=timeout_s)
        began = clock()
        for model_id in trace_ids:
            sent = clock()
            try:
                await call(bodies[model_id])
            except grpc.aio.AioRpcError as e:
                result.errors[e.code().name] += 1
                result.failed_models[model_id] += 1
                result.per_request_s.append(None)
                continue
            result.per_request_s.append(clock() - sent)
        result.seconds = clock() - began
    return result


def mesh_figures(
    w: Workload,
    ids: Sequence[str],
    run: Replay,
    loads: dict[str, int],
    logged_loads: Counter[str],
    unloads: int,
    held: Sequence[str],
    belady: int,
    simulated_outcomes: Sequence[bool],
) -> dict[str, Any]:
    """One policy's figures from a replay and the echo runtime's counts (pure).

    ``simulated_outcomes``: hit or miss per request in the pod-path simulation of the same policy; the
    replay's latencies are split by it (exactly the mesh's own split when the hit counts agree).
    """
    requests = len(w.trace)
    index = {model_id: i for i, model_id in enumerate(ids)}
    oversize = {ids[m] for m in set(w.trace) if w.sizes[m] > w.capacity}
    refused = sum(1 for m in w.trace if ids[m] in oversize)
    unexpected = {m: n for m, n in run.failed_models.items() if m not in oversize}
    total_loads = sum(loads.values())
    hits = requests - total_loads - refused
    return {
        "requests": requests,
        "ok": len(run.latencies_s),
        "errors": sum(unexpected.values()),  # failures other than refusals of models bigger than the pod
        "error_codes": dict(run.errors),
        "refused_oversize": refused,
        "loads": total_loads,  # counted by the echo runtime during the replay
        "loads_logged_by_pod": sum(logged_loads[m] for m in ids),  # the pod's own "loaded ..." log lines
        "unloads": unloads,
        "models_held_at_end": len(held),
        "bytes_held_at_end": sum(w.sizes[index[m]] for m in held if m in index),
        "capacity_bytes": w.capacity,
        "distinct_models_requested": len({ids[m] for m in w.trace} - oversize),
        "models_loaded": len(loads),
        "max_loads_of_one_model": max(loads.values(), default=0),
        "hits": hits,
        "hit_ratio": round(mesh_hit_ratio(requests, total_loads, refused), 4),
        "of_belady": ratio(hits, belady),
        "latency_ms": latency_ms(run.latencies_s),
        "latency_ms_by_simulated_outcome": {
            "hit": latency_ms(split_by_outcome(run.per_request_s, simulated_outcomes, True)),
            "miss": latency_ms(split_by_outcome(run.per_request_s, simulated_outcomes, False)),
            "same_hit_count_as_mesh": sum(simulated_outcomes) == hits,
        },
        "replay_seconds": round(run.seconds, 2),
        "requests_per_s": round(requests / run.seconds, 1) if run.seconds else None,
    }


async def run_policy(
    work_dir: Path,
    w: Workload,
    ids: Sequence[str],
    policy: str,
    load_ms: int,
    belady: int,
    simulated_outcomes: Sequence[bool],
) -> dict[str, Any]:
    """A fresh etcd, echo runtime and pod with ``--eviction-policy policy``; register, replay, count."""
    paths = {model_id: echo_path(w.sizes[i], load_ms) for i, model_id in enumerate(ids)}
    with contextlib.ExitStack() as stack:
        etcd = EtcdServer.start(work_dir / "etcd")
        stack.callback(etcd.process.stop)
        echo = EchoProcess.start(work_dir / "echo", "echo", capacity_bytes=w.capacity)
        stack.callback(echo.stop)
        pod = start_echo_pod(
            work_dir / "pod", etcd, echo, "pod-cache", extra_args=[f"--eviction-policy={policy}"]
        )
        stack.callback(pod.process.stop)

        began = time.perf_counter()
        await register_models(pod.address, paths)
        registration_s = time.perf_counter() - began
        before = echo.stats()
        log_before = loads_in_pod_log(pod.process.log_tail(chars=1 << 30))
        run = await replay(pod.address, [ids[m] for m in w.trace])
        after = echo.stats()  # before the pod stops: its shutdown unloads everything
        logged = loads_in_pod_log(pod.process.log_tail(chars=1 << 30)) - log_before
        etcd_stalls = etcd_slow_applies(etcd.process.log_tail(chars=1 << 30))
    figures = mesh_figures(
        w,
        ids,
        run,
        load_delta(before["loads"], after["loads"]),
        logged,
        after["unloads"] - before["unloads"],
        after["loaded"],
        belady,
        simulated_outcomes,
    )
    figures["registration_seconds"] = round(registration_s, 2)
    figures["etcd_applies_over_100ms"] = etcd_stalls  # registration and replay
    return figures


def agreement(mesh: dict[str, Any], simulated: dict[str, Any], policy: str) -> dict[str, Any]:
    """The mesh's hit ratio next to the simulation's for the same policy (pure)."""
    names = (policy, f"{policy}_pod_path")
    out: dict[str, Any] = {"mesh_hit_ratio": mesh["hit_ratio"]}
    for name in names:
        out[f"simulated_{name}_hit_ratio"] = simulated["hit_ratio"][name]
        out[f"mesh_minus_simulated_{name}"] = round(mesh["hit_ratio"] - simulated["hit_ratio"][name], 4)
        out[f"mesh_hits_minus_simulated_{name}_hits"] = mesh["hits"] - simulated["hits"][name]
    return out


async def run_cache(
    work_dir: Path,
    full: bool = False,
    *,
    models: int | None = None,
    requests: int | None = None,
    policies: Sequence[str] = ("lru", "gdsf", "lfu-size"),
    load_ms: int = LOAD_MS,
    seed: int = SEED,
) -> dict[str, Any]:
    """Run the cache scenario under ``work_dir``; a JSON-able dict of the figures.

    ``full`` picks 1000 models and 20000 requests (quick: 300 and 3000); ``models`` and ``requests``
    override them. Each of ``policies`` (``lru``, ``gdsf``, ``lfu-size``) runs on its own fresh etcd,
    runtime and pod.
    """
    for policy in policies:
        EvictionPolicy(policy)  # ValueError early for an unknown policy
    base = FULL if full else QUICK
    sizes = CacheSizes(models or base.models, requests or base.requests)
    began = time.perf_counter()
    w = make_workload(sizes.models, sizes.requests, ALPHA, ROOM, seed)
    ids = [model_name(i) for i in range(sizes.models)]
    simulated = simulate(w)
    mesh: dict[str, Any] = {}
    for policy in policies:
        outcomes = pod_path_outcomes(w, EvictionPolicy(policy))
        mesh[policy] = await run_policy(
            work_dir / policy, w, ids, policy, load_ms, simulated["hits"]["belady"], outcomes
        )
    ordered = sorted(w.sizes)
    result: dict[str, Any] = {
        "setup": {
            "mode": "full" if full else "quick",
            "models": sizes.models,
            "requests": sizes.requests,
            "zipf_alpha": ALPHA,
            "seed": seed,
            "capacity_fraction_of_all_bytes": ROOM,
            "capacity_bytes": w.capacity,
            "all_models_bytes": sum(w.sizes),
            "model_bytes": {
                "min": ordered[0],
                "median": ordered[len(ordered) // 2],
                "max": ordered[-1],
            },
            "models_bigger_than_capacity": sum(1 for s in w.sizes if s > w.capacity),
            "distinct_models_requested": len(set(w.trace)),
            "load_ms_per_miss": load_ms,
            "in_flight": 1,
            "pods": 1,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "simulation": simulated,
        "mesh": mesh,
        "agreement": {policy: agreement(mesh[policy], simulated, policy) for policy in policies},
        "goal": {
            "of_belady": GOAL_OF_BELADY,
            "met": {policy: (mesh[policy]["of_belady"] or 0) >= GOAL_OF_BELADY for policy in policies},
            "beats_belady": {
                policy: mesh[policy]["hits"] > simulated["hits"]["belady"] for policy in policies
            },
        },
        "caveats": [
            "one trace (one seed): a single run, not a median over seeds as cache_sim reports",
            "the pod's LRU clock is wall-clock milliseconds: requests within one millisecond tie, and ties "
            "go to the model id's order, where the simulation's clock ticks once per request",
            "the '<policy>_pod_path' simulations drive ModelCache call for call as the pod does (a load, "
            "then the request that caused it); they match cache_sim's own replay exactly",
            "Belady (evict the model used furthest in the future) is the optimum only when all models have "
            "one size; with sizes that vary it is the reference the goals name, not a bound: a size-aware "
            "policy can beat it, most easily when the cache holds only a few models",
            "latency_ms_by_simulated_outcome splits the replay's latencies by the pod-path simulation's "
            "hit or miss for each request, which is the mesh's own split only if the hit counts agree",
        ],
    }
    result["setup"]["seconds_total"] = round(time.perf_counter() - began, 1)
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    setup, sim = result["setup"], result["simulation"]
    lines = [
        f"{setup['models']} models (lognormal sizes, median {setup['model_bytes']['median'] / 1e6:.0f} MB), "
        f"{setup['requests']} requests, Zipf alpha {setup['zipf_alpha']}, capacity "
        f"{setup['capacity_fraction_of_all_bytes']:.0%} of all bytes, one request in flight, "
        f"{setup['load_ms_per_miss']} ms per load",
        "simulated hit ratio: "
        + ", ".join(
            f"{name} {sim['hit_ratio'][name]:.3f} ({sim['of_belady'][name]:.2f} of Belady)"
            for name in ("lru", "gdsf", "lfu-size", "belady")
        ),
    ]
    for policy, m in result["mesh"].items():
        agree = result["agreement"][policy]
        split = m["latency_ms_by_simulated_outcome"]
        lines.append(
            f"mesh --eviction-policy {policy}: hit ratio {m['hit_ratio']:.3f} "
            f"({m['of_belady']:.2f} of Belady); "
            f"mesh - simulated {policy}: {agree[f'mesh_minus_simulated_{policy}']:+.4f}, - simulated "
            f"{policy} as the pod drives it: {agree[f'mesh_minus_simulated_{policy}_pod_path']:+.4f}"
        )
        lines.append(
            f"    {m['loads']} loads ({m['loads_logged_by_pod']} in the pod's log), {m['unloads']} unloads, "
            f"{m['errors']} errors, {m['refused_oversize']} refused (too big); latency p50 "
            f"{m['latency_ms'].get('p50')} ms, p99 {m['latency_ms'].get('p99')} ms (hits p50 "
            f"{split['hit'].get('p50')} ms, misses p50 {split['miss'].get('p50')} ms); replay "
            f"{m['replay_seconds']} s; etcd applies over 100 ms: {m['etcd_applies_over_100ms']}"
        )
    lines.append(f"total {setup['seconds_total']} s")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="1000 models, 20000 requests")
    parser.add_argument("--out", type=Path, help="write the figures as JSON to this file")
    parser.add_argument("--models", type=int)
    parser.add_argument("--requests", type=int)
    parser.add_argument(
        "--policies", default="lru,gdsf,lfu-size", help="comma-separated: lru, gdsf, lfu-size"
    )
    parser.add_argument("--load-ms", type=int, default=LOAD_MS, help="the echo runtime's time per load")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--work-dir", type=Path, help="the processes' data and logs (default: a temporary dir)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mesh-cache-") as scratch:
        result = asyncio.run(
            run_cache(
                args.work_dir or Path(scratch),
                args.full,
                models=args.models,
                requests=args.requests,
                policies=[p for p in args.policies.split(",") if p],
                load_ms=args.load_ms,
                seed=args.seed,
            )
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(summary_lines(result)))


if __name__ == "__main__":
    main()
