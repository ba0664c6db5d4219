"""Request rates per model copy, and the copy decisions made from them (pure).

The hot path only increments a counter (``record``); a periodic ``tick`` closes
the current interval. A rate is requests per minute over the last ``window``
intervals.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping


class RateTracker:
    def __init__(self, interval_s: float, window: int) -> None:
        self.interval_s = interval_s
        self._current: Counter[str] = Counter()
        self._closed: deque[Counter[str]] = deque(maxlen=window)
        self._ticks = 0
        self._tracked_since: dict[str, int] = {}  # model -> tick count when its copy here was loaded

    def track(self, model_id: str) -> None:
        """A copy was loaded here: it is not idle before a whole window has passed since."""
        self._tracked_since[model_id] = self._ticks

    def record(self, model_id: str, count: int = 1) -> None:
        self._current[model_id] += count

    def tick(self) -> None:
        self._closed.append(self._current)
        self._current = Counter()
        self._ticks += 1

    def per_minute(self, model_id: str) -> float:
        if not self._closed:
            return 0.0
        total = sum(interval[model_id] for interval in self._closed)
        return total * 60.0 / (len(self._closed) * self.interval_s)

    def total_per_minute(self) -> float:
        if not self._closed:
            return 0.0
        total = sum(sum(interval.values()) for interval in self._closed)
        return total * 60.0 / (len(self._closed) * self.interval_s)

    def idle(self, model_id: str) -> bool:
        """No request over a full window since the copy was loaded (a fresh copy is not idle yet)."""
        window = self._closed.maxlen or 0
        if self._ticks - self._tracked_since.get(model_id, 0) < window:
            return False
        return self.per_minute(model_id) == 0.0 and not self._current[model_id]

    def forget(self, model_id: str) -> None:
        self._tracked_since.pop(model_id, None)
        self._current.pop(model_id, None)
        for interval in self._closed:
            interval.pop(model_id, None)


def hot_models(rates: Mapping[str, float], threshold_per_min: float) -> list[str]:
    """Models whose copy here serves more than the threshold: each wants one more copy."""
    return sorted((m for m, rate in rates.items() if rate > threshold_per_min), key=lambda m: -rates[m])


def should_drop_idle_copy(pod_id: str, holders: Mapping[str, int], idle: bool) -> bool:
    """Drop this pod's copy if it is idle and not the model's first copy.

    Only the pods that loaded it later drop theirs, so two idle holders deciding
    at the same moment never remove the last copy.
    """
    if not idle or pod_id not in holders or len(holders) < 2:
        return False
    first = min(holders, key=lambda p: (holders[p], p))
    return pod_id != first
