"""What a pod's extra serving processes tell its main process: their hits per model, and what they
counted for the metrics (pure).

The main process owns the cache and the request rates; a worker serving a
model straight from the runtime must still make that model recently used and
count toward its rate, or the main process would evict a hot model.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

# Internal method on the main process's internal port; the body is ``UsageLog.drain()``.
USAGE_METHOD = "/mmesh.internal.Worker/usage"
# Its metrics: the body is ``MeshMetrics.drain()`` as JSON; the main process exports the sum.
METRICS_METHOD = "/mmesh.internal.Worker/metrics"


class UsageLog:
    """Hits served by one worker since its last report."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.last_ms: dict[str, int] = {}

    def hit(self, model_id: str, now_ms: int) -> None:
        self.counts[model_id] += 1
        self.last_ms[model_id] = now_ms

    def drain(self) -> bytes:
        """The report since the last drain, as JSON {model id: [count, last used ms]}; starts a new one."""
        report = {m: [n, self.last_ms[m]] for m, n in self.counts.items()}
        self.counts.clear()
        self.last_ms.clear()
        return json.dumps(report).encode()


def parse_usage(raw: bytes) -> dict[str, tuple[int, int]]:
    """A worker's report -> {model id: (count, last used ms)}; ValueError when malformed."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        usage = {str(m): (int(v[0]), int(v[1])) for m, v in data.items()}
    except (TypeError, IndexError, KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"malformed usage report: {e}") from e
    if any(count < 1 for count, _ in usage.values()):
        raise ValueError("malformed usage report: a count below 1")
    return usage


def parse_metrics_report(raw: bytes) -> dict[str, list[list[Any]]]:
    """A worker's metrics report -> ``MeshMetrics.merge``'s input; ValueError when it is not one."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed metrics report: {e}") from e
    if not isinstance(data, dict) or not all(isinstance(rows, list) for rows in data.values()):
        raise ValueError("malformed metrics report: not a JSON object of lists")
    return data
