"""Record JSON round trips and forward compatibility."""

from __future__ import annotations

import json

import pytest

from mesh.cluster.leader import without_dead_pods
from mesh.registry.records import InstanceRecord, LoadFailure, ModelRecord
from mesh.registry.store import Unchanged


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


def test_unknown_fields_inside_failures_are_ignored() -> None:
    raw = json.loads(ModelRecord(type="t", failures={"p": LoadFailure(1, "m")}).to_json())
    raw["failures"]["p"]["attempt"] = 3
    assert ModelRecord.from_json(json.dumps(raw).encode()).failures == {"p": LoadFailure(1, "m")}


def test_routing_table_skips_an_unreadable_record() -> None:
    from mesh.registry.view import RoutingTable

    table = RoutingTable()
    table.apply_put("registry/bad", b"{not json", 5)
    table.apply_put("registry/wrong-shape", b'{"path": "/x"}', 6)  # no type
    table.apply_put("registry/good", ModelRecord(type="t").to_json(), 7)
    assert table.model("bad") is None and table.model("wrong-shape") is None
    assert table.model("good") == ModelRecord(type="t")


def test_without_dead_pods() -> None:
    record = ModelRecord(type="t", holders={"a": 1, "dead": 2}, loading={"gone": 3, "b": 4})
    pruned = without_dead_pods(record, live={"a", "b"}, seen={"a", "dead", "gone"})
    assert pruned.holders == {"a": 1} and pruned.loading == {"b": 4}
    with pytest.raises(Unchanged):
        without_dead_pods(ModelRecord(type="t", holders={"a": 1}), live={"a"}, seen={"a"})
    # a pod that joined after the leader looked is not in ``seen``: its fresh claim stays
    with pytest.raises(Unchanged):
        without_dead_pods(ModelRecord(type="t", loading={"newcomer": 1}), live=set(), seen=set())
