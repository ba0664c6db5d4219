"""How a mesh process runs (mesh/process/entry.py): what it does once serving."""

from __future__ import annotations

import gc

from mesh.process.entry import freeze_startup_heap


def test_the_startup_heap_leaves_the_collectors_full_passes() -> None:
    made_at_start = [object() for _ in range(1000)]
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() >= len(made_at_start)
    finally:
        gc.unfreeze()
