"""Typed settings of a mesh pod, from flags and environment variables.

Every option has a flag; its environment variable (ModelMesh's ``MM_*`` name
where ModelMesh has one) supplies the default. Flags win over the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from mesh.models.cache import EvictionPolicy
from mesh.observe.logs import RequestLog
from mesh.observe.metrics import MetricsConfig, parse_metrics_config
from mesh.registry.etcd import EtcdConfig
from mesh.tls import ClientAuth, TlsFiles

# Request headers that carry credentials: never written to a log, whatever MM_LOG_REQUEST_HEADERS asks.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})


@dataclass(frozen=True)
class Option:
    flag: str
    env: str
    default: str
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("--host", "MM_SVC_GRPC_HOST", "127.0.0.1", "address the gRPC port binds to"),
    Option("--grpc-port", "MM_SVC_GRPC_PORT", "8033", "external gRPC port (management API + inference)"),
    Option("--internal-port", "MM_INTERNAL_GRPC_PORT", "8034", "gRPC port for requests forwarded by peers"),
    Option("--advertise-host", "MM_ADVERTISE_HOST", "", "address peers reach this pod at (default: --host)"),
    Option(
        "--internal-rest-port", "MM_INTERNAL_REST_PORT", "8035", "REST port for requests forwarded by peers"
    ),
    Option("--rest-port", "MM_SVC_REST_PORT", "8008", "KServe v2 REST port (0 = off)"),
    Option("--service-name", "MM_SERVICE_NAME", "modelmesh-serving", "mesh name; part of the etcd prefix"),
    Option("--kv-prefix", "MM_KVSTORE_PREFIX", "mm", "etcd key root"),
    Option(
        "--etcd",
        "MM_ETCD_ENDPOINT",
        "127.0.0.1:2379",
        "etcd members, host:port[,host:port...] (http:// or https://)",
    ),
    Option(
        "--etcd-config",
        "KV_STORE",
        "",
        "ModelMesh's etcd connection JSON, etcd:/path (endpoints, userid, password, certs); wins over --etcd",
    ),
    Option("--pod-id", "MM_POD_ID", "", "this pod's id (default: <hostname>-<grpc port>)"),
    Option("--pool", "MM_POOL", "default", "pool (runtime kind) this pod belongs to"),
    Option(
        "--model-types", "MM_MODEL_TYPES", "", "model types this pod's runtime serves, a,b,... (empty: any)"
    ),
    Option("--labels", "MM_LABELS", "", "this pod's labels for placement, key=value,..."),
    Option("--runtime-spi", "MM_RUNTIME_SPI_ADDRESS", "127.0.0.1:8085", "ModelRuntime adapter address"),
    Option("--runtime-serving", "MM_RUNTIME_SERVING_ADDRESS", "", "runtime's v2 gRPC address"),
    Option("--runtime-rest", "MM_RUNTIME_REST_ADDRESS", "", "runtime's v2 REST address (for REST inference)"),
    Option("--max-message-bytes", "MM_SVC_GRPC_MAX_MSG_SIZE", str(16 * 1024 * 1024), "request size limit"),
    Option("--lease-ttl-s", "MM_INSTANCE_LEASE_TTL_S", "10", "TTL of the instance record's lease"),
    Option("--load-timeout-s", "MM_LOAD_TIMEOUT_S", "120", "default model load timeout"),
    Option(
        "--scaleup-rpm-threshold", "MM_SCALEUP_RPM_THRESHOLD", "2000", "requests/min per copy that add a copy"
    ),
    Option("--rate-interval-s", "MM_RATE_INTERVAL_S", "10", "how often copy counts are checked"),
    Option(
        "--eviction-policy",
        "MM_EVICTION_POLICY",
        "lfu-size",
        "which model a full pod unloads: lfu-size, gdsf or lru",
    ),
    Option(
        "--unload-buffer-bytes",
        "MM_UNLOAD_BUFFER_BYTES",
        "-1",
        "capacity kept for models being unloaded, so loads need not wait for unloads (-1: loads at once x"
        " the runtime's default model size / 2, within 1-10 %% of the capacity)",
    ),
    Option("--max-load-failures", "MM_MAX_LOAD_FAILURES", "3", "stop after this many unexpired failures"),
    Option(
        "--load-failure-expiry-s", "MM_LOAD_FAILURE_EXPIRY_S", "900", "a failed load is retried after this"
    ),
    Option("--runtime-ready-timeout-s", "MM_RUNTIME_READY_TIMEOUT_S", "120", "wait for the adapter at start"),
    Option("--event-loop", "MM_EVENT_LOOP", "asyncio", "asyncio or uvloop"),
    Option(
        "--busy-poll-us",
        "MM_BUSY_POLL_US",
        "300",
        "microseconds the asyncio loop polls before it sleeps, while its waits are short (0: off; not with"
        " uvloop)",
    ),
    Option(
        "--serving-processes", "MM_SERVING_PROCESSES", "1", "processes sharing the gRPC port (SO_REUSEPORT)"
    ),
    Option(
        "--front",
        "MM_FRONT",
        "h2",
        "what serves the external gRPC port: h2 (frame-level fast path, grpc.aio behind) or grpc (grpc.aio)",
    ),
    Option(
        "--front-codec",
        "MM_FRONT_CODEC",
        "lean",
        "the h2 front's HTTP/2 codec for clients: lean (the front's own) or h2 (python-hyper's)",
    ),
    # Limits on what one client can make a pod hold (both fronts, the internal port, REST where it applies)
    Option("--max-connections", "MM_MAX_CONNECTIONS", "4096", "client connections per gRPC port and process"),
    Option(
        "--max-concurrent-streams",
        "MM_MAX_CONCURRENT_STREAMS",
        "100",
        "streams one connection may have open (advertised in SETTINGS)",
    ),
    Option(
        "--max-header-list-bytes",
        "MM_MAX_HEADER_LIST_BYTES",
        "16384",
        "decoded size of one header list (RFC 7541 entry sizes), advertised",
    ),
    Option(
        "--max-header-block-bytes",
        "MM_MAX_HEADER_BLOCK_BYTES",
        "32768",
        "encoded size of one header block (HEADERS + CONTINUATION) before it is decoded",
    ),
    Option(
        "--max-continuation-frames",
        "MM_MAX_CONTINUATION_FRAMES",
        "16",
        "CONTINUATION frames in one header block",
    ),
    Option(
        "--write-buffer-bytes",
        "MM_WRITE_BUFFER_BYTES",
        str(1024 * 1024),
        "bytes written to a client and not yet taken by it, past which the client is not read",
    ),
    Option(
        "--max-buffered-bytes",
        "MM_MAX_BUFFERED_BYTES",
        str(64 * 1024 * 1024),
        "request and answer bytes held for one connection (requests past it wait, answers close it)",
    ),
    Option(
        "--max-resets-per-s",
        "MM_MAX_RESETS_PER_S",
        "200",
        "stream resets a client may send per second (burst: twice the concurrent streams)",
    ),
    Option(
        "--max-control-frames-per-s",
        "MM_MAX_CONTROL_FRAMES_PER_S",
        "1000",
        "PING and SETTINGS frames a client may send per second (burst: twice that)",
    ),
    Option("--handshake-timeout-s", "MM_HANDSHAKE_TIMEOUT_S", "10", "time for a preface + SETTINGS"),
    Option("--idle-timeout-s", "MM_IDLE_TIMEOUT_S", "300", "close a connection with no open stream after"),
    Option(
        "--request-read-timeout-s",
        "MM_REQUEST_READ_TIMEOUT_S",
        "30",
        "time for a unary request (or a header block) to arrive in full once started",
    ),
    Option(
        "--status-max-streams",
        "MM_STATUS_MAX_STREAMS",
        "64",
        "status page event streams open at once (then 503)",
    ),
    Option(
        "--status-write-timeout-s",
        "MM_STATUS_WRITE_TIMEOUT_S",
        "10",
        "an event the status page's client does not take within this ends its stream",
    ),
    Option(
        "--status-max-stream-s",
        "MM_STATUS_MAX_STREAM_S",
        "600",
        "an event stream ends after this (it reconnects)",
    ),
    # TLS (ModelMesh's names for the external port's)
    Option(
        "--tls-cert",
        "MM_TLS_KEY_CERT_PATH",
        "",
        "PEM certificate chain of the external ports (empty: no TLS)",
    ),
    Option("--tls-key", "MM_TLS_PRIVATE_KEY_PATH", "", "its private key (PEM)"),
    Option(
        "--tls-client-auth", "MM_TLS_CLIENT_AUTH", "NONE", "NONE, OPTIONAL or REQUIRE client certificates"
    ),
    Option("--tls-trust", "MM_TLS_TRUST_CERT_PATH", "", "CA bundle client certificates are checked against"),
    Option(
        "--internal-tls-cert",
        "MM_INTERNAL_TLS_KEY_CERT_PATH",
        "",
        "this pod's certificate for pod-to-pod mutual TLS (default: --tls-cert)",
    ),
    Option("--internal-tls-key", "MM_INTERNAL_TLS_PRIVATE_KEY_PATH", "", "its key (default: --tls-key)"),
    Option(
        "--internal-tls-trust",
        "MM_INTERNAL_TLS_TRUST_CERT_PATH",
        "",
        "CA bundle that signs pod certificates (default: --tls-trust)",
    ),
    Option(
        "--tls-reload-interval-s", "MM_TLS_RELOAD_INTERVAL_S", "10", "how often certificate files are checked"
    ),
    # Observing a pod
    Option(
        "--metrics",
        "MM_METRICS",
        "",
        "ModelMesh's metrics setting: prometheus:port=2112;per_model_metrics=true;fq_names=true, or disabled",
    ),
    Option("--metrics-port", "MM_METRICS_PORT", "0", "Prometheus metrics port (0 = off unless --metrics)"),
    Option(
        "--otlp-endpoint",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "",
        "OpenTelemetry collector (OTLP/gRPC, host:port) for traces (empty: no tracing)",
    ),
    Option("--trace-sample-ratio", "MM_TRACE_SAMPLE_RATIO", "1.0", "share of new traces kept, 0..1"),
    Option("--log-level", "MM_LOG_LEVEL", "INFO", "logging level"),
    Option("--log-format", "MM_LOG_FORMAT", "text", "text, or json (one JSON object per line)"),
    Option("--log-each-invoke", "MM_LOG_EACH_INVOKE", "false", "one log line per inference request"),
    Option(
        "--log-request-headers",
        "MM_LOG_REQUEST_HEADERS",
        "",
        'request headers to add to each request\'s line, as JSON {"header": "log key"}',
    ),
)
EVENT_LOOPS = ("asyncio", "uvloop")
FRONTS = ("grpc", "h2")
FRONT_CODECS = ("lean", "h2")
LOG_FORMATS = ("text", "json")
CHOICES = {
    "event_loop": EVENT_LOOPS,
    "front": FRONTS,
    "front_codec": FRONT_CODECS,
    "log_format": LOG_FORMATS,
}  # settings of a fixed few values


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    grpc_port: int = 8033
    internal_port: int = 8034
    advertise_host: str = ""
    rest_port: int = 8008
    internal_rest_port: int = 8035
    service_name: str = "modelmesh-serving"
    kv_prefix: str = "mm"
    etcd: str = "127.0.0.1:2379"
    etcd_config: str = ""
    pod_id: str = ""
    pool: str = "default"
    runtime_spi: str = "127.0.0.1:8085"
    runtime_serving: str = ""
    runtime_rest: str = ""
    max_message_bytes: int = 16 * 1024 * 1024
    lease_ttl_s: int = 10
    load_timeout_s: float = 120.0
    load_failure_expiry_s: float = 900.0
    max_load_failures: int = 3
    eviction_policy: str = "lfu-size"
    unload_buffer_bytes: int = -1
    scaleup_rpm_threshold: float = 2000.0
    rate_interval_s: float = 10.0
    runtime_ready_timeout_s: float = 120.0
    event_loop: str = "asyncio"
    busy_poll_us: int = 300
    serving_processes: int = 1
    front: str = "h2"
    front_codec: str = "lean"
    max_connections: int = 4096
    max_concurrent_streams: int = 100
    max_header_list_bytes: int = 16384
    max_header_block_bytes: int = 32768
    max_continuation_frames: int = 16
    write_buffer_bytes: int = 1024 * 1024
    max_buffered_bytes: int = 64 * 1024 * 1024
    max_resets_per_s: float = 200.0
    max_control_frames_per_s: float = 1000.0
    handshake_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    request_read_timeout_s: float = 30.0
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_auth: str = "NONE"
    tls_trust: str = ""
    internal_tls_cert: str = ""
    internal_tls_key: str = ""
    internal_tls_trust: str = ""
    tls_reload_interval_s: float = 10.0
    status_max_streams: int = 64
    status_write_timeout_s: float = 10.0
    status_max_stream_s: float = 600.0
    metrics: str = ""
    metrics_port: int = 0
    otlp_endpoint: str = ""
    trace_sample_ratio: float = 1.0
    log_level: str = "INFO"
    log_format: str = "text"
    log_each_invoke: bool = False
    log_request_headers: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    model_types: list[str] = field(default_factory=list)

    @property
    def etcd_prefix(self) -> str:
        return f"{self.kv_prefix.strip('/')}/{self.service_name}/"

    @property
    def etcd_connection(self) -> EtcdConfig:
        """Where etcd is and how to reach it: the connection file if given, else the endpoints."""
        if self.etcd_config:
            return EtcdConfig.from_kv_store(self.etcd_config)
        return EtcdConfig.from_endpoints(self.etcd)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def advertised(self, port: int) -> str:
        return f"{self.advertise_host or self.host}:{port}"

    @property
    def external_tls(self) -> TlsFiles | None:
        """The external ports' certificate, or None: plaintext."""
        if not self.tls_cert:
            return None
        return TlsFiles(self.tls_cert, self.tls_key, self.tls_trust)

    @property
    def internal_tls(self) -> TlsFiles | None:
        """This pod's certificate for its internal ports and its calls to peers, with the CA of pod
        certificates; None: plaintext between pods."""
        cert = self.internal_tls_cert or self.tls_cert
        if not cert:
            return None
        return TlsFiles(
            cert, self.internal_tls_key or self.tls_key, self.internal_tls_trust or self.tls_trust
        )

    @property
    def client_auth(self) -> ClientAuth:
        return ClientAuth(self.tls_client_auth)

    @property
    def metrics_config(self) -> MetricsConfig:
        return parse_metrics_config(self.metrics, self.metrics_port)

    @property
    def logged_headers(self) -> dict[str, str]:
        return parse_logged_headers(self.log_request_headers)

    def request_log(self) -> RequestLog:
        return RequestLog(self.pod_id, self.log_each_invoke, self.logged_headers)


def parse_labels(raw: str) -> dict[str, str]:
    """``zone=a,gpu=no`` -> {"zone": "a", "gpu": "no"}."""
    labels = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"label {item!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels


def parse_logged_headers(raw: str) -> dict[str, str]:
    """``MM_LOG_REQUEST_HEADERS``: a JSON object of request header -> log key (ModelMesh's form)."""
    if not raw.strip():
        return {}
    try:
        mapping = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError('a JSON object {"header": "log key", ...} is expected')
    if not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in mapping.items()):
        raise ValueError("header names and log keys must be non-empty strings")
    secret = [k for k in mapping if k.lower() in SECRET_HEADERS]
    if secret:
        raise ValueError(f"{', '.join(secret)} may carry a secret and is never logged")
    return {k.lower(): v for k, v in mapping.items()}


def check_tls(values: dict[str, object]) -> None:
    """TLS settings that cannot work, refused at start with what is missing."""
    auth = str(values["tls_client_auth"]).upper()
    if auth not in ClientAuth.__members__:
        raise ValueError(f"--tls-client-auth: {auth!r} is not one of NONE, OPTIONAL, REQUIRE")
    values["tls_client_auth"] = auth
    if bool(values["tls_cert"]) != bool(values["tls_key"]):
        raise ValueError("--tls-cert and --tls-key go together")
    if bool(values["internal_tls_cert"]) != bool(values["internal_tls_key"]):
        raise ValueError("--internal-tls-cert and --internal-tls-key go together")
    if auth != "NONE" and not values["tls_trust"]:
        raise ValueError(f"--tls-client-auth={auth} needs --tls-trust (MM_TLS_TRUST_CERT_PATH)")
    if (values["tls_cert"] or values["internal_tls_cert"]) and not (
        values["internal_tls_trust"] or values["tls_trust"]
    ):
        raise ValueError(
            "with TLS, pods verify each other: --internal-tls-trust or --tls-trust (the pods' CA)"
        )
    if values["internal_tls_cert"] and not values["tls_cert"]:
        raise ValueError("--internal-tls-cert without --tls-cert: the external ports would stay plaintext")


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not true or false")


def parse_settings(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ) if env is None else env
    parser = argparse.ArgumentParser(prog="modelmesh-pod", description="Run one mesh pod.")
    for opt in OPTIONS:
        parser.add_argument(opt.flag, default=env.get(opt.env, opt.default), help=f"{opt.help} (${opt.env})")
    args = vars(parser.parse_args(argv))
    types = {f.name: f.type for f in Settings.__dataclass_fields__.values()}
    values: dict[str, object] = {}
    for name, raw in args.items():
        kind = types[name]
        try:
            if kind == "int":
                values[name] = int(raw)
            elif kind == "float":
                values[name] = float(raw)
            elif kind == "bool":
                values[name] = parse_bool(raw)
            elif name == "labels":
                values[name] = parse_labels(raw)
            elif name == "eviction_policy":
                values[name] = EvictionPolicy(raw.lower()).value
            elif name in CHOICES:
                if raw not in CHOICES[name]:
                    raise ValueError(f"{raw!r} is not one of {', '.join(CHOICES[name])}")
                values[name] = raw
            elif name == "model_types":
                values[name] = [t.strip().lower() for t in raw.split(",") if t.strip()]
            else:
                values[name] = raw
        except ValueError as e:
            parser.error(f"--{name.replace('_', '-')}: {e}")
    if not 0.0 <= float(values["trace_sample_ratio"]) <= 1.0:  # type: ignore[arg-type]
        parser.error("--trace-sample-ratio: between 0 and 1")
    if int(values["serving_processes"]) < 1:  # type: ignore[call-overload]
        parser.error("--serving-processes: at least 1")
    if int(values["busy_poll_us"]) < 0:  # type: ignore[call-overload]
        parser.error("--busy-poll-us: 0 or more")
    try:
        check_tls(values)
    except ValueError as e:
        parser.error(str(e))
    for name, check in (
        ("metrics", lambda: parse_metrics_config(str(values["metrics"]), int(values["metrics_port"]))),  # type: ignore[call-overload]
        ("log_request_headers", lambda: parse_logged_headers(str(values["log_request_headers"]))),
        ("etcd", lambda: values["etcd_config"] or EtcdConfig.from_endpoints(str(values["etcd"]))),
        (
            "etcd_config",
            lambda: values["etcd_config"] and EtcdConfig.from_kv_store(str(values["etcd_config"])),
        ),
    ):
        try:
            check()
        except ValueError as e:
            parser.error(f"--{name.replace('_', '-')}: {e}")
    if not values["pod_id"]:
        values["pod_id"] = f"{socket.gethostname()}-{values['grpc_port']}"
    if not values["runtime_serving"]:
        values["runtime_serving"] = values["runtime_spi"]
    return Settings(**values)  # type: ignore[arg-type]


def settings_argv(settings: Settings) -> list[str]:
    """Flags that parse back to ``settings`` (a pod's serving processes get the pod's own settings)."""
    argv = []
    for opt in OPTIONS:
        name = opt.flag[2:].replace("-", "_")
        value = getattr(settings, name)
        if name == "labels":
            value = ",".join(f"{k}={v}" for k, v in value.items())
        elif name == "model_types":
            value = ",".join(value)
        argv.append(f"{opt.flag}={value}")
    return argv
