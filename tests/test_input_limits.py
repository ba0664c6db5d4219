"""Input limits against real processes: etcd, echo runtimes and two pods (--front=h2 and --front=grpc).

Ids over the limits of mesh/limits.py are INVALID_ARGUMENT naming the field, and nothing reaches etcd;
bytes that are not the management method's message are INVALID_ARGUMENT with no traceback in the pod's log.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import aetcd
import grpc
import pytest
from google.protobuf.message import Message

from harness.cluster import EtcdServer, PodProcess
from load_tests.echo_runtime import INFER_METHOD, MODEL_TYPE
from load_tests.hop import infer_request
from load_tests.processes import EchoProcess, start_echo_pod
from mesh.limits import MAX_ID_BYTES
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc

pytestmark = pytest.mark.integration

FRONTS = ("h2", "grpc")
MEGABYTE_ID = "m" * (1 << 20)
PREFIX = b"mm/modelmesh-serving/"
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class LimitPods:
    etcd: EtcdServer
    pods: dict[str, PodProcess]  # by front


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LimitPods]:
    work = tmp_path_factory.mktemp("limits")
    etcd = EtcdServer.start(work / "etcd")
    echoes: list[EchoProcess] = []
    pods: dict[str, PodProcess] = {}
    try:
        for front in FRONTS:
            echo = EchoProcess.start(work / f"echo-{front}", f"echo-{front}")
            echoes.append(echo)
            pods[front] = start_echo_pod(
                work / f"pod-{front}", etcd, echo, f"pod-{front}", extra_args=[f"--front={front}"]
            )
        with grpc.insecure_channel(pods["h2"].address) as channel:
            mm_grpc.ModelMeshStub(channel).registerModel(
                mm.RegisterModelRequest(
                    modelId="echo-ok", modelInfo=mm.ModelInfo(type=MODEL_TYPE, path="size=1000")
                ),
                timeout=30,
            )
        yield LimitPods(etcd, pods)
    finally:
        for pod in pods.values():
            pod.process.stop()
        for echo in echoes:
            echo.stop()
        etcd.process.stop()


def records(etcd: EtcdServer) -> dict[bytes, bytes]:
    """The registry and vmodel records (instance records change by themselves)."""

    async def read() -> dict[bytes, bytes]:
        async with aetcd.Client(port=etcd.client_port) as client:
            found = []
            for part in (b"registry/", b"vmodels/"):
                found += list(await client.get_prefix(PREFIX + part))
        return {kv.key: kv.value for kv in found}

    return asyncio.run(read())


def refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def assert_invalid(error: grpc.RpcError, field: str, limit: int = MAX_ID_BYTES) -> None:
    assert error.code() == INVALID, error.details()
    details = error.details() or ""
    assert details.startswith(f"{field} is ") and f"the limit is {limit} bytes" in details, details
    assert len(details) < 200  # the id is not echoed back


@pytest.mark.parametrize("front", FRONTS)
def test_a_megabyte_model_id_is_refused_by_every_management_call_and_etcd_is_unchanged(
    mesh: LimitPods, front: str
) -> None:
    before = records(mesh.etcd)
    assert PREFIX + b"registry/echo-ok" in before
    info = mm.ModelInfo(type=MODEL_TYPE, path="size=1000")
    calls: list[tuple[str, str, Message]] = [
        ("registerModel", "modelId", mm.RegisterModelRequest(modelId=MEGABYTE_ID, modelInfo=info)),
        (
            "registerModel",
            "modelId",
            mm.RegisterModelRequest(modelId=MEGABYTE_ID, modelInfo=info, loadNow=True),
        ),
        ("getModelStatus", "modelId", mm.GetStatusRequest(modelId=MEGABYTE_ID)),
        ("ensureLoaded", "modelId", mm.EnsureLoadedRequest(modelId=MEGABYTE_ID)),
        ("unregisterModel", "modelId", mm.UnregisterModelRequest(modelId=MEGABYTE_ID)),
        ("setVModel", "vModelId", mm.SetVModelRequest(vModelId=MEGABYTE_ID, targetModelId="echo-ok")),
        ("setVModel", "targetModelId", mm.SetVModelRequest(vModelId="v", targetModelId=MEGABYTE_ID)),
        ("deleteVModel", "vModelId", mm.DeleteVModelRequest(vModelId=MEGABYTE_ID)),
        ("getVModelStatus", "vModelId", mm.GetVModelStatusRequest(vModelId=MEGABYTE_ID)),
    ]
    with grpc.insecure_channel(mesh.pods[front].address) as channel:
        stub = mm_grpc.ModelMeshStub(channel)
        for method, field, request in calls:
            error = refusal(lambda m=method, r=request: getattr(stub, m)(r, timeout=30))  # type: ignore[misc]
            assert_invalid(error, field)
        long_path = mm.RegisterModelRequest(
            modelId="echo-long-path", modelInfo=mm.ModelInfo(type=MODEL_TYPE, path="p" * 5000)
        )
        assert_invalid(refusal(lambda: stub.registerModel(long_path, timeout=30)), "modelInfo.path", 4096)
        long_type = mm.RegisterModelRequest(modelId="echo-long-type", modelInfo=mm.ModelInfo(type="t" * 300))
        assert_invalid(refusal(lambda: stub.registerModel(long_type, timeout=30)), "modelInfo.type", 256)
        # an id at the limit is an ordinary id
        status = stub.getModelStatus(mm.GetStatusRequest(modelId="m" * MAX_ID_BYTES), timeout=30)
        assert status.status == mm.ModelStatusInfo.NOT_FOUND
    assert records(mesh.etcd) == before


def infer(address: str, body: bytes, metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        response: bytes = channel.unary_unary(INFER_METHOD)(body, metadata=metadata, timeout=30)
        return response


@pytest.mark.parametrize("front", FRONTS)
def test_inference_ids_over_the_limit_are_invalid_argument(mesh: LimitPods, front: str) -> None:
    address = mesh.pods[front].address
    assert infer(address, infer_request("echo-ok"))  # the control: an ordinary request is served
    assert infer(address, infer_request("x"), (("mm-model-id", "echo-ok"),))
    # 4000 bytes: over the id limit, within what gRPC transports accept in a header block
    for header in ("mm-model-id", "mm-vmodel-id"):
        error = refusal(lambda h=header: infer(address, infer_request("echo-ok"), ((h, "h" * 4000),)))  # type: ignore[misc]
        assert_invalid(error, f"the {header} header")
    for size in (100_000, 1 << 20):
        assert_invalid(refusal(lambda s=size: infer(address, infer_request("n" * s))), "model_name")  # type: ignore[misc]
    assert infer(address, infer_request("echo-ok"))


def rest_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_rest_ids_over_the_limit_are_400(mesh: LimitPods) -> None:
    base = f"http://{mesh.pods['h2'].rest_address}/v2/models"
    _, control = rest_get(f"{base}/{'n' * MAX_ID_BYTES}/ready")
    assert control == {"name": "n" * MAX_ID_BYTES, "ready": False}  # an ordinary id, not registered
    for url, headers in (
        (f"{base}/{'n' * 2000}/ready", {}),
        (f"{base}/echo-ok/ready", {"mm-model-id": "h" * 2000}),
    ):
        code, body = rest_get(url, headers)
        assert code == 400 and f"the limit is {MAX_ID_BYTES} bytes" in str(body["error"]), body


@pytest.mark.parametrize("front", FRONTS)
def test_undecodable_management_requests_are_invalid_argument_without_a_traceback(
    mesh: LimitPods, front: str
) -> None:
    pod = mesh.pods[front]
    log_start = pod.process.log_path.stat().st_size
    before = records(mesh.etcd)
    with grpc.insecure_channel(pod.address) as channel:
        for method, message in (
            ("registerModel", "RegisterModelRequest"),
            ("getModelStatus", "GetStatusRequest"),
            ("setVModel", "SetVModelRequest"),
        ):
            raw = channel.unary_unary(f"/mmesh.ModelMesh/{method}")  # no serializers: bytes as they are
            for garbage in (b"\xff\xff\xff\xff not protobuf", b"\x0a\x05ab", b"\x0a\x02\xff\xfe"):
                error = refusal(lambda r=raw, g=garbage: r(g, timeout=30))  # type: ignore[misc]
                assert error.code() == INVALID, error.details()
                assert error.details() == f"cannot decode {message}"
        # the same path with valid bytes works; once it has answered, anything the garbage logged is written
        valid = channel.unary_unary("/mmesh.ModelMesh/getModelStatus")(
            mm.GetStatusRequest(modelId="echo-ok").SerializeToString(), timeout=30
        )
        assert mm.ModelStatusInfo.FromString(valid).status != mm.ModelStatusInfo.NOT_FOUND
    with pod.process.log_path.open("rb") as log:
        log.seek(log_start)
        written = log.read().decode(errors="replace")
    assert "Traceback" not in written and "deserializ" not in written.lower(), written[-3000:]
    assert records(mesh.etcd) == before
