"""Busy polling (mesh/process/busy_poll.py): when the loop spins, what a spin catches, and that a timeout is
honoured. The selector runs on real sockets; the policy is pure."""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from mesh.process.busy_poll import (
    SPIN_THRESHOLD,
    BusyPollSelector,
    PollCounts,
    SpinPolicy,
    loop_factory,
)

SPIN_S = 300e-6


def settled(policy: SpinPolicy, waits: list[float]) -> SpinPolicy:
    for seconds in waits:
        policy.waited(seconds)
    return policy


# -- the policy --------------------------------------------------------------------------------------
def test_a_new_policy_spins() -> None:
    assert SpinPolicy(SPIN_S).should_spin()


def test_zero_never_spins() -> None:
    assert not SpinPolicy(0.0).should_spin()
    assert not settled(SpinPolicy(0.0), [1e-6] * 50).should_spin()


def test_long_waits_stop_the_spinning() -> None:
    policy = settled(SpinPolicy(SPIN_S), [0.5] * 20)  # an idle loop: timers every half second
    assert not policy.should_spin()
    assert policy.short_share < SPIN_THRESHOLD


def test_it_takes_more_than_a_few_long_waits_to_stop() -> None:
    """One slow client among quick answers does not turn it off."""
    policy = settled(SpinPolicy(SPIN_S), [0.5] * 3)
    assert policy.should_spin()


def test_short_waits_bring_it_back() -> None:
    policy = settled(SpinPolicy(SPIN_S), [0.5] * 30)
    assert not policy.should_spin()
    settled(policy, [100e-6] * 10)  # traffic again: blocked waits that a spin would have caught
    assert policy.should_spin()


@pytest.mark.parametrize(
    ("pattern", "spins"),
    [
        ([150e-6, 450e-6], True),  # one request in flight: the runtime answers quickly, the client is slower
        ([150e-6, 2e-3, 2e-3], True),  # a third short: still worth it
        ([150e-6] + [2e-3] * 7, False),  # mostly long: not worth a core
        ([SPIN_S, 1.0], True),  # a wait of exactly the spin counts as caught
    ],
)
def test_a_mixed_pattern_settles_on_its_share(pattern: list[float], spins: bool) -> None:
    policy = settled(SpinPolicy(SPIN_S), pattern * 40)
    assert policy.should_spin() is spins


# -- the selector, on real sockets --------------------------------------------------------------------
@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


class RecordingSelector(BusyPollSelector):
    """Records the timeout of every epoll call: above zero, the call blocks."""

    def __init__(self, policy: SpinPolicy, counts: PollCounts) -> None:
        super().__init__(policy, counts)
        self.timeouts: list[float | None] = []

    def poll(self, timeout: float | None) -> list[tuple[selectors.SelectorKey, int]]:
        self.timeouts.append(timeout)
        return super().poll(timeout)


def select_with_a_late_write(
    pair: tuple[socket.socket, socket.socket], policy: SpinPolicy, counts: PollCounts, after_s: float
) -> RecordingSelector:
    """One select (10 s timeout) on ``a`` while another thread writes to ``b`` after ``after_s``."""
    a, b = pair
    with RecordingSelector(policy, counts) as selector:
        selector.register(a, selectors.EVENT_READ)
        writer = threading.Timer(after_s, b.send, (b"x",))
        writer.start()
        try:
            ready = selector.select(timeout=10.0)
        finally:
            writer.join()
        assert [key.fileobj for key, _ in ready] == [a]
    return selector


def test_bytes_that_come_while_it_spins_are_caught_without_blocking(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    counts = PollCounts()
    selector = select_with_a_late_write(pair, SpinPolicy(0.5), counts, 0.01)  # the write lands in the spin
    assert counts.caught == 1 and counts.spun == 1
    assert selector.timeouts and all(t == 0 for t in selector.timeouts)  # never blocked: looks only


def test_a_spin_that_catches_nothing_blocks_for_the_rest(pair: tuple[socket.socket, socket.socket]) -> None:
    counts = PollCounts()
    selector = select_with_a_late_write(pair, SpinPolicy(0.005), counts, 0.1)
    assert counts.spun == 1 and counts.caught == 0
    last = selector.timeouts[-1]
    assert last is not None and 9.0 < last < 10.0  # then it blocked, for what the timeout left


def test_a_timeout_shorter_than_the_spin_is_kept(pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    with BusyPollSelector(SpinPolicy(5.0), PollCounts()) as selector:
        selector.register(a, selectors.EVENT_READ)
        start = time.perf_counter()
        assert selector.select(timeout=0.02) == []
        assert time.perf_counter() - start < 1.0  # the timer's turn came; the 5 s spin did not run on


def test_a_zero_timeout_is_one_look(pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    counts = PollCounts()
    with BusyPollSelector(SpinPolicy(5.0), counts) as selector:
        selector.register(a, selectors.EVENT_READ)
        start = time.perf_counter()
        assert selector.select(timeout=0) == []
        assert time.perf_counter() - start < 1.0
        assert counts.spun == 0


def test_an_idle_selector_stops_spinning(pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    counts = PollCounts()
    policy = SpinPolicy(0.001)
    with BusyPollSelector(policy, counts) as selector:
        selector.register(a, selectors.EVENT_READ)
        for _ in range(30):  # waits that time out after 5 ms: nothing a 1 ms spin would catch
            selector.select(timeout=0.005)
        spun = counts.spun
        assert not policy.should_spin()
        assert spun < 30
        for _ in range(5):
            selector.select(timeout=0.005)
        assert counts.spun == spun


def test_the_loop_factory() -> None:
    assert loop_factory(0) is None
    factory = loop_factory(300)
    assert factory is not None
    loop = factory()
    try:
        assert loop.run_until_complete(asyncio.sleep(0.01, "slept")) == "slept"
    finally:
        loop.close()
