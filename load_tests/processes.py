"""The benchmark's own processes: the echo runtime, nginx as a gRPC proxy, and mesh pods in front of echo.

Everything binds to 127.0.0.1 on free ports and is stopped by its PID (the
``ChildProcess`` of harness/cluster.py); callers use them as context managers.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil

from harness.cluster import EtcdCluster, EtcdServer, PodProcess
from harness.processes import REPO_ROOT, ChildProcess, free_port, grpc_connectable
from load_tests.echo_runtime import MODEL_TYPE, STATS_METHOD


@dataclass
class EchoProcess:
    """The echo runtime: both the pod's adapter (SPI) and its serving runtime, on one port."""

    process: ChildProcess
    address: str

    @classmethod
    def start(
        cls,
        work_dir: Path,
        name: str = "echo",
        capacity_bytes: int = 1 << 30,
        preload: tuple[str, ...] = (),
        max_loading_concurrency: int = 4,
    ) -> EchoProcess:
        work_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        process = ChildProcess(
            name,
            [
                sys.executable,
                "-m",
                "load_tests.echo_runtime",
                f"--port={port}",
                f"--capacity-bytes={capacity_bytes}",
                f"--max-loading-concurrency={max_loading_concurrency}",
                *(f"--preload={model_id}" for model_id in preload),
            ],
            work_dir / f"{name}.log",
            env={"PYTHONPATH": str(REPO_ROOT)},  # load_tests is not an installed package
        )
        address = f"127.0.0.1:{port}"
        process.wait_until(lambda: grpc_connectable(address), 30, "echo runtime port open")
        return cls(process, address)

    # what PodProcess needs of a runtime and of an adapter
    @property
    def grpc_address(self) -> str:
        return self.address

    @property
    def http_address(self) -> str:
        return "127.0.0.1:9"  # no REST: the benchmarks use gRPC

    def metric(self, name: str, labels: str = "") -> float:
        return 0.0

    def stop(self) -> None:
        self.process.stop()

    def stats(self) -> dict[str, Any]:
        """Loads per model, unloads, models held."""
        with grpc.insecure_channel(self.address) as channel:
            raw: bytes = channel.unary_unary(STATS_METHOD)(b"", timeout=10)
        result: dict[str, Any] = json.loads(raw)
        return result


@dataclass
class FloorProxyProcess:
    """A floor to measure a proxy against: load_tests/naive_proxy.py (the least a grpc.aio proxy does) or
    load_tests/byte_pump.py (the least any asyncio proxy does)."""

    process: ChildProcess
    address: str

    @classmethod
    def start(cls, work_dir: Path, backend: str, module: str = "naive_proxy") -> FloorProxyProcess:
        address = f"127.0.0.1:{free_port()}"
        name = module.replace("_", "-")
        process = ChildProcess(
            name,
            [sys.executable, "-m", f"load_tests.{module}", f"--listen={address}", f"--backend={backend}"],
            work_dir / f"{name}.log",
            env={"PYTHONPATH": str(REPO_ROOT)},
        )
        process.wait_until(lambda: grpc_connectable(address), 30, f"{name} port open")
        return cls(process, address)

    def stop(self) -> None:
        self.process.stop()


def start_echo_pod(
    work_dir: Path,
    etcd: EtcdServer | EtcdCluster,
    echo: EchoProcess,
    pod_id: str,
    model_types: str = MODEL_TYPE,
    extra_args: list[str] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> PodProcess:
    """A mesh pod whose adapter and runtime are ``echo`` (``credentials``: a client's, when it serves TLS)."""
    return PodProcess.start(
        work_dir, etcd, echo, echo, pod_id, extra_args, model_types=model_types, credentials=credentials
    )


NGINX_CONFIG = """\
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream backend {{
        server {backend};
        keepalive 64;
    }}
    server {{
        listen {listen} {tls}http2;
        http2_max_concurrent_streams 1024;{certificate}
        location / {{
            grpc_pass grpc://backend;
            grpc_read_timeout 60s;
        }}
    }}
}}
"""


def tcp_open(host: str, port: int) -> bool:
    with socket.create_connection((host, port), 2):
        return True


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


@dataclass
class NginxProcess:
    """nginx ``grpc_pass`` in front of one backend: the baseline a proxy's added latency is compared with."""

    process: ChildProcess
    address: str

    @classmethod
    def start(
        cls, work_dir: Path, backend: str, workers: int = 1, tls: tuple[Path, Path] | None = None
    ) -> NginxProcess:
        """``tls``: (certificate chain, private key) to terminate TLS with, as the mesh's front does."""
        binary = nginx_binary()
        if binary is None:
            raise FileNotFoundError(
                "nginx is not installed (deploy/local/setup-bench.sh installs nginx-light)"
            )
        work_dir.mkdir(parents=True, exist_ok=True)
        address = f"127.0.0.1:{free_port()}"
        config = work_dir / "nginx.conf"
        certificate = (
            f"\n        ssl_certificate {tls[0]};\n        ssl_certificate_key {tls[1]};"
            "\n        ssl_session_cache shared:tls:1m;"
            if tls
            else ""
        )
        config.write_text(
            NGINX_CONFIG.format(
                workers=workers,
                dir=work_dir,
                backend=backend,
                listen=address,
                tls="ssl " if tls else "",
                certificate=certificate,
            )
        )
        process = ChildProcess(
            "nginx",
            [binary, "-p", str(work_dir), "-c", str(config), "-e", str(work_dir / "error.log")],
            work_dir / "nginx.log",
        )
        if tls:
            host, port = address.rsplit(":", 1)
            process.wait_until(lambda: tcp_open(host, int(port)), 15, "nginx listening")
        else:
            process.wait_until(lambda: grpc_connectable(address), 15, "nginx listening")
        return cls(process, address)

    def stop(self) -> None:
        self.process.stop()


def listening_processes(pod: PodProcess) -> int:
    """How many of the pod's processes listen on its gRPC port (its main process and serving processes)."""
    port = int(pod.address.rsplit(":", 1)[1])
    main = psutil.Process(pod.process.pid)
    count = 0
    for process in [main, *main.children()]:
        with contextlib.suppress(psutil.Error):
            if any(c.laddr.port == port and c.status == "LISTEN" for c in process.net_connections("tcp")):
                count += 1
    return count


def wait_for_serving_processes(pod: PodProcess, count: int, timeout_s: float = 30.0) -> None:
    pod.process.wait_until(lambda: listening_processes(pod) >= count, timeout_s, f"{count} serving processes")
