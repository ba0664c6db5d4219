"""Hot-path counting (mesh/observe/counting.py): buckets as Prometheus reads them, drain and merge."""

from __future__ import annotations

import pytest

from mesh.observe.counting import CounterFamily, Histogram, HistogramFamily


def test_a_value_on_a_bound_counts_in_that_bucket_and_cumulative_ends_with_inf() -> None:
    h = Histogram([1, 5, 10])
    for value in (0.5, 1, 1.01, 5, 7, 10, 11, 1000):
        h.observe(value)
    assert h.counts == [2, 2, 2, 2]
    assert h.cumulative() == [("1.0", 2), ("5.0", 4), ("10.0", 6), ("+Inf", 8)]
    assert h.count == 8 and h.sum == pytest.approx(1035.51)


def test_a_drained_family_merges_into_another_and_starts_afresh() -> None:
    worker, main = HistogramFamily([1, 10]), HistogramFamily([1, 10])
    worker.observe(("ModelInfer", "OK"), 3)
    worker.observe(("ModelInfer", "OK"), 30)
    main.observe(("ModelInfer", "OK"), 0.5)
    main.merge(worker.drain())
    assert worker.by_labels == {}
    merged = main.by_labels[("ModelInfer", "OK")]
    assert merged.counts == [1, 1, 1] and merged.sum == pytest.approx(33.5)


def test_merging_buckets_of_another_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="3 buckets"):
        Histogram([1]).merge([1, 2, 3], 1.0)


def test_counters_drain_and_merge() -> None:
    worker, main = CounterFamily(), CounterFamily()
    worker.inc(("lru",))
    worker.inc(("lru",), 2)
    main.merge(worker.drain())
    main.merge(worker.drain())  # nothing new
    assert main.by_labels == {("lru",): 3.0}
