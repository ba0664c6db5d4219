"""Memory of loads that overlap: the runtime's RSS growth shared among the loads running while it grew (pure).

One load alone is sized by the runtime's RSS after it minus before it. When loads overlap, each one's
before/after window also holds the others' growth, so per-load deltas would count the same bytes twice
(or, with the allocator's slack, not at all). The ledger instead follows the RSS from event to event (a
load starting or ending) and gives each stretch's growth to the loads running during it, in equal shares.
A load's size is its shares when it ends: the sizes of loads that ran together add up to the RSS growth
while they ran, as a single load's delta does. Growth while no load runs (inference, caches) and shrinking
(unloads give memory back late, if at all) belong to no load and are not shared out.
"""

from __future__ import annotations


class MemoryLedger:
    def __init__(self) -> None:
        self._shares: dict[str, float] = {}  # load in progress -> bytes attributed so far
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
            if growth > 0:
                share = growth / len(self._shares)
                for key in self._shares:
                    self._shares[key] += share
        self._last_rss = rss

    def started(self, key: str, rss: int | None) -> None:
        """A load of ``key`` begins; ``rss``: the runtime's RSS now (None: unknown)."""
        self._advance(rss)
        self._shares[key] = 0.0

    def finished(self, key: str, rss: int | None) -> int:
        """The load of ``key`` ended (loaded or failed): the bytes of RSS growth that are its own."""
        self._advance(rss)
        return int(self._shares.pop(key, 0.0))
