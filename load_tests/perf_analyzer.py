"""Scenario "perf_analyzer": Triton's own load generator, through the mesh and next to Triton directly.

A client nobody here wrote: ``perf_analyzer`` (C++, from the tritonclient 2.51.0 wheel; deploy/local/
setup-perf-analyzer.sh installs it in ``.perf_analyzer/``). Before it sends a request it asks the server for
the model's metadata and config (gRPC ModelMetadata and ModelConfig, HTTP ``/v2/models/{m}`` and
``/v2/models/{m}/config``), and around each measurement for every model's statistics (ModelStatistics with no
name, ``/v2/models/stats``: the server-side figures, left out when that call fails). A path that cannot
serve the first two fails here with perf_analyzer's own error text, recorded in place of its figures.

etcd, a Triton pod stack holding a python-backend model that adds one (1 KiB FP32 input, like "hop"), and an
echo pod that cannot hold it (it forwards to the holder). Per protocol (``-i grpc`` and ``-i http``), paths:

- direct:      perf_analyzer -> Triton's gRPC / HTTP port
- mesh-local:  perf_analyzer -> the holder pod's gRPC / REST port -> its Triton
- mesh-remote: perf_analyzer -> the echo pod's gRPC / REST port -> the holder -> its Triton

Each run is a fixed measurement: concurrency 1 and 16 (synchronous, one thread per request in flight), each
``windows`` time windows of ``window_ms`` (``-s 999 -r <windows>``: never a longer search for stability),
figures from its CSV report (``-f``): throughput, p50/p90/p95/p99 latency. Rounds rotate the order of the
runs; ratios to direct are taken in the same round, protocol and concurrency, and every figure is the median
over rounds.

    .venv/bin/python -m load_tests.perf_analyzer [--full] [--rounds N] [--out FILE] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import json
import logging
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from harness.cluster import LocalMesh
from harness.demo import ADD_ONE_CONFIG, ADD_ONE_MODEL
from harness.processes import REPO_ROOT
from harness.triton import triton_installed
from load_tests.hop import register
from load_tests.processes import EchoProcess, start_echo_pod
from protos import model_runtime_pb2 as spi
from protos import model_runtime_pb2_grpc as spi_grpc

log = logging.getLogger(__name__)

PERF_ANALYZER_DIR = REPO_ROOT / ".perf_analyzer"
MODEL_ID = "perf-triton"
PROTOCOLS = ("grpc", "http")
PATHS = ("direct", "mesh-local", "mesh-remote")
PROTOCOL_TITLES = {"grpc": "gRPC", "http": "HTTP"}
GOAL_THROUGHPUT_RATIO = 0.8  # docs/ARCHITECTURE.md: ≥ 80 % of direct's throughput at 16 in flight
US_PER_MS = 1000.0


@dataclass(frozen=True)
class PerfSettings:
    rounds: int = 3
    concurrency: tuple[int, ...] = (1, 16)
    window_ms: int = 1000
    windows: int = 3  # per concurrency: -r with a stability threshold never missed (-s 999)
    elements: int = 256  # FP32 per request: 1 KiB
    timeout_s: float = 180.0  # one perf_analyzer run


QUICK = PerfSettings()
FULL = PerfSettings(rounds=3, window_ms=2000)


# -- perf_analyzer -----------------------------------------------------------------------------------------
def perf_analyzer_binary(directory: Path = PERF_ANALYZER_DIR) -> Path:
    """The command setup-perf-analyzer.sh writes: the binary with its libraries on LD_LIBRARY_PATH."""
    return directory / "perf_analyzer"


def perf_analyzer_installed(directory: Path = PERF_ANALYZER_DIR) -> bool:
    return perf_analyzer_binary(directory).is_file() and (directory / ".installed").is_file()


def perf_analyzer_version(binary: Path | None = None) -> str:
    """'2.51.0' from ``perf_analyzer --version`` ('Perf Analyzer Version 2.51.0 (commit unknown)')."""
    reply = subprocess.run(
        [str(binary or perf_analyzer_binary()), "--version"], capture_output=True, text=True, timeout=30
    )
    found = re.search(r"Version (\S+)", reply.stdout + reply.stderr)
    return found.group(1) if found else (reply.stdout + reply.stderr).strip()[:200]


def concurrency_range(levels: Sequence[int]) -> str:
    """perf_analyzer's ``start:end:step`` for evenly spaced levels: (1, 16) -> '1:16:15', (4,) -> '4'."""
    if len(levels) == 1:
        return str(levels[0])
    steps = {b - a for a, b in itertools.pairwise(levels)}
    if len(steps) != 1 or min(steps) <= 0:
        raise ValueError(f"concurrency levels {levels} are not evenly spaced upwards")
    return f"{levels[0]}:{levels[-1]}:{steps.pop()}"


def perf_analyzer_argv(
    binary: Path, model: str, url: str, protocol: str, settings: PerfSettings, report: Path
) -> list[str]:
    return [
        str(binary),
        "-m",
        model,
        "-u",
        url,
        "-i",
        protocol,
        "--shape",
        f"INPUT0:{settings.elements}",
        "--concurrency-range",
        concurrency_range(settings.concurrency),
        "--measurement-mode",
        "time_windows",
        "--measurement-interval",
        str(settings.window_ms),
        "--stability-percentage",
        "999",
        "--max-trials",
        str(settings.windows),
        "-f",
        str(report),
    ]


# the CSV report's columns (latencies in µs) -> our names (ms)
_LATENCY_COLUMNS = {f"p{n} latency": f"p{n}_ms" for n in (50, 90, 95, 99)}
SERVER_COLUMN = "Server Queue"  # only there when perf_analyzer got the model's statistics


def parse_report(text: str) -> dict[str, dict[str, Any]]:
    """perf_analyzer's ``-f`` CSV -> per concurrency (as a string): throughput and latencies in ms, and
    whether the server-side columns (from ModelStatistics) are there."""
    rows = list(csv.DictReader(io.StringIO(text)))
    figures: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not row.get("Concurrency"):
            continue
        entry: dict[str, Any] = {"throughput_per_s": round(float(row["Inferences/Second"]), 1)}
        for column, name in _LATENCY_COLUMNS.items():
            entry[name] = round(float(row[column]) / US_PER_MS, 3)
        entry["server_side"] = SERVER_COLUMN in row
        if entry["server_side"]:
            entry["server_queue_ms"] = round(float(row[SERVER_COLUMN]) / US_PER_MS, 3)
            entry["server_compute_infer_ms"] = round(float(row["Server Compute Infer"]) / US_PER_MS, 3)
        figures[str(int(row["Concurrency"]))] = entry
    if not figures:
        raise ValueError(f"no rows in perf_analyzer's report: {text[:200]!r}")
    return figures


_ERROR_LINE = re.compile(r"^\s*(error|failed|fail)\b", re.IGNORECASE)


def error_text(output: str, exit_code: int | None = None, chars: int = 600) -> str:
    """perf_analyzer's own words for a failed run: its ``error: ...`` lines (usage text dropped), else the
    last lines it printed."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if _ERROR_LINE.match(line)]
    chosen = list(dict.fromkeys(errors)) or lines[-3:]
    text = " | ".join(chosen)[:chars] or "no output"
    return text if exit_code is None else f"{text} (exit code {exit_code})"


def run_once(
    binary: Path, model: str, url: str, protocol: str, settings: PerfSettings, work_dir: Path, label: str
) -> dict[str, Any]:
    """One perf_analyzer run: {"figures": per concurrency} or {"error": its text}; never raises for the
    run itself failing (a path the mesh cannot serve yet is a result)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    report, output = work_dir / f"{label}.csv", work_dir / f"{label}.log"
    report.unlink(missing_ok=True)
    argv = perf_analyzer_argv(binary, model, url, protocol, settings, report)
    started = time.monotonic()
    try:
        with output.open("w") as log_file:
            # subprocess.run kills it (by its PID: the wrapper execs the binary) on a timeout or any exception
            reply = subprocess.run(
                argv, stdout=log_file, stderr=subprocess.STDOUT, timeout=settings.timeout_s, cwd=work_dir
            )
        exit_code: int | None = reply.returncode
    except subprocess.TimeoutExpired:
        exit_code = None
    seconds = round(time.monotonic() - started, 1)
    text = output.read_text(errors="replace")
    if exit_code is None:
        return {"error": f"timed out after {settings.timeout_s:g} s: {error_text(text)}", "seconds": seconds}
    if exit_code != 0 or not report.is_file():
        return {"error": error_text(text, exit_code), "seconds": seconds}
    try:
        return {"figures": parse_report(report.read_text()), "seconds": seconds}
    except (ValueError, KeyError) as e:
        return {"error": f"unreadable report: {e}", "seconds": seconds}


# -- the figures -------------------------------------------------------------------------------------------
def _median(values: list[float], digits: int = 3) -> float | None:
    return round(statistics.median(values), digits) if values else None


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """rounds: [{"<protocol>/<path>": run_once's result}] -> per protocol and path: medians over the rounds
    that measured it, ratios to direct in the same round, and the errors of the rounds that failed."""
    summary: dict[str, Any] = {}
    for protocol in PROTOCOLS:
        per_path: dict[str, Any] = {}
        for path in PATHS:
            runs = [r.get(f"{protocol}/{path}") for r in rounds]
            measured = [(i, run["figures"]) for i, run in enumerate(runs) if run and "figures" in run]
            failed = [run["error"] for run in runs if run and "error" in run]
            errors = list(dict.fromkeys(failed))  # each text once
            if not measured:
                if errors:
                    per_path[path] = {"error": errors[0], "failed_rounds": len(failed)}
                continue
            entry: dict[str, Any] = {"rounds": len(measured)}
            if errors:
                entry["errors"], entry["failed_rounds"] = errors, len(failed)
            for level in measured[0][1]:
                at = [(i, figures[level]) for i, figures in measured if level in figures]
                figures_entry: dict[str, Any] = {
                    name: _median([f[name] for _, f in at], 1 if name == "throughput_per_s" else 3)
                    for name in ("throughput_per_s", "p50_ms", "p90_ms", "p95_ms", "p99_ms")
                }
                figures_entry["server_side"] = all(f["server_side"] for _, f in at)
                if path != "direct":
                    direct = [
                        (f, rounds[i][f"{protocol}/direct"]["figures"].get(level))
                        for i, f in at
                        if "figures" in rounds[i].get(f"{protocol}/direct", {})
                    ]
                    pairs = [(f, d) for f, d in direct if d]
                    figures_entry["throughput_ratio"] = _median(
                        [
                            f["throughput_per_s"] / d["throughput_per_s"]
                            for f, d in pairs
                            if d["throughput_per_s"]
                        ]
                    )
                    for pct in ("p50", "p99"):
                        figures_entry[f"{pct}_ratio"] = _median(
                            [f[f"{pct}_ms"] / d[f"{pct}_ms"] for f, d in pairs if d[f"{pct}_ms"]], 2
                        )
                        figures_entry[f"added_{pct}_ms"] = _median(
                            [f[f"{pct}_ms"] - d[f"{pct}_ms"] for f, d in pairs]
                        )
                entry[level] = figures_entry
            per_path[path] = entry
        summary[protocol] = per_path
    return summary


# -- the processes -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    grpc: str
    http: str

    def url(self, protocol: str) -> str:
        return self.grpc if protocol == "grpc" else self.http


@dataclass
class Setup:
    """What came up: each path's addresses, or why it could not be set up (the other paths still run)."""

    endpoints: dict[str, Endpoint]
    errors: dict[str, str]


def _short(error: BaseException) -> str:
    """A process's failure in a line or two: harness errors carry the whole log tail."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) <= 2:
        return f"{type(error).__name__}: {' '.join(lines)}"
    return f"{type(error).__name__}: {lines[0]} ... {lines[-1]}"


def load_directly(adapter_address: str, model_id: str, source: Path) -> None:
    """The model into Triton through its adapter's SPI, as the mesh would: for direct, when no pod is up."""
    with grpc.insecure_channel(adapter_address) as channel:
        spi_grpc.ModelRuntimeStub(channel).loadModel(
            spi.LoadModelRequest(modelId=model_id, modelType="python", modelPath=str(source)), timeout=120
        )


@contextlib.contextmanager
def triton_endpoints(work_dir: Path, model_id: str = MODEL_ID) -> Iterator[Setup]:
    """etcd, a Triton pod stack holding the add-one python model, and an echo pod that forwards to it.

    Triton and its adapter must start; a mesh pod that does not (or a registration that fails) is recorded
    as its paths' error, and the model is then loaded through the adapter so direct is still measured."""
    source = work_dir / "models" / "add-one"
    (source / "1").mkdir(parents=True, exist_ok=True)
    (source / "config.pbtxt").write_text(ADD_ONE_CONFIG)  # the adapter renames it to the model id
    (source / "1" / "model.py").write_text(ADD_ONE_MODEL)
    errors: dict[str, str] = {}
    with LocalMesh(work_dir / "mesh", pods=0, triton_pods=0) as mesh, contextlib.ExitStack() as stack:
        assert mesh.etcd is not None
        try:
            mesh.add_triton_pod("triton-a")  # the stack joins mesh.stacks before its pod starts
        except Exception as e:
            if not mesh.stacks:
                raise  # Triton or its adapter did not start: nothing to measure
            errors["mesh-local"] = errors["mesh-remote"] = f"the Triton pod did not start: {_short(e)}"
        holder = mesh.stacks[0]
        remote = None
        if holder.pod is not None:
            try:
                echo = EchoProcess.start(work_dir / "echo-b", "echo-b")
                stack.callback(echo.stop)
                remote = start_echo_pod(work_dir / "pod-b", mesh.etcd, echo, "pod-b")  # cannot hold it
                stack.callback(remote.process.stop)
            except Exception as e:
                errors["mesh-remote"] = f"the forwarding pod did not start: {_short(e)}"
            try:
                register(holder.pod.address, model_id, "python", str(source))
            except Exception as e:
                errors["mesh-local"] = errors["mesh-remote"] = f"registerModel through the mesh: {_short(e)}"
        if "mesh-local" in errors:
            load_directly(holder.adapter.address, model_id, source)
        endpoints = {"direct": Endpoint(holder.runtime.grpc_address, holder.runtime.http_address)}
        if holder.pod is not None and "mesh-local" not in errors:
            endpoints["mesh-local"] = Endpoint(holder.pod.address, holder.pod.rest_address)
        if remote is not None and "mesh-remote" not in errors:
            endpoints["mesh-remote"] = Endpoint(remote.address, remote.rest_address)
        yield Setup(endpoints, errors)


def server_version(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        reply = v2_grpc.GRPCInferenceServiceStub(channel).ServerMetadata(
            v2.ServerMetadataRequest(), timeout=10
        )
        return f"{reply.name} {reply.version}"


def not_installed() -> str | None:
    """Why the scenario cannot run here (None: it can)."""
    if not triton_installed():
        return "Triton is not installed (deploy/local/setup-triton.sh)"
    if not perf_analyzer_installed():
        return "perf_analyzer is not installed (deploy/local/setup-perf-analyzer.sh)"
    return None


def run_perf_analyzer(
    work_dir: Path, full: bool = False, settings: PerfSettings | None = None
) -> dict[str, Any]:
    settings = settings or (FULL if full else QUICK)
    missing = not_installed()
    if missing:
        return {"skipped": missing}
    binary = perf_analyzer_binary()
    result: dict[str, Any] = {
        "settings": asdict(settings),
        "perf_analyzer": perf_analyzer_version(binary),
    }
    runs = [(protocol, path) for protocol in PROTOCOLS for path in PATHS]
    rounds: list[dict[str, dict[str, Any]]] = []
    with triton_endpoints(work_dir / "mesh") as setup:
        result["server"] = server_version(setup.endpoints["direct"].grpc)
        if setup.errors:
            result["setup_errors"] = setup.errors
        for index in range(settings.rounds):
            shift = index % len(runs)
            this_round: dict[str, dict[str, Any]] = {}
            for protocol, path in runs[shift:] + runs[:shift]:
                if path not in setup.endpoints:
                    this_round[f"{protocol}/{path}"] = {"error": setup.errors[path]}
                    continue
                label = f"round{index}-{protocol}-{path}"
                url = setup.endpoints[path].url(protocol)
                outcome = run_once(binary, MODEL_ID, url, protocol, settings, work_dir / "runs", label)
                log.info("%s: %s", label, outcome.get("error") or "measured")
                this_round[f"{protocol}/{path}"] = outcome
            rounds.append(this_round)
    result["rounds"] = rounds
    result["summary"] = summarize(rounds)
    return result


# -- the report --------------------------------------------------------------------------------------------
def _fmt(value: Any, suffix: str = "") -> str:
    return "-" if value is None else f"{value:g}{suffix}"


def table_lines(result: dict[str, Any]) -> list[str]:
    """RESULTS.md's table: every protocol, path and concurrency, with the ratios to direct."""
    if "summary" not in result:
        return []
    lines = [
        "| protocol | path | in flight | infer/s | of direct | p50 ms | p99 ms | p50 x direct | p99 x direct "
        "| server-side stats |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for protocol, per_path in result["summary"].items():
        for path in PATHS:
            entry = per_path.get(path)
            if entry is None:
                continue
            title = PROTOCOL_TITLES.get(protocol, protocol)
            if "error" in entry:
                lines.append(f"| {title} | {path} | failed: {entry['error']} | | | | | | | |")
                continue
            for level in (k for k in entry if k.isdigit()):
                f = entry[level]
                lines.append(
                    f"| {title} | {path} | {level} | {_fmt(f['throughput_per_s'])} "
                    f"| {_fmt(f.get('throughput_ratio'))} | {_fmt(f['p50_ms'])} | {_fmt(f['p99_ms'])} "
                    f"| {_fmt(f.get('p50_ratio'))} | {_fmt(f.get('p99_ratio'))} "
                    f"| {'yes' if f['server_side'] else 'no'} |"
                )
    return lines


def summary_lines(result: dict[str, Any]) -> list[str]:
    if "skipped" in result:
        return [f"skipped: {result['skipped']}"]
    if "error" in result:
        return [f"failed: {result['error']}"]
    s = PerfSettings(**{**result["settings"], "concurrency": tuple(result["settings"]["concurrency"])})
    lines = [
        f"perf_analyzer {result['perf_analyzer']} against {result['server']}: concurrency "
        f"{', '.join(map(str, s.concurrency))} (synchronous), {s.windows} windows of {s.window_ms} ms each, "
        f"{s.elements} FP32 per request, {s.rounds} rounds; medians over rounds"
    ]
    for protocol, per_path in result["summary"].items():
        title = PROTOCOL_TITLES.get(protocol, protocol)
        for path in PATHS:
            entry = per_path.get(path)
            if entry is None:
                continue
            if "error" in entry:
                lines.append(
                    f"{title} {path}: fails ({entry['failed_rounds']} of {s.rounds} rounds): {entry['error']}"
                )
                continue
            parts = []
            for level in (k for k in entry if k.isdigit()):
                f = entry[level]
                ratios = (
                    f" ({f['throughput_ratio']:.0%} of direct; p50 x{_fmt(f['p50_ratio'])}, p99 "
                    f"x{_fmt(f['p99_ratio'])})"
                    if f.get("throughput_ratio") is not None
                    else ""
                )
                parts.append(
                    f"{level} in flight {_fmt(f['throughput_per_s'])} infer/s, p50 {_fmt(f['p50_ms'])} ms, "
                    f"p99 {_fmt(f['p99_ms'])} ms{ratios}"
                )
            server = (
                ""
                if all(entry[k]["server_side"] for k in entry if k.isdigit())
                else (
                    "; no server-side figures (perf_analyzer drops them when its statistics call for every "
                    "model, ModelStatistics without a name or GET /v2/models/stats, fails)"
                )
            )
            failed = (
                f"; failed in {entry['failed_rounds']} rounds: {entry['errors'][0]}"
                if "errors" in entry
                else ""
            )
            lines.append(f"{title} {path}: " + "; ".join(parts) + server + failed)
    return lines


def report_notes(result: dict[str, Any]) -> list[str]:
    """RESULTS.md's lines under the table: how it was measured, and what the table cannot show."""
    lines = summary_lines(result)
    if "summary" not in result:
        return lines
    notes = [lines[0]]
    missing = [
        f"{PROTOCOL_TITLES.get(protocol, protocol)} {path}"
        for protocol, per_path in result["summary"].items()
        for path, entry in per_path.items()
        if "error" not in entry and not all(entry[k]["server_side"] for k in entry if k.isdigit())
    ]
    if missing:
        notes.append(
            f"No server-side figures through {', '.join(missing)}: perf_analyzer leaves them out when its "
            "statistics call for every model (ModelStatistics without a name, GET /v2/models/stats) fails."
        )
    notes += [
        f"{PROTOCOL_TITLES.get(protocol, protocol)} {path} failed in {entry['failed_rounds']} of the rounds: "
        f"{entry['errors'][0]}"
        for protocol, per_path in result["summary"].items()
        for path, entry in per_path.items()
        if "errors" in entry
    ]
    return notes


def goal_checks(result: dict[str, Any]) -> list[tuple[str, str, bool | None, str]]:
    """(goal, measured, met, shortfall) rows: perf_analyzer's throughput through the holder pod."""
    if "summary" not in result:
        return []
    rows: list[tuple[str, str, bool | None, str]] = []
    top = str(max(result["settings"]["concurrency"]))
    for protocol, per_path in result["summary"].items():
        title = PROTOCOL_TITLES.get(protocol, protocol)
        goal = (
            f"perf_analyzer through the mesh ({title}, mesh-local): throughput at {top} in flight "
            f"≥ {GOAL_THROUGHPUT_RATIO:.0%} of direct"
        )
        entry = per_path.get("mesh-local")
        if entry is None:
            continue
        if "error" in entry:
            rows.append(
                (goal, f"fails: {entry['error']}", False, "perf_analyzer cannot run through the mesh")
            )
            continue
        ratio = entry.get(top, {}).get("throughput_ratio")
        if ratio is None:
            rows.append((goal, "no figure at that concurrency", None, ""))
            continue
        rows.append(
            (
                goal,
                f"{ratio:.0%} ({entry[top]['throughput_per_s']:g} infer/s, "
                f"p99 x{_fmt(entry[top]['p99_ratio'])})",
                ratio >= GOAL_THROUGHPUT_RATIO,
                f"{GOAL_THROUGHPUT_RATIO - ratio:.0%} short",
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="longer windows")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", type=Path, help="write the figures as JSON to this file")
    parser.add_argument(
        "--work-dir", type=Path, help="the processes' data and logs (default: a temporary dir)"
    )
    args = parser.parse_args(argv)
    settings = FULL if args.full else QUICK
    if args.rounds:
        settings = PerfSettings(**{**asdict(settings), "rounds": args.rounds})
    with tempfile.TemporaryDirectory(prefix="mesh-perf-analyzer-") as scratch:
        result = run_perf_analyzer(args.work_dir or Path(scratch), settings=settings)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join([*summary_lines(result), "", *table_lines(result)]))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        main()
