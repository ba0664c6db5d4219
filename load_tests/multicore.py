"""Scenario "multi-core": one pod with 1 and with 2 serving processes (SO_REUSEPORT), same backend.

The client opens several connections, so the kernel spreads them over the
processes listening on the pod's port. Each setup measures direct calls too,
so every figure is also a ratio to direct in the same setup. On this 2-core
machine the client, the echo runtime and the mesh share the cores: a second
serving process can only help as far as a core has idle time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from load_tests.hop import HopSettings, compare_paths, echo_paths, infer_request


async def run_multicore(
    work_dir: Path, settings: HopSettings, processes: tuple[int, ...] = (1, 2)
) -> dict[str, Any]:
    results: dict[str, Any] = {"settings": settings.__dict__}
    for count in processes:
        with echo_paths(work_dir / f"processes-{count}", "multi-core", serving_processes=count) as routes:
            chosen = {path: routes[path] for path in ("direct", "mesh-local")}
            summary, _ = await compare_paths(chosen, infer_request("multi-core"), settings)
        mesh = summary["mesh-local"]
        results[str(count)] = {
            "throughput_per_s": mesh["throughput_per_s"],
            "throughput_ratio_to_direct": mesh["throughput_ratio"],
            "direct_throughput_per_s": summary["direct"]["throughput_per_s"],
            "added_p50_ms": mesh["added_p50_ms"],
            "loaded_p99_ms": mesh["loaded_p99_ms"],
            "proxy_cpu_us_per_request": mesh.get("proxy_cpu_us_per_request"),
            "errors": mesh["errors"],
        }
    if "1" in results and "2" in results and results["1"]["throughput_per_s"]:
        results["scaling_2_over_1"] = round(
            results["2"]["throughput_per_s"] / results["1"]["throughput_per_s"], 2
        )
        results["ratio_scaling_2_over_1"] = round(
            results["2"]["throughput_ratio_to_direct"] / results["1"]["throughput_ratio_to_direct"], 2
        )
    return results
