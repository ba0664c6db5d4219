"""choose_load_target: the placement rules, table-driven (pure)."""

from __future__ import annotations

from collections import Counter

import pytest

from mesh.registry.records import InstanceRecord
from mesh.routing.placement import choose_load_target, rendezvous_weight, serves_type

GB = 1 << 30


def inst(
    used: int = 0,
    capacity: int = 10 * GB,
    models: int = 0,
    oldest: int = 0,
    rpm: int = 0,
    types: list[str] | None = None,
    stopping: bool = False,
) -> InstanceRecord:
    return InstanceRecord(
        address="h:1",
        capacity_bytes=capacity,
        used_bytes=used,
        model_count=models,
        oldest_lru_ms=oldest,
        requests_per_min=rpm,
        runtime_types=types or [],
        shutting_down=stopping,
    )


@pytest.mark.parametrize(
    "instances,size,expected",
    [
        ({"a": inst(used=10 * GB, models=1), "b": inst(used=9 * GB, models=5)}, GB, "b"),  # not full first
        ({"a": inst(used=10 * GB, oldest=50), "b": inst(used=10 * GB, oldest=10)}, GB, "b"),  # oldest LRU
        ({"a": inst(models=3), "b": inst(models=2)}, GB, "b"),  # fewest models
        ({"a": inst(used=2 * GB, models=1), "b": inst(used=GB, models=1)}, GB, "b"),  # most free
        ({"a": inst(rpm=100), "b": inst(rpm=5)}, GB, "b"),  # lowest request rate
        ({"a": inst(oldest=5), "b": inst(oldest=1, models=1)}, GB, "a"),  # LRU age ignored when not full
        ({"a": inst(stopping=True), "b": inst(models=9)}, GB, "b"),  # shutting down: never
        ({"a": inst(types=["triton"]), "b": inst(types=["sklearn"], models=9)}, GB, "b"),  # type first
    ],
)
def test_rules(instances: dict[str, InstanceRecord], size: int, expected: str) -> None:
    assert choose_load_target("model-x", "sklearn", instances, size_hint=size) == expected


def test_no_candidate() -> None:
    assert choose_load_target("m", "sklearn", {}) is None
    assert choose_load_target("m", "onnx", {"a": inst(types=["sklearn"])}) is None
    assert choose_load_target("m", "sklearn", {"a": inst()}, exclude={"a"}) is None


def test_ties_are_broken_by_rendezvous_hashing_consistently() -> None:
    pods = {f"pod-{i}": inst() for i in range(5)}
    chosen = Counter(choose_load_target(f"model-{n}", "sklearn", pods) for n in range(1000))
    assert set(chosen) == set(pods)  # spread over every pod
    assert min(chosen.values()) > 120  # roughly evenly (expected 200 each)
    for n in range(50):
        model = f"model-{n}"
        first = choose_load_target(model, "sklearn", pods)
        assert first == max(pods, key=lambda p: rendezvous_weight(model, p))
        # removing another pod does not move the model (the property consistent hashing is for)
        removed = next(p for p in pods if p != first)
        assert choose_load_target(model, "sklearn", {p: r for p, r in pods.items() if p != removed}) == first


def test_serves_type() -> None:
    assert serves_type(inst(), "anything")
    assert serves_type(inst(types=["sklearn", "xgboost"]), "XGBoost")
    assert not serves_type(inst(types=["sklearn"]), "onnx")


@pytest.mark.parametrize(
    ("types", "model_type", "served"),
    [
        (["sklearn"], "mt:sklearn", True),  # modelmesh-serving's label for a format
        (["sklearn"], "mt:sklearn|pv:grpc-v2", True),  # every pod speaks KServe v2
        (["sklearn"], "mt:sklearn|pv:v2", True),
        (["sklearn"], "mt:sklearn|pv:grpc-v1", False),  # a protocol nobody listed
        (["sklearn", "pv:grpc-v1"], "mt:sklearn|pv:grpc-v1", True),
        (["sklearn"], "mt:sklearn:1", False),  # a version: only a pod that lists it
        (["sklearn", "mt:sklearn:1"], "mt:sklearn:1", True),
        (["sklearn"], "rt:mlserver-1.x", False),
        (["sklearn", "rt:mlserver-1.x"], "rt:mlserver-1.x", True),
        (["sklearn"], "mt:onnx", False),
        (["onnx"], "MT:ONNX", True),
        (["sklearn"], "mt:sklearn|mt:onnx", False),  # every part required
    ],
)
def test_serves_modelmesh_serving_type_labels(types: list[str], model_type: str, served: bool) -> None:
    assert serves_type(inst(types=types), model_type) is served
