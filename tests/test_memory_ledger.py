"""Memory of overlapping loads (runtime_adapters/common/ledger.py), and reading a runtime's RSS often."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from runtime_adapters.common.ledger import MemoryLedger
from runtime_adapters.common.memory import TreeRss

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


def test_growth_between_loads_belongs_to_no_load() -> None:
    ledger = MemoryLedger()
    ledger.started("a", 100 * MB)
    assert ledger.finished("a", 110 * MB) == 10 * MB
    ledger.started("b", 150 * MB)  # +40 while nothing loaded (inference): nobody's
    assert ledger.finished("b", 151 * MB) == 1 * MB
    assert not ledger.loading


def test_shrinking_takes_back_from_the_loads_running_but_never_below_zero() -> None:
    ledger = MemoryLedger()
    ledger.started("a", 100 * MB)
    ledger.started("b", 160 * MB)  # a read its 60 MB file into a buffer
    assert ledger.finished("a", 140 * MB) == 50 * MB  # -20 shared: a's buffer freed, b's share goes negative
    assert ledger.finished("b", 150 * MB) == 0  # b: -10 then +10
    ledger.started("c", 150 * MB)
    assert ledger.finished("c", 120 * MB) == 0  # an unload gave memory back during c's load


def test_an_unmeasurable_runtime_attributes_nothing_for_that_stretch() -> None:
    ledger = MemoryLedger()
    ledger.started("a", None)
    ledger.started("b", 100 * MB)
    assert ledger.finished("a", 120 * MB) == 10 * MB  # from b's start on: shared by a and b
    assert ledger.finished("b", None) == 10 * MB  # the last stretch is unknown


def test_a_load_the_ledger_never_saw_start_is_zero() -> None:
    assert MemoryLedger().finished("ghost", 10 * MB) == 0


def test_shares_follow_the_weights() -> None:
    ledger = MemoryLedger()
    ledger.started("big", 100 * MB, weight=40 * MB)
    ledger.started("tiny", 100 * MB, weight=1024)
    tiny = ledger.finished("tiny", 140 * MB)
    big = ledger.finished("big", 140 * MB)
    assert abs(big + tiny - 40 * MB) <= 2  # int rounding
    assert tiny < 2048  # its weight's part of 40 MB: about a kilobyte


def test_tree_rss_counts_children_and_lists_them_again_when_one_exits() -> None:
    """TreeRss keeps the list of descendants between reads (listing walks every process)."""
    now = [0.0]
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(64 << 20); time.sleep(30)"])
    try:

        def child_rss() -> int:
            return int(psutil.Process(child.pid).memory_info().rss)

        deadline = time.monotonic() + 20
        while child_rss() < 60 << 20:  # the child has its 64 MiB
            assert time.monotonic() < deadline
            time.sleep(0.05)
        reader = TreeRss(os.getpid(), relist_s=60, clock=lambda: now[0])
        with_child = reader.read()
        assert with_child >= psutil.Process().memory_info().rss + (60 << 20)
        child.kill()
        child.wait()
        without = reader.read()  # the kept list still names the child: it is gone, so the next read relists
        assert without < with_child - (50 << 20)
        assert reader.read() < with_child - (50 << 20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
