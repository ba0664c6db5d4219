"""One mesh, two pools: an MLServer pod and a Triton pod. Each model goes to a pod whose runtime serves
its type, and either pod's endpoint serves both."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from harness.cluster import LocalMesh
from harness.triton import triton_installed
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.conftest import Examples
from tests.support import poll_until, predict
from tests.test_multi_pod import registry_record
from tests.test_triton_adapter import ADD_ONE_MODEL, python_model

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not triton_installed(), reason="needs .triton (deploy/local/setup-triton.sh)"),
]
S = mm.ModelStatusInfo.ModelStatus
PREDICTIONS = "modelmesh_adapter_size_predictions_total"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with LocalMesh(tmp_path_factory.mktemp("mixed"), pods=1, triton_pods=1) as mesh:
        poll_until(
            lambda: all(pods_seen_by(s.pod.rest_address) == 2 for s in mesh.stacks), what="both pools seen"
        )  # type: ignore[union-attr]
        yield mesh


def pods_seen_by(rest_address: str) -> int:
    """How many pods this pod's own view holds (its /mesh/pools figures)."""
    with urllib.request.urlopen(f"http://{rest_address}/mesh/pools", timeout=5) as reply:
        return sum(pool["pods"] for pool in json.loads(reply.read()).values())


def add_one(client: triton.InferenceServerClient, model_id: str) -> list[float]:
    tensor = triton.InferInput("INPUT0", [3], "FP32")
    tensor.set_data_from_numpy(np.array([1.0, 2.0, 3.0], dtype=np.float32))
    return [float(v) for v in client.infer(model_id, [tensor]).as_numpy("OUTPUT0")]


def test_each_model_goes_to_a_pod_of_its_type_and_both_endpoints_serve_both(
    mixed: LocalMesh, examples: Examples, tmp_path: Path
) -> None:
    mlserver_pod, triton_pod = mixed.stack("pod-a"), mixed.stack("triton-a")
    with grpc.insecure_channel(triton_pod.pod.address) as channel:  # type: ignore[union-attr]
        management = mm_grpc.ModelMeshStub(channel)
        for model_id, type_, path in (
            ("mixed-sklearn", "sklearn", examples.logistic.path),
            ("mixed-python", "python", python_model(tmp_path / "add-one", ADD_ONE_MODEL)),
        ):
            info = mm.ModelInfo(type=type_, path=str(path))
            management.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info))
        for stack in (mlserver_pod, triton_pod):
            client = triton.InferenceServerClient(stack.pod.address)  # type: ignore[union-attr]
            assert list(predict(client, "mixed-sklearn")) == list(examples.logistic.expected)
            assert add_one(client, "mixed-python") == [2.0, 3.0, 4.0]

        def location(model_id: str) -> list[str]:
            status = management.getModelStatus(mm.GetStatusRequest(modelId=model_id))
            return [c.location for c in status.modelCopyInfos if c.copyStatus == S.LOADED]

        assert location("mixed-sklearn") == ["pod-a"]
        assert location("mixed-python") == ["triton-a"]


def test_a_registration_writes_the_size_its_pods_runtime_predicts_for_types_it_serves(
    mixed: LocalMesh, examples: Examples, tmp_path: Path
) -> None:
    """The prediction at registration spares the first miss its round trip to the adapter; a pod whose
    runtime does not serve the type leaves the size to the pod that loads it."""
    mlserver_pod, triton_pod = mixed.stack("pod-a"), mixed.stack("triton-a")
    registered = [  # model id, the pod it is registered through, type, files
        ("sized-python", triton_pod, "python", python_model(tmp_path / "add-one", ADD_ONE_MODEL)),
        ("sized-sklearn", mlserver_pod, "sklearn", examples.logistic.path),
        ("unsized-sklearn", triton_pod, "sklearn", examples.logistic.path),
    ]
    asked = {stack.pod_id: stack.adapter.metric(PREDICTIONS) for stack in (mlserver_pod, triton_pod)}
    for model_id, stack, type_, path in registered:
        with grpc.insecure_channel(stack.pod.address) as channel:  # type: ignore[union-attr]
            info = mm.ModelInfo(type=type_, path=str(path))
            mm_grpc.ModelMeshStub(channel).registerModel(
                mm.RegisterModelRequest(modelId=model_id, modelInfo=info)
            )
    sizes = {
        model_id: asyncio.run(registry_record(mixed, model_id)).size_bytes for model_id, *_ in registered
    }
    assert sizes["sized-python"] > 0 and sizes["sized-sklearn"] > 0
    assert sizes["unsized-sklearn"] == 0  # the Triton pod's runtime does not serve sklearn: not asked
    assert triton_pod.adapter.metric(PREDICTIONS) == asked["triton-a"] + 1
    assert mlserver_pod.adapter.metric(PREDICTIONS) == asked["pod-a"] + 1

    client = triton.InferenceServerClient(mlserver_pod.pod.address)  # type: ignore[union-attr]
    assert list(predict(client, "sized-sklearn")) == list(examples.logistic.expected)
    assert mlserver_pod.adapter.metric(PREDICTIONS) == asked["pod-a"] + 1  # its load asked no prediction
    assert list(predict(client, "unsized-sklearn")) == list(examples.logistic.expected)
    assert mlserver_pod.adapter.metric(PREDICTIONS) == asked["pod-a"] + 2  # asked by the pod that loads it
