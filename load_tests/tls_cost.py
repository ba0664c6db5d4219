"""Scenario "tls_cost": what TLS costs per call on the mesh's HTTP/2 front, beside what it costs nginx.

One echo runtime behind four routes, measured in the same rounds: nginx ``grpc_pass`` plaintext and with
TLS (``listen ssl http2``), and a one-pod mesh (the HTTP/2 front, holding the model) plaintext and with
TLS on its external port (``--tls-cert``; the pod's calls to its runtime stay on loopback). Each round
times sequential calls (added p50 over direct) and calls at 16 in flight (CPU per call of the proxy's
processes); the client keeps its connection, as gRPC clients do, so the figures are the cost of record
encryption per call, not of handshakes. The figure is, per proxy, TLS minus plaintext, medians over rounds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.certificates import MeshCertificates
from harness.cluster import EtcdServer
from load_tests.echo_runtime import MODEL_TYPE
from load_tests.hop import HopSettings, Route, compare_paths, infer_request, register
from load_tests.processes import EchoProcess, NginxProcess, start_echo_pod

MODEL_ID = "tls-cost"


@contextlib.contextmanager
def tls_paths(work_dir: Path) -> Iterator[dict[str, Route]]:
    certificates = MeshCertificates.create(work_dir / "certs")
    credentials = certificates.client_credentials()
    with contextlib.ExitStack() as stack:
        echo = EchoProcess.start(work_dir / "echo", "echo")
        stack.callback(echo.stop)
        nginx = NginxProcess.start(work_dir / "nginx", echo.address)
        stack.callback(nginx.stop)
        nginx_cert = certificates.issue(certificates.mesh_ca, "nginx")
        nginx_tls = NginxProcess.start(work_dir / "nginx-tls", echo.address, tls=nginx_cert)
        stack.callback(nginx_tls.stop)
        routes = {
            "direct": Route(echo.address),
            "nginx": Route(nginx.address, (nginx.process.pid,)),
            "nginx-tls": Route(nginx_tls.address, (nginx_tls.process.pid,), credentials),
        }
        # two one-pod meshes (their own etcd each), on the same echo runtime
        for name, extra in (("mesh", []), ("mesh-tls", certificates.pod_args("pod-tls"))):
            etcd = EtcdServer.start(work_dir / f"etcd-{name}")
            stack.callback(etcd.process.stop)
            tls = credentials if extra else None
            pod = start_echo_pod(
                work_dir / name, etcd, echo, name, extra_args=["--front=h2", *extra], credentials=tls
            )
            stack.callback(pod.process.stop)
            register(pod.address, MODEL_ID, MODEL_TYPE, "size=1000000", credentials=tls)
            routes[name] = Route(pod.address, (pod.process.pid,), tls)
        yield routes


def tls_added(summary: dict[str, Any], proxy: str) -> dict[str, float]:
    plain, tls = summary[proxy], summary[f"{proxy}-tls"]
    return {
        "p50_ms": round(tls["added_p50_ms"] - plain["added_p50_ms"], 3),
        "cpu_us": round(
            tls.get("proxy_cpu_us_per_request", 0.0) - plain.get("proxy_cpu_us_per_request", 0.0), 1
        ),
        "throughput_ratio": round(tls["throughput_per_s"] / plain["throughput_per_s"], 3)
        if plain["throughput_per_s"]
        else 0.0,
    }


async def run_tls_cost(work_dir: Path, settings: HopSettings, rounds: int = 9) -> dict[str, Any]:
    # CPU time is read in 10 ms ticks: enough requests per measurement that a tick is small beside the cost
    settings = HopSettings(
        **{
            **settings.__dict__,
            "rounds": rounds,
            "throughput_requests": max(8000, settings.throughput_requests),
        }
    )
    with tls_paths(work_dir) as routes:
        summary, measured = await compare_paths(routes, infer_request(MODEL_ID), settings)
    per_round_cpu = {
        proxy: [
            r[f"{proxy}-tls"]["throughput"].extra.get("proxy_cpu_us_per_request", 0.0)
            - r[proxy]["throughput"].extra.get("proxy_cpu_us_per_request", 0.0)
            for r in measured
        ]
        for proxy in ("nginx", "mesh")
    }
    return {
        "settings": settings.__dict__,
        "paths": summary,
        "tls_added": {proxy: tls_added(summary, proxy) for proxy in ("nginx", "mesh")},
        "tls_added_cpu_per_round": {k: [round(x, 1) for x in v] for k, v in per_round_cpu.items()},
        "errors": sum(v.get("errors", 0) for v in summary.values() if isinstance(v, dict)),
    }


def goal_checks(result: dict[str, Any]) -> list[tuple[str, str, bool | None, str]]:
    added = result.get("tls_added")
    if not added:
        return []
    mesh, nginx = added["mesh"], added["nginx"]
    factor = round(mesh["cpu_us"] / nginx["cpu_us"], 2) if nginx["cpu_us"] > 0 else None
    # no goal was set for it: reported beside nginx's (the row reads "measured")
    return [
        (
            "what TLS adds per call, mesh beside nginx",
            f"mesh +{mesh['cpu_us']} µs CPU, +{mesh['p50_ms']} ms p50, "
            f"throughput x{mesh['throughput_ratio']}; "
            f"nginx +{nginx['cpu_us']} µs, +{nginx['p50_ms']} ms, x{nginx['throughput_ratio']}"
            + (f" (CPU {factor}x nginx's)" if factor else ""),
            None,
            "",
        )
    ]


def summary_lines(result: dict[str, Any]) -> list[str]:
    paths, added = result["paths"], result["tls_added"]
    lines = []
    for name in ("nginx", "nginx-tls", "mesh", "mesh-tls"):
        p = paths[name]
        lines.append(
            f"{name}: added p50 {p['added_p50_ms']} ms over direct, {p['throughput_per_s']} req/s at "
            f"{result['settings']['concurrency']} in flight ({p['throughput_ratio']:.0%} of direct), "
            f"{p.get('proxy_cpu_us_per_request')} µs CPU per call"
        )
    for proxy in ("nginx", "mesh"):
        a = added[proxy]
        lines.append(
            f"TLS on {proxy}: +{a['p50_ms']} ms p50, +{a['cpu_us']} µs CPU per call (per round: "
            f"{result['tls_added_cpu_per_round'][proxy]}), throughput x{a['throughput_ratio']} of plaintext"
        )
    lines.append(
        "Connections are kept (gRPC clients reuse theirs): this is the record layer's cost per call, "
        "handshakes excluded. The mesh terminates TLS with asyncio's ssl (OpenSSL, as nginx)."
    )
    return lines
