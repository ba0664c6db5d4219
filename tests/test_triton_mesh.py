"""Triton behind the mesh: python-backend and ONNX models served through a Triton pod, their stub processes
gone when unregistered, and eviction by measured memory that keeps the runtime under its capacity."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from harness.cluster import LocalMesh
from harness.triton import TritonProcess, triton_installed, triton_python
from protos import model_mesh_pb2 as mm
from tests.conftest import MeshClients, open_clients
from tests.support import poll_until
from tests.test_triton_adapter import ADD_ONE_MODEL, MAKE_ONNX, python_model, stubs_of

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not triton_installed(), reason="needs .triton (deploy/local/setup-triton.sh)"),
]
S = mm.ModelStatusInfo.ModelStatus
MIB = 1 << 20
# A python-backend stub measures about 40 MiB here: room for two, not three.
CAPACITY = 100 * MIB


@pytest.fixture(scope="module")
def triton_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshClients]:
    with LocalMesh(
        tmp_path_factory.mktemp("triton-mesh"),
        pods=0,
        triton_pods=1,
        capacity_bytes=CAPACITY,
        pod_args=["--eviction-policy=lru"],  # the eviction test names the least recently used model
    ) as mesh:
        clients = open_clients(mesh)
        yield clients
        clients.channel.close()


def runtime(clients: MeshClients) -> TritonProcess:
    process = clients.mesh.stacks[0].runtime
    assert isinstance(process, TritonProcess)
    return process


def infer(
    clients: MeshClients, model_id: str, input_name: str, output_name: str, shape: list[int]
) -> list[float]:
    tensor = triton.InferInput(input_name, shape, "FP32")
    tensor.set_data_from_numpy(np.arange(1, 1 + int(np.prod(shape)), dtype=np.float32).reshape(shape))
    return [
        float(v) for v in np.asarray(clients.infer.infer(model_id, [tensor]).as_numpy(output_name)).ravel()
    ]


def test_python_and_onnx_models_through_the_mesh_and_their_stubs_go(
    triton_mesh: MeshClients, tmp_path: Path
) -> None:
    onnx_file = tmp_path / "double.onnx"
    subprocess.run([str(triton_python()), "-c", MAKE_ONNX, str(onnx_file)], check=True, timeout=120)
    cases = [
        (
            "tm-python",
            python_model(tmp_path / "add-one", ADD_ONE_MODEL),
            "python",
            "INPUT0",
            "OUTPUT0",
            [3],
            [2, 3, 4],
        ),
        ("tm-onnx", onnx_file, "onnx", "X", "Y", [1, 3], [2, 4, 6]),
    ]
    # one at a time: the two together may not fit the small capacity this module runs with
    for model_id, path, type_, input_name, output_name, shape, expected in cases:
        triton_mesh.register(model_id, path, type_=type_)
        assert infer(triton_mesh, model_id, input_name, output_name, shape) == [float(v) for v in expected]
        assert stubs_of(runtime(triton_mesh), model_id)  # the model is its own stub process
        triton_mesh.management.unregisterModel(mm.UnregisterModelRequest(modelId=model_id))
        poll_until(lambda m=model_id: not stubs_of(runtime(triton_mesh), m), what=f"{model_id}'s stub exits")


def test_eviction_by_measured_memory_keeps_the_runtime_under_its_capacity(
    triton_mesh: MeshClients, tmp_path: Path
) -> None:
    names = ["tm-a", "tm-b", "tm-c"]
    for name in names:
        triton_mesh.register(name, python_model(tmp_path / name, ADD_ONE_MODEL), type_="python")

    def stub_bytes() -> int:
        return sum(p.memory_info().rss for name in names for p in stubs_of(runtime(triton_mesh), name))

    for name in names:
        assert infer(triton_mesh, name, "INPUT0", "OUTPUT0", [3]) == [2.0, 3.0, 4.0]
        assert stub_bytes() <= CAPACITY  # measured, real memory of the model processes
    held = {n for n in names if triton_mesh.status(n).status == S.LOADED}
    assert held == {"tm-b", "tm-c"}  # the least recently used one made room
    assert not stubs_of(runtime(triton_mesh), "tm-a")
