"""Per-pod model cache accounting in bytes, with a pluggable eviction policy.

Pure bookkeeping, no I/O. The pod's loader asks which models to evict before a
load and tells the cache what happened. An evicted model keeps its bytes
(``unloading``) until its unload returns, so the runtime is never asked to hold
more than the capacity.

Policies: ``lru`` (what ModelMesh, Seldon and Ray do; the default) evicts the
least recently used; ``gdsf`` (GreedyDual-Size-Frequency) evicts the lowest
``inflation + uses / bytes``, keeping models that are used often per byte
(load_tests/cache_sim.py: 0.95 of the offline optimum's hit ratio where LRU
reaches 0.77, with sizes that vary).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class EvictionPolicy(Enum):
    LRU = "lru"
    GDSF = "gdsf"


@dataclass
class CacheEntry:
    size: int
    last_used_ms: int
    loading: bool = True
    uses: int = 1  # a load counts as the first use (GDSF's frequency starts at 1 on a miss)
    load_use_pending: bool = True  # the request that caused the load is that first use: not counted again
    priority: float = 0.0  # GDSF only


class ModelCache:
    def __init__(self, capacity_bytes: int, policy: EvictionPolicy = EvictionPolicy.LRU) -> None:
        self.capacity = capacity_bytes
        self.policy = policy
        self._entries: dict[str, CacheEntry] = {}
        self._unloading: dict[str, int] = {}
        self._inflation = 0.0  # GDSF: the priority of the last model evicted

    # -- queries -----------------------------------------------------------
    @property
    def used(self) -> int:
        return sum(e.size for e in self._entries.values()) + sum(self._unloading.values())

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, model_id: str) -> CacheEntry | None:
        return self._entries.get(model_id)

    def model_ids(self) -> list[str]:
        return list(self._entries)

    def oldest_last_used_ms(self) -> int | None:
        loaded = [e.last_used_ms for e in self._entries.values() if not e.loading]
        return min(loaded) if loaded else None

    def plan_eviction(
        self, needed_bytes: int, pinned: frozenset[str] = frozenset(), used_before_ms: int | None = None
    ) -> list[str] | None:
        """Loaded models, in the policy's eviction order, whose removal frees ``needed_bytes``.

        Returns [] when the bytes are already free, None when even evicting every
        candidate would not free enough (the load must not start). Models still
        loading, ``pinned`` ones and, with ``used_before_ms``, those used at or
        after that time are never chosen.
        """
        shortfall = needed_bytes - self.free
        if shortfall <= 0:
            return []
        gdsf = self.policy is EvictionPolicy.GDSF
        candidates = sorted(
            (e.priority if gdsf else e.last_used_ms, model_id, e.size)
            for model_id, e in self._entries.items()
            if not e.loading
            and model_id not in pinned
            and (used_before_ms is None or e.last_used_ms < used_before_ms)
        )
        victims: list[str] = []
        for _, model_id, size in candidates:
            victims.append(model_id)
            shortfall -= size
            if shortfall <= 0:
                return victims
        return None

    # -- updates -----------------------------------------------------------
    def _prioritise(self, entry: CacheEntry) -> None:
        entry.priority = self._inflation + entry.uses / max(entry.size, 1)

    def start_load(self, model_id: str, predicted_size: int, last_used_ms: int) -> None:
        entry = CacheEntry(size=predicted_size, last_used_ms=last_used_ms, loading=True)
        self._prioritise(entry)
        self._entries[model_id] = entry

    def finish_load(self, model_id: str, size: int) -> None:
        entry = self._entries[model_id]
        entry.size = size
        entry.loading = False
        self._prioritise(entry)

    def touch(self, model_id: str, now_ms: int, uses: int = 1) -> None:
        entry = self._entries.get(model_id)
        if entry is None:
            return
        if entry.load_use_pending:
            entry.load_use_pending = False
            uses -= 1
        entry.uses += uses
        self._prioritise(entry)
        if now_ms > entry.last_used_ms:
            entry.last_used_ms = now_ms

    def start_unload(self, model_id: str) -> None:
        """Drop the model from the cache; its bytes stay reserved until finish_unload."""
        entry = self._entries.pop(model_id, None)
        if entry is not None:
            self._unloading[model_id] = self._unloading.get(model_id, 0) + entry.size
            self._inflation = max(self._inflation, entry.priority)  # GDSF ages what stays

    def finish_unload(self, model_id: str) -> None:
        self._unloading.pop(model_id, None)
