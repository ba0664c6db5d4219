"""What a model's ``ModelInfo.key`` and ``ModelInfo.type`` say, in the forms modelmesh-serving's controller
writes them (pure).

The key is a plain storage key, or JSON: ``{"storage_key": "...", "storage_params": {"bucket": "..."},
"model_type": {"name": "sklearn", "version": "1"}, "schema_path": "...", "disk_size_bytes": N}`` (the last
added by modelmesh-serving's puller: the files' size, used as a size prediction). The type is a plain name
(``sklearn``) or the controller's label expression (``mt:sklearn``, ``mt:sklearn:1|pv:grpc-v2``,
``rt:<runtime>``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from runtime_adapters.common.model_files import ModelFilesError


@dataclass(frozen=True)
class ModelKey:
    storage_key: str = ""
    bucket: str = ""  # storage_params.bucket: overrides the storage entry's bucket
    model_type: str = ""  # model_type.name
    schema_path: str = ""
    disk_size_bytes: int | None = None


def parse_model_key(model_key: str) -> ModelKey:
    text = model_key.strip()
    if not text.startswith("{"):
        return ModelKey(storage_key=text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelFilesError(f"model key is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ModelFilesError("model key JSON must be an object")
    params = data.get("storage_params") or {}
    if not isinstance(params, dict):
        raise ModelFilesError("storage_params must be an object")
    model_type = data.get("model_type") or {}
    if isinstance(model_type, str):
        model_type = {"name": model_type}
    if not isinstance(model_type, dict):
        raise ModelFilesError("model_type must be an object with a name")
    size = data.get("disk_size_bytes")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ModelFilesError("disk_size_bytes must be a non-negative integer")
    return ModelKey(
        storage_key=str(data.get("storage_key") or ""),
        bucket=str(params.get("bucket") or data.get("bucket") or ""),
        model_type=str(model_type.get("name") or ""),
        schema_path=str(data.get("schema_path") or ""),
        disk_size_bytes=size,
    )


def model_type_name(model_type: str, key: ModelKey) -> str:
    """The model format to load: the key's model_type, else the ``mt:`` label of the type, else the type."""
    if key.model_type:
        return key.model_type
    for part in model_type.split("|"):
        kind, sep, rest = part.strip().partition(":")
        if sep and kind == "mt":
            return rest.split(":", 1)[0]
    return model_type
