"""Model status as ModelMesh reports it and the v2 repository index, from registry records (pure)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

from mesh.registry.records import InstanceRecord, LoadFailure, ModelRecord
from protos import model_mesh_pb2 as mm

Status = mm.ModelStatusInfo.ModelStatus


@dataclass(frozen=True)
class CopyState:
    pod_id: str
    status: int  # a ModelStatusInfo.ModelStatus value
    time_ms: int


def unexpired_failures(record: ModelRecord, now_ms: int, expiry_ms: int) -> dict[str, LoadFailure]:
    return {pod: f for pod, f in record.failures.items() if now_ms - f.time_ms < expiry_ms}


def live_copies(copies: dict[str, int], live_pods: Collection[str] | None) -> dict[str, int]:
    """Copies on pods that still have an instance record (a dead pod's copies are gone with it)."""
    return copies if live_pods is None else {pod: t for pod, t in copies.items() if pod in live_pods}


def model_copies(
    record: ModelRecord, now_ms: int, expiry_ms: int, live_pods: Collection[str] | None = None
) -> list[CopyState]:
    """Each pod holding, loading or having failed the model, newest change first."""
    copies = [CopyState(pod, Status.LOADED, t) for pod, t in live_copies(record.holders, live_pods).items()]
    copies += [CopyState(pod, Status.LOADING, t) for pod, t in live_copies(record.loading, live_pods).items()]
    copies += [
        CopyState(pod, Status.LOADING_FAILED, f.time_ms)
        for pod, f in unexpired_failures(record, now_ms, expiry_ms).items()
    ]
    return sorted(copies, key=lambda c: (-c.time_ms, c.pod_id))


def model_state(
    record: ModelRecord, now_ms: int, expiry_ms: int, live_pods: Collection[str] | None = None
) -> int:
    """The registered model's ModelStatus: a live copy, else a live load, else an unexpired failure."""
    if live_copies(record.holders, live_pods):
        return Status.LOADED
    if live_copies(record.loading, live_pods):
        return Status.LOADING
    if unexpired_failures(record, now_ms, expiry_ms):
        return Status.LOADING_FAILED
    return Status.NOT_LOADED


def model_status(
    record: ModelRecord | None, now_ms: int, expiry_ms: int, live_pods: Collection[str] | None = None
) -> mm.ModelStatusInfo:
    if record is None:
        return mm.ModelStatusInfo(status=Status.NOT_FOUND)
    copies = model_copies(record, now_ms, expiry_ms, live_pods)
    failures = unexpired_failures(record, now_ms, expiry_ms)
    errors = [f.message for f in sorted(failures.values(), key=lambda f: -f.time_ms)]
    return mm.ModelStatusInfo(
        status=model_state(record, now_ms, expiry_ms, live_pods),  # type: ignore[arg-type]
        errors=errors,
        modelCopyInfos=[
            mm.ModelStatusInfo.ModelCopyInfo(location=c.pod_id, copyStatus=c.status, time=c.time_ms)  # type: ignore[arg-type]
            for c in copies
        ],
    )


IndexState = Literal["READY", "LOADING", "UNAVAILABLE"]
NOT_LOADED_REASON = "not loaded"


@dataclass(frozen=True)
class IndexEntry:
    """One model of the v2 repository index, shaped as Triton answers it (REST and gRPC RepositoryIndex)."""

    name: str
    state: IndexState
    reason: str = ""
    version: str = ""  # the mesh registers models, not versions


def index_entry(
    model_id: str, record: ModelRecord, live_pods: Collection[str], now_ms: int, expiry_ms: int
) -> IndexEntry:
    """READY when a live pod holds it, LOADING when one is loading it, else UNAVAILABLE and why."""
    if live_copies(record.holders, live_pods):
        return IndexEntry(model_id, "READY")
    if live_copies(record.loading, live_pods):
        return IndexEntry(model_id, "LOADING")
    failures = unexpired_failures(record, now_ms, expiry_ms).values()
    newest = max(failures, key=lambda f: f.time_ms, default=None)
    return IndexEntry(model_id, "UNAVAILABLE", newest.message if newest else NOT_LOADED_REASON)


def repository_index(
    models: Mapping[str, ModelRecord],
    live_pods: Collection[str],
    now_ms: int,
    expiry_ms: int,
    ready_only: bool = False,
) -> list[IndexEntry]:
    """Every registered model (by id, as Triton sorts its index) and its state across the mesh; with
    ``ready_only``, only the READY ones (RepositoryIndexRequest.ready)."""
    entries = (index_entry(m, models[m], live_pods, now_ms, expiry_ms) for m in sorted(models))
    return [e for e in entries if e.state == "READY" or not ready_only]


@dataclass
class PoolStats:
    """What an autoscaler needs to know about one pool."""

    pods: int = 0
    capacity_bytes: int = 0
    used_bytes: int = 0
    loaded_models: int = 0
    requests_per_min: int = 0
    unplaced_models: int = 0
    shutting_down: int = 0


def pool_stats(instances: Mapping[str, InstanceRecord]) -> dict[str, PoolStats]:
    pools: dict[str, PoolStats] = {}
    for instance in instances.values():
        stats = pools.setdefault(instance.pool, PoolStats())
        stats.pods += 1
        stats.capacity_bytes += instance.capacity_bytes
        stats.used_bytes += instance.used_bytes
        stats.loaded_models += instance.model_count
        stats.requests_per_min += instance.requests_per_min
        stats.unplaced_models += instance.unplaced_models
        stats.shutting_down += int(instance.shutting_down)
    return pools
