"""MeasuredSizes: what earlier loads measured, by model and files, bounded."""

from __future__ import annotations

from mesh.models.measured import MeasuredSizes


def test_a_size_counts_only_for_the_files_it_was_measured_on() -> None:
    sizes = MeasuredSizes()
    assert sizes.get("m", "/p", "k") is None
    sizes.record("m", "/p", "k", 1234)
    assert sizes.get("m", "/p", "k") == 1234
    assert sizes.get("m", "/other", "k") is None
    assert sizes.get("m", "/p", '{"storage_key":"other"}') is None
    sizes.record("m", "/other", "k", 99)  # a later load replaces it
    assert sizes.get("m", "/other", "k") == 99 and sizes.get("m", "/p", "k") is None


def test_the_least_recently_loaded_are_forgotten_first() -> None:
    sizes = MeasuredSizes(kept=3)
    for index in range(3):
        sizes.record(f"m{index}", "/p", "", index)
    sizes.record("m0", "/p", "", 10)  # loaded again: the most recent now
    sizes.record("m3", "/p", "", 3)
    assert len(sizes) == 3
    assert sizes.get("m1", "/p", "") is None
    assert [sizes.get(m, "/p", "") for m in ("m0", "m2", "m3")] == [10, 2, 3]


def test_forget() -> None:
    sizes = MeasuredSizes()
    sizes.record("m", "/p", "", 5)
    sizes.forget("m")
    sizes.forget("never")
    assert sizes.get("m", "/p", "") is None and len(sizes) == 0
