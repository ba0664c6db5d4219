"""vmodels through the management API and inference, on one pod (real etcd, MLServer, adapter)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from tritonclient.utils import InferenceServerException

from protos import model_mesh_pb2 as mm
from tests.conftest import Examples, MeshClients
from tests.support import iris_input, poll_until, predict

pytestmark = pytest.mark.integration
S = mm.ModelStatusInfo.ModelStatus
V = mm.VModelStatusInfo.VModelStatus


def set_vmodel(
    clients: MeshClients, vmodel_id: str, target: str, path: Path | None = None, **kw: object
) -> mm.VModelStatusInfo:
    info = {"modelInfo": mm.ModelInfo(type="sklearn", path=str(path))} if path is not None else {}
    request = mm.SetVModelRequest(vModelId=vmodel_id, targetModelId=target, **info, **kw)  # type: ignore[arg-type]
    return clients.management.setVModel(request)


def vstatus(clients: MeshClients, vmodel_id: str, owner: str = "") -> mm.VModelStatusInfo:
    return clients.management.getVModelStatus(mm.GetVModelStatusRequest(vModelId=vmodel_id, owner=owner))


def test_a_vmodel_serves_its_model_by_header_and_by_name(local_mesh: MeshClients, examples: Examples) -> None:
    reply = set_vmodel(local_mesh, "va", "va-model-1", examples.logistic.path, owner="team")
    assert (reply.status, reply.activeModelId, reply.targetModelId, reply.owner) == (
        V.DEFINED,
        "va-model-1",
        "va-model-1",
        "team",
    )
    expected = list(examples.logistic.expected)
    assert list(predict(local_mesh.infer, "va")) == expected  # field 1 names the vmodel
    response = local_mesh.infer.infer("ignored", [iris_input()], headers={"mm-vmodel-id": "va"})
    assert response.get_response().model_name == "va-model-1"  # the concrete id answers
    assert vstatus(local_mesh, "va").activeModelStatus.status == S.LOADED
    assert vstatus(local_mesh, "va", owner="other").status == V.NOT_FOUND


def test_transition_switches_once_the_target_is_loaded_and_auto_deletes(
    local_mesh: MeshClients, examples: Examples
) -> None:
    set_vmodel(local_mesh, "vb", "vb-old", examples.logistic.path, autoDeleteTargetModel=True)
    assert list(predict(local_mesh.infer, "vb")) == list(examples.logistic.expected)
    reply = set_vmodel(local_mesh, "vb", "vb-new", examples.flipped.path, autoDeleteTargetModel=True)
    # answered before the target is loaded: the old model is still the active one
    assert (reply.status, reply.activeModelId, reply.targetModelId) == (V.TRANSITIONING, "vb-old", "vb-new")
    poll_until(lambda: vstatus(local_mesh, "vb").status == V.DEFINED, what="the transition completes")
    reply = vstatus(local_mesh, "vb")
    assert reply.activeModelId == "vb-new" and reply.activeModelStatus.status == S.LOADED
    assert list(predict(local_mesh.infer, "vb")) == list(examples.flipped.expected)
    assert local_mesh.status("vb-old").status == S.NOT_FOUND  # its last reference went: auto-deleted
    with pytest.raises(grpc.RpcError) as e:  # the active model is referenced: it cannot be unregistered
        local_mesh.management.unregisterModel(mm.UnregisterModelRequest(modelId="vb-new"))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    local_mesh.management.deleteVModel(mm.DeleteVModelRequest(vModelId="vb"))
    assert vstatus(local_mesh, "vb").status == V.NOT_FOUND
    assert local_mesh.status("vb-new").status == S.NOT_FOUND  # auto-deleted with the vmodel


def test_a_target_that_fails_to_load_leaves_the_active_model_serving(
    local_mesh: MeshClients, examples: Examples
) -> None:
    set_vmodel(local_mesh, "vc", "vc-good", examples.logistic.path)
    predict(local_mesh.infer, "vc")
    reply = set_vmodel(local_mesh, "vc", "vc-broken", examples.corrupt, sync=True)
    assert (reply.status, reply.activeModelId, reply.targetModelId) == (
        V.TRANSITION_FAILED,
        "vc-good",
        "vc-broken",
    )
    assert reply.targetModelStatus.status == S.LOADING_FAILED
    assert list(predict(local_mesh.infer, "vc")) == list(examples.logistic.expected)
    # force switches at once, whatever the target's state
    reply = set_vmodel(local_mesh, "vc", "vc-broken", force=True)
    assert (reply.status, reply.activeModelId) == (V.DEFINED, "vc-broken")


@pytest.mark.parametrize(
    "request_fields,code",
    [
        ({"vModelId": "", "targetModelId": "x"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"vModelId": "vd", "targetModelId": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"vModelId": "vd", "targetModelId": "vd-m", "owner": "intruder"}, grpc.StatusCode.ALREADY_EXISTS),
        (
            {"vModelId": "vd", "targetModelId": "vd-next", "expectedTargetModelId": "other"},
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        ({"vModelId": "vd-missing", "targetModelId": "vd-m", "updateOnly": True}, grpc.StatusCode.NOT_FOUND),
        ({"vModelId": "vd2", "targetModelId": "vd-unregistered"}, grpc.StatusCode.NOT_FOUND),
    ],
)
def test_set_vmodel_errors(
    local_mesh: MeshClients, examples: Examples, request_fields: dict[str, object], code: grpc.StatusCode
) -> None:
    set_vmodel(local_mesh, "vd", "vd-m", examples.tree.path, owner="owner")
    with pytest.raises(grpc.RpcError) as e:
        local_mesh.management.setVModel(mm.SetVModelRequest(**request_fields))  # type: ignore[arg-type]
    assert e.value.code() == code
    assert vstatus(local_mesh, "vd").activeModelId == "vd-m"  # nothing changed


def test_unknown_vmodel(local_mesh: MeshClients) -> None:
    assert vstatus(local_mesh, "nope").status == V.NOT_FOUND
    local_mesh.management.deleteVModel(mm.DeleteVModelRequest(vModelId="nope"))  # a no-op, not an error
    with pytest.raises(InferenceServerException) as e:
        predict(local_mesh.infer, "x", headers={"mm-vmodel-id": "nope"})
    assert e.value.status() == "StatusCode.NOT_FOUND"
    assert "vmodel not found" in str(e.value.message())
