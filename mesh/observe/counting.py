"""Counting on the hot path (pure): histograms and counters as plain lists and dicts, read at scrape time.

``prometheus_client``'s own Histogram takes a lock per observation and per bucket; the mesh observes on
its event loop, one thread, so a bisect into a list is all an observation costs. ``mesh/observe/metrics.py``
turns these into Prometheus families when scraped. A serving process keeps its own and ships what it
counted since its last report to the main process (``drain`` / ``merge``), which exports the sum.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

Labels = tuple[str, ...]


class Histogram:
    """Counts per bucket: ``bounds`` are upper bounds, inclusive (Prometheus' ``le``), and one for +Inf."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count at or below it) per bucket, ending with +Inf: what a Prometheus histogram exposes."""
        running, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append((_le(bound), running))
        return buckets

    def merge(self, counts: Sequence[int], total: float) -> None:
        if len(counts) != len(self.counts):
            raise ValueError(f"{len(counts)} buckets for a histogram of {len(self.counts)}")
        for i, count in enumerate(counts):
            self.counts[i] += count
        self.sum += total


class HistogramFamily:
    """One histogram per label values."""

    __slots__ = ("bounds", "by_labels")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.by_labels: dict[Labels, Histogram] = {}

    def observe(self, labels: Labels, value: float) -> None:
        self.series(labels).observe(value)

    def series(self, labels: Labels) -> Histogram:
        """The histogram of these label values (made on first use); the hot path keeps it at hand."""
        histogram = self.by_labels.get(labels)
        if histogram is None:
            histogram = self.by_labels[labels] = Histogram(self.bounds)
        return histogram

    def drain(self) -> list[list[Any]]:
        """What was counted since the last drain, as JSON-ready [labels, counts, sum]; starts afresh."""
        drained = [[list(labels), h.counts, h.sum] for labels, h in self.by_labels.items()]
        self.by_labels = {}
        return drained

    def merge(self, drained: list[list[Any]]) -> None:
        for labels, counts, total in drained:
            key = tuple(str(label) for label in labels)
            histogram = self.by_labels.get(key)
            if histogram is None:
                histogram = self.by_labels[key] = Histogram(self.bounds)
            histogram.merge([int(c) for c in counts], float(total))


class CounterFamily:
    """One count per label values."""

    __slots__ = ("by_labels",)

    def __init__(self) -> None:
        self.by_labels: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        self.by_labels[labels] = self.by_labels.get(labels, 0.0) + amount

    def drain(self) -> list[list[Any]]:
        drained = [[list(labels), value] for labels, value in self.by_labels.items()]
        self.by_labels = {}
        return drained

    def merge(self, drained: list[list[Any]]) -> None:
        for labels, value in drained:
            self.inc(tuple(str(label) for label in labels), float(value))


def _le(bound: float) -> str:
    if bound == float("inf"):
        return "+Inf"
    return repr(float(bound))
