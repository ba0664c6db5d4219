"""The committed stubs match their .proto files, and the wire contract holds field by field."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2

from protos import generate, model_mesh_pb2, model_runtime_pb2


def test_committed_stubs_match_the_proto_files() -> None:
    fresh = generate.compiled_descriptors()
    for module in (model_mesh_pb2, model_runtime_pb2):
        committed = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        expected = descriptor_pb2.FileDescriptorProto.FromString(fresh[committed.name])
        assert committed == expected, f"{committed.name}: run `make protos`"


@pytest.mark.parametrize(
    "message,fields",
    [
        ("ModelInfo", {"type": 1, "path": 2, "key": 3}),
        ("RegisterModelRequest", {"modelId": 1, "modelInfo": 2, "loadNow": 3, "sync": 4, "lastUsedTime": 5}),
        ("EnsureLoadedRequest", {"modelId": 1, "lastUsedTime": 2, "sync": 4}),
        ("ModelStatusInfo", {"status": 1, "errors": 2, "modelCopyInfos": 3}),
        (
            "SetVModelRequest",
            {
                "vModelId": 1,
                "targetModelId": 2,
                "updateOnly": 3,
                "modelInfo": 4,
                "autoDeleteTargetModel": 5,
                "loadNow": 6,
                "force": 7,
                "sync": 8,
                "expectedTargetModelId": 9,
                "owner": 10,
            },
        ),
        (
            "VModelStatusInfo",
            {
                "status": 1,
                "activeModelId": 2,
                "targetModelId": 3,
                "activeModelStatus": 4,
                "targetModelStatus": 5,
                "owner": 6,
            },
        ),
    ],
)
def test_model_mesh_field_numbers(message: str, fields: dict[str, int]) -> None:
    descriptor = model_mesh_pb2.DESCRIPTOR.message_types_by_name[message]
    assert {f.name: f.number for f in descriptor.fields} == fields


def test_runtime_status_field_numbers_and_enums() -> None:
    d = model_runtime_pb2.DESCRIPTOR.message_types_by_name["RuntimeStatusResponse"]
    assert {f.name: f.number for f in d.fields} == {
        "status": 1,
        "capacityInBytes": 2,
        "maxLoadingConcurrency": 3,
        "modelLoadingTimeoutMs": 4,
        "defaultModelSizeInBytes": 5,
        "runtimeVersion": 6,
        "numericRuntimeVersion": 7,
        "methodInfos": 8,
        "limitModelConcurrency": 9,
        "allowAnyMethod": 10,
    }
    assert model_runtime_pb2.RuntimeStatusResponse.Status.Value("FAILING") == 2
    status = model_mesh_pb2.ModelStatusInfo.ModelStatus
    assert [status.Value(n) for n in ("NOT_FOUND", "LOADED", "LOADING_FAILED", "UNKNOWN")] == [0, 3, 4, 5]
    services = {
        s.name: [m.name for m in s.methods] for s in model_mesh_pb2.DESCRIPTOR.services_by_name.values()
    }
    assert services["ModelMesh"] == [
        "registerModel",
        "unregisterModel",
        "getModelStatus",
        "ensureLoaded",
        "setVModel",
        "deleteVModel",
        "getVModelStatus",
    ]
