"""Where the time of a load goes: the runtime's part, and the mesh's own (pure).

A miss costs the request that waits on it: the adapter's size prediction (the claim, a CAS in etcd naming this
pod as loading, is written meanwhile and beside the load), waiting for evicted models' unloads when the unload
buffer cannot hold them (0 otherwise: the victims leave the registry and the runtime in the background), the
wait for one of the runtime's loading slots, the runtime's load, and the wait for the claim if it is still
in flight. The requests are served from then on; publishing the copy (another CAS) comes after them. The
runtime's part is its load and the unloads waited for; the queue is the wait for a slot; everything else on
the path is the mesh's. ``LoadTimings`` keeps the last loads' phases and summarises them (``GET /mesh/loads``
on the REST port).
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import asdict, dataclass, fields

PHASES = ("predict", "runtime_unload", "queue", "runtime_load", "claim")  # on the waiting request's path


@dataclass(slots=True)
class LoadPhases:
    """Seconds each phase of one load took (a phase it did not go through: 0)."""

    predict: float = 0.0  # the adapter's size prediction, the claim's CAS alongside
    runtime_unload: float = 0.0  # waiting for evicted models' unloads to give back their memory
    queue: float = 0.0  # waiting for a loading slot (maxLoadingConcurrency)
    runtime_load: float = 0.0
    claim: float = 0.0  # waiting for the claim's CAS once the runtime has loaded
    publish: float = 0.0  # after the requests were released: naming this pod a holder in etcd

    @property
    def total(self) -> float:
        """What the requests waiting on the load paid (publishing comes after them)."""
        return sum(getattr(self, name) for name in PHASES)

    @property
    def mesh(self) -> float:
        """The mesh's own part: everything on the path but the runtime's work and the queue for its slots."""
        return self.total - self.runtime_load - self.runtime_unload - self.queue


@dataclass(frozen=True, slots=True)
class PhaseSummary:
    p50_ms: float
    p99_ms: float
    mean_ms: float


class LoadTimings:
    def __init__(self, keep: int = 1000) -> None:
        self._recent: deque[LoadPhases] = deque(maxlen=keep)
        self.loads = 0  # every load recorded since start

    def record(self, phases: LoadPhases) -> None:
        self._recent.append(phases)
        self.loads += 1

    def summary(self, last: int | None = None) -> dict[str, object]:
        """Per phase (and total, mesh): p50, p99 and mean over the loads kept (the ``last`` ones), in ms."""
        recent = list(self._recent)
        if last is not None:
            recent = recent[-last:] if last > 0 else []
        columns: dict[str, list[float]] = {
            f.name: [getattr(p, f.name) for p in recent] for f in fields(LoadPhases)
        }
        columns["mesh"] = [p.mesh for p in recent]
        columns["total"] = [p.total for p in recent]
        return {
            "loads": self.loads,
            "kept": len(recent),
            "phases": {name: asdict(summarize(values)) for name, values in columns.items()},
        }


def summarize(seconds: list[float]) -> PhaseSummary:
    if not seconds:
        return PhaseSummary(0.0, 0.0, 0.0)
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return PhaseSummary(
        round(1000 * statistics.median(ordered), 3),
        round(1000 * p99, 3),
        round(1000 * statistics.fmean(ordered), 3),
    )
