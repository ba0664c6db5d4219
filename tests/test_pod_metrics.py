"""A real pod's metrics port, scraped with Prometheus' own parser while real clients use the mesh: two echo
pods (each its own runtime) on one etcd, the ModelMesh-named series moving under traffic, the leader alone
exporting the mesh-wide counts, a serving process's counts reaching its main process, and the port itself
under attack while a scraper keeps being served."""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as v2

from harness.cluster import EtcdServer, PodProcess
from harness.processes import free_port
from load_tests.echo_runtime import INFER_METHOD, MODEL_TYPE
from load_tests.hop import infer_request, register
from load_tests.processes import EchoProcess, start_echo_pod, wait_for_serving_processes
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.support import poll_until

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Scrape:
    types: dict[str, str]  # family name -> Prometheus type
    samples: Samples

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every series of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)


def scrape(metrics_address: str) -> Scrape:
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode()
    types, samples = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(types, samples)


@dataclass
class MetricsPod:
    pod: PodProcess
    metrics: str  # host:port of its metrics port
    echo: EchoProcess  # its runtime

    def infer(self, model_id: str, timeout_s: float = 10) -> v2.ModelInferResponse:
        with grpc.insecure_channel(self.pod.address) as channel:
            answer = channel.unary_unary(INFER_METHOD)(infer_request(model_id), timeout=timeout_s)
        return v2.ModelInferResponse.FromString(answer)

    def holds(self, model_id: str) -> bool:
        return _holders(self.pod.address, model_id) == [self.pod.pod_id]


@dataclass
class TwoPods:
    """Per-model labels on both; the port in ModelMesh's MM_METRICS syntax on a, from MM_METRICS_PORT on b."""

    a: MetricsPod
    b: MetricsPod

    def holder_and_other(self, model_id: str) -> tuple[MetricsPod, MetricsPod]:
        """(the pod that holds the model, the other one), once both views agree."""
        poll_until(
            lambda: _holders(self.a.pod.address, model_id) == _holders(self.b.pod.address, model_id) != [],
            what=f"both pods see one copy of {model_id}",
        )
        return (self.a, self.b) if self.a.holds(model_id) else (self.b, self.a)


@pytest.fixture(scope="module")
def two_pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoPods]:
    root = tmp_path_factory.mktemp("metrics")
    with contextlib.ExitStack() as stack:
        etcd = EtcdServer.start(root / "etcd")
        stack.callback(etcd.process.stop)
        pods = []
        for name, metrics_args in (
            ("pod-a", lambda port: [f"--metrics=prometheus:port={port};per_model_metrics=true"]),
            ("pod-b", lambda port: [f"--metrics-port={port}", "--metrics=prometheus:per_model_metrics=true"]),
        ):
            echo = EchoProcess.start(root / name, name=f"echo-{name}", capacity_bytes=2500)
            stack.callback(echo.stop)
            port = free_port()
            pod = start_echo_pod(root / name, etcd, echo, name, extra_args=metrics_args(port))
            stack.callback(pod.process.stop)
            pods.append(MetricsPod(pod, f"127.0.0.1:{port}", echo))
        yield TwoPods(*pods)


def test_names_and_types_are_modelmeshs(two_pods: TwoPods) -> None:
    found = scrape(two_pods.a.metrics)
    histograms = (
        "modelmesh_api_request_milliseconds",
        "modelmesh_invoke_model_milliseconds",
        "modelmesh_cache_miss_milliseconds",
        "modelmesh_loadmodel_milliseconds",
        "modelmesh_unloadmodel_milliseconds",
        "modelmesh_loading_queue_delay_milliseconds",
        "modelmesh_age_at_eviction_milliseconds",
        "modelmesh_loaded_model_size_bytes",
        "modelmesh_request_size_bytes",
        "modelmesh_response_size_bytes",
    )
    for name in histograms:
        assert found.types.get(name) == "histogram", (name, found.types.get(name))
    gauges = (
        "modelmesh_instance_lru_seconds",
        "modelmesh_instance_lru_age_seconds",
        "modelmesh_instance_capacity_bytes",
        "modelmesh_instance_used_bytes",
        "modelmesh_instance_used_bps",
        "modelmesh_instance_models_total",
    )
    for name in gauges:
        assert found.types.get(name) == "gauge", name
    for name in ("modelmesh_loadmodel_failure", "modelmesh_unloadmodel_failure"):
        assert name in found.types  # ModelMesh's bare names, no _total
    assert found.value("modelmesh_instance_capacity_bytes") == 2500


def test_inference_moves_the_request_series(two_pods: TwoPods) -> None:
    register(two_pods.a.pod.address, "moving", MODEL_TYPE, "size=500")
    a, _ = two_pods.holder_and_other("moving")  # its requests take the fast path
    model = {"modelId": "moving", "vModelId": ""}
    ok = {"method": "ModelInfer", "code": "OK", **model}
    before = scrape(a.metrics)
    for _ in range(5):
        assert a.infer("moving").model_name == "moving"
    after = scrape(a.metrics)
    for name in (
        "modelmesh_api_request_milliseconds_count",
        "modelmesh_invoke_model_milliseconds_count",
        "modelmesh_request_size_bytes_count",
        "modelmesh_response_size_bytes_count",
    ):
        assert after.value(name, **ok) - before.value(name, **ok) == 5, name
    # each request carried a 1024-byte tensor: the message is bigger than that
    sent = after.value("modelmesh_request_size_bytes_sum", **ok) - before.value(
        "modelmesh_request_size_bytes_sum", **ok
    )
    assert 5 * 1024 < sent < 5 * 2048
    fast = {"port": "external", "path": "fast"}
    assert (
        after.value("modelmesh_py_front_streams_total", **fast)
        - before.value("modelmesh_py_front_streams_total", **fast)
        == 5
    )
    assert after.value("modelmesh_loadmodel_milliseconds_count", **model) == 1
    assert after.value("modelmesh_loaded_model_size_bytes_sum", **model) == 500
    assert after.value("modelmesh_instance_models_total") >= 1
    assert after.value("modelmesh_instance_used_bytes") >= 500


def test_an_error_is_counted_with_its_code(two_pods: TwoPods) -> None:
    a = two_pods.a
    labels = {"method": "ModelInfer", "code": "NOT_FOUND"}
    before = scrape(a.metrics).total("modelmesh_api_request_milliseconds_count", **labels)
    with pytest.raises(grpc.RpcError) as missing:
        a.infer("never-registered")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    after = scrape(a.metrics).total("modelmesh_api_request_milliseconds_count", **labels)
    assert after - before == 1


def test_a_cancelled_request_is_counted_cancelled(two_pods: TwoPods) -> None:
    register(two_pods.a.pod.address, "slow", MODEL_TYPE, "size=100;infer_ms=3000")
    a, _ = two_pods.holder_and_other("slow")
    labels = {"method": "ModelInfer", "code": "CANCELLED"}
    before = scrape(a.metrics).total("modelmesh_api_request_milliseconds_count", **labels)
    infers = a.echo.stats()["infers"].get("slow", 0)
    with grpc.insecure_channel(a.pod.address) as channel:
        call = channel.unary_unary(INFER_METHOD).future(infer_request("slow"), timeout=30)
        poll_until(
            lambda: a.echo.stats()["infers"].get("slow", 0) > infers, what="the runtime has the request"
        )
        assert call.cancel()  # the client resets the stream while the runtime works on it
    poll_until(
        lambda: scrape(a.metrics).total("modelmesh_api_request_milliseconds_count", **labels) == before + 1,
        what="the reset stream counted as CANCELLED",
    )


def test_a_forwarded_request_counts_on_both_pods_as_modelmesh_does(two_pods: TwoPods) -> None:
    register(two_pods.b.pod.address, "on-b", MODEL_TYPE, "size=300")
    b, a = two_pods.holder_and_other("on-b")  # a forwards to b, the holder
    b_before, a_before = scrape(b.metrics), scrape(a.metrics)
    assert a.infer("on-b").model_name == "on-b"
    b_after, a_after = scrape(b.metrics), scrape(a.metrics)
    ok = {"method": "ModelInfer", "code": "OK"}
    # the edge pod counts the external request; the holder counts its runtime call, not a second request
    assert (
        a_after.total("modelmesh_api_request_milliseconds_count", modelId="on-b", **ok)
        - a_before.total("modelmesh_api_request_milliseconds_count", modelId="on-b", **ok)
        == 1
    )
    assert (
        b_after.total("modelmesh_invoke_model_milliseconds_count", **ok)
        - b_before.total("modelmesh_invoke_model_milliseconds_count", **ok)
        == 1
    )
    assert b_after.total("modelmesh_api_request_milliseconds_count") == b_before.total(
        "modelmesh_api_request_milliseconds_count"
    )
    assert a_after.total("modelmesh_invoke_model_milliseconds_count", modelId="on-b") == 0


def test_load_failures_and_evictions_are_counted(two_pods: TwoPods) -> None:
    pods = (two_pods.a, two_pods.b)
    before = [scrape(pod.metrics) for pod in pods]
    with grpc.insecure_channel(two_pods.a.pod.address) as channel:
        status = mm_grpc.ModelMeshStub(channel).registerModel(
            mm.RegisterModelRequest(
                modelId="broken",
                modelInfo=mm.ModelInfo(type=MODEL_TYPE, path="size=not-a-number"),
                loadNow=True,
                sync=True,
            ),
            timeout=30,
        )
    assert status.status == mm.ModelStatusInfo.LOADING_FAILED
    failed_on = {
        c.location for c in status.modelCopyInfos if c.copyStatus == mm.ModelStatusInfo.LOADING_FAILED
    }
    # 2 x 2500 bytes of room: six models of 1000 evict some
    for index in range(6):
        register(two_pods.a.pod.address, f"big-{index}", MODEL_TYPE, "size=1000")
    after = [scrape(pod.metrics) for pod in pods]
    for pod, old, new in zip(pods, before, after, strict=True):
        failures = new.value("modelmesh_loadmodel_failure") - old.value("modelmesh_loadmodel_failure")
        assert failures == (1 if pod.pod.pod_id in failed_on else 0), pod.pod.pod_id
    evicted = [
        new.total("modelmesh_age_at_eviction_milliseconds_count")
        - old.total("modelmesh_age_at_eviction_milliseconds_count")
        for old, new in zip(before, after, strict=True)
    ]
    assert sum(evicted) >= 1
    dropped = {"change": "dropped", "reason": "evicted"}
    for old, new, count in zip(before, after, evicted, strict=True):
        assert new.total("modelmesh_py_evictions_total") - old.total("modelmesh_py_evictions_total") == count
        assert (
            new.value("modelmesh_py_copy_changes_total", **dropped)
            - old.value("modelmesh_py_copy_changes_total", **dropped)
            == count
        )
        unloads = new.total("modelmesh_unloadmodel_milliseconds_count") - old.total(
            "modelmesh_unloadmodel_milliseconds_count"
        )
        assert unloads >= count
        assert new.value("modelmesh_instance_used_bytes") <= 2500
        assert new.value("modelmesh_instance_lru_seconds") > 0


def test_only_the_leader_exports_the_mesh_wide_counts(two_pods: TwoPods) -> None:
    register(two_pods.b.pod.address, "counted", MODEL_TYPE, "size=10")
    poll_until(lambda: _leader(two_pods) is not None, what="a leader")
    scrapes = {pod.pod.pod_id: scrape(pod.metrics) for pod in (two_pods.a, two_pods.b)}
    exporting = [
        p for p, s in scrapes.items() if ("modelmesh_models_managed_total", frozenset()) in s.samples
    ]
    assert exporting == [_leader(two_pods)], "the leader alone exports the mesh-wide counts"
    leader = scrapes[exporting[0]]
    status = _mesh_status(two_pods.a)
    assert leader.value("modelmesh_models_managed_total") == status["models"]["registered"] >= 1
    assert leader.value("modelmesh_models_loaded_total") == status["models"]["loaded"] >= 1
    failed = leader.value("modelmesh_models_with_failure_total")
    assert failed == (1 if "broken" in _registered(two_pods.a) else 0)


def _mesh_status(pod: MetricsPod) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{pod.pod.rest_address}/mesh/status", timeout=10) as answer:
        status: dict[str, Any] = json.load(answer)
    return status


def _leader(pods: TwoPods) -> str | None:
    leader: str | None = _mesh_status(pods.a)["leader"]
    return leader


def _registered(pod: MetricsPod) -> set[str]:
    with urllib.request.urlopen(f"http://{pod.pod.rest_address}/mesh/models", timeout=10) as answer:
        return {m["id"] for m in json.load(answer)}


def _holders(address: str, model_id: str) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        status = mm_grpc.ModelMeshStub(channel).getModelStatus(
            mm.GetStatusRequest(modelId=model_id), timeout=5
        )
    return sorted(
        copy.location for copy in status.modelCopyInfos if copy.copyStatus == mm.ModelStatusInfo.LOADED
    )


# -- a pod with two serving processes: the worker's counts reach the main process's scrape -----------------
@pytest.mark.parametrize("front", ["h2", "grpc"])
def test_a_serving_process_counts_reach_the_main_process(tmp_path: Path, front: str) -> None:
    """Both fronts count at the edge (the HTTP/2 front, or grpc.aio with --front=grpc), in both processes."""
    with contextlib.ExitStack() as stack:
        etcd = EtcdServer.start(tmp_path / "etcd")
        stack.callback(etcd.process.stop)
        echo = EchoProcess.start(tmp_path / "echo")
        stack.callback(echo.stop)
        port = free_port()
        pod = start_echo_pod(
            tmp_path / "pod",
            etcd,
            echo,
            "pod-w",
            extra_args=["--serving-processes=2", f"--metrics-port={port}", f"--front={front}"],
        )
        stack.callback(pod.process.stop)
        wait_for_serving_processes(pod, 2)
        register(pod.address, "w1", MODEL_TYPE, "size=100")
        metrics = f"127.0.0.1:{port}"
        before = scrape(metrics).total("modelmesh_api_request_milliseconds_count", code="OK")
        channels = [  # separate connections: the kernel spreads them over both processes
            grpc.insecure_channel(pod.address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(24)
        ]
        try:
            for channel in channels:
                channel.unary_unary(INFER_METHOD)(infer_request("w1"), timeout=10)
        finally:
            for channel in channels:
                channel.close()
        poll_until(  # the worker reports every second
            lambda: (
                scrape(metrics).total("modelmesh_api_request_milliseconds_count", code="OK") == before + 24
            ),
            what="all 24 requests counted in the main process's scrape",
        )


# -- the metrics port under attack, a scraper beside it ---------------------------------------------------
def test_the_metrics_port_holds_against_hostile_clients(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        etcd = EtcdServer.start(tmp_path / "etcd")
        stack.callback(etcd.process.stop)
        echo = EchoProcess.start(tmp_path / "echo")
        stack.callback(echo.stop)
        port = free_port()
        pod = start_echo_pod(
            tmp_path / "pod",
            etcd,
            echo,
            "pod-h",
            extra_args=[f"--metrics-port={port}", "--max-connections=8", "--request-read-timeout-s=1"],
        )
        stack.callback(pod.process.stop)
        metrics = f"127.0.0.1:{port}"
        scraper = _KeepAliveScraper(port)
        stack.callback(scraper.close)
        assert scraper.get().startswith(b"HTTP/1.1 200")
        # half-sent requests fill the other 7 connections
        hostile = [socket.create_connection(("127.0.0.1", port)) for _ in range(7)]
        for s in hostile:
            stack.callback(s.close)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        # the port is full: one more connection is refused with a clear answer, the scraper is still served
        extra = socket.create_connection(("127.0.0.1", port))
        stack.callback(extra.close)
        extra.settimeout(5)
        assert b"503" in extra.recv(4096)
        assert scraper.get().startswith(b"HTTP/1.1 200")
        # the half-sent requests time out and release their connections: new scrapers get in again
        for s in hostile:
            s.settimeout(5)
            assert b"408" in s.recv(4096)
        poll_until(lambda: _scrapes(metrics), what="a new scraper served after the timeouts")
        # oversized headers and a body are refused; nothing they sent changes what the scraper gets
        big = socket.create_connection(("127.0.0.1", port))
        stack.callback(big.close)
        big.settimeout(5)
        big.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
        assert big.recv(4096).split(b" ")[1] in (b"400", b"431")
        post = socket.create_connection(("127.0.0.1", port))
        stack.callback(post.close)
        post.settimeout(5)
        post.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 65536)
        assert post.recv(4096).split(b" ")[1] in (b"405", b"413")
        assert scraper.get().startswith(b"HTTP/1.1 200")
        assert scrape(metrics).value("modelmesh_instance_capacity_bytes") > 0


def _scrapes(metrics: str) -> bool:
    try:
        scrape(metrics)
    except OSError:
        return False
    return True


class _KeepAliveScraper:
    """One HTTP/1.1 connection, kept open, as Prometheus keeps its scrape connections."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.settimeout(10)
        self.file = self.sock.makefile("rb")

    def get(self) -> bytes:
        self.sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: scraper\r\n\r\n")
        status = self.file.readline()
        length = 0
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        assert b"modelmesh_instance_capacity_bytes" in self.file.read(length)
        return status

    def close(self) -> None:
        self.file.close()
        self.sock.close()
