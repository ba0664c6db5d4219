"""Run a real MLServer as a child process (tests and the local demo)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_mlserver_bin() -> Path:
    """The mlserver executable of this repository's dedicated MLServer venv."""
    return REPO_ROOT / ".venv-mlserver" / "bin" / "mlserver"


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to 0 and release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class MLServerStartError(RuntimeError):
    """MLServer exited or did not become ready in time."""


class MLServerProcess:
    """A running ``mlserver start <repo>``; stop it with stop() or use it as a context manager."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        host: str,
        grpc_port: int,
        http_port: int,
        metrics_port: int,
        log_path: Path,
        log_file: IO[bytes],
    ) -> None:
        self._popen = popen
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.metrics_port = metrics_port
        self.log_path = log_path
        self._log_file = log_file

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @classmethod
    def start(
        cls,
        repository_dir: Path,
        mlserver_bin: Path | None = None,
        work_dir: Path | None = None,
        host: str = "127.0.0.1",
        ready_timeout_s: float = 60.0,
    ) -> MLServerProcess:
        mlserver_bin = mlserver_bin or default_mlserver_bin()
        work_dir = work_dir or repository_dir.parent
        work_dir.mkdir(parents=True, exist_ok=True)
        repository_dir.mkdir(parents=True, exist_ok=True)
        grpc_port, http_port, metrics_port = free_port(host), free_port(host), free_port(host)
        env = dict(os.environ)
        # The parent may run inside another venv; don't let it leak into MLServer's interpreter.
        for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(key, None)
        env.update(
            {
                "MLSERVER_HOST": host,
                "MLSERVER_HTTP_PORT": str(http_port),
                "MLSERVER_GRPC_PORT": str(grpc_port),
                "MLSERVER_METRICS_PORT": str(metrics_port),
                "MLSERVER_LOAD_MODELS_AT_STARTUP": "false",
                # Parallel workers multiply memory per model and crash with recent uvloop.
                "MLSERVER_PARALLEL_WORKERS": "0",
            }
        )
        log_path = work_dir / "mlserver.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the process object, closed in stop()
        popen = subprocess.Popen(
            [str(mlserver_bin), "start", str(repository_dir)],
            cwd=work_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = cls(popen, host, grpc_port, http_port, metrics_port, log_path, log_file)
        try:
            proc._wait_ready(ready_timeout_s)
        except BaseException:
            proc.stop()
            raise
        return proc

    def log_tail(self, max_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-max_chars:]
        except OSError:
            return ""

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.grpc_address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            while True:
                code = self._popen.poll()
                if code is not None:
                    raise MLServerStartError(f"mlserver exited with {code}:\n{self.log_tail()}")
                try:
                    if stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=1.0).ready:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise MLServerStartError(f"mlserver not ready after {timeout_s}s:\n{self.log_tail()}")
                time.sleep(0.1)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the process group (MLServer may have children), SIGKILL after ``timeout_s``."""
        if self._popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._popen.wait(timeout=timeout_s)
        else:
            # The leader is gone but children of its session may linger.
            self._signal_group(signal.SIGKILL)
        if not self._log_file.closed:
            self._log_file.close()

    def _signal_group(self, sig: signal.Signals) -> None:
        # start_new_session made the child a group leader: its pgid is its pid. Never signal by name.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._popen.pid, sig)

    def __enter__(self) -> MLServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
