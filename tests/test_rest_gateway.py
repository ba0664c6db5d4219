"""KServe v2 REST through the mesh: tritonclient.http against the pod's REST port, real MLServer behind."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.conftest import Examples, MeshClients
from tests.support import IRIS_X

pytestmark = pytest.mark.integration


def rest_client(mesh: MeshClients) -> triton_http.InferenceServerClient:
    assert mesh.mesh.pod is not None
    return triton_http.InferenceServerClient(mesh.mesh.pod.rest_address)


def rest_infer(
    client: triton_http.InferenceServerClient, name: str, headers: dict[str, str] | None = None
) -> triton_http.InferResult:
    tensor = triton_http.InferInput("input-0", list(IRIS_X.shape), "FP32")
    tensor.set_data_from_numpy(IRIS_X, binary_data=False)
    output = triton_http.InferRequestedOutput("predict", binary_data=False)
    return client.infer(name, [tensor], outputs=[output], headers=headers)


def http_status(
    url: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict]:  # type: ignore[type-arg]
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_paths_are_answered_by_the_mesh(local_mesh: MeshClients) -> None:
    client = rest_client(local_mesh)
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "modelmesh-py"


def test_rest_inference_loads_on_first_use_and_serves(local_mesh: MeshClients, examples: Examples) -> None:
    local_mesh.register("rest-iris", examples.logistic.path)
    client = rest_client(local_mesh)
    loads = local_mesh.loads()
    assert client.is_model_ready("rest-iris") is False  # and readiness never loads
    assert local_mesh.loads() == loads
    result = rest_infer(client, "rest-iris")
    assert list(np.asarray(result.as_numpy("predict")).ravel()) == list(examples.logistic.expected)
    assert result.get_response()["model_name"] == "rest-iris"
    assert client.is_model_ready("rest-iris") is True
    assert local_mesh.loads() == loads + 1
    # the header wins over the path, and the runtime sees the concrete id
    result = rest_infer(client, "any-alias", headers={"mm-model-id": "rest-iris"})
    assert result.get_response()["model_name"] == "rest-iris"
    assert client.get_model_metadata("rest-iris")["name"] == "rest-iris"


def test_rest_errors(local_mesh: MeshClients, examples: Examples) -> None:
    assert local_mesh.mesh.pod is not None
    base = f"http://{local_mesh.mesh.pod.rest_address}/v2/models"
    with pytest.raises(InferenceServerException, match="model not found"):
        rest_infer(rest_client(local_mesh), "rest-unknown")
    status, body = http_status(f"{base}/rest-unknown/infer", body=b"{}")
    assert status == 404 and "model not found: rest-unknown" in body["error"]
    status, body = http_status(f"{base}/x/infer", {"mm-model-id": "a", "mm-vmodel-id": "b"}, b"{}")
    assert status == 400 and "both" in body["error"]
    local_mesh.register("rest-broken", examples.corrupt)
    status, body = http_status(f"{base}/rest-broken/infer", body=b"{}")
    assert status == 500 and "MLServer failed to load" in body["error"]


def test_rest_inference_is_counted_as_the_grpc_method_it_is(
    local_mesh: MeshClients, examples: Examples
) -> None:
    """ModelMesh's REST proxy turns REST into gRPC calls, which it counts: the gateway counts the same way."""
    from tests.test_pod_metrics import scrape

    pod = local_mesh.mesh.pod
    assert pod is not None and pod.metrics_address
    local_mesh.register("rest-counted", examples.logistic.path, loadNow=True, sync=True)
    ok = {"method": "ModelInfer", "code": "OK"}
    missing = {"method": "ModelInfer", "code": "NOT_FOUND"}
    before = scrape(pod.metrics_address)
    for _ in range(3):
        rest_infer(rest_client(local_mesh), "rest-counted")
    with pytest.raises(InferenceServerException):
        rest_infer(rest_client(local_mesh), "rest-never-registered")
    after = scrape(pod.metrics_address)
    name = "modelmesh_api_request_milliseconds_count"
    assert after.total(name, **ok) - before.total(name, **ok) == 3
    assert after.total(name, **missing) - before.total(name, **missing) == 1
    sizes = "modelmesh_response_size_bytes_count"
    assert after.total(sizes, **ok) - before.total(sizes, **ok) == 3
    invoked = "modelmesh_invoke_model_milliseconds_count"  # the one pod serves them: its runtime's calls
    assert after.total(invoked, **ok) - before.total(invoked, **ok) == 3
