"""The retry loop around the route decision: serve here, on a holder, or on the pod that loads the model.

Protocol-free: the gRPC proxy, the REST gateway and the management API give it
two callables (serve here, serve on that pod) and turn MeshError into their
own error form. Each attempt asks ``decide`` (mesh/routing/decision.py) where to go; a pod that does
not answer, refuses a load claimed elsewhere, or fails the load is tried past, within a bounded number
of attempts. ``serve_here`` is the internal ports' loop: a peer routed the request already.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc

from mesh.errors import MeshError, Reroute
from mesh.models.local import LoadClaimed, ModelLoader, now_ms, with_holder
from mesh.observe.tracing import Tracing
from mesh.outcomes import LOAD_METHOD, Passthrough, RuntimeNotFound, peer_error
from mesh.registry.records import InstanceRecord, ModelRecord
from mesh.registry.snapshot import ModelCounts, ModelView, list_models, mesh_status, model_counts
from mesh.registry.status import IndexEntry, PoolStats, live_copies, pool_stats, repository_index
from mesh.registry.store import StoreError
from mesh.registry.view import RoutingTable
from mesh.routing.decision import CopyHere, FailurePolicy, Refuse, Route, ServeHere, decide_route
from mesh.routing.inflight import InFlightBook
from mesh.routing.peers import PeerHealth, PeerPool
from mesh.routing.target import RequestTarget, TargetKind

log = logging.getLogger(__name__)
T = TypeVar("T")


# A load here that failed with these codes may still succeed on another pod (UNAVAILABLE: etcd or the
# runtime is down here, or this pod is shutting down).
RETRY_ELSEWHERE = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE})


class NoPlacement(MeshError):
    """No live pod's runtime serves the model's type: nothing changes until an operator acts."""


class LoadHereFailed(Exception):
    """``serve_here`` could not load the model on this pod (``error``: why; a ``LoadClaimed`` names the pod
    that is loading it)."""

    def __init__(self, error: MeshError) -> None:
        super().__init__(error.message)
        self.error = error


def resolve_model_id(table: RoutingTable, target: RequestTarget) -> str:
    """The concrete model id for a request target, or NOT_FOUND.

    A vmodel resolves to its active model; a bare name is a vmodel id first, then a model id.
    """
    if target.kind is not TargetKind.MODEL:
        vmodel = table.vmodel(target.id)
        if vmodel is not None:
            return vmodel.active
        if target.kind is TargetKind.VMODEL:
            raise MeshError(grpc.StatusCode.NOT_FOUND, f"vmodel not found: {target.id}")
    if table.model(target.id) is not None:
        return target.id
    raise MeshError(grpc.StatusCode.NOT_FOUND, f"model not found: {target.id}")


class Router:
    def __init__(
        self,
        pod_id: str,
        table: RoutingTable,
        loader: ModelLoader,
        peers: PeerPool,
        health: PeerHealth,
        failure_expiry_s: float,
        max_load_failures: int,
        load_timeout_s: float = 120.0,
        max_attempts: int = 3,
        registry_revision: Callable[[], Awaitable[int]] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.tracing = tracing or Tracing.off()  # a load's span, inside the request's
        self.pod_id = pod_id
        self._table = table
        self._loader = loader
        self._peers = peers
        self._health = health
        self._failures = FailurePolicy(int(failure_expiry_s * 1000), max_load_failures)
        self.in_flight = InFlightBook()  # every request this process sends, per pod (least busy)
        self._max_attempts = max_attempts
        self._load_timeout_s = load_timeout_s
        self._registry_revision = registry_revision
        self._turn = 0
        self._unplaced: dict[str, float] = {}  # model -> when no pod could take it

    # -- resolution -------------------------------------------------------------------
    def model_id(self, target: RequestTarget) -> str:
        return resolve_model_id(self._table, target)

    async def model_id_after_miss(self, target: RequestTarget) -> str:
        """``model_id`` for a target this pod's view did not know, asked again once the view is current."""
        try:
            return self.model_id(target)
        except MeshError as miss:
            if miss.code is not grpc.StatusCode.NOT_FOUND or not await self.view_current():
                raise
            return self.model_id(target)

    async def view_current(self, timeout_s: float = 2.0) -> bool:
        """Wait until this pod's view reaches etcd's present revision; False if that cannot be had now.

        A model registered through another pod a moment ago may not have reached this pod's watch yet, so
        a miss waits (bounded) for the view before NOT_FOUND is the answer. Only misses pay the etcd read;
        with etcd down the view answers as it is.
        """
        if self._registry_revision is None:
            return False
        try:
            await self._table.wait_for_revision(await self._registry_revision(), timeout_s)
        except (StoreError, TimeoutError):
            return False
        return True

    def ready(self, target: RequestTarget) -> bool:
        """Registered and loaded on a live pod; never triggers a load."""
        try:
            record = self._table.model(self.model_id(target))
        except MeshError:
            return False
        return record is not None and bool(live_copies(record.holders, self._health.live_instances()))

    def instance(self, pod_id: str) -> InstanceRecord:
        instance = self._table.instance(pod_id)
        if instance is None:
            raise Reroute(MeshError(grpc.StatusCode.UNAVAILABLE, f"pod {pod_id} is gone"))
        return instance

    # -- the decision ------------------------------------------------------------------
    def copy_here(self, model_id: str) -> CopyHere:
        if self._loader.is_loaded(model_id):
            return CopyHere.READY
        return CopyHere.LOADING if self._loader.is_loading(model_id) else CopyHere.NONE

    def decide(
        self,
        model_id: str,
        avoid: Collection[str] = (),
        preferred: str | None = None,
        only_here: bool = False,
    ) -> Route:
        """Where this attempt at a request for ``model_id`` goes (mesh/routing/decision.py)."""
        self._turn += 1
        return decide_route(
            self.pod_id,
            model_id,
            self._table.model(model_id),
            self._health.live_instances(),
            self.copy_here(model_id),
            self.in_flight.counts,
            avoid=avoid,
            preferred=preferred,
            turn=self._turn,
            only_here=only_here,
            now_ms=now_ms(),
            failures=self._failures,
        )

    # -- serving -----------------------------------------------------------------------
    async def route(
        self,
        model_id: str,
        timeout_s: float | None,
        here: Callable[[], Awaitable[T]],
        there: Callable[[str, frozenset[str]], Awaitable[T]],
        last_used_ms: int | None = None,
    ) -> T:
        """Serve with ``here()`` on this pod (loading first if needed) or ``there(pod_id, avoid)`` on a peer.

        ``avoid`` names pods this request found unreachable: the peer must not wait for their claims either.
        ``here()`` raises RuntimeNotFound for the runtime's "not found": the copy is reloaded (once per
        request) only when the runtime really lost it; otherwise the runtime's answer is the request's.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        excluded: set[str] = set()
        unreachable: set[str] = set()
        repaired = False
        preferred: str | None = None
        error: MeshError | None = None
        for _ in range(self._max_attempts):
            route = self.decide(model_id, excluded, preferred)
            if isinstance(route, Refuse):
                if route.no_placement:  # recorded, so the model's status says why it is not loaded
                    self._unplaced[model_id] = time.monotonic()
                    self._loader.changed.set()  # republish the instance record with the count
                    await self._loader.record_failure(model_id, route.code, route.message)
                    raise NoPlacement(route.code, route.message)
                if error is not None:  # nowhere left to try: the last failure says most
                    raise error from None
                raise MeshError(route.code, route.message)
            pod = self.pod_id if isinstance(route, ServeHere) else route.pod
            preferred = None
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            generation: int | None = None
            try:
                if pod != self.pod_id:
                    with self.in_flight.sending(pod):
                        return await there(pod, frozenset(unreachable))
                await self.ensure_local(model_id, remaining, last_used_ms)
                generation = self._loader.copy_generation(model_id)
                with self.serving(model_id):
                    return await here()
            except RuntimeNotFound as suspect:
                if not await self.copy_lost(model_id, generation, suspect.said) or repaired:
                    raise suspect.answer from None  # the request's own error, or a reload did not help
                repaired = True  # the copy is dropped: load it again and try once more
                continue
            except LoadClaimed as claimed:
                preferred = claimed.holder
            except Reroute as reroute:
                error = reroute.error
                preferred = reroute.prefer
                if preferred is not None and (preferred in excluded or not self._health.alive(preferred)):
                    # redirected to a pod this one has seen fail: say so, so the next pod ignores its claim
                    unreachable.add(preferred)
                    excluded.add(preferred)
                    preferred = None
                if reroute.exclude:
                    excluded.add(pod)
                if reroute.unreachable and pod != self.pod_id:
                    self._health.unreachable(pod)
                    unreachable.add(pod)
            except MeshError as e:
                if pod != self.pod_id or e.code not in RETRY_ELSEWHERE:
                    raise
                error = e  # a load that failed here may succeed on another pod
                excluded.add(pod)
            log.info("retrying %s elsewhere: %s", model_id, error.message if error else "redirected")
        raise error or MeshError(grpc.StatusCode.UNAVAILABLE, f"no pod could serve {model_id}")

    async def serve_here(
        self,
        model_id: str,
        timeout_s: float | None,
        here: Callable[[], Awaitable[T]],
        extra_copy: bool = False,
    ) -> T:
        """A request a peer forwarded: served here, loading the model first; a copy the runtime lost is
        reloaded once. A failed load raises ``LoadHereFailed`` (the sender may try another pod); ``here()``'s
        own errors pass as they are."""
        for repaired in (False, True):
            try:
                await self.ensure_local(model_id, timeout_s, extra_copy=extra_copy)
            except MeshError as e:  # LoadClaimed included: the sender goes to the claimer
                raise LoadHereFailed(e) from e
            generation = self._loader.copy_generation(model_id)
            try:
                with self.serving(model_id):
                    return await here()
            except RuntimeNotFound as suspect:
                if repaired or not await self.copy_lost(model_id, generation, suspect.said):
                    raise suspect.answer from None  # the request's own error, or a reload did not help
        raise AssertionError("unreachable")  # the second pass returns or raises

    async def load_somewhere(self, model_id: str, last_used_ms: int | None = None) -> None:
        """Load on the pod a first request would load it on (this one or a peer); return when loaded."""

        async def here() -> None:
            return None

        async def there(pod_id: str, avoid: frozenset[str]) -> None:
            address = self.instance(pod_id).internal_address
            try:
                await self._peers.call(address, LOAD_METHOD, b"", model_id, (), self._load_timeout_s, avoid)
            except grpc.aio.AioRpcError as e:
                outcome = peer_error(e)
                if isinstance(outcome, Passthrough):
                    raise MeshError(outcome.code, outcome.details) from e
                raise outcome from e

        await self.route(model_id, None, here, there, last_used_ms)
        if self._loader.is_loaded(model_id):
            return  # the copy here serves already; its holder record follows (see local_record)
        # the loading pod has seen its own write; make sure this pod's view has too
        await self._table.wait_until(lambda: self.loaded_somewhere(model_id))

    def local_record(self, model_id: str) -> ModelRecord | None:
        """The model's record with this pod's own copy as this pod knows it: a copy that serves here is
        a holder even while the write naming it one is still on its way to etcd."""
        record = self._table.model(model_id)
        if record is None or self.pod_id in record.holders or not self._loader.is_loaded(model_id):
            return record
        return with_holder(record.copy(), self.pod_id, now_ms())

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every registered model and its state in the mesh (v2 RepositoryIndex)."""
        models = {model_id: entry.record for model_id, entry in self._table.models.items()}
        live = self._health.live_instances()
        return repository_index(models, live, now_ms(), self._failures.expiry_ms, ready_only)

    def mesh_gauges(self) -> ModelCounts | None:
        """The mesh-wide model counts while this pod is the leader (so a sum over pods counts them once)."""
        table = self._table
        if table.leader != self.pod_id:
            return None
        models = {m: e.record for m, e in table.models.items()}
        return model_counts(models, self._health.live_instances(), now_ms(), self._failures.expiry_ms)

    def mesh_status(self) -> dict[str, Any]:
        """Pods, models, vmodels, loads and failures as this pod's view has them (``GET /mesh/status``)."""
        table = self._table
        return mesh_status(
            {m: e.record for m, e in table.models.items()},
            {p: e.record for p, e in table.instances.items()},
            {v: e.record for v, e in table.vmodels.items()},
            self._health.live_instances(),
            table.leader,
            now_ms(),
            self._failures.expiry_ms,
        )

    def list_models(
        self, state: str | None = None, pod: str | None = None, limit: int | None = None
    ) -> list[ModelView]:
        """Registered models and their state, filtered (``GET /mesh/models``)."""
        models = {model_id: entry.record for model_id, entry in self._table.models.items()}
        live = self._health.live_instances()
        return list_models(models, live, now_ms(), self._failures.expiry_ms, state, pod, limit)

    def unplaced_count(self, window_s: float = 300.0) -> int:
        """Models this pod found no pod for in the last ``window_s`` (an autoscaler's signal)."""
        cutoff = time.monotonic() - window_s
        self._unplaced = {m: t for m, t in self._unplaced.items() if t >= cutoff}
        return len(self._unplaced)

    def pool_stats(self) -> dict[str, PoolStats]:
        return pool_stats(self._health.live_instances())

    async def caught_up(self, model_id: str, timeout_s: float = 2.0) -> None:
        """A peer resolved ``model_id`` already: give this pod's view a moment to see a fresh registration."""
        if self._table.model(model_id) is None:
            with contextlib.suppress(TimeoutError):
                await self._table.wait_until(lambda: self._table.model(model_id) is not None, timeout_s)

    def heard_unreachable(self, pods: Iterable[str]) -> None:
        """A peer's request found these pods unreachable: do not wait for them here either."""
        for pod in pods:
            if pod != self.pod_id:
                self._health.unreachable(pod)

    def copy_generation(self, model_id: str) -> int | None:
        """Which load of the model this pod's copy is: taken before a runtime call, for ``copy_lost``."""
        return self._loader.copy_generation(model_id)

    async def copy_lost(self, model_id: str, generation: int | None, said: str) -> bool:
        """After the runtime's "not found" (``said``) for this pod's copy: True when the runtime lost it (the
        copy is then dropped here and in the registry, so the caller may reload it), False when the runtime
        has the model and its answer goes to the client unchanged. One runtime check per copy at a time
        (mesh/models/copies.py).
        """
        return await self._loader.copy_lost(model_id, generation, said)

    def alive(self, pod_id: str) -> bool:
        return self._health.alive(pod_id)

    def loaded_somewhere(self, model_id: str) -> bool:
        record = self._table.model(model_id)
        return record is not None and bool(live_copies(record.holders, self._health.live_instances()))

    async def ensure_local(
        self,
        model_id: str,
        timeout_s: float | None,
        last_used_ms: int | None = None,
        extra_copy: bool = False,
    ) -> None:
        """Load the model here if needed, within the caller's deadline (the load itself goes on)."""
        if self._loader.is_loaded(model_id):
            return
        waited = time.perf_counter()
        try:
            with self.tracing.step("mesh.load", attributes={"mesh.model_id": model_id}):
                await asyncio.wait_for(
                    self._loader.ensure_loaded(model_id, last_used_ms, extra_copy), timeout_s
                )
            self._loader.metrics.missed(model_id, (time.perf_counter() - waited) * 1000)
        except TimeoutError:
            raise MeshError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline passed while {model_id} was loading"
            ) from None

    def record_use(self, model_id: str, count: int, last_used_ms: int) -> None:
        """Requests another serving process of this pod answered from the runtime."""
        self._loader.record_use(model_id, count, last_used_ms)

    def acquire(self, model_id: str, pod_id: str) -> None:
        """A request in flight to ``pod_id``: in the book; served here, the model is not evicted under it."""
        self.in_flight.started(pod_id)
        if pod_id == self.pod_id:
            self._loader.acquire(model_id)

    def release(self, model_id: str, pod_id: str) -> None:
        self.in_flight.finished(pod_id)
        if pod_id == self.pod_id:
            self._loader.release(model_id)

    @contextmanager
    def serving(self, model_id: str) -> Iterator[None]:
        """Serving ``model_id`` here: in the book, and pinned against eviction until done."""
        self.acquire(model_id, self.pod_id)
        try:
            yield
        finally:
            self.release(model_id, self.pod_id)
