"""One command for every scenario behind the goals (docs/ARCHITECTURE.md); writes load_tests/RESULTS.md
and load_tests/results.json.

    .venv/bin/python -m load_tests.run            # quick: every scenario, under 10 minutes
    .venv/bin/python -m load_tests.run --full     # longer runs, more rounds, 100k models
    .venv/bin/python -m load_tests.run --only hop,cache

Every figure is measured side by side in the same run, on this machine; the
goals table compares them with §8 and says by how much each falls short.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.triton import triton_installed
from load_tests import (
    cache_scenario,
    cache_sim,
    churn,
    cold_start,
    front_cost,
    grpc_cost,
    metrics_cost,
    perf_analyzer,
    scale,
    stalls,
    tls_cost,
)
from load_tests.hop import HOP_BACKENDS, HopSettings, run_hop
from load_tests.multicore import run_multicore
from load_tests.profile_hot_path import run_profile

HERE = Path(__file__).parent
HOP_TITLES = {
    "echo": "echo backend, --front=grpc",
    "echo-h2": "echo backend, --front=h2 (its own codec, the default)",
    "echo-h2sleep": "echo backend, --front=h2 --busy-poll-us=0 (the loop sleeps at once)",
    "echo-h2lib": "echo backend, --front=h2 --front-codec=h2 (python-hyper's h2)",
    "triton": "Triton python backend, --front=grpc",
    "triton-h2": "Triton python backend, --front=h2",
}
PERF_ANALYZER_TITLE = "perf_analyzer: Triton's own load generator through the mesh, next to direct"
SCENARIOS = (
    "hop",
    "front_cost",
    "grpc_cost",
    "metrics_cost",
    "tls_cost",
    "stalls",
    "perf_analyzer",
    "multicore",
    "cache",
    "cold_start",
    "churn",
    "scale",
    "cache_sim",
    "profile",
)


def hop_settings(full: bool) -> HopSettings:
    if full:
        return HopSettings(rounds=5, latency_requests=3000, throughput_requests=10000, max_seconds=30.0)
    return HopSettings(rounds=5, latency_requests=1500, throughput_requests=2000)


def stall_settings(full: bool) -> stalls.StallSettings:
    return stalls.StallSettings(rounds=5, calls=2000) if full else stalls.StallSettings(rounds=3, calls=1000)


def run_scenario(name: str, work_dir: Path, full: bool) -> dict[str, Any]:
    directory = work_dir / name
    if name == "hop":
        backends = HOP_BACKENDS if triton_installed() else ("echo", "echo-h2", "echo-h2sleep", "echo-h2lib")
        return asyncio.run(run_hop(directory, hop_settings(full), backends))
    if name == "front_cost":
        return front_cost.run_front_cost(rounds=9 if full else 5)
    if name == "grpc_cost":
        return grpc_cost.run_grpc_cost(rounds=9 if full else 5)
    if name == "metrics_cost":
        rounds = 25 if full else 15
        return asyncio.run(metrics_cost.run_metrics_cost(directory, hop_settings(full), rounds))
    if name == "tls_cost":
        return asyncio.run(tls_cost.run_tls_cost(directory, hop_settings(full)))
    if name == "stalls":
        return stalls.run_stalls(directory, stall_settings(full))
    if name == "perf_analyzer":  # {"skipped": why} without Triton or perf_analyzer
        return perf_analyzer.run_perf_analyzer(directory, full)
    if name == "multicore":
        settings = hop_settings(full)
        settings = HopSettings(**{**settings.__dict__, "connections": 4})
        return asyncio.run(run_multicore(directory, settings))
    if name == "cache":
        return asyncio.run(cache_scenario.run_cache(directory, full))
    if name == "cold_start":
        return asyncio.run(cold_start.run_cold_start(directory, full))
    if name == "churn":
        return asyncio.run(churn.run_churn(directory, full))
    if name == "scale":
        return asyncio.run(scale.run_scale(directory, full))
    if name == "cache_sim":
        return _cache_sim(full)
    if name == "profile":
        return run_profile(directory, seconds=15 if full else 8)
    raise ValueError(f"unknown scenario {name}")


def _cache_sim(full: bool) -> dict[str, Any]:
    """The policies alone on a longer trace than the mesh can replay in minutes (1000 models)."""
    models, requests, seeds = 1000, 50_000 if full else 20_000, 5 if full else 3
    rows = cache_sim.run(models, requests, 1.0, 0.10, range(seeds))
    return {
        "setup": f"{models} models (lognormal sizes), {requests} requests, Zipf 1.0, room for 10 % of all "
        f"bytes, median of {seeds} seeds",
        "rows": [asdict(r) for r in rows],
    }


# -- the report --------------------------------------------------------------------------------------------
def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}{unit}" if abs(value) < 100 else f"{value:.0f}{unit}"
    return f"{value}{unit}"


def hop_table(summary: dict[str, Any]) -> list[str]:
    lines = [
        "| path | p50 ms | p99 ms | added p50 ms | added p99 ms | req/s at 16 in flight | of direct "
        "| proxy CPU µs/req | at 1 in flight |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path, e in summary.items():
        if not isinstance(e, dict):
            continue
        lines.append(
            f"| {path} | {_fmt(e['p50_ms'])} | {_fmt(e['p99_ms'])} | {_fmt(e.get('added_p50_ms'))} "
            f"| {_fmt(e.get('added_p99_ms'))} | {_fmt(e['throughput_per_s'])} "
            f"| {_fmt(e.get('throughput_ratio'))} | {_fmt(e.get('proxy_cpu_us_per_request'))} "
            f"| {_fmt(e.get('proxy_cpu_us_at_one_in_flight'))} |"
        )
    return lines


def goal_rows(results: dict[str, Any]) -> list[str]:
    rows = ["| goal (docs/ARCHITECTURE.md) | measured | verdict |", "|---|---|---|"]

    def row(goal: str, measured: str, ok: bool | None, shortfall: str = "") -> None:
        verdict = (
            "-" if ok is None else ("met" if ok else f"**not met**{': ' + shortfall if shortfall else ''}")
        )
        rows.append(f"| {goal} | {measured} | {verdict} |")

    for backend, title in HOP_TITLES.items():
        summary = results.get("hop", {}).get(backend)
        if not summary or "error" in summary:
            continue
        mesh, nginx = summary["mesh-local"], summary["nginx"]
        errors = mesh["errors"] + nginx["errors"]
        failed = f"; {errors} requests failed" if errors else ""
        for pct in ("p50", "p99"):
            mesh_added, nginx_added = mesh[f"added_{pct}_ms"], nginx[f"added_{pct}_ms"]
            factor = round(mesh_added / nginx_added, 2) if nginx_added > 0 else None
            row(
                f"mesh added {pct} ≤ 1.5x nginx's ({title})",
                f"mesh +{mesh_added} ms, nginx +{nginx_added} ms ({factor}x){failed}",
                factor is not None and factor <= 1.5 and not errors,
                f"{factor}x instead of ≤ 1.5x" if factor else "nginx added nothing measurable",
            )
        ratio = mesh["throughput_ratio"]
        row(
            f"mesh throughput ≥ 80 % of direct ({title})",
            f"{ratio:.0%} (nginx {nginx['throughput_ratio']:.0%}){failed}",
            ratio >= 0.8 and not errors,
            f"{0.8 - ratio:.0%} short",
        )
    for goal, measured, ok, shortfall in metrics_cost.goal_checks(results.get("metrics_cost", {})):
        row(goal, measured, ok, shortfall)
    for goal, measured, ok, shortfall in tls_cost.goal_checks(results.get("tls_cost", {})):
        row(goal, measured, ok, shortfall)
    pa = results.get("perf_analyzer")
    if pa and "summary" in pa:
        for goal, measured, ok, shortfall in perf_analyzer.goal_checks(pa):
            row(goal, measured, ok, shortfall)
    cache = results.get("cache")
    if cache and "mesh" in cache:
        for policy, m in cache["mesh"].items():
            baseline = policy == "lru"  # plain LRU is the baseline the mission names, not a candidate
            of_belady = m["of_belady"] or 0.0
            failed = f"; {m['errors']} requests failed" if m["errors"] else ""
            row(
                f"cache hit ratio ≥ 95 % of Belady (mesh, {policy}{', the baseline' if baseline else ''})",
                f"{of_belady:.2f} of Belady (hit ratio {m['hit_ratio']:.3f}){failed}",
                None if baseline else of_belady >= 0.95 and not m["errors"],
                f"{0.95 - of_belady:.2f} short",
            )
    cold = results.get("cold_start")
    if cold and "added_ms" in cold:
        added = cold["added_ms"]["over_load_ms"].get("p50")
        failed = f"; {cold['errors']} requests failed" if cold["errors"] else ""
        row(
            "cold start: mesh added p50 < 50 ms",
            f"{added} ms{failed}",
            added is not None and added < 50 and not cold["errors"],
        )
        loads = cold["loads_per_model"]
        row(
            "cold start: exactly one load per model",
            f"max {loads['max']} loads per model, {loads['models_never_loaded']} never loaded",
            loads["max"] == 1 and loads["models_never_loaded"] == 0,
        )
    ch = results.get("churn")
    if ch and "churn" in ch:
        for goal, measured, ok, shortfall in churn.goal_checks(ch):
            row(goal, measured, ok, shortfall)
    sc = results.get("scale")
    if sc and "propagation_ms" in sc:
        p99 = sc["after_write_ms"].get("p99")
        prop = sc["propagation_ms"]
        missed = prop["expected"] - prop["observed"]
        row(
            f"registry change reaches every pod < 100 ms p99 ({sc['registration']['models']} models)",
            f"p99 {p99} ms after etcd committed it (from the write's start: p99 {prop.get('p99')} ms, "
            f"etcd's own write p99 {sc['write_ms'].get('p99')} ms); {missed} (change, pod) pairs never seen",
            p99 is not None and p99 < 100 and missed == 0,
        )
        ratio = sc["memory"]["per_model_ratio_largest_vs_smallest"]
        row(
            "router memory grows sub-linearly with models",
            f"per-model bytes, largest vs smallest table: {ratio}",
            ratio < 0.9,
            "linear (a fixed cost per model)",
        )
        scaling = sc["placement_scaling"]
        row(
            "placement time grows sub-linearly with pods",
            f"time x{scaling['time_ratio']} for pods x{scaling['pods_ratio']:g}",
            scaling["time_ratio"] < 0.5 * scaling["pods_ratio"],
            "linear: every pod is scored (on a miss only, never per request)",
        )
    return rows


def shortfall_lines(results: dict[str, Any]) -> list[str]:
    """Where the proxy's shortfall comes from, in this run's own figures."""
    echo = results.get("hop", {}).get("echo")
    if not echo or "python-proxy" not in echo:
        return []
    mesh, floor, nginx = echo["mesh-local"], echo["python-proxy"], echo["nginx"]
    lines = [
        "Where the time goes. With --front=grpc a pass through the mesh-local pod costs "
        f"{mesh.get('proxy_cpu_us_per_request')} µs of CPU per request, the least a grpc.aio proxy can do "
        f"(load_tests/naive_proxy.py) {floor.get('proxy_cpu_us_per_request')} µs, nginx "
        f"{nginx.get('proxy_cpu_us_per_request')} µs; the mesh's throughput is "
        f"{mesh['throughput_per_s'] / floor['throughput_per_s']:.0%} of the naive proxy's and its added p50 "
        f"{mesh['added_p50_ms']} ms against the naive proxy's {floor['added_p50_ms']} ms: that front's gap "
        "to the goals is what a Python grpc.aio server and client cost per request, not the mesh's routing.",
    ]
    h2 = results.get("hop", {}).get("echo-h2")
    if h2 and "mesh-local" in h2:
        local, h2_nginx = h2["mesh-local"], h2["nginx"]
        lines[0] += (
            " With --front=h2 (mesh/fronts/h2/front.py: the plain case never enters grpc.aio) the same pass "
            "costs "
            f"{local.get('proxy_cpu_us_per_request')} µs of CPU per request, adds p50 "
            f"{local['added_p50_ms']} ms (nginx in that run: {h2_nginx['added_p50_ms']} ms) and keeps "
            f"{local['throughput_ratio']:.0%} of direct's throughput "
            f"(nginx {h2_nginx['throughput_ratio']:.0%})."
        )
        if "proxy_cpu_us_at_one_in_flight" in local:
            lines[0] += (
                f" At one request in flight (the latency figures) the pod spends "
                f"{local['proxy_cpu_us_at_one_in_flight']} µs of CPU per request, nginx "
                f"{h2_nginx.get('proxy_cpu_us_at_one_in_flight')} µs."
            )
        sleeping = results.get("hop", {}).get("echo-h2sleep")
        if sleeping and "mesh-local" in sleeping:
            asleep = sleeping["mesh-local"]
            lines[0] += (
                " Much of that CPU is busy polling (mesh/process/busy_poll.py, --busy-poll-us, 300 by "
                "default): the loop polls for a moment before it sleeps, so the runtime's answer finds the "
                f"pod awake. With --busy-poll-us=0 the same pod adds p50 {asleep['added_p50_ms']} ms and p99 "
                f"{asleep['added_p99_ms']} ms (nginx in that run: {sleeping['nginx']['added_p50_ms']} / "
                f"{sleeping['nginx']['added_p99_ms']} ms) and spends "
                f"{asleep.get('proxy_cpu_us_at_one_in_flight')} µs per request at one in flight: on this "
                "VM a sleeping pod's wake-ups (two per request, each waking an idle core) cost more latency "
                "than its work."
            )
        pump = h2.get("asyncio-pump")
        if pump and "proxy_cpu_us_at_one_in_flight" in pump:
            lines[0] += (
                " The least any asyncio proxy does (load_tests/byte_pump.py: bytes through, no HTTP/2) adds "
                f"p50 {pump['added_p50_ms']} ms and spends {pump['proxy_cpu_us_at_one_in_flight']} µs per "
                "request at one in flight: the floor of this event loop on these 2 cores, against which the "
                "1.5x-nginx goal leaves the mesh's own work little room."
            )
    cost = results.get("front_cost")
    if cost and "front_us" in cost:
        lines[0] += (
            f" Of it, the front's own work is {cost['front_us']} µs hot and {cost['after_sleep_us']} µs "
            "after a sleep (front_cost); the rest is the event loop, four socket calls, the routing "
            "table and caches the other processes on these 2 cores left cold."
        )
    profile = results.get("profile")
    if profile and "mesh_code_pct" in profile:
        top = ", ".join(f"{frame} {pct} %" for frame, pct in list(profile["top_self_pct"].items())[:2])
        lines[0] += (
            f" The profile (the default front, under load): {profile['mesh_code_pct']} % of the pod's "
            f"samples are in mesh/ code, {profile['grpc_poller_thread_pct']} % in grpc's poller thread; "
            f"most self time: {top} (py-spy samples wall time: a socket write that wakes the process at the "
            "other end stays in the write while that process takes the core, so write and select are where "
            "the pod waits, not what it spends; perf puts about 70 % of the pod's CPU in the "
            "interpreter)."
        )
    return [*lines, ""]


def _run_dates(meta: dict[str, Any]) -> list[str]:
    """Which run each scenario's figures come from, when a later ``--only`` run replaced some of them."""
    dates = meta.get("scenario_runs", {})
    if len(set(dates.values())) < 2:
        return []
    by_run: dict[str, list[str]] = {}
    for name, run in dates.items():
        by_run.setdefault(run, []).append(name)
    return ["Runs: " + "; ".join(f"{', '.join(names)} on {run}" for run, names in sorted(by_run.items())), ""]


def render(results: dict[str, Any], meta: dict[str, Any]) -> str:
    out = [
        "# load_tests results",
        "",
        f"`{meta['command']}` on {meta['date']} ({meta['machine']}), {meta['seconds']} s. "
        "Every figure of a scenario was measured side by side in one run; latencies are medians over rounds "
        "(spreads in results.json). This machine is shared and noisy: compare ratios, not absolute times.",
        "",
        *_run_dates(meta),
        "## Goals",
        "",
        *goal_rows(results),
        "",
        *shortfall_lines(results),
        *[line for note in meta.get("notes", []) for line in (note, "")],
    ]
    hop = results.get("hop")
    if hop:
        out += ["## Hop: what one pass through the mesh costs", ""]
        for backend, title in HOP_TITLES.items():
            if backend in hop:
                table = (
                    [f"failed: {hop[backend]['error']}"]
                    if "error" in hop[backend]
                    else hop_table(hop[backend])
                )
                out += [f"### {title}", "", *table, ""]
        out += [
            "added = the path's figure minus direct's in the same round; proxy CPU = CPU time of the proxy "
            "processes (nginx's workers, the pod(s) on the way) per request at 16 in flight, and at one in "
            "flight (the latency figures' run: the proxy sleeps between reads). python-proxy is "
            "load_tests/naive_proxy.py, the least a grpc.aio proxy does: the mesh's own logic is what it "
            "costs beyond that; asyncio-pump is load_tests/byte_pump.py, bytes through asyncio without "
            "HTTP/2, the least any asyncio proxy does.",
            "",
        ]
    stall = results.get("stalls")
    if stall:
        out += ["## Stalls: sequential tritonclient calls over 30 ms", ""]
        if "error" in stall:
            out += [f"failed: {stall['error']}", ""]
        else:
            out += [
                *stalls.stalls_table(stall),
                "",
                "A fresh tritonclient.grpc InferenceServerClient per round and path, one infer call at a "
                "time (1 KiB FP32 input); the pod runs --front=h2 and holds the model. Counts and latencies "
                "are medians over rounds (the order of the paths alternates); results.json lists each "
                "round's stalls with their call index.",
                "",
            ]
    pa = results.get("perf_analyzer")
    if pa:
        out += [f"## {PERF_ANALYZER_TITLE}", ""]
        if "summary" in pa:
            out += [*perf_analyzer.table_lines(pa), ""]
        out += [f"- {line}" for line in perf_analyzer.report_notes(pa)]
        out.append("")
    for name, title in (
        (
            "front_cost",
            "Front cost: the HTTP/2 front's own work per request, hot, and this machine's wake-up",
        ),
        ("grpc_cost", "gRPC cost: one grpc.aio unary call, and without the event-engine poller for Python"),
        ("metrics_cost", "Metrics cost: the hot path with every series counted, next to metrics off"),
        ("tls_cost", "TLS cost per call: the mesh's HTTP/2 front beside nginx, each with and without TLS"),
        ("multicore", "Multi-core: 1 vs 2 serving processes"),
        ("cache", "Cache: the mesh's hit ratio next to LRU, GDSF, lfu-size and Belady"),
        ("cold_start", "Cold start: a burst of first requests"),
        ("churn", "Churn: real MLServer pods living on their misses"),
        ("scale", "Scale: many models, many pods"),
        ("cache_sim", "Cache policies alone, simulated on a longer trace"),
        ("profile", "Profile: where the local pod's CPU goes"),
    ):
        if name not in results:
            continue
        out += [f"## {title}", ""]
        out += [f"- {line}" for line in scenario_lines(name, results[name])]
        out.append("")
    errors = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and "error" in v}
    if errors:
        out += ["## Scenarios that failed", ""] + [f"- {k}: {v}" for k, v in errors.items()] + [""]
    return "\n".join(out)


def scenario_lines(name: str, result: dict[str, Any]) -> list[str]:
    if "error" in result:
        return [f"failed: {result['error']}"]
    if name == "cache":
        return cache_scenario.summary_lines(result)
    if name == "cold_start":
        return cold_start.summary_lines(result)
    if name == "churn":
        return churn.summary_lines(result)
    if name == "stalls":
        return stalls.summary_lines(result)
    if name == "front_cost":
        return front_cost.summary_lines(result)
    if name == "grpc_cost":
        return grpc_cost.summary_lines(result)
    if name == "metrics_cost":
        return metrics_cost.summary_lines(result)
    if name == "tls_cost":
        return tls_cost.summary_lines(result)
    if name == "perf_analyzer":
        return perf_analyzer.summary_lines(result)
    if name == "scale":
        return scale.summary_lines(result)
    if name == "multicore":
        lines = [
            f"{n} serving process(es): {r['throughput_per_s']} req/s through the mesh "
            f"({r['throughput_ratio_to_direct']:.0%} of direct in the same setup), "
            f"added p50 {r['added_p50_ms']} ms, {r['proxy_cpu_us_per_request']} µs CPU per request"
            for n, r in result.items()
            if n.isdigit()
        ]
        if "scaling_2_over_1" in result:
            lines.append(
                f"2 over 1 process: x{result['scaling_2_over_1']} req/s, "
                f"x{result['ratio_scaling_2_over_1']} in ratio to direct. The load generator, the echo "
                "runtime and the pod share this machine's 2 cores."
            )
        return lines
    if name == "cache_sim":
        return [result["setup"]] + [
            f"{r['policy']}: hit ratio {r['hit_ratio_median']:.3f} ({r['of_belady_median']:.2f} of Belady)"
            for r in result["rows"]
        ]
    if name == "profile":
        top = ", ".join(
            f"{frame} {pct} %" for frame, pct in list(result["top_mesh_inclusive_pct"].items())[:6]
        )
        self_top = ", ".join(f"{frame} {pct} %" for frame, pct in list(result["top_self_pct"].items())[:5])
        return [
            f"{result['samples']} samples; frames in mesh/ (the mesh's own code, inclusive): "
            f"{result['mesh_code_pct']} %; grpc's poller thread: {result['grpc_poller_thread_pct']} %",
            f"most self time: {self_top}",
            f"mesh functions (inclusive): {top}",
        ]
    return [json.dumps(result)[:500]]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="longer runs, more rounds, 100k models")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where RESULTS.md and results.json go")
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch (default: a temp dir, removed)")
    parser.add_argument("--render-only", action="store_true", help="rewrite RESULTS.md from results.json")
    args = parser.parse_args(argv)
    if args.render_only:
        saved = json.loads((args.out_dir / "results.json").read_text())
        (args.out_dir / "RESULTS.md").write_text(render(saved, saved.pop("meta")) + "\n")
        return
    chosen = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="mesh-load-"))
    began = time.time()
    results: dict[str, Any] = {}
    for name in chosen:
        print(f"== {name}", flush=True)
        started = time.time()
        try:
            results[name] = run_scenario(name, work_dir, args.full)
        except Exception as e:  # one failed scenario must not lose the others' figures
            traceback.print_exc()
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"   {name}: {time.time() - started:.0f} s", flush=True)
        if "error" not in results[name]:
            for line in scenario_lines(name, results[name]) if name != "hop" else []:
                print("   " + line, flush=True)
    meta = {
        "command": "python -m load_tests.run"
        + (" --full" if args.full else "")
        + (f" --only {args.only}" if args.only else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
        "seconds": round(time.time() - began),
    }
    saved_path = args.out_dir / "results.json"
    if args.only and saved_path.exists():  # a subset replaces only its own scenarios' figures
        saved = json.loads(saved_path.read_text())
        earlier = saved.pop("meta", {})
        runs = earlier.get("scenario_runs") or {name: earlier.get("date", "?") for name in saved}
        results = {**saved, **results}
        meta["scenario_runs"] = {**runs, **{name: meta["date"] for name in chosen}}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps({"meta": meta, **results}, indent=1) + "\n")
    (args.out_dir / "RESULTS.md").write_text(render(results, meta) + "\n")
    print(f"wrote {args.out_dir / 'RESULTS.md'} and results.json ({meta['seconds']} s)")
    if args.work_dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
