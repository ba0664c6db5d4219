"""The models this pod holds: single-flight loads, eviction by bytes, registry bookkeeping.

Flow of a load: claim it in the registry (beside the next steps), ask the
adapter's size prediction, reserve the bytes and evict down to the capacity
less the unload buffer (victims unload after the load unless the buffer is
full), call the adapter's loadModel, release the waiting requests, then name
the pod a holder. A failure is recorded per pod with its message; requests get
that failure until it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from mesh.errors import MeshError, load_failure_code
from mesh.models.cache import ModelCache
from mesh.models.copies import CopyCheck
from mesh.models.load_timings import LoadPhases, LoadTimings
from mesh.models.rates import RateTracker
from mesh.models.runtime_client import RuntimeClient
from mesh.observe.metrics import MeshMetrics, UncountedMetrics
from mesh.registry.records import LoadFailure, ModelRecord
from mesh.registry.store import EtcdStore, StoreError, Unchanged
from mesh.registry.view import RoutingTable

log = logging.getLogger(__name__)

PUBLISH_RETRY_FIRST_S = 0.2  # a holder record etcd did not take is written again after this, then backing off
PUBLISH_RETRY_MAX_S = 5.0


def now_ms() -> int:
    return int(time.time() * 1000)


class LoadClaimed(MeshError):
    """Another live pod holds or is loading the model: send the request there instead."""

    def __init__(self, model_id: str, holder: str) -> None:
        super().__init__(grpc.StatusCode.ABORTED, f"{model_id} is held or being loaded by {holder}")
        self.holder = holder


class ModelLoader:
    def __init__(
        self,
        pod_id: str,
        store: EtcdStore,
        table: RoutingTable,
        runtime: RuntimeClient,
        cache: ModelCache,
        load_timeout_s: float,
        failure_expiry_s: float,
        max_loading_concurrency: int = 1,
        alive: Callable[[str], bool] | None = None,
        rates: RateTracker | None = None,
        metrics: MeshMetrics | None = None,
    ) -> None:
        self.pod_id = pod_id
        self.metrics = metrics or UncountedMetrics()
        self._store = store
        self._table = table
        self.rates = rates or RateTracker(interval_s=10, window=6)  # requests served by this pod's copies
        # Whether another pod's claim on a load still counts (it has an instance record and answers).
        self._alive = alive or (lambda pod_id: pod_id in table.instances)
        self._runtime = runtime
        self.cache = cache
        self._load_timeout_s = load_timeout_s
        self._failure_expiry_ms = int(failure_expiry_s * 1000)
        self._loads: dict[str, asyncio.Future[None]] = {}  # single flight: one load per model
        self._settling: set[str] = set()  # loaded, making room for more than predicted: not yet serving
        self._inflight: Counter[str] = Counter()  # requests being served; pins against eviction
        self._unloads: dict[str, asyncio.Event] = {}  # set when the model's unload has returned
        self._unload_done = asyncio.Event()  # an unload returned: loads waiting for memory look again
        self._loading_slots = asyncio.Semaphore(max(1, max_loading_concurrency))
        self._tasks: set[asyncio.Task[object]] = set()
        self.stopping = False  # set at shutdown: no new loads here
        self.runtime_down = False  # the runtime stopped answering: its models are gone, no loads here
        self._request_done = asyncio.Event()  # a model's last request in flight finished
        self.changed = asyncio.Event()  # set when the models held change: the instance record is republished
        self.timings = LoadTimings()  # where the time of each load went (GET /mesh/loads)
        # Every load here gets the next number: a runtime's "not found" is judged for the copy it came from.
        self._generations: dict[str, int] = {}
        self._last_generation = 0
        self.copy_check = CopyCheck(runtime.model_ready)

    # -- hot path ------------------------------------------------------------------
    def is_loaded(self, model_id: str) -> bool:
        entry = self.cache.entry(model_id)
        return entry is not None and not entry.loading

    def is_loading(self, model_id: str) -> bool:
        return model_id in self._loads

    def inflight(self, model_id: str) -> int:
        return self._inflight[model_id]

    def copy_generation(self, model_id: str) -> int | None:
        """Which load of the model the copy here is (None: not loaded here); taken before a runtime call."""
        return self._generations.get(model_id)

    async def copy_lost(self, model_id: str, generation: int | None, said: str) -> bool:
        """The runtime answered "not found" (``said``) for copy ``generation`` of the model: did it lose it?

        True: it did, or that copy is gone already (dropped, evicted or replaced since); the copy is out of
        the cache and the registry when this returns, and the caller may load it again. False: the runtime
        has the model, so the answer was the request's own (a version or an input the model lacks).
        """
        if generation is None or self._generations.get(model_id) != generation:
            return True
        if not await self.copy_check.lost(model_id, generation, said):
            return False
        if self._generations.get(model_id) == generation:  # the first caller drops it; the rest find it gone
            log.warning("the runtime lost %s: dropping the copy here, to reload it", model_id)
            await self.unload(model_id, reason="lost")
        return True

    def acquire(self, model_id: str) -> None:
        self.rates.record(model_id)
        self._inflight[model_id] += 1
        self.cache.touch(model_id, now_ms())

    def record_use(self, model_id: str, count: int, last_used_ms: int) -> None:
        """Requests served by another process of this pod: they count for LRU order and rates alike."""
        if self.is_loaded(model_id):
            self.rates.record(model_id, count)
            self.cache.touch(model_id, last_used_ms, uses=count)

    def release(self, model_id: str) -> None:
        self._inflight[model_id] -= 1
        if self._inflight[model_id] <= 0:
            del self._inflight[model_id]
            self._request_done.set()

    # -- loading -------------------------------------------------------------------
    async def ensure_loaded(
        self, model_id: str, last_used_ms: int | None = None, extra_copy: bool = False
    ) -> None:
        """Return once this pod holds the model; raise MeshError if it cannot.

        Concurrent callers share one load. Cancelling a caller does not cancel the load.
        ``last_used_ms`` in the past (a backdated registration) loads the model only
        into room that models used before that time can give up. ``extra_copy`` loads
        even though other pods hold the model (scale-up by request rate).
        """
        if self.is_loaded(model_id):
            return
        pending = self._loads.get(model_id)
        if pending is None and self.stopping:
            raise MeshError(grpc.StatusCode.UNAVAILABLE, f"{self.pod_id} is shutting down")
        if self.runtime_down:
            raise MeshError(grpc.StatusCode.UNAVAILABLE, f"the runtime of {self.pod_id} is down")
        if pending is None:
            record = self._table.model(model_id)
            if record is None:
                raise MeshError(grpc.StatusCode.NOT_FOUND, f"model not found: {model_id}")
            failure = record.failures.get(self.pod_id)
            if failure is not None and now_ms() - failure.time_ms < self._failure_expiry_ms:
                raise MeshError(grpc.StatusCode[failure.code], failure.message)
            pending = asyncio.get_running_loop().create_future()
            self._loads[model_id] = pending
            self._spawn(self._load(model_id, record, last_used_ms, extra_copy, pending))
        await asyncio.shield(pending)

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(
        self,
        model_id: str,
        record: ModelRecord,
        last_used_ms: int | None,
        extra_copy: bool,
        done: asyncio.Future[None],
    ) -> None:
        try:
            await self._load_steps(model_id, record, last_used_ms, extra_copy, done)
        except MeshError as e:
            _settle(done, e)
        except Exception as e:  # never leave waiters hanging
            log.exception("load of %s failed unexpectedly", model_id)
            _settle(done, MeshError(grpc.StatusCode.INTERNAL, f"load of {model_id} failed: {e}"))
        finally:
            del self._loads[model_id]
            # cancelled: the pod is stopping
            _settle(done, MeshError(grpc.StatusCode.UNAVAILABLE, f"{self.pod_id} is stopping"))
            # An unregister that arrived while the load was finishing was skipped by on_model_changed.
            if self._table.model(model_id) is None and model_id in self.cache:
                self._spawn(self.unload(model_id, reason="unregistered"))

    async def _load_steps(
        self,
        model_id: str,
        record: ModelRecord,
        last_used_ms: int | None,
        extra_copy: bool,
        done: asyncio.Future[None],
    ) -> None:
        unloading = self._unloads.get(model_id)
        if unloading is not None:  # an eviction of this model is still running: load after it
            await unloading.wait()
        phases = LoadPhases()
        clock = time.perf_counter()
        start = now_ms()
        # The claim: a CAS that names this pod as loading, unless a live peer already holds or loads it. It
        # runs beside the size prediction and the load (neither needs it): pods that miss at once choose the
        # same target, so a lost claim is rare, and costs unloading what was loaded.
        claiming = asyncio.ensure_future(
            self._update_registry(model_id, lambda r: self._claim(model_id, r, start, extra_copy))
        )
        reserved = False
        try:
            predicted = await self._predict_size(model_id, record)
            if predicted > self.cache.capacity:
                await _quietly(claiming)  # the failure must land after the claim
                await self._fail(
                    model_id,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"model {model_id} needs {predicted} bytes, more than the capacity of {self.pod_id} "
                    f"({self.cache.capacity} bytes)",
                )
            if claiming.done():  # refused already (a peer holds it, etcd is down): no load for nothing
                await claiming
            phases.predict, clock = _lap(clock)
            # Reserve the bytes first, so concurrent loads plan their evictions around each other.
            self.cache.start_load(model_id, predicted, last_used_ms or now_ms())
            reserved = True
            loaded = asyncio.Event()  # the runtime has answered this load: deferred unloads go ahead
            phases.runtime_unload = await self._make_room(model_id, last_used_ms, unload_after=loaded)
            clock = time.perf_counter()
            try:
                async with self._loading_slots:  # the runtime's maxLoadingConcurrency
                    phases.queue, clock = _lap(clock)
                    size = await self._runtime.load(
                        model_id, record.type, record.path, record.key, timeout_s=self._load_timeout_s
                    )
                    phases.runtime_load, clock = _lap(clock)
            except grpc.aio.AioRpcError as e:
                await _quietly(claiming)
                code = load_failure_code(e.code())
                await self._fail(model_id, code, f"load of {model_id} failed on {self.pod_id}: {e.details()}")
            finally:
                loaded.set()
            if await claiming is None:
                raise MeshError(grpc.StatusCode.NOT_FOUND, f"model not found: {model_id} (unregistered)")
            phases.claim, clock = _lap(clock)
            self.cache.finish_load(model_id, size)
            if size > predicted:  # the runtime took more than predicted: others make way before it serves
                self._settling.add(model_id)
                try:
                    phases.runtime_unload += await self._make_room(model_id)
                finally:
                    self._settling.discard(model_id)
                clock = time.perf_counter()
            self._last_generation += 1
            self._generations[model_id] = self._last_generation
            self.rates.track(model_id)
            log.info("loaded %s on %s (%d bytes) in %d ms", model_id, self.pod_id, size, now_ms() - start)
            _settle(done)  # the copy serves from here: the requests need not wait for etcd to hear of it
            try:
                written = await self._publish_holder(model_id)
            except MeshError as e:
                if e.code is not grpc.StatusCode.UNAVAILABLE:
                    raise
                # etcd did not answer: the copy keeps serving (its requests were answered already), and the
                # record follows once etcd answers again
                log.warning("%s serves on %s, not yet in the registry: %s", model_id, self.pod_id, e.message)
                self._spawn(self._publish_later(model_id, self._generations.get(model_id, -1)))
            else:
                if written is None:
                    raise MeshError(grpc.StatusCode.NOT_FOUND, f"model not found: {model_id} (unregistered)")
            phases.publish, clock = _lap(clock)
            self.metrics.loaded(
                model_id,
                phases.runtime_load * 1000,
                phases.queue * 1000,
                size,
                reason="scale_up" if extra_copy else "request",
            )
        except BaseException:
            # Failed, cancelled or unregistered: give the bytes back, make sure the runtime does not keep
            # the model (a cancelled load may still complete there), and clear this pod's claim.
            await _quietly(claiming)
            if reserved:
                self._begin_unload(model_id)
                await self._unload_from_runtime(model_id)
            await self._drop_from_registry(model_id)
            raise
        self.changed.set()
        self.timings.record(phases)

    async def _publish_holder(self, model_id: str) -> ModelRecord | None:
        entry = self.cache.entry(model_id)
        size = entry.size if entry is not None and not entry.loading else 0
        return await self._update_registry(model_id, lambda r: with_holder(r, self.pod_id, now_ms(), size))

    async def _publish_later(self, model_id: str, generation: int) -> None:
        """Name this pod as a holder of copy ``generation`` once etcd answers (retried with backoff while
        the copy is here); a model unregistered meanwhile is unloaded."""
        delay = PUBLISH_RETRY_FIRST_S
        while self._generations.get(model_id) == generation and not self.stopping:
            await asyncio.sleep(delay)
            if self._generations.get(model_id) != generation:
                return
            try:
                written = await self._publish_holder(model_id)
            except MeshError as e:
                if e.code is not grpc.StatusCode.UNAVAILABLE:
                    log.warning("could not publish %s on %s: %s", model_id, self.pod_id, e.message)
                    return
                delay = min(2 * delay, PUBLISH_RETRY_MAX_S)
                continue
            if written is None and self._generations.get(model_id) == generation:
                await self.unload(model_id, reason="unregistered")
            self.changed.set()
            return

    async def _predict_size(self, model_id: str, record: ModelRecord) -> int:
        if record.size_bytes:  # predicted at registration, or measured by a load (here or on a peer)
            return record.size_bytes
        return await self.predict_size(model_id, record)  # 0: the adapter will measure it

    async def predict_size(self, model_id: str, record: ModelRecord, timeout_s: float = 5.0) -> int:
        """The runtime's prediction of the model's size, 0 when it does not answer."""
        try:
            return await self._runtime.predict_size(
                model_id, record.type, record.path, record.key, timeout_s=timeout_s
            )
        except grpc.aio.AioRpcError:
            return 0

    def _claim(self, model_id: str, record: ModelRecord, at_ms: int, extra_copy: bool) -> ModelRecord:
        for pod in () if extra_copy else (*record.holders, *record.loading):
            if pod != self.pod_id and self._alive(pod):
                raise LoadClaimed(model_id, pod)
        return _with_loading(record, self.pod_id, at_ms)

    async def _fail(self, model_id: str, code: grpc.StatusCode, message: str) -> None:
        self.metrics.load_failed()
        await self.record_failure(model_id, code, message)
        raise MeshError(code, message)

    async def record_failure(self, model_id: str, code: grpc.StatusCode, message: str) -> None:
        """Record a failed load here: the status shows it, requests get it until it expires."""
        failure = LoadFailure(time_ms=now_ms(), message=message, code=code.name)
        log.warning("%s", message)
        with contextlib.suppress(MeshError):  # etcd down: the caller still gets the load failure
            await self._update_registry(model_id, lambda r: _with_failure(r, self.pod_id, failure))

    async def _update_registry(
        self, model_id: str, mutate: Callable[[ModelRecord], ModelRecord]
    ) -> ModelRecord | None:
        """CAS-update the record if it exists; wait until this pod's view has the write."""

        def apply(current: ModelRecord | None) -> ModelRecord | None:
            if current is None:
                raise Unchanged
            return mutate(current)

        known = self._table.models.get(model_id)
        try:
            written, revision = await self._store.update_model(
                model_id, apply, (known.record, known.mod_revision) if known is not None else None
            )
            written_at = time.perf_counter()
            await self._table.wait_for_revision(revision)
            self.metrics.watch_lagged((time.perf_counter() - written_at) * 1000)
        except (StoreError, TimeoutError) as e:
            raise MeshError(grpc.StatusCode.UNAVAILABLE, f"etcd unavailable: {e}") from e
        return written

    # -- eviction and unloading ----------------------------------------------------------
    async def _make_room(
        self, for_model: str, used_before_ms: int | None = None, unload_after: asyncio.Event | None = None
    ) -> float:
        """Evict models, in the policy's order, until the models fit the capacity less the unload buffer;
        returns the seconds waited for unloads to give memory back.

        The victims leave the registry at once and the runtime in the background: the load waits only
        while the unloads under way hold more than the buffer (the runtime would hold more than its
        capacity). When it need not wait, the victims' unloads wait for ``unload_after`` (the load's end):
        the runtime does one thing at a time, and the load is what a request waits for.
        Models serving requests, loading, or (with ``used_before_ms``) used since then are kept; so is a model
        that has loaded and is making room for more than it was predicted to take (its requests still wait).
        """
        pinned = frozenset(self._inflight) | self._settling | {for_model}
        victims = self.cache.plan_eviction(0, pinned, used_before_ms)
        if victims is None:
            raise MeshError(
                grpc.StatusCode.INTERNAL,
                f"no room for {for_model} on {self.pod_id}: the models that fill it are loading, in use"
                + (" or used more recently" if used_before_ms else ""),
            )
        if victims:
            log.info("evicting %s from %s", victims, self.pod_id)
            now = now_ms()
            for victim in victims:
                entry = self.cache.entry(victim)
                idle_ms = now - entry.last_used_ms if entry is not None else 0
                self.metrics.evicted(victim, self.cache.policy.value, max(0, idle_ms))
                self.metrics.copy_dropped("evicted")
                self._begin_unload(victim)  # at once, so no concurrent plan picks it again
            after = None if self.cache.must_wait_for_unloads() else unload_after
            for victim in victims:
                self._spawn(self._evict(victim, after))
        started = time.perf_counter()
        # Unloads that fail keep their bytes (the runtime may still hold the model): the load goes ahead
        # once nothing is left to wait for, as it would have on a runtime that reported its capacity short.
        while self.cache.must_wait_for_unloads() and self._unloads:
            self._unload_done.clear()
            await self._unload_done.wait()
        return time.perf_counter() - started

    async def unload(self, model_id: str, reason: str) -> None:
        """Drop the copy here (``reason``: lost, unregistered, idle, ... for the copy-change counts). A load
        of the model under way is not a copy yet: it is left to finish (its own end handles an unregister)."""
        if self.is_loaded(model_id):
            self.metrics.copy_dropped(reason)
            self._begin_unload(model_id)
            await self._evict(model_id)

    def _begin_unload(self, model_id: str) -> None:
        """Take the model out of the cache (its bytes stay reserved); loads of it wait until it is gone."""
        self.cache.start_unload(model_id)
        self._forget_copy(model_id)
        self._unloads.setdefault(model_id, asyncio.Event())

    def _forget_copy(self, model_id: str) -> None:
        self._generations.pop(model_id, None)
        self.copy_check.forget(model_id)

    async def _evict(self, model_id: str, after: asyncio.Event | None = None) -> float:
        """Stop routing to this copy, then (once ``after`` is set) unload it; its bytes stay reserved until
        the unload returns. Returns the seconds the runtime's unload took."""
        await self._drop_from_registry(model_id)
        if after is not None:
            await after.wait()
        start = time.perf_counter()
        await self._unload_from_runtime(model_id)
        self.changed.set()
        return time.perf_counter() - start

    async def _drop_from_registry(self, model_id: str) -> None:
        try:
            await self._update_registry(model_id, lambda r: _without_pod(r, self.pod_id))
        except MeshError as e:
            log.warning("could not drop %s from the registry: %s", model_id, e.message)

    async def _unload_from_runtime(self, model_id: str) -> None:
        """Unload; a load of the same model waits for this. On failure the bytes stay reserved:
        the runtime may still hold the model, and over-committing memory is worse than idle room."""
        started = time.perf_counter()
        try:
            await self._runtime.unload(model_id)
            self.cache.finish_unload(model_id)
            self.metrics.unloaded(model_id, (time.perf_counter() - started) * 1000)
        except grpc.aio.AioRpcError as e:
            self.metrics.unload_failed()
            log.error(
                "unload of %s failed, keeping its bytes reserved: %s %s", model_id, e.code().name, e.details()
            )
        finally:
            done = self._unloads.pop(model_id, None)
            if done is not None:
                done.set()
            self._unload_done.set()

    async def unload_all(self, drain_s: float) -> None:
        """Stop serving here: leave the registry first, let requests in flight finish, then unload."""
        await asyncio.gather(*self._loads.values(), return_exceptions=True)  # loads under way finish first
        await asyncio.gather(*(e.wait() for e in list(self._unloads.values())))  # and evictions under way
        models = [m for m in self.cache.model_ids() if self.is_loaded(m)]
        for model_id in models:
            self.metrics.copy_dropped("shutdown")
            self._begin_unload(model_id)
        await asyncio.gather(*(self._drop_from_registry(m) for m in models))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_s):
                while any(self._inflight[m] for m in models):
                    self._request_done.clear()
                    await self._request_done.wait()
        await asyncio.gather(*(self._unload_from_runtime(m) for m in models))
        self.changed.set()

    async def runtime_lost(self) -> None:
        """The runtime died with every model in it: forget them here and in the registry."""
        self.runtime_down = True
        models = self.cache.model_ids()
        for model_id in models:
            self.metrics.copy_dropped("runtime_lost")
            self.cache.start_unload(model_id)
            self.cache.finish_unload(model_id)
            self._forget_copy(model_id)
            self.rates.forget(model_id)
        await asyncio.gather(*(self._drop_from_registry(m) for m in models))
        self.changed.set()

    def runtime_back(self) -> None:
        self.runtime_down = False
        self.changed.set()

    async def reassert_copies(self) -> None:
        """After a new lease (etcd was away longer than the TTL) the leader may have pruned this pod's
        copies from the registry: name this pod as a holder again of every model it still holds."""
        for model_id in [m for m in self.cache.model_ids() if self.is_loaded(m)]:
            try:
                await self._publish_holder(model_id)
            except MeshError as e:
                log.warning("could not re-announce %s: %s", model_id, e.message)

    def on_model_changed(self, model_id: str, record: ModelRecord | None) -> None:
        """Routing-table listener: an unregistered model is unloaded here."""
        if record is None and model_id in self.cache and model_id not in self._loads:
            self._spawn(self.unload(model_id, reason="unregistered"))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _settle(done: asyncio.Future[None], error: BaseException | None = None) -> None:
    """Release the load's waiters (once: later outcomes of the same load are its own)."""
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
        done.exception()  # mark retrieved: a load nobody waits for must not log "never retrieved"


async def _quietly(task: asyncio.Future[Any]) -> None:
    """Wait for a task whose outcome the caller no longer needs (a cancel of the caller still propagates)."""
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: its error is the caller's to ignore


def _lap(since: float) -> tuple[float, float]:
    """Seconds since ``since``, and now (the next phase's start)."""
    now = time.perf_counter()
    return now - since, now


# -- record mutations (pure) ---------------------------------------------------------------
def _with_loading(record: ModelRecord, pod_id: str, at_ms: int) -> ModelRecord:
    record.loading[pod_id] = at_ms
    record.holders.pop(pod_id, None)
    record.failures.pop(pod_id, None)
    return record


def with_holder(record: ModelRecord, pod_id: str, at_ms: int, size_bytes: int = 0) -> ModelRecord:
    """The record naming ``pod_id`` a holder; with ``size_bytes``, the size that pod's load measured."""
    record.loading.pop(pod_id, None)
    record.holders[pod_id] = at_ms
    if size_bytes:
        record.size_bytes = size_bytes
    return record


def _with_failure(record: ModelRecord, pod_id: str, failure: LoadFailure) -> ModelRecord:
    record.loading.pop(pod_id, None)
    record.holders.pop(pod_id, None)
    record.failures[pod_id] = failure
    return record


def _without_pod(record: ModelRecord, pod_id: str) -> ModelRecord:
    if pod_id not in record.holders and pod_id not in record.loading:
        raise Unchanged
    record.holders.pop(pod_id, None)
    record.loading.pop(pod_id, None)
    return record
