"""What an operator sees of the mesh, from the registry's records (pure): pods and what each holds, models and
their state, vmodels, loads in progress, recent failures, the leader. The status page and ``meshctl`` read it
as JSON (``GET /mesh/status``, ``GET /mesh/models`` on the REST port); it is the same truth as
``getModelStatus``, computed by the same functions (mesh/registry/status.py).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from mesh.registry.records import InstanceRecord, ModelRecord, VModelRecord
from mesh.registry.status import live_copies, model_state, model_status, pool_stats, unexpired_failures
from protos import model_mesh_pb2 as mm

STATUS_NAMES = {value: name for name, value in mm.ModelStatusInfo.ModelStatus.items()}
MODEL_STATES = ("LOADED", "LOADING", "NOT_LOADED", "LOADING_FAILED")  # what a registered model can be
MODELS_PER_POD = 200  # model ids listed per pod in the summary (the count is always whole)
RECENT_FAILURES = 50


@dataclass(frozen=True)
class PodView:
    id: str
    alive: bool
    leader: bool
    pool: str
    address: str
    runtime_types: list[str]
    capacity_bytes: int
    used_bytes: int
    model_count: int
    loading_count: int
    requests_per_min: int
    unplaced_models: int
    shutting_down: bool
    runtime_ready: bool
    start_ms: int
    models: list[str] = field(default_factory=list)  # held here (the first MODELS_PER_POD, by id)
    loading: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ModelView:
    id: str
    type: str
    status: str  # ModelStatusInfo.ModelStatus name, as getModelStatus answers
    holders: list[str]
    loading: list[str]
    errors: list[str]
    last_used_ms: int
    vmodel_refcount: int


@dataclass(frozen=True)
class LoadInProgress:
    model: str
    pod: str
    since_ms: int


@dataclass(frozen=True)
class RecentFailure:
    model: str
    pod: str
    message: str
    time_ms: int


def model_view(
    model_id: str, record: ModelRecord, live_pods: Collection[str], now_ms: int, expiry_ms: int
) -> ModelView:
    status = model_status(record, now_ms, expiry_ms, live_pods)
    return ModelView(
        id=model_id,
        type=record.type,
        status=STATUS_NAMES[status.status],
        holders=sorted(live_copies(record.holders, live_pods)),
        loading=sorted(live_copies(record.loading, live_pods)),
        errors=list(status.errors),
        last_used_ms=record.last_used_ms,
        vmodel_refcount=record.vmodel_refcount,
    )


def list_models(
    models: Mapping[str, ModelRecord],
    live_pods: Collection[str],
    now_ms: int,
    expiry_ms: int,
    state: str | None = None,
    pod: str | None = None,
    limit: int | None = None,
) -> list[ModelView]:
    """Registered models by id; ``state`` keeps one status (LOADED, LOADING, NOT_LOADED, LOADING_FAILED),
    ``pod`` the models that pod holds or is loading."""
    listed: list[ModelView] = []
    for model_id in sorted(models):
        record = models[model_id]
        if pod is not None and pod not in record.holders and pod not in record.loading:
            continue
        if state is not None and STATUS_NAMES[model_state(record, now_ms, expiry_ms, live_pods)] != state:
            continue
        listed.append(model_view(model_id, record, live_pods, now_ms, expiry_ms))
        if limit is not None and len(listed) >= limit:
            break
    return listed


def pod_views(
    instances: Mapping[str, InstanceRecord],
    models: Mapping[str, ModelRecord],
    live_pods: Collection[str],
    leader: str | None,
) -> list[PodView]:
    held: dict[str, list[str]] = {pod: [] for pod in instances}
    loading: dict[str, list[str]] = {pod: [] for pod in instances}
    for model_id in sorted(models):
        record = models[model_id]
        for pod in record.holders:
            if pod in held and len(held[pod]) < MODELS_PER_POD:
                held[pod].append(model_id)
        for pod in record.loading:
            if pod in loading:
                loading[pod].append(model_id)
    return [
        PodView(
            id=pod,
            alive=pod in live_pods,
            leader=pod == leader,
            pool=record.pool,
            address=record.address,
            runtime_types=list(record.runtime_types),
            capacity_bytes=record.capacity_bytes,
            used_bytes=record.used_bytes,
            model_count=record.model_count,
            loading_count=record.loading_count,
            requests_per_min=record.requests_per_min,
            unplaced_models=record.unplaced_models,
            shutting_down=record.shutting_down,
            runtime_ready=record.runtime_ready,
            start_ms=record.start_ms,
            models=held[pod],
            loading=loading[pod],
        )
        for pod, record in sorted(instances.items())
    ]


def loads_in_progress(models: Mapping[str, ModelRecord], live_pods: Collection[str]) -> list[LoadInProgress]:
    loads = [
        LoadInProgress(model_id, pod, since)
        for model_id, record in models.items()
        for pod, since in live_copies(record.loading, live_pods).items()
    ]
    return sorted(loads, key=lambda load: (load.since_ms, load.model, load.pod))


def recent_failures(
    models: Mapping[str, ModelRecord], now_ms: int, expiry_ms: int, limit: int = RECENT_FAILURES
) -> list[RecentFailure]:
    failures = [
        RecentFailure(model_id, pod, failure.message, failure.time_ms)
        for model_id, record in models.items()
        for pod, failure in unexpired_failures(record, now_ms, expiry_ms).items()
    ]
    return sorted(failures, key=lambda f: (-f.time_ms, f.model, f.pod))[:limit]


@dataclass(frozen=True, slots=True)
class ModelCounts:
    """Mesh-wide model counts, as ModelMesh's leader exports them."""

    managed: int  # registered
    loaded: int  # with at least one live copy
    with_failure: int  # with one or more unexpired load failures


def model_counts(
    models: Mapping[str, ModelRecord], live_pods: Collection[str], now_ms: int, expiry_ms: int
) -> ModelCounts:
    loaded = sum(1 for r in models.values() if live_copies(r.holders, live_pods))
    failed = sum(1 for r in models.values() if unexpired_failures(r, now_ms, expiry_ms))
    return ModelCounts(managed=len(models), loaded=loaded, with_failure=failed)


def mesh_status(
    models: Mapping[str, ModelRecord],
    instances: Mapping[str, InstanceRecord],
    vmodels: Mapping[str, VModelRecord],
    live_pods: Collection[str],
    leader: str | None,
    now_ms: int,
    expiry_ms: int,
) -> dict[str, Any]:
    """The whole picture as JSON-ready data (``GET /mesh/status``)."""
    counts = dict.fromkeys(MODEL_STATES, 0)
    for record in models.values():  # the state alone: no protobuf per model each time the page asks
        counts[STATUS_NAMES[model_state(record, now_ms, expiry_ms, live_pods)]] += 1
    return {
        "time_ms": now_ms,
        "leader": leader,
        "models": {"registered": len(models), **{state.lower(): n for state, n in counts.items()}},
        "pods": [asdict(p) for p in pod_views(instances, models, live_pods, leader)],
        "pools": {pool: asdict(stats) for pool, stats in pool_stats(_live(instances, live_pods)).items()},
        "vmodels": [{"id": vmodel_id, **asdict(record)} for vmodel_id, record in sorted(vmodels.items())],
        "loads_in_progress": [asdict(load) for load in loads_in_progress(models, live_pods)],
        "recent_failures": [asdict(f) for f in recent_failures(models, now_ms, expiry_ms)],
    }


def _live(instances: Mapping[str, InstanceRecord], live_pods: Collection[str]) -> dict[str, InstanceRecord]:
    return {pod: record for pod, record in instances.items() if pod in live_pods}
