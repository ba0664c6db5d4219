"""The KServe Python SDK (InferenceGRPCClient, InferenceRESTClient) through the mesh, beside the same calls
made straight to the runtime: a Triton pod and an MLServer pod (real processes), each model asked through
the pod that holds it and through the other one, which forwards it.

The SDK lives in its own environment (.venv-kserve, deploy/local/setup.sh): tests/kserve_sdk_client.py runs
there and prints what the SDK saw.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from harness.cluster import LocalMesh
from harness.demo import ADD_ONE_CONFIG, ADD_ONE_MODEL
from harness.processes import REPO_ROOT
from harness.triton import triton_installed
from protos import model_mesh_pb2 as mm
from tests.conftest import MeshClients, open_clients
from tests.support import IRIS_X, train_iris

KSERVE_PYTHON = REPO_ROOT / ".venv-kserve" / "bin" / "python"
CLIENT = REPO_ROOT / "tests" / "kserve_sdk_client.py"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not triton_installed(), reason="needs .triton (deploy/local/setup-triton.sh)"),
    pytest.mark.skipif(not KSERVE_PYTHON.exists(), reason="needs .venv-kserve (deploy/local/setup.sh)"),
]
S = mm.ModelStatusInfo.ModelStatus
ADD_ONE = "add-one"  # a Triton python-backend model
IRIS = "iris"  # an MLServer sklearn model
INPUTS = {
    ADD_ONE: ({"name": "INPUT0", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}, "OUTPUT0"),
    IRIS: (
        {"name": "input-0", "shape": list(IRIS_X.shape), "datatype": "FP32", "data": IRIS_X.ravel().tolist()},
        "predict",
    ),
}


@dataclass
class Endpoints:
    grpc: str
    rest: str


@dataclass
class SdkMesh:
    clients: MeshClients
    direct: dict[str, Endpoints]  # model -> its runtime
    holder: dict[str, Endpoints]  # model -> the pod that holds it
    forwarder: dict[str, Endpoints]  # model -> a pod whose runtime cannot serve it

    def via(self, model: str, route: str) -> Endpoints:
        return {"direct": self.direct, "holder": self.holder, "forwarder": self.forwarder}[route][model]


@pytest.fixture(scope="module")
def sdk_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SdkMesh]:
    work = tmp_path_factory.mktemp("kserve-sdk")
    with LocalMesh(work / "mesh", pods=1, triton_pods=1) as mesh:
        clients = open_clients(mesh)
        try:
            mlserver, triton = mesh.stacks
            assert mlserver.pod is not None and triton.pod is not None
            runtime = {
                ADD_ONE: Endpoints(triton.runtime.grpc_address, triton.runtime.http_address),
                IRIS: Endpoints(mlserver.runtime.grpc_address, mlserver.runtime.http_address),
            }
            triton_pod = Endpoints(triton.pod.address, triton.pod.rest_address)
            mlserver_pod = Endpoints(mlserver.pod.address, mlserver.pod.rest_address)
            sdk = SdkMesh(
                clients,
                direct=runtime,
                holder={ADD_ONE: triton_pod, IRIS: mlserver_pod},
                forwarder={ADD_ONE: mlserver_pod, IRIS: triton_pod},
            )
            add_one = work / "models" / ADD_ONE
            (add_one / "1").mkdir(parents=True)
            (add_one / "config.pbtxt").write_text(ADD_ONE_CONFIG)
            (add_one / "1" / "model.py").write_text(ADD_ONE_MODEL)
            clients.register(ADD_ONE, add_one, type_="python", loadNow=True, sync=True)
            iris = train_iris(work / "models" / IRIS, "logistic").path
            clients.register(IRIS, iris, type_="sklearn", loadNow=True, sync=True)
            assert clients.status(ADD_ONE).status == S.LOADED and clients.status(IRIS).status == S.LOADED
            yield sdk
        finally:
            clients.channel.close()


def sdk_sees(endpoints: Endpoints, model: str) -> dict[str, Any]:
    tensor, output = INPUTS[model]
    spec = {"grpc": endpoints.grpc, "rest": f"http://{endpoints.rest}", "model": model, "input": tensor}
    done = subprocess.run(
        [str(KSERVE_PYTHON), str(CLIENT), json.dumps({**spec, "output": output})],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return seen


@pytest.fixture(scope="module")
def direct_answers(sdk_mesh: SdkMesh) -> dict[str, dict[str, Any]]:
    return {model: sdk_sees(sdk_mesh.direct[model], model) for model in INPUTS}


@pytest.mark.parametrize("route", ["holder", "forwarder"])
@pytest.mark.parametrize("model", list(INPUTS))
def test_the_sdk_sees_through_the_mesh_what_it_sees_directly(
    sdk_mesh: SdkMesh, direct_answers: dict[str, dict[str, Any]], model: str, route: str
) -> None:
    direct = direct_answers[model]
    seen = sdk_sees(sdk_mesh.via(model, route), model)
    for over in ("grpc", "rest"):
        assert seen[over]["server_live"] is True and seen[over]["server_ready"] is True
        assert seen[over]["model_ready"] is True
        assert seen[over]["infer"] == direct[over]["infer"]
        assert seen[over]["infer"]["model_name"] == model  # the concrete id is the client's business only
    assert seen["grpc"]["metadata"] == direct["grpc"]["metadata"]
    assert seen["grpc"]["metadata"]["name"] == model
    assert seen["rest"]["unknown_model_ready"] is False


@pytest.mark.parametrize("route", ["holder", "forwarder"])
def test_sdk_errors_carry_the_meshs_message(sdk_mesh: SdkMesh, route: str) -> None:
    seen = sdk_sees(sdk_mesh.via(ADD_ONE, route), ADD_ONE)
    grpc_error = seen["grpc"]["unknown_infer"]
    assert grpc_error["code"] == "NOT_FOUND" and "no-such-model" in grpc_error["details"]
    rest_error = seen["rest"]["unknown_infer"]
    assert rest_error["status"] == 404
    # The SDK puts a JSON body's "error" in its message: the mesh's own words, not just "404 Not Found"
    assert "no-such-model" in rest_error["message"].split(", '404")[0], rest_error["message"]
