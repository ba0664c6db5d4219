"""Busy polling: before the event loop sleeps, it looks for work without sleeping for a moment.

At low load a pod's latency is mostly wake-ups, not work. A loop blocked in ``epoll_wait`` is woken by the
kernel when bytes arrive, and on a virtual machine an idle core is woken too; the work then runs with cold
caches. At one request in flight the pod sleeps twice per request (waiting for the runtime, then for the
client), and on this 2-core VM those wake-ups were more than half of what the pod added to a call
(load_tests/RESULTS.md, scenario hop, with and without busy polling). A pod that polls for a few hundred
microseconds before it blocks catches the runtime's answer awake, the way Linux's ``busy_poll``, Seastar and
Go's scheduler spin before they park.

It costs CPU while nothing comes, so it is bounded twice: each poll yields the core to any other task that
wants it (``sched_yield``), and ``SpinPolicy`` spins only while the loop's recent waits were short. A pod
whose loop wakes only for timers stops spinning after a few waits and blocks at once, as before.
``--busy-poll-us 0`` turns it off (a pod with a tight CPU quota spends the quota on spinning).

A spin is not cut short when a yield gives the core away: that is the common case it is for. The runtime
woken by the pod's write often runs on the pod's own core, and its answer then finds the pod runnable rather
than asleep (ending the spin at such a yield took all of the gain away in load_tests' hop).
"""

from __future__ import annotations

import asyncio
import os
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass

Ready = list[tuple[selectors.SelectorKey, int]]

SPIN_WEIGHT = 1 / 8  # how much the latest wait moves the share of short waits
SPIN_THRESHOLD = 0.25  # spin while at least this share of recent waits ended within the spin


@dataclass(slots=True)
class SpinPolicy:
    """Whether the next wait spins: while enough recent waits (an exponentially weighted share) would have
    ended within ``spin_s``. Pure: the selector reports each wait's length."""

    spin_s: float
    weight: float = SPIN_WEIGHT
    threshold: float = SPIN_THRESHOLD
    short_share: float = 1.0  # optimistic at start: a loop that is busy spins from its first wait

    def should_spin(self) -> bool:
        return self.spin_s > 0 and self.short_share >= self.threshold

    def waited(self, seconds: float) -> None:
        """A wait ended after ``seconds`` (spun, blocked, or both)."""
        short = 1.0 if seconds <= self.spin_s else 0.0
        self.short_share += self.weight * (short - self.short_share)


@dataclass(slots=True)
class PollCounts:
    spun: int = 0  # waits that polled before they returned or blocked
    caught: int = 0  # waits whose events came while polling: a wake-up saved


PROCESS_COUNTS = PollCounts()  # what this process's loop did (/mesh/front)


class BusyPollSelector(selectors.EpollSelector):
    """An epoll selector that polls for up to its policy's spin, then blocks for the rest of the timeout."""

    def __init__(self, policy: SpinPolicy, counts: PollCounts = PROCESS_COUNTS) -> None:
        super().__init__()
        self.policy = policy
        self.counts = counts

    def select(self, timeout: float | None = None) -> Ready:
        if timeout is not None and timeout <= 0:  # the loop has work: one look, as asyncio asked
            return self.poll(0)
        clock, policy = time.perf_counter, self.policy
        start = clock()
        if policy.should_spin():
            self.counts.spun += 1
            spin = policy.spin_s if timeout is None else min(policy.spin_s, timeout)
            end = start + spin
            while True:
                ready = self.poll(0)
                now = clock()
                if ready:
                    self.counts.caught += 1
                    policy.waited(now - start)
                    return ready
                if now >= end:
                    break
                os.sched_yield()  # another task that wants this core runs first
            if timeout is not None:
                timeout = max(0.0, timeout - (now - start))
                if timeout == 0.0:
                    policy.waited(now - start)
                    return []
        ready = self.poll(timeout)
        policy.waited(clock() - start)
        return ready

    def poll(self, timeout: float | None) -> Ready:
        """epoll itself: waits up to ``timeout`` (None: until an event; 0: not at all)."""
        return super().select(timeout)


def loop_factory(busy_poll_us: int) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A loop that busy-polls for ``busy_poll_us`` before it blocks; None (asyncio's default) at 0."""
    if busy_poll_us <= 0:
        return None
    return lambda: asyncio.SelectorEventLoop(BusyPollSelector(SpinPolicy(busy_poll_us / 1e6)))
