"""Scenario "stalls": sequential tritonclient calls, counting those over 30 ms, direct and through the mesh.

A client as a user writes it: a fresh ``tritonclient.grpc.InferenceServerClient``, then one ``infer`` call at
a time (1 KiB FP32 input), ``calls`` of them. Each call's wall time is measured; a call over ``stall_ms`` is a
stall. Paths, per backend (the echo runtime, Triton's python backend):

- direct: client -> runtime
- mesh:   client -> the pod holding the model (``--front=h2``) -> its runtime

Rounds alternate the order of the paths (a shared machine drifts); each figure is the median over rounds,
with every round's count kept. Each path gets one uncounted call first (on a client of its own: a Triton
model's first execution takes tens of ms). The first call of each fresh client (channel set-up) is counted
like the others and reported alone as well.

    .venv/bin/python -m load_tests.stalls [--rounds 3] [--calls 1000] [--backends echo,triton] [--out f.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from harness.cluster import EtcdServer, LocalMesh
from harness.demo import ADD_ONE_CONFIG, ADD_ONE_MODEL
from harness.triton import triton_installed
from load_tests.echo_runtime import MODEL_TYPE
from load_tests.hop import register
from load_tests.loadgen import percentile
from load_tests.processes import EchoProcess, start_echo_pod

log = logging.getLogger(__name__)

STALL_BACKENDS = ("echo", "triton")
PATHS = ("direct", "mesh")
LISTED_STALLS = 20  # per round: the first stalls' call indices and times, to see where they fall


@dataclass(frozen=True)
class StallSettings:
    rounds: int = 3
    calls: int = 1000  # per round and path, one at a time
    stall_ms: float = 30.0
    payload_bytes: int = 1024
    timeout_s: float = 30.0  # per call


@dataclass
class SequentialRun:
    """One fresh client's ``calls`` sequential infer calls on one path."""

    calls: int
    ok: int
    errors: dict[str, int]
    stalls: int  # successful calls over stall_ms
    p50_ms: float
    p99_ms: float
    max_ms: float
    first_call_ms: float
    seconds: float
    stall_calls: list[tuple[int, float]]  # (index, ms) of the first LISTED_STALLS stalls


def infer_input(payload_bytes: int) -> triton.InferInput:
    count = payload_bytes // 4
    tensor = triton.InferInput("INPUT0", [count], "FP32")
    tensor.set_data_from_numpy(np.zeros(count, dtype=np.float32))
    return tensor


def sequential_calls(address: str, model_id: str, settings: StallSettings) -> SequentialRun:
    """A fresh InferenceServerClient on ``address``, ``settings.calls`` infer calls one after another."""
    inputs = [infer_input(settings.payload_bytes)]
    latencies_ms: list[float] = []
    stall_calls: list[tuple[int, float]] = []
    errors: Counter[str] = Counter()
    first_call_ms = 0.0
    began = time.perf_counter()
    client = triton.InferenceServerClient(address)
    try:
        for index in range(settings.calls):
            start = time.perf_counter()
            try:
                client.infer(model_id, inputs, client_timeout=settings.timeout_s)
            except InferenceServerException as e:
                errors[str(e.status())] += 1
                continue
            ms = (time.perf_counter() - start) * 1000
            if index == 0:
                first_call_ms = ms
            latencies_ms.append(ms)
            if ms > settings.stall_ms and len(stall_calls) < LISTED_STALLS:
                stall_calls.append((index, round(ms, 1)))
    finally:
        client.close()
    ordered = sorted(latencies_ms)
    return SequentialRun(
        calls=settings.calls,
        ok=len(ordered),
        errors=dict(errors),
        stalls=sum(1 for ms in ordered if ms > settings.stall_ms),
        p50_ms=round(percentile(ordered, 0.50), 3),
        p99_ms=round(percentile(ordered, 0.99), 3),
        max_ms=round(ordered[-1], 3) if ordered else 0.0,
        first_call_ms=round(first_call_ms, 3),
        seconds=round(time.perf_counter() - began, 2),
        stall_calls=stall_calls,
    )


def _median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 3) if values else 0.0


def summarize_runs(runs: Sequence[SequentialRun], settings: StallSettings) -> dict[str, Any]:
    """One path: medians over rounds, every round's stall count, the stalls listed per round."""
    return {
        stall_key(settings): _median([r.stalls for r in runs]),
        "stalls_per_round": [r.stalls for r in runs],
        "stall_fraction": _median([r.stalls / r.ok for r in runs if r.ok]),
        "p50_ms": _median([r.p50_ms for r in runs]),
        "p99_ms": _median([r.p99_ms for r in runs]),
        "max_ms": _median([r.max_ms for r in runs]),
        "first_call_ms": _median([r.first_call_ms for r in runs]),
        "calls_per_round": settings.calls,
        "errors": sum(sum(r.errors.values()) for r in runs),
        "error_codes": dict(sum((Counter(r.errors) for r in runs), Counter())),
        "stall_calls_by_round": [r.stall_calls for r in runs],
    }


def stall_key(settings: StallSettings) -> str:
    return f"stalls_over_{settings.stall_ms:g}ms"


def warm_up(address: str, model_id: str, settings: StallSettings) -> None:
    """One call on a client of its own, not counted: the model's first execution is not the path's."""
    client = triton.InferenceServerClient(address)
    try:
        client.infer(model_id, [infer_input(settings.payload_bytes)], client_timeout=settings.timeout_s)
    finally:
        client.close()


def measure(routes: dict[str, str], model_id: str, settings: StallSettings) -> dict[str, Any]:
    """Every path, ``settings.rounds`` times, the order alternating; per path the summary of its rounds."""
    for address in routes.values():
        warm_up(address, model_id, settings)
    runs: dict[str, list[SequentialRun]] = {path: [] for path in routes}
    order = list(routes)
    for index in range(settings.rounds):
        shift = index % len(order)
        for path in order[shift:] + order[:shift]:
            runs[path].append(sequential_calls(routes[path], model_id, settings))
    summary: dict[str, Any] = {path: summarize_runs(runs[path], settings) for path in order}
    key = stall_key(settings)
    if "direct" in summary and "mesh" in summary:
        summary["mesh_added_p50_ms"] = round(summary["mesh"]["p50_ms"] - summary["direct"]["p50_ms"], 3)
        summary["mesh_added_stalls"] = round(summary["mesh"][key] - summary["direct"][key], 3)
    return summary


@contextlib.contextmanager
def echo_routes(work_dir: Path, model_id: str) -> Iterator[dict[str, str]]:
    """etcd, the echo runtime and one pod (--front=h2) holding the model."""
    with contextlib.ExitStack() as stack:
        etcd = EtcdServer.start(work_dir / "etcd")
        stack.callback(etcd.process.stop)
        echo = EchoProcess.start(work_dir / "echo")
        stack.callback(echo.stop)
        pod = start_echo_pod(work_dir / "pod", etcd, echo, "pod-a", extra_args=["--front=h2"])
        stack.callback(pod.process.stop)
        register(pod.address, model_id, MODEL_TYPE, "size=1000000")
        yield {"direct": echo.address, "mesh": pod.address}


@contextlib.contextmanager
def triton_routes(work_dir: Path, model_id: str) -> Iterator[dict[str, str]]:
    """etcd and a Triton pod stack (--front=h2) holding a python-backend model that adds one."""
    source = work_dir / "models" / "add-one"
    (source / "1").mkdir(parents=True, exist_ok=True)
    (source / "config.pbtxt").write_text(ADD_ONE_CONFIG)  # the adapter renames it to the model id
    (source / "1" / "model.py").write_text(ADD_ONE_MODEL)
    with LocalMesh(work_dir / "mesh", pods=0, triton_pods=1, pod_args=["--front=h2"]) as mesh:
        holder = mesh.stacks[0]
        assert holder.pod is not None
        register(holder.pod.address, model_id, "python", str(source))
        yield {"direct": holder.runtime.grpc_address, "mesh": holder.pod.address}


def run_stalls(
    work_dir: Path, settings: StallSettings, backends: Sequence[str] | None = None
) -> dict[str, Any]:
    chosen = (
        list(backends)
        if backends is not None
        else [b for b in STALL_BACKENDS if b != "triton" or triton_installed()]
    )
    results: dict[str, Any] = {"settings": asdict(settings)}
    for backend in chosen:
        model_id = f"stalls-{backend}"
        try:
            routes = echo_routes if backend == "echo" else triton_routes
            with routes(work_dir / backend, model_id) as addresses:
                results[backend] = measure(addresses, model_id, settings)
        except Exception as e:  # one backend failing must not lose the other's figures
            log.exception("stalls on %s failed", backend)
            results[backend] = {"error": f"{type(e).__name__}: {e}"}
    return results


BACKEND_TITLES = {"echo": "echo backend", "triton": "Triton python backend"}


def stalls_table(result: dict[str, Any]) -> list[str]:
    settings = StallSettings(**result["settings"])
    key = stall_key(settings)
    lines = [
        f"| backend | path | calls over {settings.stall_ms:g} ms (median of {settings.rounds} rounds of "
        f"{settings.calls}) | per round | p50 ms | p99 ms | max ms | first call ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, title in BACKEND_TITLES.items():
        entry = result.get(backend)
        if entry is None:
            continue
        if "error" in entry:
            lines.append(f"| {title} | failed: {entry['error']} | | | | | | | |")
            continue
        for path in PATHS:
            e = entry[path]
            lines.append(
                f"| {title} | {path} | {e[key]:g} | {', '.join(str(n) for n in e['stalls_per_round'])} "
                f"| {e['p50_ms']} | {e['p99_ms']} | {e['max_ms']} | {e['first_call_ms']} | {e['errors']} |"
            )
    return lines


def summary_lines(result: dict[str, Any]) -> list[str]:
    settings = StallSettings(**result["settings"])
    key = stall_key(settings)
    lines = []
    for backend, title in BACKEND_TITLES.items():
        entry = result.get(backend)
        if entry is None:
            continue
        if "error" in entry:
            lines.append(f"{title}: failed: {entry['error']}")
            continue
        direct, mesh = entry["direct"], entry["mesh"]
        lines.append(
            f"{title}: calls over {settings.stall_ms:g} ms per {settings.calls}, direct {direct[key]:g} "
            f"{direct['stalls_per_round']}, mesh {mesh[key]:g} {mesh['stalls_per_round']}; p50/p99 direct "
            f"{direct['p50_ms']}/{direct['p99_ms']} ms, mesh {mesh['p50_ms']}/{mesh['p99_ms']} ms"
            + (
                f"; {direct['errors'] + mesh['errors']} calls failed"
                if direct["errors"] + mesh["errors"]
                else ""
            )
        )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=StallSettings.rounds)
    parser.add_argument("--calls", type=int, default=StallSettings.calls)
    parser.add_argument("--stall-ms", type=float, default=StallSettings.stall_ms)
    parser.add_argument(
        "--backends", default="", help=f"comma-separated subset of {','.join(STALL_BACKENDS)}"
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON to this file")
    parser.add_argument(
        "--work-dir", type=Path, help="the processes' data and logs (default: a temporary dir)"
    )
    args = parser.parse_args(argv)
    settings = StallSettings(rounds=args.rounds, calls=args.calls, stall_ms=args.stall_ms)
    backends = [b for b in args.backends.split(",") if b] or None
    with tempfile.TemporaryDirectory(prefix="mesh-stalls-") as scratch:
        result = run_stalls(args.work_dir or Path(scratch), settings, backends)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join([*summary_lines(result), "", *stalls_table(result)]))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
