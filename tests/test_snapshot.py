"""The operator's picture of the mesh (mesh/registry/snapshot.py): pure, from records."""

from __future__ import annotations

from mesh.registry.records import InstanceRecord, LoadFailure, ModelRecord, VModelRecord
from mesh.registry.snapshot import MODELS_PER_POD, list_models, mesh_status, pod_views

NOW = 1_000_000
EXPIRY = 60_000


def models() -> dict[str, ModelRecord]:
    return {
        "a": ModelRecord(type="sklearn", holders={"pod-1": NOW - 10}),
        "b": ModelRecord(type="sklearn", loading={"pod-2": NOW - 5}),
        "c": ModelRecord(type="sklearn", failures={"pod-1": LoadFailure(NOW - 1000, "bad file")}),
        "d": ModelRecord(type="sklearn"),
        "e": ModelRecord(type="sklearn", failures={"pod-2": LoadFailure(NOW - 2 * EXPIRY, "old")}),
        "f": ModelRecord(type="xgboost", holders={"pod-1": NOW - 20, "pod-2": NOW - 30}),
        "g": ModelRecord(type="sklearn", holders={"gone": NOW - 20}),  # a dead pod's copy
    }


def instances() -> dict[str, InstanceRecord]:
    return {
        "pod-1": InstanceRecord(address="h:1", capacity_bytes=100, used_bytes=40, model_count=2),
        "pod-2": InstanceRecord(address="h:2", pool="big", capacity_bytes=300, used_bytes=10, model_count=1),
    }


LIVE = {"pod-1", "pod-2"}


def test_each_model_has_the_status_get_model_status_gives() -> None:
    states = {view.id: view.status for view in list_models(models(), LIVE, NOW, EXPIRY)}
    assert states == {
        "a": "LOADED",
        "b": "LOADING",
        "c": "LOADING_FAILED",
        "d": "NOT_LOADED",
        "e": "NOT_LOADED",  # its failure expired
        "f": "LOADED",
        "g": "NOT_LOADED",  # held only by a pod that is gone
    }


def test_models_filter_by_state_and_pod_and_limit() -> None:
    loaded = list_models(models(), LIVE, NOW, EXPIRY, state="LOADED")
    assert [v.id for v in loaded] == ["a", "f"]
    on_two = list_models(models(), LIVE, NOW, EXPIRY, pod="pod-2")
    assert [v.id for v in on_two] == ["b", "f"]
    assert [v.id for v in list_models(models(), LIVE, NOW, EXPIRY, limit=3)] == ["a", "b", "c"]
    assert list_models(models(), LIVE, NOW, EXPIRY, state="LOADED", pod="pod-2")[0].holders == [
        "pod-1",
        "pod-2",
    ]


def test_pods_list_what_they_hold_and_load() -> None:
    views = {p.id: p for p in pod_views(instances(), models(), LIVE, leader="pod-2")}
    assert views["pod-1"].models == ["a", "f"] and views["pod-1"].loading == []
    assert views["pod-2"].models == ["f"] and views["pod-2"].loading == ["b"]
    assert views["pod-2"].leader and not views["pod-1"].leader
    assert views["pod-1"].capacity_bytes == 100 and views["pod-1"].used_bytes == 40


def test_a_pods_model_list_is_capped_but_its_count_is_whole() -> None:
    many = {f"m{i:04d}": ModelRecord(type="t", holders={"pod-1": 1}) for i in range(MODELS_PER_POD + 50)}
    pod = pod_views({"pod-1": InstanceRecord(address="h", model_count=len(many))}, many, LIVE, None)[0]
    assert len(pod.models) == MODELS_PER_POD and pod.model_count == MODELS_PER_POD + 50


def test_the_status_counts_models_and_lists_loads_failures_and_vmodels() -> None:
    vmodels = {"v": VModelRecord(active="a", target="f")}
    status = mesh_status(models(), instances(), vmodels, {"pod-1"}, "pod-1", NOW, EXPIRY)
    assert status["models"] == {
        "registered": 7,
        "loaded": 2,
        "loading": 0,  # pod-2 is not live here: its load does not count
        "not_loaded": 4,
        "loading_failed": 1,
    }
    assert status["leader"] == "pod-1"
    assert [p["id"] for p in status["pods"]] == ["pod-1", "pod-2"]
    assert [p["alive"] for p in status["pods"]] == [True, False]
    assert status["pools"] == {
        "default": {
            "pods": 1,
            "capacity_bytes": 100,
            "used_bytes": 40,
            "loaded_models": 2,
            "requests_per_min": 0,
            "unplaced_models": 0,
            "shutting_down": 0,
        }
    }
    assert status["loads_in_progress"] == []
    assert status["recent_failures"] == [
        {"model": "c", "pod": "pod-1", "message": "bad file", "time_ms": NOW - 1000}
    ]
    assert status["vmodels"] == [{"id": "v", "active": "a", "target": "f", "owner": "", "failed": False}]
    live_both = mesh_status(models(), instances(), vmodels, LIVE, None, NOW, EXPIRY)
    assert live_both["loads_in_progress"] == [{"model": "b", "pod": "pod-2", "since_ms": NOW - 5}]
