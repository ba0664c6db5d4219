"""Per-pod model cache accounting in bytes, with a pluggable eviction policy.

Pure bookkeeping, no I/O. The pod's loader asks which models to evict before a
load and tells the cache what happened. An evicted model keeps its bytes
(``unloading``) until its unload returns, so the runtime is never asked to hold
more than the capacity.

Unload buffer (ModelMesh's, same default rule): models may fill the capacity
less ``unload_buffer`` bytes; the buffer holds the models being unloaded. A
load evicts down to that line and starts at once while its victims' unloads
run, unless the bytes still unloading exceed the buffer: then it waits for
them (``must_wait_for_unloads``). Evictions planned while others are still
unloading count those as gone, so concurrent loads never evict more than they
need.

Policies (load_tests/cache_sim.py: 1000 models of lognormal sizes, a Zipf(1.0)
trace, room for a tenth of all bytes; hit ratio as a fraction of Belady's,
median of 10 seeds, 20000 / 50000 requests):

- ``lru`` (what ModelMesh, Seldon and Ray do) evicts the least recently used
  (0.77 / 0.77).
- ``gdsf`` (GreedyDual-Size-Frequency; the pod's default) evicts the lowest
  ``inflation + uses / bytes``, where the inflation is the priority of the last
  model evicted; a model's uses start again from 1 each time it is loaded
  (0.94 / 0.95).
- ``lfu-size`` (``--eviction-policy lfu-size``; not the default yet) evicts
  the lowest ``frequency / bytes``: uses per byte, with
  (a) use-count decay instead of GDSF's inflation: each use weighs
  ``2 ** (1 / half_life)`` times the one before it, ``half_life`` being
  ``half_life_per_model`` (10) uses per model held, so a model that stops being
  used loses half its weight against the others every ``half_life`` uses; and
  (b) a ghost history: the frequency of a model that leaves the cache is kept,
  and a model that comes back resumes it (decayed like everything else) instead
  of starting again from one use. The history is bounded by count: at most
  ``history_limit`` (4096) models, the ones that left longest ago forgotten
  first: about 0.2 MB besides the ids (a dict slot and a float each). Decay and history
  both count uses, never the clock, so a pod makes exactly the simulation's
  decisions for the same sequence of calls (0.98 / 0.98; min over the seeds
  0.97 / 0.97; on traces whose popularity is re-drawn part way through it also
  stays ahead of gdsf).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


class EvictionPolicy(Enum):
    LRU = "lru"
    GDSF = "gdsf"
    LFU_SIZE = "lfu-size"


HISTORY_LIMIT = 4096  # lfu-size: models whose frequency is remembered after they left the cache
HALF_LIFE_PER_MODEL = 10.0  # lfu-size: uses per model held in which an old use loses half its weight
_RESCALE_LOG2 = 64  # lfu-size: past a use weight of 2**64 every frequency is rescaled (the order unchanged)


def default_unload_buffer(capacity_bytes: int, loading_concurrency: int, default_model_bytes: int) -> int:
    """ModelMesh's rule: loads at once x the runtime's default model size, halved (quartered above two
    loads at once), kept within 1 % and 10 % of the capacity."""
    concurrency = max(1, loading_concurrency)
    wanted = concurrency * max(0, default_model_bytes) // (2 if concurrency <= 2 else 4)
    return max(min(wanted, capacity_bytes // 10), capacity_bytes // 100)


@dataclass
class CacheEntry:
    size: int
    last_used_ms: int
    loading: bool = True
    uses: int = 1  # a load counts as the first use (GDSF's frequency starts at 1 on a miss)
    load_use_pending: bool = True  # the request that caused the load is that first use: not counted again
    priority: float = 0.0  # GDSF and lfu-size: the lowest is evicted first
    frequency: float = 0.0  # lfu-size: decayed uses, resumed from the history on a reload


class ModelCache:
    def __init__(
        self,
        capacity_bytes: int,
        policy: EvictionPolicy = EvictionPolicy.LRU,
        *,
        unload_buffer_bytes: int = 0,
        history_limit: int = HISTORY_LIMIT,
        half_life_per_model: float = HALF_LIFE_PER_MODEL,
    ) -> None:
        self.capacity = capacity_bytes
        self.unload_buffer = min(max(0, unload_buffer_bytes), capacity_bytes)
        self.policy = policy
        self._entries: dict[str, CacheEntry] = {}
        self._unloading: dict[str, int] = {}
        # Running totals of the two maps' bytes: read on every load and instance record, kept O(1).
        self._occupied = 0
        self._unloading_bytes = 0
        self._inflation = 0.0  # GDSF: the priority of the last model evicted
        # lfu-size: log2 of the weight of a use (it grows with every use: older uses decay), and the decayed
        # frequencies of models that left, oldest departure first (dicts keep insertion order).
        self._history_limit = max(0, history_limit)
        self._half_life_per_model = half_life_per_model
        self._use_weight_log2 = 0.0
        self._history: dict[str, float] = {}

    # -- queries -----------------------------------------------------------
    @property
    def used(self) -> int:
        """Bytes the runtime holds or will hold: models loaded, loading and still unloading."""
        return self.occupied + self.unloading

    @property
    def occupied(self) -> int:
        """Bytes of the models loaded and loading."""
        return self._occupied

    @property
    def unloading(self) -> int:
        return self._unloading_bytes

    @property
    def free(self) -> int:
        return self.capacity - self.used

    @property
    def model_capacity(self) -> int:
        """What models may fill: the capacity less the unload buffer."""
        return self.capacity - self.unload_buffer

    @property
    def taken(self) -> int:
        """Bytes a new model cannot have without evicting: the models', and the unload buffer's (or the
        unloads' under way, when more). What the pod reports as used, as ModelMesh counts its buffer."""
        return self.occupied + max(self.unload_buffer, self.unloading)

    def must_wait_for_unloads(self) -> bool:
        """Whether the runtime would hold more than the capacity if a load started now: unloads still
        running hold more than the buffer."""
        return self.used > self.capacity

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

    def remembered_frequency(self, model_id: str) -> float | None:
        """lfu-size: the frequency a model that left the cache would resume (in the current use weight's
        units, like CacheEntry.frequency); None when it is not in the history."""
        return self._history.get(model_id)

    @property
    def history_size(self) -> int:
        """lfu-size: how many models that left the cache have their frequency remembered."""
        return len(self._history)

    def plan_eviction(
        self, needed_bytes: int, pinned: frozenset[str] = frozenset(), used_before_ms: int | None = None
    ) -> list[str] | None:
        """Loaded models, in the policy's eviction order, whose removal frees ``needed_bytes``.

        Returns [] when the bytes are already free (or will be, when the unloads
        under way return), None when even evicting every candidate would not
        free enough (the load must not start). Models still loading, ``pinned``
        ones and, with ``used_before_ms``, those used at or after that time are
        never chosen.
        """
        shortfall = needed_bytes - (self.model_capacity - self.occupied)
        if shortfall <= 0:
            return []
        by_priority = self.policy is not EvictionPolicy.LRU
        candidates = sorted(
            (e.priority if by_priority else e.last_used_ms, model_id, e.size)
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
        if self.policy is EvictionPolicy.LFU_SIZE:
            entry.priority = entry.frequency / max(entry.size, 1)
        else:
            entry.priority = self._inflation + entry.uses / max(entry.size, 1)

    def _weigh_uses(self, uses: int) -> float:
        """lfu-size: what ``uses`` new uses add to a frequency; every use makes the next weigh more."""
        half_life = self._half_life_per_model * max(len(self._entries), 1)
        self._use_weight_log2 += uses / half_life
        if self._use_weight_log2 > _RESCALE_LOG2:
            # Keep the floats small: divide everything by one power of two (ldexp cannot overflow, however
            # many uses one touch reports; frequencies far below the new uses become 0).
            shift = int(self._use_weight_log2)
            self._use_weight_log2 -= shift
            for entry in self._entries.values():
                entry.frequency = math.ldexp(entry.frequency, -shift)
                self._prioritise(entry)
            for model_id in self._history:
                self._history[model_id] = math.ldexp(self._history[model_id], -shift)
        return uses * 2.0**self._use_weight_log2

    def start_load(self, model_id: str, predicted_size: int, last_used_ms: int) -> None:
        entry = CacheEntry(size=predicted_size, last_used_ms=last_used_ms, loading=True)
        if self.policy is EvictionPolicy.LFU_SIZE:
            entry.frequency = self._weigh_uses(1) + self._history.pop(model_id, 0.0)
        self._prioritise(entry)
        replaced = self._entries.get(model_id)
        self._occupied += predicted_size - (replaced.size if replaced is not None else 0)
        self._entries[model_id] = entry

    def finish_load(self, model_id: str, size: int) -> None:
        entry = self._entries[model_id]
        self._occupied += size - entry.size
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
        if uses > 0 and self.policy is EvictionPolicy.LFU_SIZE:
            entry.frequency += self._weigh_uses(uses)
        self._prioritise(entry)  # GDSF: also takes up the inflation since the model's last use
        if now_ms > entry.last_used_ms:
            entry.last_used_ms = now_ms

    def start_unload(self, model_id: str) -> None:
        """Drop the model from the cache; its bytes stay reserved until finish_unload."""
        entry = self._entries.pop(model_id, None)
        if entry is not None:
            self._occupied -= entry.size
            self._unloading_bytes += entry.size
            self._unloading[model_id] = self._unloading.get(model_id, 0) + entry.size
            if self.policy is EvictionPolicy.LFU_SIZE:
                self._remember(model_id, entry.frequency)
            else:
                self._inflation = max(self._inflation, entry.priority)  # GDSF ages what stays

    def _remember(self, model_id: str, frequency: float) -> None:
        """lfu-size: remember a departed model's frequency; past the limit, forget the earliest to leave."""
        if self._history_limit == 0:
            return
        self._history.pop(model_id, None)  # a departure moves it to the end
        self._history[model_id] = frequency
        while len(self._history) > self._history_limit:
            del self._history[next(iter(self._history))]

    def finish_unload(self, model_id: str) -> None:
        self._unloading_bytes -= self._unloading.pop(model_id, 0)
