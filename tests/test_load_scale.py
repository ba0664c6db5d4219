"""The scale scenario (load_tests/scale.py) at a small size against a real etcd, and its pure helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from load_tests.scale import (
    model_id,
    model_record,
    percentile,
    registry_items,
    run_scale,
    summary_ms,
    synthetic_instances,
)
from mesh.registry.records import ModelRecord
from mesh.routing.placement import choose_load_target


def test_percentile_interpolates_between_ranks() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 90) == pytest.approx(4.6)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_is_in_milliseconds_and_ordered() -> None:
    summary = summary_ms([0.001 * i for i in range(1, 101)])
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p50"] <= summary["p99"] <= summary["max"] == pytest.approx(100.0)
    assert summary_ms([]) == {}


def test_synthetic_records_round_trip_and_are_distinct() -> None:
    ids = {model_id(i) for i in range(1000)}
    assert len(ids) == 1000
    for key, value, _ in registry_items(30):
        i = int(key.split("-")[1].split("__")[0])
        record = ModelRecord.from_json(value)
        assert record.path == model_record(i).path
        assert len(record.holders) == ((i // 10) % 2 + 1 if i % 10 == 0 else 0)


def test_synthetic_instances_leave_placement_a_choice() -> None:
    instances = synthetic_instances(100)
    assert len(instances) == 100
    assert any(i.runtime_types and "sklearn" not in i.runtime_types for i in instances.values())
    assert any(i.used_bytes > i.capacity_bytes - 200 * 2**20 for i in instances.values())  # some are full
    target = choose_load_target(model_id(1), "sklearn", instances, size_hint=200 * 2**20)
    assert target is not None and "sklearn" in (instances[target].runtime_types or ["sklearn"])


@pytest.mark.integration
async def test_run_scale_small(tmp_path: Path) -> None:
    result = await run_scale(tmp_path, models=500, watchers=2, changes=20, memory_sizes=(1000, 4000))

    registration = result["registration"]
    assert registration["created"] == 500 and registration["per_s"] > 0
    # every watcher followed every registration, and holds each record exactly as written
    assert result["watchers"]["models_seen"] == [500, 500]

    propagation = result["propagation_ms"]
    assert propagation["observed"] == propagation["expected"] == 40
    assert propagation["observed_per_watcher"] == [20, 20]
    assert 0 < propagation["p50"] <= propagation["p99"] <= propagation["max"]
    assert 0 < result["write_ms"]["p50"] <= result["write_ms"]["max"]

    assert result["pod_start"]["ok"] and result["pod_start"]["models_loaded"] == 500

    memory = result["memory"]["sizes"]
    assert set(memory) == {"1000", "4000"}
    assert all(m["bytes_per_model"] > 0 for m in memory.values())
    assert result["memory"]["per_model_ratio_largest_vs_smallest"] > 0
    assert set(result["lookup_ns"]) == {"1000", "4000"}

    assert set(result["placement_us"]) == {"10", "100", "1000"}
    assert all(us > 0 for us in result["placement_us"].values())


async def test_run_scale_refuses_more_changes_than_models(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        await run_scale(tmp_path, models=5, changes=6)
