"""A runtime's "not found" against real processes: etcd, an MLServer pod and a Triton pod (adapters, mesh).

Requests naming a version the model lacks (or anything else the runtime answers NOT_FOUND for while it has
the model) get the runtime's own answer, and the copy stays: no unload, no second load, and the requests
beside them are served. A runtime that really lost a model (unloaded behind the mesh's back) still gets it
back, loaded once. Each case runs on the pod that holds the model and through the other pod (the internal
peer route), over gRPC and REST, with the default HTTP/2 front and with the grpc.aio front and two serving
processes (whose worker relays every runtime "not found" to the main process).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from harness.cluster import LocalMesh, PodStack
from harness.triton import triton_installed
from load_tests.processes import wait_for_serving_processes
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.conftest import Examples
from tests.support import IRIS_X, iris_input, poll_until
from tests.test_triton_adapter import ADD_ONE_MODEL, python_model

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not triton_installed(), reason="needs .triton (deploy/local/setup-triton.sh)"),
]
S = mm.ModelStatusInfo.ModelStatus
BAD_VERSION = "7"
BAD_THREADS = 6
BAD_PER_THREAD = 15
# separate connections, so a pod with several serving processes sees them on more than one
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@dataclass(frozen=True)
class Served:
    """One model of the mesh, and how to ask its runtime for it."""

    model_id: str
    holder: PodStack  # the only pod whose runtime serves the model's type
    other: PodStack  # the pod that forwards to the holder
    inputs: Callable[[], list[triton.InferInput]]
    rest_body: bytes  # a v2 JSON infer request the model accepts


@dataclass
class MixedMesh:
    mesh: LocalMesh
    sklearn: Served  # on MLServer
    python: Served  # on Triton

    def served(self, runtime: str) -> Served:
        return self.sklearn if runtime == "mlserver" else self.python


def add_one_inputs() -> list[triton.InferInput]:
    tensor = triton.InferInput("INPUT0", [3], "FP32")
    tensor.set_data_from_numpy(np.array([1, 2, 3], dtype=np.float32))
    return [tensor]


def rest_body(name: str, shape: list[int], data: list[float]) -> bytes:
    return json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": "FP32", "data": data}]}).encode()


def pod_address(stack: PodStack) -> str:
    assert stack.pod is not None
    return stack.pod.address


def rest_address(stack: PodStack) -> str:
    assert stack.pod is not None
    return stack.pod.rest_address


def loads_and_unloads(mesh: LocalMesh) -> list[float]:
    """Every adapter's load (success or failure) and unload counts."""
    counts = []
    for stack in mesh.stacks:
        adapter = stack.adapter
        counts += [
            adapter.metric("modelmesh_adapter_load_requests_total", 'result="success"'),
            adapter.metric("modelmesh_adapter_load_requests_total", 'result="failure"'),
            adapter.metric("modelmesh_adapter_unload_requests_total"),
        ]
    return counts


def copies(mesh: LocalMesh, model_id: str) -> list[str]:
    with grpc.insecure_channel(pod_address(mesh.stacks[0])) as channel:
        status = mm_grpc.ModelMeshStub(channel).getModelStatus(mm.GetStatusRequest(modelId=model_id))
    return sorted(c.location for c in status.modelCopyInfos if c.copyStatus == S.LOADED)


def grpc_answer(address: str, served: Served, version: str = "") -> tuple[str, str]:
    """("ok", "") or the error's (status, message), as tritonclient reports it."""
    client = triton.InferenceServerClient(address, channel_args=OWN_CONNECTION)
    try:
        client.infer(served.model_id, served.inputs(), model_version=version, client_timeout=30)
        return "ok", ""
    except InferenceServerException as e:
        return str(e.status()), e.message() or ""
    finally:
        client.close()


def rest_answer(address: str, served: Served, version: str = "") -> tuple[int, dict[str, object]]:
    path = f"/v2/models/{served.model_id}" + (f"/versions/{version}" if version else "") + "/infer"
    request = urllib.request.Request(
        f"http://{address}{path}", data=served.rest_body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@dataclass
class GoodLoop:
    """A client sending good requests through one pod until stopped; counts outcomes."""

    address: str
    served: Served
    outcomes: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> GoodLoop:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        poll_until(lambda: self.outcomes["ok"] >= 3, what="the good loop is served")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            status, message = grpc_answer(self.address, self.served)
            self.outcomes[status if status == "ok" else f"{status}: {message}"] += 1


FRONTS = {"h2-front": [], "grpc-front-2-processes": ["--front=grpc", "--serving-processes=2"]}
SERVING_PROCESSES = {"h2-front": 1, "grpc-front-2-processes": 2}


@pytest.fixture(scope="module", params=list(FRONTS))
def mixed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, examples: Examples
) -> Iterator[MixedMesh]:
    work = tmp_path_factory.mktemp("copy-lost")
    with LocalMesh(work, pods=1, triton_pods=1, pod_args=FRONTS[request.param]) as mesh:
        mlserver_pod, triton_pod = mesh.stacks
        for stack in mesh.stacks:
            assert stack.pod is not None
            wait_for_serving_processes(stack.pod, SERVING_PROCESSES[request.param])
        add_one = python_model(work / "add-one", ADD_ONE_MODEL)
        with grpc.insecure_channel(pod_address(mlserver_pod)) as channel:
            management = mm_grpc.ModelMeshStub(channel)
            for model_id, type_, path in (
                ("cl-iris", "sklearn", examples.logistic.path),
                ("cl-add", "python", add_one),
            ):
                management.registerModel(
                    mm.RegisterModelRequest(
                        modelId=model_id,
                        modelInfo=mm.ModelInfo(type=type_, path=str(path)),
                        loadNow=True,
                        sync=True,
                    )
                )
        yield MixedMesh(
            mesh,
            Served(
                "cl-iris",
                mlserver_pod,
                triton_pod,
                lambda: [iris_input()],
                rest_body("input-0", list(IRIS_X.shape), [float(v) for v in IRIS_X.ravel()]),
            ),
            Served("cl-add", triton_pod, mlserver_pod, add_one_inputs, rest_body("INPUT0", [3], [1, 2, 3])),
        )


RUNTIMES = ["mlserver", "triton"]
ENTRIES = ["holder", "other"]


def entry_pod(served: Served, entry: str) -> PodStack:
    return served.holder if entry == "holder" else served.other


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_bad_versions_get_the_runtimes_own_error_and_the_copy_stays(
    mixed: MixedMesh, runtime: str, entry: str
) -> None:
    served = mixed.served(runtime)
    address = pod_address(entry_pod(served, entry))
    assert grpc_answer(address, served) == ("ok", "")  # loaded, and this pod has routed it once
    expected = grpc_answer(served.holder.runtime.grpc_address, served, BAD_VERSION)  # the runtime itself
    assert expected[0] == "StatusCode.NOT_FOUND" and BAD_VERSION in expected[1], expected
    before = loads_and_unloads(mixed.mesh)
    with GoodLoop(address, served) as good:
        with ThreadPoolExecutor(BAD_THREADS) as pool:  # all at once, beside the good loop
            bad = list(
                pool.map(
                    lambda _: grpc_answer(address, served, BAD_VERSION), range(BAD_THREADS * BAD_PER_THREAD)
                )
            )
        served_so_far = good.outcomes["ok"]
        poll_until(lambda: good.outcomes["ok"] > served_so_far + 3, what="the good loop goes on")
    assert set(bad) == {expected}  # the runtime's code and message, unchanged
    assert set(good.outcomes) == {"ok"}, good.outcomes
    assert loads_and_unloads(mixed.mesh) == before  # no unload, no second load, on either pod
    assert copies(mixed.mesh, served.model_id) == [served.holder.pod_id]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_bad_versions_over_rest_get_the_runtimes_own_404(mixed: MixedMesh, runtime: str, entry: str) -> None:
    served = mixed.served(runtime)
    address = rest_address(entry_pod(served, entry))
    assert rest_answer(address, served)[0] == 200
    expected = rest_answer(served.holder.runtime.http_address, served, BAD_VERSION)
    assert expected[0] == 404, expected
    before = loads_and_unloads(mixed.mesh)
    with ThreadPoolExecutor(BAD_THREADS) as pool:
        bad = list(pool.map(lambda _: rest_answer(address, served, BAD_VERSION), range(5 * BAD_THREADS)))
    assert all(answer == expected for answer in bad), bad[:3]
    assert loads_and_unloads(mixed.mesh) == before
    assert copies(mixed.mesh, served.model_id) == [served.holder.pod_id]


def unload_in_runtime(served: Served) -> None:
    """Behind the mesh's back: the runtime forgets the model, the mesh still believes it holds it."""
    client = triton.InferenceServerClient(served.holder.runtime.grpc_address)
    try:
        client.unload_model(served.model_id)
        poll_until(lambda: not runtime_has(client, served.model_id), what="the runtime unloaded it")
    finally:
        client.close()


def runtime_has(client: triton.InferenceServerClient, model_id: str) -> bool:
    try:
        return bool(client.is_model_ready(model_id))
    except InferenceServerException:  # MLServer answers UNKNOWN for a model it does not have
        return False


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_model_the_runtime_really_lost_is_loaded_again_once(
    mixed: MixedMesh, runtime: str, entry: str, protocol: str
) -> None:
    served = mixed.served(runtime)
    stack = entry_pod(served, entry)

    def served_ok(_: int) -> bool:
        if protocol == "grpc":
            return grpc_answer(pod_address(stack), served) == ("ok", "")
        return rest_answer(rest_address(stack), served)[0] == 200

    assert served_ok(0)
    loads = served.holder.adapter.metric("modelmesh_adapter_load_requests_total", 'result="success"')
    unload_in_runtime(served)
    with ThreadPoolExecutor(BAD_THREADS) as pool:  # many requests see the runtime's NOT_FOUND at once
        answers = list(pool.map(served_ok, range(2 * BAD_THREADS)))
    assert all(answers)
    assert (
        served.holder.adapter.metric("modelmesh_adapter_load_requests_total", 'result="success"') == loads + 1
    )
    assert copies(mixed.mesh, served.model_id) == [served.holder.pod_id]
