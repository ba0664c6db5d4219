"""Memory of loads that overlap: the runtime's RSS growth shared among the loads running while it grew (pure).

One load alone is sized by the runtime's RSS after it minus before it. When loads overlap, each one's
before/after window also holds the others' growth, so per-load deltas would count the same bytes twice
(or, with the allocator's slack, not at all). The ledger instead follows the RSS from event to event (a
load starting or ending) and gives each stretch's growth to the loads running during it, in shares by
weight (the caller's guess of each model's size, its files: a 40 MB model loading beside a 1 KB one takes
nearly all of it).
A load's size is its shares when it ends: the sizes of loads that ran together add up to the RSS growth
while they ran, as a single load's delta does. A stretch in which the RSS shrank takes back from the loads
running (a load's buffers freed once it is done: net growth is what it keeps; a size never goes below 0).
Growth while no load runs (inference, caches) belongs to no load.
"""

from __future__ import annotations


class MemoryLedger:
    def __init__(self) -> None:
        self._shares: dict[str, float] = {}  # load in progress -> bytes attributed so far
        self._weights: dict[str, float] = {}
        self._last_rss: int | None = None

    @property
    def loading(self) -> frozenset[str]:
        return frozenset(self._shares)

    def _advance(self, rss: int | None) -> None:
        if rss is None:  # the runtime could not be measured: this stretch is nobody's
            self._last_rss = None
            return
        if self._last_rss is not None and self._shares:
            growth = rss - self._last_rss
            total = sum(self._weights.values())
            for key in self._shares:
                self._shares[key] += growth * self._weights[key] / total
        self._last_rss = rss

    def started(self, key: str, rss: int | None, weight: float = 1.0) -> None:
        """A load of ``key`` begins; ``rss``: the runtime's RSS now (None: unknown); ``weight``: its share of
        growth against the other loads running (any positive number; equal by default)."""
        self._advance(rss)
        self._shares[key] = 0.0
        self._weights[key] = max(weight, 1e-9)

    def finished(self, key: str, rss: int | None) -> int:
        """The load of ``key`` ended (loaded or failed): the bytes of RSS growth that are its own."""
        self._advance(rss)
        self._weights.pop(key, None)
        return max(0, int(self._shares.pop(key, 0.0)))
