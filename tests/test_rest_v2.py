"""KServe v2 REST through the mesh, next to the same calls made straight to the runtime: a Triton pod and an
MLServer pod (real processes), each model asked through the pod that holds it and through the other one,
which forwards it. Bodies and their headers must come back as they do directly (binary tensors, gzip both
ways, plain JSON for a client that asks for no encoding); config, statistics and the repository index work;
every error is JSON."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from harness.cluster import LocalMesh
from harness.demo import ADD_ONE_CONFIG, ADD_ONE_MODEL
from harness.triton import triton_installed
from protos import model_mesh_pb2 as mm
from tests.conftest import MeshClients, open_clients
from tests.support import IRIS_X, train_iris

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not triton_installed(), reason="needs .triton (deploy/local/setup-triton.sh)"),
]
S = mm.ModelStatusInfo.ModelStatus
ADD_ONE = "add-one"  # a Triton python-backend model
IRIS = "iris"  # an MLServer sklearn model
ADD_ONE_X = np.array([1.0, 2.0, 3.0], dtype=np.float32)
# Enough rows that MLServer compresses its answer when asked (it leaves small ones plain).
IRIS_BATCH = np.tile(IRIS_X, (100, 1))
BODY_HEADERS = ("content-type", "content-encoding", "inference-header-content-length", "vary")
MAX_BODY = 16 << 20  # the pods' default --max-message-bytes


@dataclass
class V2Mesh:
    clients: MeshClients
    direct: dict[str, str]  # model -> its runtime's REST address
    holder: dict[str, str]  # model -> REST address of the pod that holds it
    forwarder: dict[str, str]  # model -> REST address of a pod whose runtime cannot serve it
    model_dir: Path

    def via(self, model: str, route: str) -> str:
        return {"direct": self.direct, "holder": self.holder, "forwarder": self.forwarder}[route][model]

    def register(self, model_id: str, path: Path, type_: str, **kwargs: object) -> None:
        self.clients.register(model_id, path, type_=type_, **kwargs)

    def python_model(self, name: str) -> Path:
        directory = self.model_dir / name
        (directory / "1").mkdir(parents=True)
        (directory / "config.pbtxt").write_text(ADD_ONE_CONFIG)
        (directory / "1" / "model.py").write_text(ADD_ONE_MODEL)
        return directory


@pytest.fixture(scope="module")
def v2_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[V2Mesh]:
    """etcd, an MLServer pod stack and a Triton pod stack; add-one loaded on Triton, iris on MLServer."""
    work = tmp_path_factory.mktemp("rest-v2")
    with LocalMesh(work / "mesh", pods=1, triton_pods=1) as mesh:
        clients = open_clients(mesh)
        try:
            mlserver, triton = mesh.stacks
            assert mlserver.pod is not None and triton.pod is not None
            v2 = V2Mesh(
                clients,
                direct={ADD_ONE: triton.runtime.http_address, IRIS: mlserver.runtime.http_address},
                holder={ADD_ONE: triton.pod.rest_address, IRIS: mlserver.pod.rest_address},
                forwarder={ADD_ONE: mlserver.pod.rest_address, IRIS: triton.pod.rest_address},
                model_dir=work / "models",
            )
            v2.register(ADD_ONE, v2.python_model(ADD_ONE), "python", loadNow=True, sync=True)
            v2.register(
                IRIS, train_iris(work / "models" / IRIS, "logistic").path, "sklearn", loadNow=True, sync=True
            )
            assert clients.status(ADD_ONE).status == S.LOADED and clients.status(IRIS).status == S.LOADED
            yield v2
        finally:
            clients.channel.close()


# -- clients --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def body_headers(self) -> dict[str, str]:
        return {name: self.headers[name] for name in BODY_HEADERS if name in self.headers}

    def decoded(self) -> bytes:
        return gzip.decompress(self.body) if self.headers.get("content-encoding") == "gzip" else self.body

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))  # strict: what a plain JSON client does


def send(
    address: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> Answer:
    """One request as curl sends it: exactly these headers, no Accept-Encoding unless given."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        reply = connection.getresponse()
        return Answer(reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read())
    finally:
        connection.close()


def raw_exchange(address: str, request: bytes) -> Answer:
    """Bytes a library would not send; the status, headers and body of what comes back."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < _length(received):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:]))
    return Answer(int(lines[0].split(" ", 2)[1]), headers, body)


def _length(received: bytes) -> int:
    for line in received.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def add_one_infer(
    address: str, binary: bool = False, gzip_request: bool = False, gzip_answer: bool = False
) -> tuple[list[float], dict[str, Any]]:
    """tritonclient.http's infer of add-one: the output and the answer's JSON header."""
    client = triton_http.InferenceServerClient(address)
    try:
        tensor = triton_http.InferInput("INPUT0", [3], "FP32")
        tensor.set_data_from_numpy(ADD_ONE_X, binary_data=binary)
        result = client.infer(
            ADD_ONE,
            [tensor],
            outputs=[triton_http.InferRequestedOutput("OUTPUT0", binary_data=binary)],
            request_compression_algorithm="gzip" if gzip_request else None,
            response_compression_algorithm="gzip" if gzip_answer else None,
        )
        return [float(v) for v in np.asarray(result.as_numpy("OUTPUT0")).ravel()], result.get_response()
    finally:
        client.close()


def iris_infer(address: str, binary_input: bool, binary_output: bool, **options: str) -> object:
    """tritonclient.http's infer of iris: the predictions, or the error's status (MLServer takes no binary
    input, and does not say so in Triton's error format)."""
    client = triton_http.InferenceServerClient(address)
    try:
        tensor = triton_http.InferInput("input-0", list(IRIS_BATCH.shape), "FP32")
        tensor.set_data_from_numpy(IRIS_BATCH, binary_data=binary_input)
        output = triton_http.InferRequestedOutput("predict", binary_data=binary_output)
        result = client.infer(IRIS, [tensor], outputs=[output], **options)  # type: ignore[arg-type]
        return [int(v) for v in np.asarray(result.as_numpy("predict")).ravel()]
    except InferenceServerException as e:
        return ("error", e.status())
    finally:
        client.close()


def add_one_json() -> bytes:
    return json.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [3], "datatype": "FP32", "data": ADD_ONE_X.tolist()}]}
    ).encode()


def iris_json() -> bytes:
    inputs = {"name": "input-0", "shape": list(IRIS_BATCH.shape), "datatype": "FP32"}
    return json.dumps({"inputs": [{**inputs, "data": IRIS_BATCH.ravel().tolist()}]}).encode()


def binary_add_one_request() -> tuple[bytes, dict[str, str]]:
    """The binary tensor extension by hand: JSON header, raw FP32 input, binary output asked for."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": ADD_ONE_X.nbytes},
                }
            ],
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + ADD_ONE_X.tobytes(), headers


# -- bodies and headers as they came ----------------------------------------------------------------------

TRITON_OPTIONS = [
    pytest.param({"binary": True}, id="binary"),
    pytest.param({"gzip_request": True}, id="gzip-request"),
    pytest.param({"gzip_answer": True}, id="gzip-answer"),
    pytest.param({"binary": True, "gzip_request": True, "gzip_answer": True}, id="binary-gzip-both"),
]


@pytest.mark.parametrize("route", ["holder", "forwarder"])
@pytest.mark.parametrize("options", TRITON_OPTIONS)
def test_tritonclient_binary_and_gzip_to_a_triton_model_as_directly(
    v2_mesh: V2Mesh, route: str, options: dict[str, bool]
) -> None:
    direct = add_one_infer(v2_mesh.direct[ADD_ONE], **options)
    assert direct[0] == [2.0, 3.0, 4.0]
    assert add_one_infer(v2_mesh.via(ADD_ONE, route), **options) == direct


def raw_requests() -> list[Any]:
    json_body = add_one_json()
    binary_body, binary_headers = binary_add_one_request()
    plain = {"Content-Type": "application/json"}
    gzip_both = {"Content-Encoding": "gzip", "Accept-Encoding": "gzip"}
    return [
        pytest.param(json_body, plain, id="json"),
        pytest.param(json_body, {**plain, "Accept-Encoding": "gzip"}, id="json-gzip-answer"),
        pytest.param(gzip.compress(json_body), {**plain, "Content-Encoding": "gzip"}, id="json-gzip-request"),
        pytest.param(binary_body, binary_headers, id="binary"),
        pytest.param(gzip.compress(binary_body), {**binary_headers, **gzip_both}, id="binary-gzip-both"),
    ]


@pytest.mark.parametrize("route", ["holder", "forwarder"])
@pytest.mark.parametrize(("body", "headers"), raw_requests())
def test_answers_come_back_with_their_body_headers_as_directly(
    v2_mesh: V2Mesh, route: str, body: bytes, headers: dict[str, str]
) -> None:
    path = f"/v2/models/{ADD_ONE}/infer"
    direct = send(v2_mesh.direct[ADD_ONE], "POST", path, body, headers)
    through = send(v2_mesh.via(ADD_ONE, route), "POST", path, body, headers)
    assert direct.status == 200
    assert (through.status, through.body_headers()) == (direct.status, direct.body_headers())
    assert through.decoded() == direct.decoded()  # byte for byte, binary tensors included


@pytest.mark.parametrize("route", ["direct", "holder", "forwarder"])
@pytest.mark.parametrize(
    ("model", "body"),
    [pytest.param(ADD_ONE, add_one_json(), id=ADD_ONE), pytest.param(IRIS, iris_json(), id=IRIS)],
)
def test_a_plain_json_client_gets_utf8_json(v2_mesh: V2Mesh, route: str, model: str, body: bytes) -> None:
    """curl's request: no Accept-Encoding. The answer is JSON it can read, not bytes it did not ask for."""
    answer = send(v2_mesh.via(model, route), "POST", f"/v2/models/{model}/infer", body)
    assert answer.status == 200 and "content-encoding" not in answer.headers
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["model_name"] == model


IRIS_OPTIONS = [
    pytest.param(False, False, {}, id="json"),
    pytest.param(True, False, {}, id="binary-input"),
    pytest.param(False, True, {}, id="binary-output"),
    pytest.param(False, False, {"request_compression_algorithm": "gzip"}, id="gzip-request"),
    pytest.param(False, False, {"response_compression_algorithm": "gzip"}, id="gzip-answer"),
]


@pytest.mark.parametrize("route", ["holder", "forwarder"])
@pytest.mark.parametrize(("binary_input", "binary_output", "options"), IRIS_OPTIONS)
def test_tritonclient_to_an_mlserver_model_as_directly(
    v2_mesh: V2Mesh, route: str, binary_input: bool, binary_output: bool, options: dict[str, str]
) -> None:
    direct = iris_infer(v2_mesh.direct[IRIS], binary_input, binary_output, **options)
    assert iris_infer(v2_mesh.via(IRIS, route), binary_input, binary_output, **options) == direct


# -- config, statistics, the repository index ----------------------------------------------------------------


@pytest.mark.parametrize("route", ["holder", "forwarder"])
def test_triton_config_and_statistics_through_the_mesh(v2_mesh: V2Mesh, route: str) -> None:
    direct = triton_http.InferenceServerClient(v2_mesh.direct[ADD_ONE])
    through = triton_http.InferenceServerClient(v2_mesh.via(ADD_ONE, route))
    try:
        assert through.get_model_config(ADD_ONE) == direct.get_model_config(ADD_ONE)
        assert through.get_model_config(ADD_ONE, "1") == direct.get_model_config(ADD_ONE, "1")
        mine = through.get_inference_statistics(ADD_ONE)["model_stats"]
        theirs = direct.get_inference_statistics(ADD_ONE)["model_stats"]
        assert [(s["name"], s["version"], sorted(s)) for s in mine] == [
            (s["name"], s["version"], sorted(s)) for s in theirs
        ]
        assert mine[0]["inference_count"] > 0
        versioned = through.get_inference_statistics(ADD_ONE, "1")["model_stats"]
        assert [s["version"] for s in versioned] == ["1"]
    finally:
        direct.close()
        through.close()


def test_statistics_naming_no_model_are_the_pods_runtimes_own(v2_mesh: V2Mesh) -> None:
    """perf_analyzer over HTTP asks GET /v2/models/stats: the Triton pod answers with Triton's figures (not
    "model not found: stats")."""
    add_one_infer(v2_mesh.holder[ADD_ONE])
    through = triton_http.InferenceServerClient(v2_mesh.holder[ADD_ONE])
    try:
        names = {s["name"] for s in through.get_inference_statistics()["model_stats"]}
    finally:
        through.close()
    assert ADD_ONE in names


@pytest.mark.parametrize("suffix", ["/config", "/stats"])
@pytest.mark.parametrize("route", ["holder", "forwarder"])
def test_a_runtime_without_the_route_answers_as_directly_in_json(
    v2_mesh: V2Mesh, route: str, suffix: str
) -> None:
    """MLServer has no config or statistics: its own answer comes back, as JSON."""
    path = f"/v2/models/{IRIS}{suffix}"
    direct = send(v2_mesh.direct[IRIS], "GET", path)
    through = send(v2_mesh.via(IRIS, route), "GET", path)
    assert direct.status in (404, 501)
    assert (through.status, through.json()) == (direct.status, direct.json())
    assert through.headers["content-type"] == direct.headers["content-type"] == "application/json"


def empty_statistics(model_id: str) -> dict[str, Any]:
    stats = {"last_inference": 0, "inference_count": 0, "execution_count": 0}
    entry = {"name": model_id, "version": "", **stats, "inference_stats": {}, "batch_stats": []}
    return {"model_stats": [entry]}


def test_statistics_of_a_model_loaded_nowhere_are_empty_and_load_nothing(v2_mesh: V2Mesh) -> None:
    v2_mesh.register("add-idle", v2_mesh.python_model("add-idle"), "python")
    try:
        for route in ("holder", "forwarder"):
            address = v2_mesh.via(ADD_ONE, route)
            answer = send(address, "GET", "/v2/models/add-idle/stats")
            assert (answer.status, answer.json()) == (200, empty_statistics("add-idle"))
            client = triton_http.InferenceServerClient(address)
            try:
                assert client.get_inference_statistics("add-idle") == empty_statistics("add-idle")
            finally:
                client.close()
        assert v2_mesh.clients.status("add-idle").status == S.NOT_LOADED
        # config is routed like metadata: it loads the model, then the runtime answers
        config = send(v2_mesh.forwarder[ADD_ONE], "GET", "/v2/models/add-idle/config")
        assert config.status == 200 and config.json()["name"] == "add-idle"
        assert v2_mesh.clients.status("add-idle").status == S.LOADED
    finally:
        v2_mesh.clients.management.unregisterModel(mm.UnregisterModelRequest(modelId="add-idle"))


def index_of(address: str, ready: bool | None = None) -> list[dict[str, str]]:
    client = triton_http.InferenceServerClient(address)
    try:
        if ready is None:
            return list(client.get_model_repository_index())
        body = json.dumps({"ready": ready}).encode()
        answer = send(address, "POST", "/v2/repository/index", body, {"Content-Type": "application/json"})
        assert answer.status == 200
        return list(answer.json())
    finally:
        client.close()


def test_the_repository_index_is_the_mesh_s(v2_mesh: V2Mesh, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.joblib").write_bytes(b"\x80\x04 not a joblib file" * 10)
    v2_mesh.register("iris-broken", broken, "sklearn")
    v2_mesh.register("iris-idle", train_iris(tmp_path / "idle", "tree").path, "sklearn")
    try:
        failed = send(v2_mesh.holder[IRIS], "POST", "/v2/models/iris-broken/infer", iris_json())
        assert failed.status == 500
        expected = {
            ADD_ONE: ("READY", ""),
            IRIS: ("READY", ""),
            "iris-broken": ("UNAVAILABLE", failed.json()["error"]),
            "iris-idle": ("UNAVAILABLE", "not loaded"),
        }
        direct = index_of(v2_mesh.direct[ADD_ONE])  # Triton's own: what a client expects of the shape
        assert {"name", "version", "state"} <= set(direct[0])
        for route in ("holder", "forwarder"):
            address = v2_mesh.via(ADD_ONE, route)
            index = index_of(address)
            assert {e["name"]: (e["state"], e["reason"]) for e in index} == expected
            assert all(e["version"] == "" for e in index)
            assert [e["name"] for e in index] == sorted(expected)
            assert [e["name"] for e in index_of(address, ready=True)] == [ADD_ONE, IRIS]
            assert [e["name"] for e in index_of(address, ready=False)] == sorted(expected)
            assert send(address, "GET", "/v2/repository/index").json() == index
        bad = send(v2_mesh.holder[IRIS], "POST", "/v2/repository/index", b'{"ready": "yes"}')
        assert bad.status == 400 and "ready" in bad.json()["error"]
        encoded = gzip.compress(b'{"ready": true}')
        bad = send(
            v2_mesh.holder[IRIS], "POST", "/v2/repository/index", encoded, {"Content-Encoding": "gzip"}
        )
        assert bad.status == 415 and "encoded" in bad.json()["error"]  # the mesh decodes no body
    finally:
        for model_id in ("iris-broken", "iris-idle"):
            v2_mesh.clients.management.unregisterModel(mm.UnregisterModelRequest(modelId=model_id))


# -- every error is JSON ----------------------------------------------------------------------------------


def assert_json_error(answer: Answer, status: int, says: str) -> None:
    assert answer.status == status
    assert answer.headers["content-type"] == "application/json"
    assert says in answer.json()["error"]


def test_the_mesh_s_own_errors_are_typed_exactly_json(v2_mesh: V2Mesh) -> None:
    """The KServe SDK reads an error's message only from an answer typed exactly ``application/json``."""
    address = v2_mesh.holder[ADD_ONE]
    assert_json_error(
        send(address, "POST", "/v2/models/nope/infer", add_one_json()), 404, "model not found: nope"
    )
    assert_json_error(send(address, "POST", f"/v2/models/{ADD_ONE}/infer", b"{"), 400, "not valid JSON")
    assert_json_error(send(address, "GET", "/v2/models/nope/stats"), 404, "model not found: nope")


@pytest.mark.parametrize("route", ["holder", "forwarder"])
def test_errors_aiohttp_raises_are_json(v2_mesh: V2Mesh, route: str) -> None:
    address = v2_mesh.via(ADD_ONE, route)
    assert_json_error(send(address, "GET", "/v2/no/such/path"), 404, "Not Found")
    wrong_method = send(address, "GET", f"/v2/models/{ADD_ONE}/infer")
    assert_json_error(wrong_method, 405, "Method Not Allowed")
    assert wrong_method.headers["allow"] == "POST"
    assert_json_error(send(address, "DELETE", "/v2/repository/index"), 405, "Method Not Allowed")


def test_a_body_over_the_limit_is_a_json_413(v2_mesh: V2Mesh) -> None:
    head = (
        f"POST /v2/models/{ADD_ONE}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {MAX_BODY + 1}\r\n\r\n"
    )
    assert_json_error(raw_exchange(v2_mesh.holder[ADD_ONE], head.encode()), 413, "limit")
    big = b'{"inputs": "' + b"a" * MAX_BODY + b'"}'
    assert_json_error(
        send(v2_mesh.forwarder[ADD_ONE], "POST", f"/v2/models/{ADD_ONE}/infer", big), 413, "limit"
    )


def test_a_request_aiohttp_cannot_parse_is_a_json_400(v2_mesh: V2Mesh) -> None:
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nthis line is no header\r\n\r\n"
    answer = raw_exchange(v2_mesh.holder[ADD_ONE], request)
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"]
