"""Triton on loopback, as child processes: a real ``tritonserver`` and the Triton adapter.

Development and test tooling, like harness.cluster; both build on harness.processes (ChildProcess, free_port,
the readiness probes). deploy/local/setup-triton.sh installs the runtime: ``.venv-triton`` (nvidia-pytriton,
onnxruntime) and ``.triton/`` (tritonserver, the python backend and its stub, copied out of the wheel).
Every process gets free ports, its own process group and log file, and is stopped by its PID (never by name).
"""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from harness.processes import REPO_ROOT, VENV_BIN, ChildProcess, free_port, grpc_connectable, v2_server_ready

TRITON_DIR = REPO_ROOT / ".triton"
TRITON_VENV = REPO_ROOT / ".venv-triton"


def triton_binary(triton_dir: Path = TRITON_DIR) -> Path:
    return triton_dir / "bin" / "tritonserver"


def triton_installed(triton_dir: Path = TRITON_DIR) -> bool:
    """True when setup-triton.sh has installed tritonserver and its python backend stub."""
    return (
        triton_binary(triton_dir).is_file()
        and (triton_dir / "backends" / "python" / "triton_python_backend_stub").is_file()
    )


def triton_python(venv: Path = TRITON_VENV) -> Path:
    """The Triton runtime's interpreter (numpy<2, onnxruntime, onnx): for scripts that must run there."""
    return venv / "bin" / "python"


def triton_library_path(triton_dir: Path = TRITON_DIR, venv: Path = TRITON_VENV) -> Path:
    """Where tritonserver's shared libraries live: ``<site-packages>/nvidia_pytriton.libs``."""
    recorded = triton_dir / "ld-library-path"  # written by setup-triton.sh
    if recorded.is_file():
        path = Path(recorded.read_text().strip())
        if path.is_dir():
            return path
    found = sorted(venv.glob("lib/python3*/site-packages/nvidia_pytriton.libs"))
    if not found:
        raise FileNotFoundError(f"no nvidia_pytriton.libs under {venv}: run deploy/local/setup-triton.sh")
    return found[-1]


def triton_env(triton_dir: Path = TRITON_DIR, venv: Path = TRITON_VENV) -> dict[str, str]:
    """Environment for tritonserver: its libraries, and the runtime venv's python3 first on PATH (the
    python backend's stubs import numpy, onnxruntime, ... from it)."""
    return {
        "LD_LIBRARY_PATH": str(triton_library_path(triton_dir, venv)),
        # First, so the mesh venv's python3 (numpy 2) never shadows the runtime's.
        "PATH": os.pathsep.join([str(venv / "bin"), os.environ.get("PATH", "")]),
    }


@dataclass
class TritonProcess:
    """A real ``tritonserver --model-control-mode=explicit`` on free loopback ports."""

    process: ChildProcess
    host: str
    grpc_port: int
    http_port: int
    metrics_port: int  # 0: metrics off
    repository_dir: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def log_tail(self, chars: int = 3000) -> str:
        return self.process.log_tail(chars)

    def alive(self) -> bool:
        return self.process.alive()

    @classmethod
    def start(
        cls,
        repository_dir: Path,
        work_dir: Path | None = None,
        host: str = "127.0.0.1",
        ready_timeout_s: float = 60.0,
        metrics: bool = False,
        triton_dir: Path = TRITON_DIR,
        venv: Path = TRITON_VENV,
        extra_args: list[str] | None = None,
    ) -> TritonProcess:
        repository_dir = repository_dir.absolute()
        work_dir = (work_dir or repository_dir.parent).absolute()
        work_dir.mkdir(parents=True, exist_ok=True)
        repository_dir.mkdir(parents=True, exist_ok=True)
        binary = triton_binary(triton_dir)
        if not binary.is_file():
            raise FileNotFoundError(f"no {binary}: run deploy/local/setup-triton.sh")
        grpc_port, http_port = free_port(host), free_port(host)
        metrics_port = free_port(host) if metrics else 0
        metrics_args = (
            ["--allow-metrics=true", f"--metrics-address={host}", f"--metrics-port={metrics_port}"]
            if metrics
            else ["--allow-metrics=false"]
        )
        argv = [
            str(binary),
            f"--model-repository={repository_dir}",
            "--model-control-mode=explicit",
            f"--backend-directory={triton_dir / 'backends'}",
            "--allow-gpu-metrics=false",
            *metrics_args,
            "--exit-timeout-secs=5",
            # Strict readiness turns ServerReady false for good after any failed model load.
            "--strict-readiness=false",
            f"--grpc-address={host}",
            f"--grpc-port={grpc_port}",
            f"--http-address={host}",
            f"--http-port={http_port}",
            *(extra_args or []),
        ]
        process = ChildProcess(
            "tritonserver",
            argv,
            work_dir / "tritonserver.log",
            env=triton_env(triton_dir, venv),
            cwd=work_dir,
        )
        server = cls(process, host, grpc_port, http_port, metrics_port, repository_dir)
        try:
            process.wait_until(lambda: v2_server_ready(server.grpc_address), ready_timeout_s, "ServerReady")
        except BaseException:
            process.stop()
            raise
        return server

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the process group (tritonserver and its stubs), SIGKILL after ``timeout_s``."""
        self.process.stop(timeout_s)

    def restart(self, ready_timeout_s: float = 60.0) -> None:
        """Start again on the same ports and repository (a runtime container restarted by its kubelet).
        The pid changes: an adapter started with --triton-pid must be told, or left to discover it."""
        self.process.restart()
        self.process.wait_until(lambda: v2_server_ready(self.grpc_address), ready_timeout_s, "ServerReady")

    def __enter__(self) -> TritonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def scrape_metric(port: int, name: str, labels: str = "") -> float:
    """One sample from a Prometheus endpoint on 127.0.0.1:``port`` (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


def adapter_command() -> list[str]:
    """The Triton adapter CLI: the console script when installed, else the module."""
    script = VENV_BIN / "modelmesh-triton-adapter"
    if script.exists():
        return [str(script)]
    return [str(VENV_BIN / "python"), "-m", "runtime_adapters.triton.main"]


@dataclass
class TritonAdapterProcess:
    """The Triton adapter CLI as a child process, in front of a TritonProcess."""

    process: ChildProcess
    address: str
    metrics_port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(
        cls,
        work_dir: Path,
        triton: TritonProcess,
        capacity_bytes: int,
        min_model_size_bytes: int = 0,
        repository_dir: Path | None = None,
        extra_args: list[str] | None = None,
        ready_timeout_s: float = 30.0,
    ) -> TritonAdapterProcess:
        port, metrics_port = free_port(), free_port()
        process = ChildProcess(
            "triton-adapter",
            [
                *adapter_command(),
                f"--port={port}",
                f"--triton-grpc={triton.grpc_address}",
                f"--triton-pid={triton.pid}",
                f"--repository-dir={repository_dir or triton.repository_dir}",
                f"--capacity-bytes={capacity_bytes}",
                f"--min-model-size-bytes={min_model_size_bytes}",
                f"--metrics-port={metrics_port}",
                *(extra_args or []),
            ],
            work_dir / "triton-adapter.log",
            cwd=REPO_ROOT,
        )
        address = f"127.0.0.1:{port}"
        try:
            process.wait_until(lambda: grpc_connectable(address), ready_timeout_s, "adapter port open")
        except BaseException:
            process.stop()
            raise
        return cls(process, address, metrics_port)

    def metric(self, name: str, labels: str = "") -> float:
        """One sample from the adapter's Prometheus endpoint (0 when absent)."""
        return scrape_metric(self.metrics_port, name, labels)

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> TritonAdapterProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
