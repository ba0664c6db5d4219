"""Length limits of ids and model info (mesh/limits.py), the data plane's id check and the lenient decoding
of management requests (pure)."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2 as v2

from mesh.cluster.management import SERVICE, Undecodable, lenient_deserializer
from mesh.limits import (
    FIELD_LIMITS,
    MAX_ID_BYTES,
    MAX_KEY_BYTES,
    MAX_PATH_BYTES,
    MAX_TYPE_BYTES,
    id_error,
    length_error,
    request_error,
    utf8_length_over,
)
from mesh.routing.target import RequestTarget, TargetError, TargetKind, request_target
from protos import model_mesh_pb2 as mm


def test_the_limits_are_the_documented_ones() -> None:
    assert (MAX_ID_BYTES, MAX_TYPE_BYTES, MAX_PATH_BYTES, MAX_KEY_BYTES) == (1024, 256, 4096, 4096)


@pytest.mark.parametrize(
    "value,over",
    [
        ("", False),
        ("a" * 10, False),
        ("a" * 16, False),
        ("a" * 17, True),
        ("é" * 8, False),  # 16 bytes
        ("é" * 9, True),  # 9 characters, 18 bytes
        ("😀" * 4, False),  # 16 bytes
        ("😀" * 5, True),  # 5 characters, 20 bytes
        ("a" * 15 + "é", True),  # 16 characters, 17 bytes
    ],
)
def test_length_is_counted_in_utf8_bytes(value: str, over: bool) -> None:
    assert utf8_length_over(value, 16) is over


def test_the_message_names_the_field_the_size_and_the_limit_but_not_the_value() -> None:
    assert length_error("modelId", "x" * 16, 16) is None
    message = length_error("modelId", "x" * 5000, 16)
    assert message == "modelId is 5000 bytes long; the limit is 16 bytes (UTF-8)"
    assert id_error("model_name", "m" * MAX_ID_BYTES) is None
    assert id_error("model_name", "m" * (MAX_ID_BYTES + 1)) == (
        f"model_name is {MAX_ID_BYTES + 1} bytes long; the limit is {MAX_ID_BYTES} bytes (UTF-8)"
    )


BIG_ID = "m" * (MAX_ID_BYTES + 1)
INFO = mm.ModelInfo(type="sklearn", path="/models/a", key="store")


@pytest.mark.parametrize(
    "request_,field",
    [
        (mm.RegisterModelRequest(modelId=BIG_ID, modelInfo=INFO), "modelId"),
        (mm.RegisterModelRequest(modelId="m", modelInfo=mm.ModelInfo(type="t" * 257)), "modelInfo.type"),
        (
            mm.RegisterModelRequest(modelId="m", modelInfo=mm.ModelInfo(type="t", path="p" * 4097)),
            "modelInfo.path",
        ),
        (
            mm.RegisterModelRequest(modelId="m", modelInfo=mm.ModelInfo(type="t", key="k" * 4097)),
            "modelInfo.key",
        ),
        (mm.UnregisterModelRequest(modelId=BIG_ID), "modelId"),
        (mm.GetStatusRequest(modelId=BIG_ID), "modelId"),
        (mm.EnsureLoadedRequest(modelId=BIG_ID), "modelId"),
        (mm.SetVModelRequest(vModelId=BIG_ID, targetModelId="m"), "vModelId"),
        (mm.SetVModelRequest(vModelId="v", targetModelId=BIG_ID), "targetModelId"),
        (
            mm.SetVModelRequest(vModelId="v", targetModelId="m", expectedTargetModelId=BIG_ID),
            "expectedTargetModelId",
        ),
        (mm.SetVModelRequest(vModelId="v", targetModelId="m", owner=BIG_ID), "owner"),
        (
            mm.SetVModelRequest(
                vModelId="v", targetModelId="m", modelInfo=mm.ModelInfo(type="t", path="p" * 4097)
            ),
            "modelInfo.path",
        ),
        (mm.DeleteVModelRequest(vModelId=BIG_ID), "vModelId"),
        (mm.DeleteVModelRequest(vModelId="v", owner=BIG_ID), "owner"),
        (mm.GetVModelStatusRequest(vModelId=BIG_ID), "vModelId"),
        (mm.GetVModelStatusRequest(vModelId="v", owner=BIG_ID), "owner"),
    ],
)
def test_every_management_request_is_checked(request_: Message, field: str) -> None:
    message = request_error(request_)
    assert message is not None and message.startswith(f"{field} is ")


def test_requests_at_the_limits_pass() -> None:
    at_limit = mm.SetVModelRequest(
        vModelId="v" * MAX_ID_BYTES,
        targetModelId="m" * MAX_ID_BYTES,
        expectedTargetModelId="e" * MAX_ID_BYTES,
        owner="o" * MAX_ID_BYTES,
        modelInfo=mm.ModelInfo(type="t" * MAX_TYPE_BYTES, path="p" * MAX_PATH_BYTES, key="k" * MAX_KEY_BYTES),
        loadNow=True,
    )
    assert request_error(at_limit) is None
    assert request_error(mm.RegisterModelRequest()) is None


def test_every_string_field_of_every_management_request_has_a_limit() -> None:
    def string_paths(descriptor: object, prefix: str = "") -> list[str]:
        paths = []
        for field in descriptor.fields:  # type: ignore[attr-defined]
            if field.type == field.TYPE_STRING:
                paths.append(prefix + field.name)
            elif field.type == field.TYPE_MESSAGE:
                paths += string_paths(field.message_type, prefix + field.name + ".")
        return paths

    for method in SERVICE.methods:
        for path in string_paths(method.input_type):
            assert path in FIELD_LIMITS, f"{method.name}: {path}"


def test_undecodable_bytes_become_a_marker_and_valid_bytes_a_message() -> None:
    deserialize = lenient_deserializer(mm.RegisterModelRequest)
    assert deserialize(b"\xff\xff\xff\xff") == Undecodable("RegisterModelRequest")
    assert deserialize(b"\x0a\x05ab") == Undecodable("RegisterModelRequest")  # truncated
    assert deserialize(b"\x0a\x02\xff\xfe") == Undecodable("RegisterModelRequest")  # not UTF-8
    parsed = deserialize(mm.RegisterModelRequest(modelId="m").SerializeToString())
    assert isinstance(parsed, mm.RegisterModelRequest) and parsed.modelId == "m"


def body(model_name: str) -> bytes:
    return v2.ModelInferRequest(model_name=model_name).SerializeToString()


@pytest.mark.parametrize(
    "metadata,request_body,what",
    [
        ([("mm-model-id", BIG_ID)], body("m"), "the mm-model-id header"),
        ([("mm-model-id-bin", BIG_ID.encode())], body("m"), "the mm-model-id header"),
        ([("mm-vmodel-id", BIG_ID)], body("m"), "the mm-vmodel-id header"),
        ([("mm-model-id", "é" * 600)], body("m"), "the mm-model-id header"),  # 600 characters, 1200 bytes
        ([], body("m" * 100_000), "model_name"),
    ],
)
def test_data_plane_ids_over_the_limit_are_refused(
    metadata: list[tuple[str, str | bytes]], request_body: bytes, what: str
) -> None:
    with pytest.raises(TargetError, match=f"^{what} is .* bytes long; the limit is {MAX_ID_BYTES} bytes"):
        request_target(metadata, request_body)


def test_data_plane_ids_at_the_limit_pass() -> None:
    at_limit = "m" * MAX_ID_BYTES
    assert request_target([("mm-model-id", at_limit)], body("x")) == RequestTarget(TargetKind.MODEL, at_limit)
    assert request_target([], body(at_limit)) == RequestTarget(TargetKind.NAME, at_limit)
    four_byte = "😀" * (MAX_ID_BYTES // 4)
    assert request_target([("mm-vmodel-id", four_byte)], b"") == RequestTarget(TargetKind.VMODEL, four_byte)
