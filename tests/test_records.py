"""Record JSON round trips and forward compatibility."""

from __future__ import annotations

import json

from mesh.records import InstanceRecord, LoadFailure, ModelRecord


def test_model_record_round_trip() -> None:
    record = ModelRecord(
        type="sklearn",
        path="/m",
        key="k",
        last_used_ms=5,
        holders={"p": 1},
        loading={"q": 2},
        failures={"r": LoadFailure(3, "bad", "FAILED_PRECONDITION")},
        vmodel_refcount=1,
        auto_delete=True,
    )
    assert ModelRecord.from_json(record.to_json()) == record


def test_unknown_fields_from_newer_pods_are_ignored() -> None:
    raw = json.loads(ModelRecord(type="t").to_json())
    raw["future_field"] = {"x": 1}
    assert ModelRecord.from_json(json.dumps(raw).encode()) == ModelRecord(type="t")
    inst = json.loads(InstanceRecord(address="h:1").to_json())
    inst["zone"] = "z"
    assert InstanceRecord.from_json(json.dumps(inst).encode()).address == "h:1"


def test_same_info() -> None:
    record = ModelRecord(type="a", path="b", key="c")
    assert record.same_info("a", "b", "c")
    assert not record.same_info("a", "b", "")
