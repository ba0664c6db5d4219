"""The perf_analyzer scenario's pure parts (its report and error text into figures, ratios to direct), on
output captured from real runs, and the installed binary runs."""

from __future__ import annotations

import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from load_tests.perf_analyzer import (
    PerfSettings,
    concurrency_range,
    error_text,
    goal_checks,
    parse_report,
    perf_analyzer_argv,
    perf_analyzer_binary,
    perf_analyzer_installed,
    report_notes,
    summarize,
    summary_lines,
    table_lines,
)
from load_tests.run import render

# `perf_analyzer -i grpc -f <file> --concurrency-range 1:16:15 ...` against Triton 2.51.0 directly (with the
# server-side columns, from ModelStatistics) and over HTTP through a mesh pod (without them).
DIRECT_CSV = """\
Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,\
Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
1,2982.86,2,136,27,9,84,70,0,242,363,437,1862
16,5353.31,2,967,1851,8,72,75,0,2768,4635,5354,8900
"""
MESH_CSV = """\
Concurrency,Inferences/Second,Client Send,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
1,1438.87,43,0,648,824,913,1233
16,3662.92,57,0,3951,5985,7201,10085
"""
# What it printed when it could not run (exit code 99 each time).
CONFIG_REFUSED = (
    "error: failed to get model config: failed to parse the request JSON buffer: The document root must not "
    "be followed by other values. at 3\n"
)
UNREACHABLE = (
    "error: failed to get model metadata: failed to connect to all addresses; last error: UNKNOWN: "
    "ipv4:127.0.0.1:9: Failed to connect to remote host: Connection refused\n\n"
)
BAD_OPTIONS = """\
Error: request-count not supported with multiple concurrency values in one run
Usage: /work/main/.perf_analyzer/bin/perf_analyzer [options]
==== SYNOPSIS ====

\t--version
\t-m <model name>
"""


def test_the_report_becomes_figures_per_concurrency_in_ms() -> None:
    direct = parse_report(DIRECT_CSV)
    assert set(direct) == {"1", "16"}
    assert direct["1"] == {
        "throughput_per_s": 2982.9,
        "p50_ms": 0.242,
        "p90_ms": 0.363,
        "p95_ms": 0.437,
        "p99_ms": 1.862,
        "server_side": True,
        "server_queue_ms": 0.027,
        "server_compute_infer_ms": 0.084,
    }
    mesh = parse_report(MESH_CSV)
    assert mesh["16"]["throughput_per_s"] == 3662.9 and mesh["16"]["p99_ms"] == 10.085
    assert mesh["16"]["server_side"] is False and "server_queue_ms" not in mesh["16"]


def test_an_empty_report_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_report(MESH_CSV.splitlines()[0] + "\n")


def test_a_failed_run_is_told_in_perf_analyzers_own_words() -> None:
    assert error_text(CONFIG_REFUSED, 99) == CONFIG_REFUSED.strip() + " (exit code 99)"
    assert error_text(UNREACHABLE).startswith("error: failed to get model metadata: failed to connect")
    # the usage text that follows an option error is left out
    assert (
        error_text(BAD_OPTIONS)
        == "Error: request-count not supported with multiple concurrency values in one run"
    )
    assert error_text("first\nsecond\nthird\nfourth\n") == "second | third | fourth"
    assert error_text("") == "no output"


def test_the_command_is_a_fixed_measurement() -> None:
    assert concurrency_range((1, 16)) == "1:16:15" and concurrency_range((4,)) == "4"
    assert concurrency_range((1, 2, 3)) == "1:3:1"
    with pytest.raises(ValueError):
        concurrency_range((1, 2, 4))
    argv = perf_analyzer_argv(Path("pa"), "m", "127.0.0.1:1", "http", PerfSettings(), Path("out.csv"))
    flags = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert flags["-m"] == "m" and flags["-u"] == "127.0.0.1:1" and flags["-i"] == "http"
    assert flags["--concurrency-range"] == "1:16:15" and flags["--shape"] == "INPUT0:256"
    assert flags["--max-trials"] == "3" and flags["--stability-percentage"] == "999"
    assert flags["-f"] == "out.csv"


def measured(csv: str) -> dict[str, Any]:
    return {"figures": parse_report(csv), "seconds": 8.0}


def test_paths_are_compared_with_direct_in_the_same_round_and_failures_kept() -> None:
    refused = {"error": error_text(CONFIG_REFUSED, 99), "seconds": 0.1}
    one_round = {
        "grpc/direct": measured(DIRECT_CSV),
        "grpc/mesh-local": measured(MESH_CSV),
        "grpc/mesh-remote": {"error": "the forwarding pod did not start: RuntimeError: pod-b exited"},
        "http/direct": measured(DIRECT_CSV),
        "http/mesh-local": refused,
        "http/mesh-remote": refused,
    }
    summary = summarize([one_round, one_round])
    local = summary["grpc"]["mesh-local"]
    assert local["rounds"] == 2 and "errors" not in local
    assert local["16"]["throughput_ratio"] == round(3662.9 / 5353.3, 3)
    assert local["1"]["p50_ratio"] == round(0.648 / 0.242, 2)
    assert local["1"]["added_p99_ms"] == round(1.233 - 1.862, 3)
    assert local["1"]["server_side"] is False and summary["grpc"]["direct"]["1"]["server_side"] is True
    assert "throughput_ratio" not in summary["grpc"]["direct"]["1"]
    assert summary["grpc"]["mesh-remote"]["error"].startswith("the forwarding pod did not start")
    assert summary["http"]["mesh-local"] == {"error": refused["error"], "failed_rounds": 2}

    result = {
        "settings": asdict(PerfSettings(rounds=2)),
        "perf_analyzer": "2.51.0",
        "server": "triton 2.51.0",
        "rounds": [one_round, one_round],
        "summary": summary,
    }
    goals = {goal: (measured_text, ok) for goal, measured_text, ok, _ in goal_checks(result)}
    grpc_goal = (
        "perf_analyzer through the mesh (gRPC, mesh-local): throughput at 16 in flight ≥ 80% of direct"
    )
    assert goals[grpc_goal] == ("68% (3662.9 infer/s, p99 x1.13)", False)
    http_goal = grpc_goal.replace("gRPC", "HTTP")
    assert (
        goals[http_goal][0].startswith("fails: error: failed to get model config") and not goals[http_goal][1]
    )
    lines = summary_lines(result)
    assert lines[0].startswith("perf_analyzer 2.51.0 against triton 2.51.0: concurrency 1, 16")
    assert any(
        line.startswith("HTTP mesh-local: fails (2 of 2 rounds): error: failed to get") for line in lines
    )
    assert "| gRPC | mesh-local | 16 | 3662.9 | 0.684 |" in "\n".join(table_lines(result))
    report = render(
        {"perf_analyzer": result}, {"command": "test", "date": "today", "machine": "here", "seconds": 1}
    )
    assert "## perf_analyzer" in report and grpc_goal in report
    assert "- No server-side figures through gRPC mesh-local: perf_analyzer leaves them out" in report


def test_a_machine_without_it_is_told_why() -> None:
    assert summary_lines({"skipped": "perf_analyzer is not installed"}) == [
        "skipped: perf_analyzer is not installed"
    ]
    assert goal_checks({"skipped": "x"}) == [] and table_lines({"skipped": "x"}) == []
    assert report_notes({"skipped": "x"}) == ["skipped: x"]


@pytest.mark.skipif(
    not perf_analyzer_installed(), reason="perf_analyzer is not installed (setup-perf-analyzer.sh)"
)
def test_the_installed_binary_runs() -> None:
    # Every shared library resolves (the loader would exit 127 first); it has no --help option, so it names
    # the option unknown, prints its usage and exits 99.
    usage = subprocess.run(
        [str(perf_analyzer_binary()), "--help"], capture_output=True, text=True, timeout=30
    )
    assert usage.returncode == 99, usage.stderr
    assert "==== SYNOPSIS ====" in usage.stdout + usage.stderr
    version = subprocess.run(
        [str(perf_analyzer_binary()), "--version"], capture_output=True, text=True, timeout=30
    )
    assert version.returncode == 0 and "Perf Analyzer Version 2.51.0" in version.stdout + version.stderr
