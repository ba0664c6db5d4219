"""Limits of the REST gateway against real processes: etcd, the echo runtime, a REST echo runtime, a pod.

Each attack runs while a normal client keeps inferring through its own keep-alive connection: all its
requests must succeed, none slowly, and the pod's open file descriptors must come back to where they
were once the attacker is gone. The attacks: a body over the limit, a body or headers dribbled a byte at a
time, idle connections past the cap, headers over the limit, malformed JSON, compressed bodies (which go
on as they came: the mesh decodes none).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import socket
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.cluster import EtcdServer, PodProcess
from harness.processes import ChildProcess, free_port
from load_tests.echo_runtime import MODEL_TYPE
from load_tests.hop import register
from load_tests.processes import EchoProcess
from tests.hostile import Beside, fd_count
from tests.support import poll_until

pytestmark = pytest.mark.integration

MAX_BODY = 1 << 20  # --max-message-bytes
READ_TIMEOUT_S = 2.0  # --request-read-timeout-s
IDLE_S = 4.0  # --idle-timeout-s
CONNECTIONS = 16  # --max-connections
LIMIT_FLAGS = [
    f"--max-message-bytes={MAX_BODY}",
    f"--request-read-timeout-s={READ_TIMEOUT_S:g}",
    f"--idle-timeout-s={IDLE_S:g}",
    f"--max-connections={CONNECTIONS}",
]
MODEL = "rest-echo"
INFER_PATH = f"/v2/models/{MODEL}/infer"
VALID = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}).encode()

# The runtime's REST side: answers an infer with what it received, undecoded (model, body size and digest,
# Content-Encoding), gzip-compressed when asked (X-Gzip-Answer); /stats counts the infer requests that
# reached it, other than the normal client's (X-Normal).
REST_ECHO = """
import gzip
import hashlib
import json
import sys
from aiohttp import web

count = 0

async def infer(request):
    global count
    count += "x-normal" not in request.headers
    body = await request.read()
    answer = {
        "model_name": request.match_info["name"],
        "body_bytes": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "content_encoding": request.headers.get("Content-Encoding", ""),
        "accept_encoding": request.headers.get("Accept-Encoding", ""),
    }
    if "x-gzip-answer" not in request.headers:
        return web.json_response(answer)
    document = json.dumps(answer).encode()
    headers = {"Content-Encoding": "gzip", "Inference-Header-Content-Length": str(len(document))}
    return web.Response(body=gzip.compress(document), content_type="application/json", headers=headers)

async def metadata(request):
    return web.json_response({"name": request.match_info["name"]})

async def stats(request):
    return web.json_response({"infers": count})

app = web.Application(client_max_size=64 << 20)
app.add_routes([
    web.post("/v2/models/{name}/infer", infer),
    web.get("/v2/models/{name}", metadata),
    web.get("/stats", stats),
])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, auto_decompress=False)
"""


@dataclass
class EchoWithRest:
    """A runtime for PodProcess: the echo runtime's gRPC side and the REST echo above."""

    process: ChildProcess  # the REST echo
    grpc_address: str
    http_address: str

    def stop(self) -> None:
        self.process.stop()

    def infers(self) -> int:
        status, body = request("GET", self.http_address, "/stats")
        assert status == 200
        return int(body["infers"])


@dataclass
class RestPod:
    pod: PodProcess
    runtime: EchoWithRest

    @property
    def pid(self) -> int:
        return self.pod.process.pid

    @property
    def rest(self) -> str:
        return self.pod.rest_address


@pytest.fixture(scope="module")
def rest_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestPod]:
    work: Path = tmp_path_factory.mktemp("rest-limits")
    etcd = EtcdServer.start(work / "etcd")
    echo: EchoProcess | None = None
    runtime: EchoWithRest | None = None
    pod: PodProcess | None = None
    try:
        echo = EchoProcess.start(work / "echo", "echo")
        port = free_port()
        rest_echo = ChildProcess(
            "rest-echo", [sys.executable, "-c", REST_ECHO, str(port)], work / "rest-echo.log"
        )
        runtime = EchoWithRest(rest_echo, echo.address, f"127.0.0.1:{port}")
        rest_echo.wait_until(lambda: runtime is not None and runtime.infers() >= 0, 30, "REST echo serving")
        pod = PodProcess.start(work, etcd, echo, runtime, "pod-rest", LIMIT_FLAGS, model_types=MODEL_TYPE)
        register(pod.address, MODEL, MODEL_TYPE, "size=1000")
        yield RestPod(pod, runtime)
    finally:
        if pod is not None:
            pod.process.stop()
        if runtime is not None:
            runtime.stop()
        if echo is not None:
            echo.stop()
        etcd.process.stop()


def request(
    method: str, address: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict]:  # type: ignore[type-arg]
    """One request on a connection of its own; the answer's status and JSON."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read() or b"null")
    finally:
        connection.close()


def infer(rest_pod: RestPod, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    headers = {"Content-Type": "application/json", **(headers or {})}
    return request("POST", rest_pod.rest, INFER_PATH, body, headers)


@pytest.fixture
def served(rest_pod: RestPod) -> Iterator[Beside]:
    """The normal client for the whole test, inferring over one keep-alive connection; afterwards the pod
    holds no more descriptors than before."""
    host, port = rest_pod.rest.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)

    def call() -> None:
        headers = {"Content-Type": "application/json", "X-Normal": "1"}
        connection.request("POST", INFER_PATH, body=VALID, headers=headers)
        reply = connection.getresponse()
        answer = json.loads(reply.read())
        assert reply.status == 200 and answer["model_name"] == MODEL, (reply.status, answer)

    try:
        with Beside(call) as beside:
            baseline = fd_count(rest_pod.pid)
            yield beside
            poll_until(lambda: fd_count(rest_pod.pid) <= baseline + 2, 30, f"pod fds back to {baseline}")
    finally:
        connection.close()
    assert "Unhandled exception" not in rest_pod.pod.process.log_tail(1 << 20)


class RawConnection:
    """A client socket that writes what it likes, when it likes."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.received = b""
        self.closed = False

    def send(self, data: bytes) -> bool:
        """False once the server has closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            self.closed = True
            return False

    def read(self, timeout_s: float) -> None:
        if self.closed:
            return
        self.sock.settimeout(max(0.01, timeout_s))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        except OSError:
            data = b""
        if data:
            self.received += data
        else:
            self.closed = True

    def read_until_closed(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.closed and (remaining := deadline - time.monotonic()) > 0:
            self.read(min(remaining, 0.2))

    def status(self) -> int:
        return int(self.received.split(b" ", 2)[1]) if self.received.startswith(b"HTTP/1.1 ") else 0

    def body(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.received.partition(b"\r\n\r\n")[2])

    def dribble_until_closed(self, data: bytes, interval_s: float, timeout_s: float) -> float:
        """Send ``data`` a byte every ``interval_s`` until the server closes; the seconds that took."""
        started = time.monotonic()
        for byte in data:
            if not self.send(bytes([byte])):
                break
            self.read(interval_s)  # paces the bytes, and notices the answer and the close
            if self.closed:
                break
            assert time.monotonic() - started < timeout_s, "the server kept waiting"
        self.read_until_closed(timeout_s - (time.monotonic() - started))
        assert self.closed, "the connection stayed open"
        return time.monotonic() - started

    def close(self) -> None:
        self.sock.close()


def test_a_body_over_the_limit_is_413_and_the_pod_carries_on(rest_pod: RestPod, served: Beside) -> None:
    huge = b'{"x": "' + b"a" * (MAX_BODY + 1000) + b'"}'
    status, body = infer(rest_pod, huge)  # Content-Length says so: refused before it is read
    assert status == 413 and "limit" in body["error"]
    # chunked, no Content-Length: refused once the limit is passed
    host, port = rest_pod.rest.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        chunks = (huge[i : i + 65536] for i in range(0, len(huge), 65536))
        connection.request("POST", INFER_PATH, body=chunks, encode_chunked=True)
        reply = connection.getresponse()
        assert reply.status == 413 and "limit" in json.loads(reply.read())["error"]
    finally:
        connection.close()
    assert infer(rest_pod, VALID)[0] == 200


def test_a_body_dribbled_a_byte_a_second_is_cut_off(rest_pod: RestPod, served: Beside) -> None:
    before = rest_pod.runtime.infers()
    attacker = RawConnection(rest_pod.rest)
    try:
        head = f"POST {INFER_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(VALID)}\r\n\r\n".encode()
        assert attacker.send(head)
        took = attacker.dribble_until_closed(VALID, 1.0, READ_TIMEOUT_S + 10)
        assert READ_TIMEOUT_S - 0.5 < took < READ_TIMEOUT_S + 5
        assert attacker.status() == 408 and "within" in attacker.body()["error"]
    finally:
        attacker.close()
    assert rest_pod.runtime.infers() - before == 0


def test_slow_headers_are_cut_off(rest_pod: RestPod, served: Beside) -> None:
    attackers = [RawConnection(rest_pod.rest) for _ in range(6)]
    try:
        for attacker in attackers:
            assert attacker.send(f"POST {INFER_PATH} HTTP/1.1\r\nHost: x\r\n".encode())
        started = time.monotonic()
        header = b"X-Slow: " + b"a" * 100
        for index in range(len(header)):  # one byte on every connection, each half second
            for attacker in attackers:
                attacker.send(header[index : index + 1])
                attacker.read(0.5 / len(attackers))
            if all(attacker.closed for attacker in attackers):
                break
            assert time.monotonic() - started < READ_TIMEOUT_S + 10, "the server kept waiting"
        took = time.monotonic() - started
        assert all(attacker.closed for attacker in attackers)
        assert took < READ_TIMEOUT_S + 5
        assert {attacker.status() for attacker in attackers} == {408}
    finally:
        for attacker in attackers:
            attacker.close()


def test_idle_connections_past_the_cap_are_refused_then_reaped(rest_pod: RestPod, served: Beside) -> None:
    attackers = [RawConnection(rest_pod.rest) for _ in range(CONNECTIONS + 8)]
    try:

        def refused() -> list[RawConnection]:
            for attacker in attackers:
                attacker.read(0.01)
            return [a for a in attackers if a.closed]

        # the normal client holds one of the cap: the attackers get the rest, the others a 503
        poll_until(lambda: len(refused()) >= 9, 10, "connections past the cap refused")
        assert len(refused()) == 9, len(refused())
        assert {a.status() for a in refused()} == {503}
        assert "connections" in refused()[0].body()["error"]
        late = RawConnection(rest_pod.rest)
        late.read_until_closed(5)
        assert late.closed and late.status() == 503
        late.close()
        # idle ones are closed by the server after the idle timeout, and there is room again
        started = time.monotonic()
        poll_until(lambda: all(a.closed for a in refused() + attackers), IDLE_S + 10, "idle ones closed")
        assert time.monotonic() - started < IDLE_S + 5
    finally:
        for attacker in attackers:
            attacker.close()
    assert infer(rest_pod, VALID)[0] == 200


def test_headers_over_the_limit_are_431(rest_pod: RestPod, served: Beside) -> None:
    many = {f"x-h{n}": "v" * 200 for n in range(100)}  # 24 KB in all, each header small
    status, body = infer(rest_pod, VALID, many)
    assert status == 431 and "headers" in body["error"]
    assert infer(rest_pod, VALID, {f"x-h{n}": "v" * 200 for n in range(20)})[0] == 200


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"inputs": [', {}),
        (b"[1, 2]", {}),
        (b"\xff\xfe", {}),
        (b"", {}),
        (VALID, {"Inference-Header-Content-Length": "many"}),
        (VALID, {"Inference-Header-Content-Length": str(len(VALID) + 1)}),
        (VALID + b"\x00\x01", {"Inference-Header-Content-Length": str(len(VALID) + 1)}),
    ],
)
def test_malformed_json_is_400_and_never_reaches_the_runtime(
    rest_pod: RestPod, served: Beside, body: bytes, headers: dict[str, str]
) -> None:
    before = rest_pod.runtime.infers()
    status, answer = infer(rest_pod, body, headers)
    assert status == 400 and answer["error"]
    assert rest_pod.runtime.infers() - before == 0


def test_the_binary_extension_is_checked_only_up_to_its_json(rest_pod: RestPod, served: Beside) -> None:
    status, answer = infer(
        rest_pod, VALID + b"\x00\x01\x02\x03", {"Inference-Header-Content-Length": str(len(VALID))}
    )
    assert status == 200 and answer["body_bytes"] == len(VALID) + 4


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("compress", lambda body: b"LZW" + body)],
)
def test_a_compressed_body_reaches_the_runtime_as_it_came(
    rest_pod: RestPod, served: Beside, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    sent = compress(VALID)
    status, answer = infer(rest_pod, sent, {"Content-Encoding": encoding})
    assert status == 200
    assert (
        answer["body_sha256"] == hashlib.sha256(sent).hexdigest() and answer["content_encoding"] == encoding
    )


def test_an_answer_comes_back_encoded_as_it_came(rest_pod: RestPod, served: Beside) -> None:
    """The runtime's gzip answer and its headers reach the client as the runtime sent them, and the
    runtime is asked for no encoding the client did not ask for."""
    host, port = rest_pod.rest.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("POST", INFER_PATH, skip_accept_encoding=True)
        for name, value in {"Content-Length": str(len(VALID)), "X-Gzip-Answer": "1"}.items():
            connection.putheader(name, value)
        connection.endheaders(VALID)
        reply = connection.getresponse()
        document = gzip.decompress(reply.read())
        assert reply.status == 200 and reply.getheader("Content-Encoding") == "gzip"
        assert reply.getheader("Inference-Header-Content-Length") == str(len(document))
        assert reply.getheader("Content-Type", "").startswith("application/json")
        assert json.loads(document)["accept_encoding"] == ""
    finally:
        connection.close()


def test_encoded_bodies_are_not_decoded_and_their_limit_is_their_size(
    rest_pod: RestPod, served: Beside
) -> None:
    bomb = gzip.compress(b" " * (4 * MAX_BODY))  # a few KB that would decode past the limit
    status, answer = infer(rest_pod, bomb, {"Content-Encoding": "gzip"})
    assert status == 200 and answer["body_bytes"] == len(bomb)  # the runtime's to decode, or refuse
    # the JSON check cannot see into an encoded body: the runtime judges it
    before = rest_pod.runtime.infers()
    status, answer = infer(rest_pod, b"not gzip at all", {"Content-Encoding": "gzip"})
    assert status == 200 and answer["body_bytes"] == len(b"not gzip at all")
    assert rest_pod.runtime.infers() - before == 1
    too_large = gzip.compress(os.urandom(MAX_BODY + 1000))  # random bytes do not shrink
    status, answer = infer(rest_pod, too_large, {"Content-Encoding": "gzip"})
    assert status == 413 and "limit" in answer["error"]
