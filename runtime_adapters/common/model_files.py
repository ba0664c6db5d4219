"""Local model files: path resolution and size prediction."""

from __future__ import annotations

import os
from pathlib import Path

# Unpacked models take more memory than their files; ModelMesh uses the same rule of thumb.
SIZE_FACTOR = 1.25


class ModelFilesError(Exception):
    """The model path is unusable (missing, empty, unsupported scheme)."""


def resolve_model_path(model_path: str) -> Path:
    """Absolute local Path for ``model_path`` (plain path or ``file://`` URI); it must exist."""
    raw = model_path.strip()
    if not raw:
        raise ModelFilesError("model path is empty")
    if raw.startswith("file://"):
        raw = raw[len("file://") :]
    elif "://" in raw:
        raise ModelFilesError(f"unsupported model path scheme: {model_path}")
    path = Path(raw).expanduser().absolute()
    if not path.exists():
        raise ModelFilesError(f"model path does not exist: {path}")
    return path


def files_size(path: Path) -> int:
    """Size of a file, or the total size of all regular files below a directory."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                # Dangling symlinks or files removed while walking contribute nothing.
                continue
    return total


def predicted_size(path: Path, floor: int) -> int:
    """Predicted in-memory size: files x 1.25, never below ``floor``."""
    return max(int(files_size(path) * SIZE_FACTOR), floor)
