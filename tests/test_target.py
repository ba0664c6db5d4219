"""Which model a request is for (pure)."""

from __future__ import annotations

import pytest
from tritonclient.grpc import service_pb2 as v2

from mesh.routing.target import RequestTarget, TargetError, TargetKind, request_target

BODY = v2.ModelInferRequest(model_name="from-body").SerializeToString()


@pytest.mark.parametrize(
    "metadata,expected",
    [
        ([("mm-model-id", "m1")], RequestTarget(TargetKind.MODEL, "m1")),
        ([("mm-model-id-bin", b"m\xc3\xbc")], RequestTarget(TargetKind.MODEL, "mü")),
        ([("mm-vmodel-id", "v1")], RequestTarget(TargetKind.VMODEL, "v1")),
        ([("mm-vmodel-id-bin", b"v2")], RequestTarget(TargetKind.VMODEL, "v2")),
        ([("x-other", "1")], RequestTarget(TargetKind.NAME, "from-body")),
        ([], RequestTarget(TargetKind.NAME, "from-body")),
    ],
)
def test_target(metadata: list[tuple[str, str | bytes]], expected: RequestTarget) -> None:
    assert request_target(metadata, BODY) == expected


@pytest.mark.parametrize(
    "metadata,body,message",
    [
        ([("mm-model-id", "a"), ("mm-vmodel-id", "b")], BODY, "both"),
        ([("mm-model-id", "a"), ("mm-model-id", "b")], BODY, "more than once"),
        ([("mm-model-id", "")], BODY, "empty mm-model-id"),
        ([("mm-vmodel-id", "")], BODY, "empty mm-vmodel-id"),
        ([], b"", "no model id"),
        ([], v2.ModelInferRequest(id="x").SerializeToString(), "no model id"),
        ([], b"\x0a\x09trunc", "unreadable"),
    ],
)
def test_bad_targets(metadata: list[tuple[str, str | bytes]], body: bytes, message: str) -> None:
    with pytest.raises(TargetError, match=message):
        request_target(metadata, body)
