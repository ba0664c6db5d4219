"""ModelStatusInfo and the v2 repository index computed from registry records (pure)."""

from __future__ import annotations

from mesh.registry.records import InstanceRecord, LoadFailure, ModelRecord
from mesh.registry.status import IndexEntry, PoolStats, model_status, pool_stats, repository_index
from protos import model_mesh_pb2 as mm

S = mm.ModelStatusInfo.ModelStatus
EXPIRY = 1000


def test_unknown_model_is_not_found_status() -> None:
    assert model_status(None, 0, EXPIRY).status == S.NOT_FOUND


def test_registered_only_is_not_loaded() -> None:
    info = model_status(ModelRecord(type="sklearn"), 0, EXPIRY)
    assert info.status == S.NOT_LOADED and not info.modelCopyInfos and not info.errors


def test_loaded_wins_over_loading_and_failures() -> None:
    record = ModelRecord(
        type="t",
        holders={"p1": 100},
        loading={"p2": 200},
        failures={"p3": LoadFailure(150, "boom")},
    )
    info = model_status(record, 300, EXPIRY)
    assert info.status == S.LOADED
    assert [(c.location, c.copyStatus, c.time) for c in info.modelCopyInfos] == [
        ("p2", S.LOADING, 200),
        ("p3", S.LOADING_FAILED, 150),
        ("p1", S.LOADED, 100),
    ]
    assert list(info.errors) == ["boom"]


def test_loading_status() -> None:
    assert model_status(ModelRecord(type="t", loading={"p": 5}), 10, EXPIRY).status == S.LOADING


def test_failures_newest_first_and_expiry() -> None:
    record = ModelRecord(
        type="t",
        failures={
            "a": LoadFailure(100, "old"),
            "b": LoadFailure(900, "new"),
            "c": LoadFailure(-5000, "expired"),
        },
    )
    info = model_status(record, 1000, EXPIRY)
    assert info.status == S.LOADING_FAILED
    assert list(info.errors) == ["new", "old"]
    assert model_status(record, 5000, EXPIRY).status == S.NOT_LOADED  # all expired


def test_copies_on_pods_without_an_instance_record_do_not_count() -> None:
    record = ModelRecord(type="t", holders={"dead": 5}, loading={"alive": 6})
    info = model_status(record, 10, EXPIRY, live_pods={"alive"})
    assert info.status == S.LOADING
    assert [c.location for c in info.modelCopyInfos] == ["alive"]
    assert model_status(record, 10, EXPIRY, live_pods=set()).status == S.NOT_LOADED
    assert model_status(record, 10, EXPIRY).status == S.LOADED  # no filter


def test_pool_stats_add_up_per_pool() -> None:
    instances = {
        "a": InstanceRecord(
            address="a",
            pool="mlserver",
            capacity_bytes=10,
            used_bytes=4,
            model_count=2,
            requests_per_min=30,
            unplaced_models=1,
        ),
        "b": InstanceRecord(
            address="b", pool="mlserver", capacity_bytes=10, used_bytes=1, model_count=1, shutting_down=True
        ),
        "c": InstanceRecord(address="c", pool="triton", capacity_bytes=7),
    }
    assert pool_stats(instances) == {
        "mlserver": PoolStats(
            pods=2,
            capacity_bytes=20,
            used_bytes=5,
            loaded_models=3,
            requests_per_min=30,
            unplaced_models=1,
            shutting_down=1,
        ),
        "triton": PoolStats(pods=1, capacity_bytes=7),
    }


def test_repository_index_states_and_reasons() -> None:
    models = {
        "held": ModelRecord(type="t", holders={"alive": 5}, failures={"other": LoadFailure(9, "boom")}),
        "loading": ModelRecord(type="t", loading={"alive": 6}, failures={"other": LoadFailure(9, "boom")}),
        "idle": ModelRecord(type="t"),
        "failed": ModelRecord(
            type="t",
            failures={
                "a": LoadFailure(700, "older"),
                "b": LoadFailure(900, "newest"),
                "c": LoadFailure(1, "gone"),
            },
        ),
        "expired": ModelRecord(type="t", failures={"a": LoadFailure(-5000, "expired")}),
        "on-a-dead-pod": ModelRecord(type="t", holders={"dead": 5}, loading={"dead": 6}),
    }
    index = repository_index(models, {"alive"}, now_ms=1000, expiry_ms=EXPIRY)
    assert index == [  # sorted by name, as Triton lists its repository
        IndexEntry("expired", "UNAVAILABLE", "not loaded"),
        IndexEntry("failed", "UNAVAILABLE", "newest"),
        IndexEntry("held", "READY"),
        IndexEntry("idle", "UNAVAILABLE", "not loaded"),
        IndexEntry("loading", "LOADING"),
        IndexEntry("on-a-dead-pod", "UNAVAILABLE", "not loaded"),
    ]
    assert all(entry.version == "" for entry in index)


def test_repository_index_ready_only_and_empty() -> None:
    models = {"b": ModelRecord(type="t", holders={"p": 1}), "a": ModelRecord(type="t", loading={"p": 1})}
    assert repository_index(models, {"p"}, 0, EXPIRY, ready_only=True) == [IndexEntry("b", "READY")]
    assert [e.name for e in repository_index(models, {"p"}, 0, EXPIRY)] == ["a", "b"]
    assert repository_index({}, {"p"}, 0, EXPIRY) == []
    assert repository_index(models, (), 0, EXPIRY, ready_only=True) == []  # no live pod: nothing is ready
