"""The in-flight book: requests this process has in flight, per pod serving them (pure).

Every path that sends a request somewhere writes it here, this pod's runtime and peers alike (the HTTP/2
front's fast paths, the general route, REST, the serving processes' own paths), so that "least busy"
compares like with like. Counts are per pod, whatever the model: a pod busy with slow requests for one
model is as busy for the next request of another.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


class InFlightBook:
    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    @property
    def counts(self) -> Mapping[str, int]:
        """Pod id -> requests in flight to it (a live view; absent pods have none)."""
        return self._counts

    def started(self, pod_id: str) -> None:
        self._counts[pod_id] += 1

    def finished(self, pod_id: str) -> None:
        left = self._counts[pod_id] - 1
        if left > 0:
            self._counts[pod_id] = left
        else:
            del self._counts[pod_id]

    @contextmanager
    def sending(self, pod_id: str) -> Iterator[None]:
        self.started(pod_id)
        try:
            yield
        finally:
            self.finished(pod_id)
