"""A local mesh on loopback, as child processes: etcd, MLServer, the MLServer adapter, mesh pods.

Development and test tooling, not part of a deployed pod (there, each process is its own container).

Used by the demo and the integration tests. Every process gets free ports, its
own process group and log file, and is stopped by its PID (never by name).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from harness.processes import (
    VENV_BIN,
    ChildProcess,
    default_mlserver_bin,
    etcd_binary,
    free_port,
    grpc_connectable,
    grpc_serving,
    v2_server_ready,
)

# The parent may run inside another venv; a child with its own interpreter must not inherit it.


@dataclass(frozen=True)
class EtcdSecurity:
    """TLS with client certificates, and optionally users: how a secured etcd is started and reached."""

    ca: Path  # signed etcd's certificate and the clients' certificates
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    username: str = ""
    password: str = ""
    granted_prefix: str = ""  # the user may read and write only under this prefix ("" : everything)


@dataclass
class EtcdServer:
    process: ChildProcess
    work_dir: Path
    client_port: int
    peer_port: int
    security: EtcdSecurity | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.security else 'http'}://{self.endpoint}"

    @classmethod
    def start(
        cls, work_dir: Path, client_port: int = 0, peer_port: int = 0, security: EtcdSecurity | None = None
    ) -> EtcdServer:
        """Start etcd on free ports, or on the given ones (a restart keeps its ports and data)."""
        client, peer = client_port or free_port(), peer_port or free_port()
        scheme = "https" if security else "http"
        tls_args = (
            [
                f"--cert-file={security.server_cert}",
                f"--key-file={security.server_key}",
                f"--trusted-ca-file={security.ca}",
                "--client-cert-auth",
            ]
            if security
            else []
        )
        process = ChildProcess(
            "etcd",
            [
                str(etcd_binary()),
                "--name=mesh-local",
                f"--data-dir={work_dir / 'etcd-data'}",
                f"--listen-client-urls={scheme}://127.0.0.1:{client}",
                f"--advertise-client-urls={scheme}://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=mesh-local=http://127.0.0.1:{peer}",
                "--log-level=warn",
                *tls_args,
            ],
            work_dir / "etcd.log",
        )
        context = None
        if security:
            context = ssl.create_default_context(cafile=str(security.ca))
            context.load_cert_chain(str(security.client_cert), str(security.client_key))

        def healthy() -> bool:
            with urllib.request.urlopen(
                f"{scheme}://127.0.0.1:{client}/health", timeout=2, context=context
            ) as reply:
                return b'"health":"true"' in reply.read()

        process.wait_until(healthy, 30, "etcd health")
        server = cls(process, work_dir, client, peer, security)
        if security and security.username and not client_port:  # a restart keeps its users
            server.enable_auth()
        return server

    def etcdctl(self, *args: str) -> str:
        """Run etcdctl against this server with the client certificate (once auth is on, pass --user)."""
        command = [str(etcd_binary().with_name("etcdctl")), f"--endpoints={self.url}", *args]
        if self.security:
            command[2:2] = [
                f"--cacert={self.security.ca}",
                f"--cert={self.security.client_cert}",
                f"--key={self.security.client_key}",
            ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"etcdctl {args[0]}: {done.stderr.strip()}")
        return done.stdout

    def enable_auth(self) -> None:
        """etcd's users on: root (needed before auth can be enabled) and the mesh's own user."""
        assert self.security is not None
        user, password = self.security.username, self.security.password
        self.etcdctl("user", "add", "root", f"--new-user-password={ROOT_PASSWORD}")
        self.etcdctl("user", "add", user, f"--new-user-password={password}")
        if self.security.granted_prefix:
            self.etcdctl("role", "add", "mesh")
            self.etcdctl(
                "role", "grant-permission", "mesh", "readwrite", self.security.granted_prefix, "--prefix"
            )
            self.etcdctl("user", "grant-role", user, "mesh")
        else:
            self.etcdctl("user", "grant-role", user, "root")
        self.etcdctl("auth", "enable")

    def connection_file(self, path: Path) -> Path:
        """ModelMesh's etcd connection JSON for this server (for ``--etcd-config``)."""
        doc: dict[str, str] = {"endpoints": self.url}
        if self.security:
            doc |= {
                "certificate_file": str(self.security.ca),
                "client_certificate_file": str(self.security.client_cert),
                "client_key_file": str(self.security.client_key),
            }
            if self.security.username:
                doc |= {"userid": self.security.username, "password": self.security.password}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        self.process.stop()

    def resume(self) -> None:
        """Start again on the same ports and data, after stop()."""
        self.process = EtcdServer.start(
            self.work_dir, self.client_port, self.peer_port, self.security
        ).process

    def restart(self) -> None:
        """An etcd outage and recovery."""
        self.stop()
        self.resume()


ROOT_PASSWORD = "root-of-a-test-etcd"


@dataclass
class EtcdMember:
    name: str
    process: ChildProcess
    client_port: int
    peer_port: int
    argv: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"


@dataclass
class EtcdCluster:
    """A real multi-member etcd (three processes on loopback by default), members killed at will."""

    work_dir: Path
    members: list[EtcdMember]

    @property
    def endpoints(self) -> str:
        """Every member, for ``--etcd``."""
        return ",".join(m.endpoint for m in self.members)

    @classmethod
    def start(cls, work_dir: Path, size: int = 3) -> EtcdCluster:
        names = [f"member-{i}" for i in range(size)]
        ports = [(free_port(), free_port()) for _ in names]
        initial = ",".join(f"{n}=http://127.0.0.1:{peer}" for n, (_, peer) in zip(names, ports, strict=True))
        members = []
        try:
            for name, (client, peer) in zip(names, ports, strict=True):
                argv = [
                    str(etcd_binary()),
                    f"--name={name}",
                    f"--data-dir={work_dir / name}",
                    f"--listen-client-urls=http://127.0.0.1:{client}",
                    f"--advertise-client-urls=http://127.0.0.1:{client}",
                    f"--listen-peer-urls=http://127.0.0.1:{peer}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                    f"--initial-cluster={initial}",
                    "--initial-cluster-state=new",
                    f"--initial-cluster-token=mesh-{work_dir.name}",
                    "--log-level=warn",
                ]
                process = ChildProcess(f"etcd {name}", argv, work_dir / f"{name}.log")
                members.append(EtcdMember(name, process, client, peer, argv))
            cluster = cls(work_dir, members)
            for member in members:  # a member is healthy once the cluster has a leader
                member.process.wait_until(
                    functools.partial(cluster.healthy, member), 60, f"{member.name} health"
                )
            return cluster
        except BaseException:
            for member in members:
                member.process.stop()
            raise

    # what a pod needs of its etcd (PodProcess.start)
    security: EtcdSecurity | None = None

    @property
    def endpoint(self) -> str:
        return self.endpoints

    def resume(self, member: EtcdMember) -> None:
        """Start a killed member again on its ports and data: it rejoins and catches up."""
        member.process = ChildProcess(
            f"etcd {member.name}", member.argv, self.work_dir / f"{member.name}.log"
        )
        member.process.wait_until(functools.partial(self.healthy, member), 60, f"{member.name} health")

    def healthy(self, member: EtcdMember) -> bool:
        with urllib.request.urlopen(f"http://{member.endpoint}/health", timeout=2) as reply:
            return b'"health":"true"' in reply.read()

    def status(self, member: EtcdMember) -> dict[str, Any]:
        """etcdctl's endpoint status of one member (its id, the leader's id, the raft index)."""
        done = subprocess.run(
            [
                str(etcd_binary().with_name("etcdctl")),
                f"--endpoints={member.endpoint}",
                "endpoint",
                "status",
                "-w",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        )
        status: dict[str, Any] = json.loads(done.stdout)[0]["Status"]
        return status

    def leader(self) -> EtcdMember:
        """The member raft has elected (asked of a live one)."""
        live = [m for m in self.members if m.process.alive()]
        status = self.status(live[0])
        leader_id = status["leader"]
        for member in live:
            if self.status(member)["header"]["member_id"] == leader_id:
                return member
        raise RuntimeError("the leader is not among the live members")

    def stop(self) -> None:
        for member in self.members:
            member.process.stop()


@dataclass
class MLServerProcess:
    """A real ``mlserver start <repository>`` on free loopback ports."""

    process: ChildProcess
    host: str
    grpc_port: int
    http_port: int
    metrics_port: int

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

    def log_tail(self) -> str:
        return self.process.log_tail()

    @classmethod
    def start(
        cls,
        repository_dir: Path,
        mlserver_bin: Path | None = None,
        work_dir: Path | None = None,
        host: str = "127.0.0.1",
        ready_timeout_s: float = 60.0,
    ) -> MLServerProcess:
        work_dir = work_dir or repository_dir.parent
        work_dir.mkdir(parents=True, exist_ok=True)
        repository_dir.mkdir(parents=True, exist_ok=True)
        grpc_port, http_port, metrics_port = free_port(host), free_port(host), free_port(host)
        env = {
            "MLSERVER_HOST": host,
            "MLSERVER_HTTP_PORT": str(http_port),
            "MLSERVER_GRPC_PORT": str(grpc_port),
            "MLSERVER_METRICS_PORT": str(metrics_port),
            "MLSERVER_LOAD_MODELS_AT_STARTUP": "false",
            # Parallel workers multiply memory per model and crash with recent uvloop.
            "MLSERVER_PARALLEL_WORKERS": "0",
        }
        argv = [str(mlserver_bin or default_mlserver_bin()), "start", str(repository_dir)]
        # cwd: MLServer writes .metrics/.envs folders into its working directory.
        process = ChildProcess("mlserver", argv, work_dir / "mlserver.log", env=env, cwd=work_dir)
        server = cls(process, host, grpc_port, http_port, metrics_port)
        try:
            process.wait_until(lambda: v2_server_ready(server.grpc_address), ready_timeout_s, "ServerReady")
        except BaseException:
            process.stop()
            raise
        return server

    def stop(self) -> None:
        self.process.stop()

    def restart(self, ready_timeout_s: float = 60.0) -> None:
        """Start again on the same ports (a runtime container restarted by its kubelet)."""
        self.process.restart()
        self.process.wait_until(lambda: v2_server_ready(self.grpc_address), ready_timeout_s, "ServerReady")

    def __enter__(self) -> MLServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class S3Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)


@dataclass
class MotoServer:
    """A local S3 endpoint (moto_server) that checks credentials, like a real one."""

    process: ChildProcess
    endpoint: str
    region: str = "us-east-1"

    # Requests moto serves without credentials: just enough to create the IAM user that signs the rest.
    _SETUP_CALLS = 3

    @classmethod
    def start(cls, work_dir: Path) -> MotoServer:
        port = free_port()
        process = ChildProcess(
            "moto_server",
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            work_dir / "moto.log",
            env={"INITIAL_NO_AUTH_ACTION_COUNT": str(cls._SETUP_CALLS)},
        )
        endpoint = f"http://127.0.0.1:{port}"

        def up() -> bool:
            with urllib.request.urlopen(endpoint + "/moto-api/", timeout=2) as reply:
                return reply.status == 200

        process.wait_until(up, 30, "moto_server answering")
        return cls(process, endpoint)

    def create_user(self) -> S3Credentials:
        """An IAM user allowed everything on S3 (uses the unauthenticated set-up calls; call once)."""
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="mesh")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="mesh", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="mesh")["AccessKey"]
        return S3Credentials(key["AccessKeyId"], key["SecretAccessKey"])

    def client(self, credentials: S3Credentials) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
        )

    def storage_entry(self, credentials: S3Credentials, bucket: str) -> dict[str, str]:
        """An entry of the storage-config file, in modelmesh-serving's format."""
        return {
            "type": "s3",
            "access_key_id": credentials.access_key_id,
            "secret_access_key": credentials.secret_access_key,
            "endpoint_url": self.endpoint,
            "region": self.region,
            "bucket": bucket,
        }


@dataclass
class AdapterProcess:
    process: ChildProcess
    address: str
    metrics_port: int

    @classmethod
    def start(
        cls,
        work_dir: Path,
        mlserver: MLServerProcess,
        repository_dir: Path,
        capacity_bytes: int,
        min_model_size_bytes: int = 0,
        extra_args: list[str] | None = None,
    ) -> AdapterProcess:
        port, metrics_port = free_port(), free_port()
        process = ChildProcess(
            "mlserver-adapter",
            [
                str(VENV_BIN / "modelmesh-mlserver-adapter"),
                f"--port={port}",
                f"--mlserver-grpc={mlserver.grpc_address}",
                f"--mlserver-pid={mlserver.pid}",
                f"--repository-dir={repository_dir}",
                f"--capacity-bytes={capacity_bytes}",
                f"--min-model-size-bytes={min_model_size_bytes}",
                f"--metrics-port={metrics_port}",
                *(extra_args or []),
            ],
            work_dir / "adapter.log",
        )
        address = f"127.0.0.1:{port}"
        process.wait_until(lambda: grpc_connectable(address), 30, "adapter port open")
        return cls(process, address, metrics_port)

    def metric(self, name: str, labels: str = "") -> float:
        """One sample from the adapter's Prometheus endpoint (0 when absent)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        return 0.0


MLSERVER_MODEL_TYPES = "sklearn,xgboost,lightgbm"
TRITON_MODEL_TYPES = "python,triton-python,onnx"


class RuntimeProcess(Protocol):
    """What a pod needs of its runtime: MLServerProcess and devcluster_triton.TritonProcess."""

    process: ChildProcess

    @property
    def grpc_address(self) -> str: ...

    @property
    def http_address(self) -> str: ...

    def stop(self) -> None: ...


class AdapterLike(Protocol):
    process: ChildProcess
    address: str

    def metric(self, name: str, labels: str = "") -> float: ...


@dataclass
class PodProcess:
    process: ChildProcess
    address: str
    pod_id: str
    rest_address: str
    internal_address: str
    metrics_address: str = ""  # its Prometheus port (every pod started here has one unless told otherwise)

    @classmethod
    def start(
        cls,
        work_dir: Path,
        etcd: EtcdServer | EtcdCluster,
        adapter: AdapterLike,
        runtime: RuntimeProcess,
        pod_id: str,
        extra_args: list[str] | None = None,
        model_types: str = MLSERVER_MODEL_TYPES,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> PodProcess:
        """``credentials``: how a client reaches it when it serves TLS (its readiness is checked so)."""
        port, internal_port, rest_port, internal_rest_port = (free_port() for _ in range(4))
        extra_args = list(extra_args or [])
        # a secured etcd is reached through ModelMesh's connection file (the password is never an argument)
        etcd_arg = (
            f"--etcd-config=etcd:{etcd.connection_file(work_dir / f'{pod_id}-etcd_connection')}"
            if isinstance(etcd, EtcdServer) and etcd.security
            else f"--etcd={etcd.endpoint}"
        )
        metrics_address = ""
        if not any(arg.startswith("--metrics") for arg in extra_args):
            metrics_address = f"127.0.0.1:{free_port()}"
            extra_args.append(f"--metrics-port={metrics_address.rsplit(':', 1)[1]}")
        process = ChildProcess(
            f"pod {pod_id}",
            [
                str(VENV_BIN / "modelmesh-pod"),
                f"--grpc-port={port}",
                f"--internal-port={internal_port}",
                f"--rest-port={rest_port}",
                f"--internal-rest-port={internal_rest_port}",
                etcd_arg,
                f"--pod-id={pod_id}",
                f"--runtime-spi={adapter.address}",
                f"--runtime-serving={runtime.grpc_address}",
                f"--runtime-rest={runtime.http_address}",
                f"--model-types={model_types}",
                "--lease-ttl-s=5",
                *extra_args,
            ],
            work_dir / f"{pod_id}.log",
        )
        address = f"127.0.0.1:{port}"
        process.wait_until(lambda: grpc_serving(address, credentials=credentials), 60, "pod serving")
        return cls(
            process, address, pod_id, f"127.0.0.1:{rest_port}", f"127.0.0.1:{internal_port}", metrics_address
        )


@dataclass
class PodStack:
    """One pod as Kubernetes would run it: the mesh, its adapter and its own runtime."""

    pod_id: str
    runtime: RuntimeProcess
    adapter: AdapterLike
    model_types: str = MLSERVER_MODEL_TYPES
    pod: PodProcess | None = None
    scratch: Path | None = None  # a folder of the pod's outside the work dir (in memory), removed at stop

    @property
    def mlserver(self) -> MLServerProcess:
        assert isinstance(self.runtime, MLServerProcess), f"{self.pod_id} runs {type(self.runtime).__name__}"
        return self.runtime

    def stop(self) -> None:
        # The pod unloads through the adapter before the runtime goes.
        if self.pod:
            self.pod.process.stop()
        self.adapter.process.stop()
        self.runtime.stop()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def memory_folder(pod_id: str, fallback: Path) -> tuple[Path, Path | None]:
    """A folder in memory (tmpfs) for small files made and removed at a high rate, as an ``emptyDir`` with
    ``medium: Memory`` gives a Kubernetes pod: (the folder, the temporary folder to remove at stop), or
    ``fallback`` on disk (None to remove) where no tmpfs is writable. MLServer's scanned repository is such a
    folder: a load creates a settings file and a folder there and removes them, which cost about 0.5 ms per
    load on this machine's ext4 and 0.1 ms on tmpfs (journaled metadata)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        scratch = Path(tempfile.mkdtemp(prefix=f"modelmesh-{pod_id}-", dir=shm))
        return scratch / "repository", scratch
    return fallback, None


class MeshTls(Protocol):
    """Certificates for a local mesh (``harness.certificates.MeshCertificates``)."""

    @property
    def ca_file(self) -> Path: ...

    def pod_args(self, pod_id: str) -> list[str]: ...

    def etcd_security(self) -> EtcdSecurity: ...

    def client_credentials(self) -> grpc.ChannelCredentials: ...


@dataclass
class LocalMesh:
    """etcd, ``pods`` MLServer pod stacks and ``triton_pods`` Triton ones, on loopback under ``work_dir``."""

    work_dir: Path
    capacity_bytes: int = 512 * 1024 * 1024
    min_model_size_bytes: int = 0
    pod_args: list[str] = field(default_factory=list)
    adapter_args: list[str] = field(default_factory=list)
    pods: int = 1
    triton_pods: int = 0
    # TLS on every port, mutual TLS between pods, etcd with TLS and a user (harness.certificates)
    certificates: MeshTls | None = None
    etcd: EtcdServer | None = None
    stacks: list[PodStack] = field(default_factory=list)

    def __enter__(self) -> LocalMesh:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # the first stack, for the common one-pod case
    @property
    def pod(self) -> PodProcess | None:
        return self.stacks[0].pod if self.stacks else None

    @property
    def adapter(self) -> AdapterLike | None:
        return self.stacks[0].adapter if self.stacks else None

    @property
    def mlserver(self) -> MLServerProcess | None:
        return self.stacks[0].mlserver if self.stacks else None

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        security = self.certificates.etcd_security() if self.certificates else None
        self.etcd = EtcdServer.start(self.work_dir, security=security)
        for index in range(self.pods):
            self.add_pod(f"pod-{chr(ord('a') + index)}")
        for index in range(self.triton_pods):
            self.add_triton_pod(f"triton-{chr(ord('a') + index)}")

    def add_pod(self, pod_id: str) -> PodStack:
        """Scale up: a new pod stack joins the mesh."""
        assert self.etcd is not None
        directory = self.work_dir / pod_id
        repository, scratch = memory_folder(pod_id, directory / "mlserver-repo")
        try:
            mlserver = MLServerProcess.start(repository, work_dir=directory)
            try:
                adapter = AdapterProcess.start(
                    directory,
                    mlserver,
                    repository,
                    self.capacity_bytes,
                    self.min_model_size_bytes,
                    self.adapter_args,
                )
            except BaseException:
                mlserver.stop()
                raise
        except BaseException:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            raise
        stack = PodStack(pod_id, mlserver, adapter, scratch=scratch)
        self.stacks.append(stack)  # from here on, stop() takes care of it
        self.start_pod(pod_id)
        return stack

    def add_triton_pod(self, pod_id: str) -> PodStack:
        """A pod of the Triton pool (python-backend and ONNX models)."""
        from harness.triton import TritonAdapterProcess, TritonProcess  # needs .triton installed

        directory = self.work_dir / pod_id
        triton = TritonProcess.start(directory / "triton-repo", work_dir=directory)
        try:
            adapter = TritonAdapterProcess.start(
                directory,
                triton,
                self.capacity_bytes,
                self.min_model_size_bytes,
                extra_args=self.adapter_args,
            )
        except BaseException:
            triton.stop()
            raise
        stack = PodStack(pod_id, triton, adapter, model_types=TRITON_MODEL_TYPES)
        self.stacks.append(stack)
        self.start_pod(pod_id)
        return stack

    def stack(self, pod_id: str) -> PodStack:
        return next(s for s in self.stacks if s.pod_id == pod_id)

    def start_pod(self, pod_id: str = "pod-a") -> PodProcess:
        """(Re)start the mesh process of a pod stack."""
        assert self.etcd is not None
        stack = self.stack(pod_id)
        tls_args = self.certificates.pod_args(pod_id) if self.certificates else []
        stack.pod = PodProcess.start(
            self.work_dir / pod_id,
            self.etcd,
            stack.adapter,
            stack.runtime,
            pod_id,
            [*self.pod_args, *tls_args],
            model_types=stack.model_types,
            credentials=self.client_credentials(),
        )
        return stack.pod

    def client_credentials(self) -> grpc.ChannelCredentials | None:
        """How a client reaches the pods: None for plaintext."""
        return self.certificates.client_credentials() if self.certificates else None

    def channel(self, address: str) -> grpc.Channel:
        credentials = self.client_credentials()
        if credentials is None:
            return grpc.insecure_channel(address)
        return grpc.secure_channel(address, credentials)

    def stop(self) -> None:
        for stack in self.stacks:
            stack.stop()
        if self.etcd:
            self.etcd.process.stop()
