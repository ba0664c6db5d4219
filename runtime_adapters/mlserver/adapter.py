"""mmesh.ModelRuntime implemented in front of a Seldon MLServer, spoken to over v2 gRPC only.

MLServer loads a model by name from its repository folder, and each load rescans every ``model-settings.json``
below the repository root: a load would cost more the more models the folder holds (243 ms with 100 there
against 7 ms alone). MLServer needs the folder only while it loads (its registry keeps the settings; an
unload is by name). So the scanned folder holds only the loads in progress: a load puts its
``model-settings.json`` in place atomically (written aside, renamed), and takes it out again when MLServer
has answered, loaded or not. What the adapter has loaded is remembered in a hidden folder MLServer never scans
(``.modelmesh-loaded/``, one file per model naming it), which is what a restarted adapter purges. Model files
stay in the adapter's store; the settings point at them. Work is serialised per model, so loads of different
models run at once (``--max-loading-concurrency``) and an unload never waits behind another model's load.

Sizes: the runtime's RSS growth while the model loaded, shared among the loads that overlapped
(``runtime_adapters.common.ledger``), plus MLServer's fixed cost per model (its model object, settings,
metrics: ``--model-overhead-bytes``), which a per-load delta of a tiny model does not show.
What every adapter does alike (load tasks, cleanup, status codes, runtimeStatus) is in
``runtime_adapters.common.base``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import grpc
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
from runtime_adapters.common.ledger import MemoryLedger
from runtime_adapters.common.memory import TreeRss, find_listening_pid
from runtime_adapters.common.model_files import files_size
from runtime_adapters.common.storage import ModelStore

# modelType (lower case) -> MLServer implementation class. deploy/local/setup.sh installs all three; a
# runtime without one fails the load with MLServer's own "No module named ..." message.
MODEL_TYPE_IMPLEMENTATIONS: dict[str, str] = {
    "sklearn": "mlserver_sklearn.SKLearnModel",
    "xgboost": "mlserver_xgboost.XGBoostModel",
    "lightgbm": "mlserver_lightgbm.LightGBMModel",
}

SETTINGS_FILE = "model-settings.json"
LOADED_DIR = ".modelmesh-loaded"  # hidden: MLServer's scan skips it. One file per model loaded, naming it.
STAGING_DIR = ".modelmesh-staging"  # where earlier adapters staged settings folders: purged at start
PROBE_DIR = ".modelmesh-probe"  # hidden: the file a probe load of each implementation points at
# MLServer loads on one event loop (parallel workers off): more at once does not give more loads per second
# (about 240/s at 1, 2, 4 or 8 for tiny sklearn models on 2 cores), but 2 overlaps one load's round trips
# with another's work. See load_tests/RESULTS.md, scenario churn.
DEFAULT_MAX_LOADING_CONCURRENCY = 2
# MLServer's own memory per loaded model: the RSS slope over 50-200 tiny sklearn models is 6.9-7.0 KiB a model
# (MLServer 1.7.1), which a single load's RSS delta (0-52 KiB, in 4 KiB pages) does not show.
DEFAULT_MODEL_OVERHEAD_BYTES = 8 << 10
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


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
    max_loading_concurrency: int = DEFAULT_MAX_LOADING_CONCURRENCY
    model_overhead_bytes: int = DEFAULT_MODEL_OVERHEAD_BYTES


class MLServerAdapter(RuntimeAdapter):
    """A settings folder per load in progress, a lock per model; a model's size is its share of MLServer's RSS
    growth plus MLServer's fixed cost per model."""

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
        self._rss: TreeRss | None = None
        self._ledger = MemoryLedger()
        self._warmed: set[str] = set()  # implementations MLServer has imported (a probe load of each)
        self._warming = asyncio.Lock()

    @property
    def max_loading_concurrency(self) -> int:
        return max(1, self.config.max_loading_concurrency)

    def model_dir(self, model_id: str) -> Path:
        """The model's settings folder in the scanned root: there only while MLServer loads it. Named as the
        model when the id is a plain file name (else MLServer warns that folder and model names differ)."""
        name = model_id if _SAFE_NAME.fullmatch(model_id) else folder_name(model_id)
        return self.repository_dir / name

    def loaded_marker(self, model_id: str) -> Path:
        return self.repository_dir / LOADED_DIR / folder_name(model_id)

    def model_kind(self, model_type: str) -> str:
        return implementation_for(model_type)

    # ---- loading --------------------------------------------------------------------------------------

    async def load_in_runtime(self, model: ModelToLoad) -> int:
        model_id = model.model_id
        await self._warm(model.kind)
        # Files, weight and RSS each side of the load: small, on the loop (no thread hand-off).
        weight, rss = self._before_load(model)
        self._ledger.started(model_id, rss, weight)  # overlapping loads share growth by their files' size
        try:
            await self.runtime_load(model_id)
        finally:
            # Out of the scanned root whether it loaded or not: the next load scans only loads in progress.
            rss = self._after_load(model_id)
            grown = self._ledger.finished(model_id, rss)
        return grown + self.config.model_overhead_bytes

    def _before_load(self, model: ModelToLoad) -> tuple[int, int | None]:
        self._stage(model)
        return files_size(model.path), self._runtime_rss()

    def _after_load(self, model_id: str) -> int | None:
        self._unstage(model_id)
        return self._runtime_rss()

    async def _warm(self, kind: str) -> None:
        """Before the first model of an implementation: a probe load, so that MLServer's import of it (75 MiB
        for sklearn) is not measured as that model's memory. The probe's file holds no model (a pickled
        None): an implementation that cannot read it has still been imported, which is all the probe is for.
        """
        if kind in self._warmed:
            return
        async with self._warming:
            if kind in self._warmed:
                return
            probe = ModelToLoad(
                f"modelmesh-probe-{kind.rsplit('.', 1)[-1].lower()}", kind, self._probe_file()
            )
            # the probe's growth is its own: loads running beside it get next to none of it
            self._ledger.started(probe.model_id, await asyncio.to_thread(self._runtime_rss), weight=1e15)
            try:
                await asyncio.to_thread(self._stage, probe)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self.runtime_load(probe.model_id)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self.runtime_unload(probe.model_id)
            finally:
                await self.remove_model(probe.model_id)
                await asyncio.to_thread(probe.path.unlink, True)
                grown = self._ledger.finished(probe.model_id, await asyncio.to_thread(self._runtime_rss))
            self._log.info("warmed %s: MLServer grew by %d bytes importing it", kind, grown)
            self._warmed.add(kind)

    def _probe_file(self) -> Path:
        path = self.repository_dir / PROBE_DIR / "model.joblib"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(None))
        return path

    def _stage(self, model: ModelToLoad) -> None:
        """Remember the model as ours, then put its settings in the root, written aside and renamed into
        place, so that a concurrent scan by MLServer never reads them half-written. A few small file
        operations, done on the loop: a hop to a thread and back costs more than they do."""
        marker = self.loaded_marker(model.model_id)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(model.model_id)
        folder = self.model_dir(model.model_id)
        shutil.rmtree(folder, ignore_errors=True)  # a leftover of an earlier load: replaced
        folder.mkdir()  # ours by the marker above (each file made here costs about 0.1 ms)
        settings = {
            "name": model.model_id,
            "implementation": model.kind,
            "parameters": {"uri": str(model.path)},
        }
        written = folder / (SETTINGS_FILE + ".writing")  # not a name MLServer's scan looks for
        written.write_text(json.dumps(settings))
        os.replace(written, folder / SETTINGS_FILE)

    def _unstage(self, model_id: str) -> None:
        """Take the settings out of the root: the file first (atomically), then its folder."""
        folder = self.model_dir(model_id)
        (folder / SETTINGS_FILE).unlink(missing_ok=True)
        try:
            folder.rmdir()
        except FileNotFoundError:
            return
        except OSError:  # something else in it: whatever it is, the folder was ours
            shutil.rmtree(folder, ignore_errors=True)

    def _runtime_rss(self) -> int | None:
        if self._rss is None:
            pid = self._runtime_pid
            if pid is None:
                port = int(self.config.mlserver_grpc_address.rsplit(":", 1)[1])
                pid = find_listening_pid(port)
            if pid is None:
                return None
            try:
                self._rss = TreeRss(pid)
            except psutil.Error:
                return None
        try:
            return self._rss.read()
        except psutil.Error:
            # The runtime restarted (or was never ours to see); rediscover next time if we discovered it.
            self._rss = None
            if self.config.runtime_pid is None:
                self._runtime_pid = None
            return None

    async def remove_model(self, model_id: str) -> None:
        # Gone either way: MLServer does not need them to unload later, and a retry is harmless.
        self._forget_files(model_id)

    def _forget_files(self, model_id: str) -> None:
        self._unstage(model_id)
        self.loaded_marker(model_id).unlink(missing_ok=True)

    # ---- runtimeStatus --------------------------------------------------------------------------------

    def _marked_models(self) -> list[str]:
        """The models the loaded markers name; a marker removed while this reads (an unload finishing) is
        skipped: that model is gone already."""
        loaded = self.repository_dir / LOADED_DIR
        models = []
        for marker in sorted(loaded.glob("*")) if loaded.is_dir() else []:
            try:
                models.append(marker.read_text().strip() or marker.name)
            except FileNotFoundError:
                continue
        return models

    async def runtime_up(self) -> bool:
        ready = await self.stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=STATUS_TIMEOUT_S)
        return bool(ready.ready)

    async def purge(self) -> None:
        """Unload and forget what an earlier adapter loaded: models it remembered, loads it left in the root
        (and any model MLServer lists as loaded from there). Folders an operator put in the root stay."""
        leftovers: dict[str, Path | None] = {}
        for name, state in await self.runtime_models_in_memory():  # loads in progress when it stopped
            self._log.info("purging leftover model %r (%s)", name, state)
            leftovers[name] = None
        for folder, model_id in await asyncio.to_thread(lambda: list(self._our_folders())):
            leftovers[model_id] = folder
        for model_id in await asyncio.to_thread(self._marked_models):
            leftovers.setdefault(model_id, None)
        for model_id, left in leftovers.items():
            async with self._locked(model_id):
                await self.runtime_unload(model_id)
                await self.remove_model(model_id)
            if left is not None:
                await asyncio.to_thread(shutil.rmtree, left, True)
        await asyncio.to_thread(shutil.rmtree, self.repository_dir / STAGING_DIR, True)
        self._forget_all()
