"""Sizes this pod measured when it loaded a model (pure, no I/O).

A model loaded here before and evicted since comes back with the size its last load measured: the load
needs no size prediction from the runtime (one RPC less on the miss), and the measured size is the better
guess. A size counts only for the files it was measured on (the record's path and key).
"""

from __future__ import annotations

from collections import OrderedDict

MEASURED_SIZES_KEPT = 65_536  # about 10 MiB at most: the least recently loaded are forgotten first


class MeasuredSizes:
    def __init__(self, kept: int = MEASURED_SIZES_KEPT) -> None:
        self._kept = kept
        self._sizes: OrderedDict[str, tuple[str, str, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sizes)

    def get(self, model_id: str, path: str, key: str) -> int | None:
        """The size measured for the model's files, or None (never loaded here, or other files since)."""
        known = self._sizes.get(model_id)
        if known is None or known[0] != path or known[1] != key:
            return None
        return known[2]

    def record(self, model_id: str, path: str, key: str, size: int) -> None:
        self._sizes[model_id] = (path, key, size)
        self._sizes.move_to_end(model_id)
        while len(self._sizes) > self._kept:
            self._sizes.popitem(last=False)

    def forget(self, model_id: str) -> None:
        self._sizes.pop(model_id, None)
