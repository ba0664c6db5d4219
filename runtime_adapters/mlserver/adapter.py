"""mmesh.ModelRuntime implemented in front of a Seldon MLServer, spoken to over v2 gRPC only.

MLServer loads a model by name from its repository folder: each load rescans every ``model-settings.json``
below the repository root. So the adapter writes one folder per model it is asked to load, deletes it when the
model is unloaded or its load fails, and serialises everything that touches the repository with one lock.
What every adapter does alike (load tasks, cleanup, status codes, runtimeStatus) is in
``runtime_adapters.common.base``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2

from runtime_adapters.common.base import MARKER_FILE as MARKER_FILE  # re-exported: tests import it here
from runtime_adapters.common.base import (
    STATUS_TIMEOUT_S,
    ModelRejected,
    ModelToLoad,
    RuntimeAdapter,
)
from runtime_adapters.common.memory import find_listening_pid, process_tree_rss
from runtime_adapters.common.storage import ModelStore

# modelType (lower case) -> MLServer implementation class. deploy/local/setup.sh installs all three; a
# runtime without one fails the load with MLServer's own "No module named ..." message.
MODEL_TYPE_IMPLEMENTATIONS: dict[str, str] = {
    "sklearn": "mlserver_sklearn.SKLearnModel",
    "xgboost": "mlserver_xgboost.XGBoostModel",
    "lightgbm": "mlserver_lightgbm.LightGBMModel",
}

SETTINGS_FILE = "model-settings.json"

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
# Every model shares this lock key: a load rescans all folders, so a half-written or vanishing
# model-settings.json during a scan would fail an unrelated load.
_REPOSITORY_LOCK = "<repository>"


class UnsupportedModelType(ModelRejected):
    pass


def implementation_for(model_type: str) -> str:
    """MLServer implementation for a mesh model type (case-insensitive)."""
    impl = MODEL_TYPE_IMPLEMENTATIONS.get(model_type.strip().lower())
    if impl is None:
        supported = ", ".join(sorted(MODEL_TYPE_IMPLEMENTATIONS))
        raise UnsupportedModelType(f"unsupported model type {model_type!r} (supported: {supported})")
    return impl


def folder_name(model_id: str) -> str:
    """A filesystem-safe, deterministic folder name, unique per id.

    Ids may contain '/', ':' and anything else; the slug keeps folders readable and the hash keeps two ids
    that slug alike apart. No leading '.', because MLServer's repository scan skips hidden folders.
    """
    slug = _UNSAFE_CHARS.sub("_", model_id).lstrip("._-")[:80] or "model"
    digest = hashlib.sha256(model_id.encode("utf-8")).hexdigest()[:12]
    return f"{slug}-{digest}"


@dataclass
class MLServerAdapterConfig:
    mlserver_grpc_address: str
    repository_dir: Path
    runtime_pid: int | None = None
    capacity_bytes: int = 1 << 30
    min_model_size_bytes: int = 0
    load_timeout_ms: int = 120_000
    default_model_size_bytes: int = 1 << 20


class MLServerAdapter(RuntimeAdapter):
    """One folder per model, one lock for the repository; a model's size is MLServer's RSS growth."""

    config: MLServerAdapterConfig
    runtime_label = "MLServer"
    runtime_name = "mlserver"
    memory_source = "rss delta"

    def __init__(
        self,
        config: MLServerAdapterConfig,
        registry: CollectorRegistry | None = None,
        store: ModelStore | None = None,
    ) -> None:
        super().__init__(config, config.mlserver_grpc_address, registry, store)
        self._runtime_pid = config.runtime_pid

    def _lock_key(self, model_id: str) -> str:
        return _REPOSITORY_LOCK

    def model_dir(self, model_id: str) -> Path:
        return self.repository_dir / folder_name(model_id)

    def model_kind(self, model_type: str) -> str:
        return implementation_for(model_type)

    # ---- loading --------------------------------------------------------------------------------------

    async def load_in_runtime(self, model: ModelToLoad) -> int:
        await asyncio.to_thread(self._write_settings, model)
        rss_before = await asyncio.to_thread(self._runtime_rss)
        await self.runtime_load(model.model_id)
        rss_after = await asyncio.to_thread(self._runtime_rss)
        return rss_after - rss_before if rss_before is not None and rss_after is not None else 0

    def _write_settings(self, model: ModelToLoad) -> Path:
        folder = self.model_dir(model.model_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER_FILE).write_text(model.model_id)
        settings = {
            "name": model.model_id,
            "implementation": model.kind,
            "parameters": {"uri": str(model.path)},
        }
        tmp = folder / (SETTINGS_FILE + ".tmp")
        tmp.write_text(json.dumps(settings, indent=2))
        # Atomic: a concurrent scan by MLServer never sees a half-written settings file.
        os.replace(tmp, folder / SETTINGS_FILE)
        return folder

    def _runtime_rss(self) -> int | None:
        if self._runtime_pid is None:
            port = int(self.config.mlserver_grpc_address.rsplit(":", 1)[1])
            self._runtime_pid = find_listening_pid(port)
            if self._runtime_pid is None:
                return None
        try:
            return process_tree_rss(self._runtime_pid)
        except psutil.Error:
            # The runtime restarted (or was never ours to see); rediscover next time if we discovered it.
            if self.config.runtime_pid is None:
                self._runtime_pid = None
            return None

    async def remove_model(self, model_id: str) -> None:
        # The folder goes either way: MLServer does not need it to unload later, and a retry is harmless.
        await asyncio.to_thread(shutil.rmtree, self.model_dir(model_id), True)

    # ---- runtimeStatus --------------------------------------------------------------------------------

    async def runtime_up(self) -> bool:
        ready = await self.stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=STATUS_TIMEOUT_S)
        return bool(ready.ready)

    async def purge(self) -> None:
        async with self._locked(_REPOSITORY_LOCK):
            # Models merely present on disk are UNAVAILABLE, and stay.
            for name, state in await self.runtime_models_in_memory():
                self._log.info("purging leftover model %r (%s)", name, state)
                await self.runtime_unload(name)
            for folder, _model_id in await asyncio.to_thread(lambda: list(self._our_folders())):
                await asyncio.to_thread(shutil.rmtree, folder, True)
            self._forget_all()
