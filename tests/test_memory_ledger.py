"""Memory of overlapping loads (runtime_adapters/common/ledger.py)."""

from __future__ import annotations

import pytest

from runtime_adapters.common.ledger import MemoryLedger

MB = 1 << 20


def test_one_load_alone_gets_its_whole_delta() -> None:
    ledger = MemoryLedger()
    ledger.started("a", 100 * MB)
    assert ledger.finished("a", 130 * MB) == 30 * MB


def test_overlapping_loads_share_what_grew_while_both_ran() -> None:
    ledger = MemoryLedger()
    ledger.started("a", 100 * MB)  # a alone: +10
    ledger.started("b", 110 * MB)  # a and b: +20, 10 each
    assert ledger.finished("a", 130 * MB) == 20 * MB
    assert ledger.finished("b", 136 * MB) == 16 * MB  # b alone: +6
    # per-load windows would have said a: 30, b: 26 (56 MB for 36 MB of growth)


@pytest.mark.parametrize("loads", [2, 3, 8])
def test_the_sizes_add_up_to_the_growth_while_loads_ran(loads: int) -> None:
    ledger = MemoryLedger()
    rss = 500 * MB
    ledger.started("k0", rss)
    for i in range(1, loads):
        rss += 3 * MB
        ledger.started(f"k{i}", rss)
    sizes = 0
    for i in range(loads):
        rss += 5 * MB
        sizes += ledger.finished(f"k{i}", rss)
    assert abs(sizes - (rss - 500 * MB)) <= loads  # int rounding: a byte per load at most


def test_growth_between_loads_and_shrinking_belong_to_no_load() -> None:
    ledger = MemoryLedger()
    ledger.started("a", 100 * MB)
    assert ledger.finished("a", 110 * MB) == 10 * MB
    ledger.started("b", 150 * MB)  # +40 while nothing loaded (inference): nobody's
    assert ledger.finished("b", 145 * MB) == 0  # an unload gave memory back during b's load
    assert not ledger.loading


def test_an_unmeasurable_runtime_attributes_nothing_for_that_stretch() -> None:
    ledger = MemoryLedger()
    ledger.started("a", None)
    ledger.started("b", 100 * MB)
    assert ledger.finished("a", 120 * MB) == 10 * MB  # from b's start on: shared by a and b
    assert ledger.finished("b", None) == 10 * MB  # the last stretch is unknown


def test_a_load_the_ledger_never_saw_start_is_zero() -> None:
    assert MemoryLedger().finished("ghost", 10 * MB) == 0
