"""What a pod's extra serving processes tell its main process: their hits per model (pure).

The main process owns the cache and the request rates; a worker serving a
model straight from the runtime must still make that model recently used and
count toward its rate, or the main process would evict a hot model.
"""

from __future__ import annotations

import json
from collections import Counter

# Internal method on the main process's internal port; the body is ``UsageLog.drain()``.
USAGE_METHOD = "/mmesh.internal.Worker/usage"


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
