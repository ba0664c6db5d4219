"""vmodel record changes (pure): references, transitions, ModelMesh's checks and codes."""

from __future__ import annotations

import grpc
import pytest

from mesh.cluster.vmodels import SetVModel, complete_transition, delete_vmodel, mark_failed, set_vmodel
from mesh.errors import MeshError
from mesh.registry.records import ModelRecord, VModelRecord
from mesh.registry.store import RecordSet, Unchanged


def records(models: dict[str, ModelRecord | None], vmodels: dict[str, VModelRecord | None]) -> RecordSet:
    return RecordSet(models=dict(models), vmodels=dict(vmodels))


def alive(_: str) -> bool:
    return True


def test_new_vmodel_points_at_its_target_and_counts_a_reference() -> None:
    rs = records({"m1": ModelRecord(type="t")}, {"v": None})
    set_vmodel(rs, SetVModel("v", "m1", owner="o"), alive)
    assert rs.vmodels["v"] == VModelRecord(active="m1", target="m1", owner="o")
    assert rs.models["m1"].vmodel_refcount == 1  # type: ignore[union-attr]


def test_new_target_registered_in_the_same_transaction() -> None:
    rs = records({"m2": None}, {"v": None})
    set_vmodel(rs, SetVModel("v", "m2", new_target=ModelRecord(type="t", path="/p", auto_delete=True)), alive)
    assert rs.models["m2"] == ModelRecord(type="t", path="/p", auto_delete=True, vmodel_refcount=1)


def test_transition_waits_for_the_target_then_switches() -> None:
    rs = records(
        {"m1": ModelRecord(type="t", vmodel_refcount=1, holders={"p": 1}), "m2": ModelRecord(type="t")},
        {"v": VModelRecord(active="m1", target="m1")},
    )
    set_vmodel(rs, SetVModel("v", "m2"), alive)
    assert rs.vmodels["v"] == VModelRecord(active="m1", target="m2")  # old model keeps serving
    assert rs.models["m2"].vmodel_refcount == 1  # type: ignore[union-attr]
    with pytest.raises(Unchanged):  # the target is not held anywhere yet
        complete_transition(rs, "v", "m2", alive)
    rs.models["m2"].holders["q"] = 2  # type: ignore[union-attr]
    with pytest.raises(Unchanged):  # held only by a dead pod
        complete_transition(rs, "v", "m2", lambda pod: pod != "q")
    complete_transition(rs, "v", "m2", alive)
    assert rs.vmodels["v"] == VModelRecord(active="m2", target="m2")
    assert rs.models["m1"].vmodel_refcount == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "force,active_loaded,target_loaded",
    [(True, True, False), (False, False, False), (False, True, True)],
)
def test_immediate_switch(force: bool, active_loaded: bool, target_loaded: bool) -> None:
    active_holders = {"a": 1} if active_loaded else {}
    rs = records(
        {
            "m1": ModelRecord(type="t", vmodel_refcount=1, auto_delete=True, holders=active_holders),
            "m2": ModelRecord(type="t", holders={"b": 1} if target_loaded else {}),
        },
        {"v": VModelRecord(active="m1", target="m1")},
    )
    set_vmodel(rs, SetVModel("v", "m2", force=force), alive)
    assert rs.vmodels["v"] == VModelRecord(active="m2", target="m2")
    assert rs.models["m1"] is None  # auto-deleted with its last reference


def test_a_newer_target_replaces_the_pending_one_and_rolling_back_leaks_nothing() -> None:
    rs = records(
        {
            "m1": ModelRecord(type="t", vmodel_refcount=1, holders={"a": 1}),
            "m2": ModelRecord(type="t", vmodel_refcount=1, auto_delete=True),
            "m3": ModelRecord(type="t"),
        },
        {"v": VModelRecord(active="m1", target="m2")},
    )
    set_vmodel(rs, SetVModel("v", "m3"), alive)
    assert rs.vmodels["v"] == VModelRecord(active="m1", target="m3")
    assert rs.models["m2"] is None
    set_vmodel(rs, SetVModel("v", "m1"), alive)  # back to the active one
    assert rs.vmodels["v"] == VModelRecord(active="m1", target="m1")
    assert rs.models["m1"].vmodel_refcount == 1  # type: ignore[union-attr]
    assert rs.models["m3"].vmodel_refcount == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "vmodel,change,code",
    [
        (
            VModelRecord("m1", "m1", owner="a"),
            SetVModel("v", "m1", owner="b"),
            grpc.StatusCode.ALREADY_EXISTS,
        ),
        (
            VModelRecord("m1", "m1"),
            SetVModel("v", "m2", expected_target="m9"),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (None, SetVModel("v", "m1", expected_target="m9"), grpc.StatusCode.FAILED_PRECONDITION),
        (None, SetVModel("v", "m1", update_only=True), grpc.StatusCode.NOT_FOUND),
        (None, SetVModel("v", "absent"), grpc.StatusCode.NOT_FOUND),
        (None, SetVModel("v", "m1", new_target=ModelRecord(type="other")), grpc.StatusCode.ALREADY_EXISTS),
    ],
)
def test_errors(vmodel: VModelRecord | None, change: SetVModel, code: grpc.StatusCode) -> None:
    rs = records({"m1": ModelRecord(type="t"), "m2": ModelRecord(type="t"), "absent": None}, {"v": vmodel})
    with pytest.raises(MeshError) as e:
        set_vmodel(rs, change, alive)
    assert e.value.code == code


def test_expected_target_equal_to_the_target_is_idempotent() -> None:
    rs = records({"m1": ModelRecord(type="t")}, {"v": None})
    set_vmodel(rs, SetVModel("v", "m1", expected_target="m1"), alive)  # creates
    with pytest.raises(Unchanged):
        set_vmodel(rs, SetVModel("v", "m1", expected_target="m1"), alive)  # already there


def test_transition_completion_only_for_the_current_target() -> None:
    rs = records({"m1": ModelRecord(type="t")}, {"v": VModelRecord(active="m1", target="m2")})
    with pytest.raises(Unchanged):
        complete_transition(rs, "v", "m3", alive)
    mark_failed(rs, "v", "m2", True)
    assert rs.vmodels["v"].failed  # type: ignore[union-attr]
    with pytest.raises(Unchanged):
        mark_failed(rs, "v", "m2", True)


def test_delete_drops_references_and_auto_deletes() -> None:
    rs = records(
        {
            "m1": ModelRecord(type="t", vmodel_refcount=1, auto_delete=True),
            "m2": ModelRecord(type="t", vmodel_refcount=2),
        },
        {"v": VModelRecord(active="m1", target="m2", owner="o")},
    )
    with pytest.raises(Unchanged):
        delete_vmodel(rs, "v", owner="someone-else")
    delete_vmodel(rs, "v", owner="o")
    assert rs.vmodels["v"] is None
    assert rs.models["m1"] is None
    assert rs.models["m2"].vmodel_refcount == 1  # type: ignore[union-attr]
    with pytest.raises(Unchanged):
        delete_vmodel(records({}, {"gone": None}), "gone", owner="")


def test_a_model_referenced_by_two_vmodels_survives_one_delete() -> None:
    rs = records({"m": ModelRecord(type="t", auto_delete=True)}, {"v1": None, "v2": None})
    set_vmodel(rs, SetVModel("v1", "m"), alive)
    set_vmodel(rs, SetVModel("v2", "m"), alive)
    assert rs.models["m"].vmodel_refcount == 2  # type: ignore[union-attr]
    delete_vmodel(rs, "v1", owner="")
    assert rs.models["m"] is not None and rs.models["m"].vmodel_refcount == 1
    delete_vmodel(rs, "v2", owner="")
    assert rs.models["m"] is None
