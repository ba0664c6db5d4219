"""Extra serving processes of one pod: more cores for the hot path (``--serving-processes N``).

One Python process tops out near 1-2k requests/s. The pod's
main process owns everything stateful (the cache, loads, the instance record,
leader tasks); N-1 workers share its external port through SO_REUSEPORT and
serve only the common cases themselves: a model this pod holds, sent straight
to the runtime as raw bytes, or one another pod holds, sent straight to that
pod's internal port. Everything else — a model not loaded anywhere, the
management API, a copy the runtime lost, an error that needs a decision — is
relayed as raw bytes to the main process over a unix socket, where the full
routing happens.

A worker learns the holders from its own etcd watch, and reports its hits to
the main process every second so that eviction order and request rates count
every process's traffic. Its requests in flight are not pinned in the main
process's cache: an eviction under one makes the runtime answer NOT_FOUND, and
the worker relays the request to the main process. Every runtime "not found" is
relayed so: the main process alone asks the runtime whether it lost the model
(mesh/models/copies.py), and reloads it or passes the runtime's answer on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mesh.errors import BadRequest, MeshError, Reroute
from mesh.fronts.grpc_proxy import (
    STREAMING_METHODS,
    V2_SERVICE,
    Behavior,
    CountedRequests,
    HandlerCache,
    MethodTable,
    StreamBehavior,
    call_runtime,
    forwarded_metadata,
    message_size_options,
)
from mesh.fronts.h2.client import FrontLimits
from mesh.fronts.h2.front import H2Front
from mesh.fronts.server_limits import grpc_server_options
from mesh.fronts.streams import relay_stream
from mesh.models.runtime_client import RuntimeClient
from mesh.models.worker_usage import METRICS_METHOD, USAGE_METHOD, UsageLog
from mesh.observe.logs import RequestLog
from mesh.observe.metrics import MeshMetrics, metrics_for
from mesh.outcomes import Passthrough, RuntimeNotFound, abort, grpc_status, peer_error
from mesh.process.entry import freeze_startup_heap, run_until_signalled, tracing_for
from mesh.process.security import PodTls
from mesh.process.settings import Settings, parse_settings
from mesh.registry.records import InstanceRecord
from mesh.registry.store import EtcdStore
from mesh.registry.view import RoutingTable
from mesh.routing.decision import CopyHere, ForwardTo, Route, ServeHere, decide_route
from mesh.routing.inflight import InFlightBook
from mesh.routing.peers import PeerHealth, PeerPool
from mesh.routing.router import resolve_model_id
from mesh.routing.target import RequestTarget, TargetError, request_target
from protos import model_mesh_pb2

log = logging.getLogger("mesh.worker")

# Environment of a worker: the main process's unix socket, and the runtime's method table (JSON).
DELEGATE_ENV = "MM_WORKER_DELEGATE"
METHODS_ENV = "MM_WORKER_METHODS"
PARENT_ENV = "MM_WORKER_PARENT"  # the main process's pid
REPORT_INTERVAL_S = 1.0
# What the main process answers itself, never the runtime: its own services, and the server-level v2 calls.
MESH_SERVICES = ("/mmesh.", "/grpc.")
MESH_ANSWERED = frozenset(
    V2_SERVICE + m for m in ("ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "RepositoryIndex")
)
MESH_SERVICE = model_mesh_pb2.DESCRIPTOR.services_by_name["ModelMesh"].full_name
INFERENCE_SERVICE = V2_SERVICE.strip("/")
SERVED_SERVICES = (MESH_SERVICE, INFERENCE_SERVICE)  # what health checks and reflection name, with their own
REFLECTED_SERVICES = (*SERVED_SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME)


def main_host(host: str) -> str:
    """Where a serving process reaches its main process: the bound address, loopback for a wildcard (a pod
    certificate names 127.0.0.1, never 0.0.0.0)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def relay_path(settings: Settings, port: int | None = None) -> str:
    """The unix socket the main process serves a port's gRPC on (default: the external one).

    The external one is for its workers and its h2 front; the internal one for the internal port's front.
    """
    return f"/tmp/modelmesh-{settings.pod_id}-{port or settings.grpc_port}.sock"


def delegate_address(settings: Settings) -> str:
    return "unix:" + relay_path(settings)


def encode_methods(method_infos: dict[str, list[int]], allow_any: bool, runtime: str = "") -> str:
    return json.dumps({"infos": method_infos, "allow_any": allow_any, "runtime": runtime})


def decode_methods(raw: str) -> MethodTable:
    data = json.loads(raw)
    infos = {k: list(v) for k, v in data["infos"].items()}
    return MethodTable(infos, bool(data["allow_any"]), str(data.get("runtime", "")))


class WorkerProxy(grpc.GenericRpcHandler):
    def __init__(
        self,
        routing: WorkerRouting,
        runtime: RuntimeClient,
        methods: MethodTable,
        delegate: grpc.aio.Channel,
        peers: PeerPool,
        requests: RequestLog | None = None,
    ) -> None:
        self._routing = routing
        self._requests = requests or RequestLog(
            routing.pod_id
        )  # what it serves; the main process logs the rest
        self._runtime = runtime
        self._methods = methods
        self._delegate = delegate
        self._handlers = HandlerCache()
        self._peers = peers

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        return self._handlers.get(method, lambda: self._handler(method))

    def _handler(self, method: str) -> grpc.RpcMethodHandler:
        """Unary inference methods are served here when they can be; anything else goes to the main process
        (streams as streams)."""
        if method in STREAMING_METHODS:
            return grpc.stream_stream_rpc_method_handler(self._relay_stream(method))
        runtime_method = not method.startswith(MESH_SERVICES) and method not in MESH_ANSWERED
        if runtime_method and self._methods.refusal(method) is None:
            return grpc.unary_unary_rpc_method_handler(self._serve(method))
        return grpc.unary_unary_rpc_method_handler(self._relay(method))

    def _relay_stream(self, method: str) -> StreamBehavior:
        relay = self._delegate.stream_stream(method)

        async def relay_call(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            call = relay(timeout=context.time_remaining(), metadata=context.invocation_metadata())
            try:
                async for answer in relay_stream(call, requests):
                    yield answer
            except grpc.aio.AioRpcError as e:  # the main process's answer, as it came
                await context.abort(
                    e.code(), e.details() or "", trailing_metadata=e.trailing_metadata() or ()
                )

        return relay_call

    def _relay(self, method: str) -> Behavior:
        relay = self._delegate.unary_unary(method)

        async def relay_call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self._relayed(relay, request, context)

        return relay_call

    async def _relayed(
        self, relay: grpc.aio.UnaryUnaryMultiCallable, request: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        try:
            response: bytes = await relay(
                request, timeout=context.time_remaining(), metadata=context.invocation_metadata()
            )
            return response
        except grpc.aio.AioRpcError as e:
            await context.abort(e.code(), e.details() or "", trailing_metadata=e.trailing_metadata() or ())
            raise AssertionError("unreachable") from None

    def _serve(self, method: str) -> Behavior:
        id_path = self._methods.id_path(method)
        relay = self._delegate.unary_unary(method)

        async def serve(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = context.invocation_metadata() or ()
            try:
                model_id = self._routing.model_id(request_target(metadata, request))
            except (TargetError, MeshError):
                return await self._relayed(relay, request, context)  # the main process words the error
            route = self._routing.decide(model_id)
            if isinstance(route, ForwardTo):
                return await self._to_holder(method, relay, request, model_id, route.pod, context)
            if not isinstance(route, ServeHere):  # a load, or an error: the main process's
                return await self._relayed(relay, request, context)
            started = time.monotonic()
            try:
                with self._routing.sending(model_id, self._routing.pod_id):
                    answer = await call_runtime(
                        self._runtime,
                        method,
                        id_path,
                        request,
                        model_id,
                        forwarded_metadata(metadata),
                        context.time_remaining(),
                    )
            except (RuntimeNotFound, Reroute):  # lost copy or bad request; runtime down: main decides
                return await self._relayed(relay, request, context)
            except (BadRequest, Passthrough) as e:
                self._served(method, model_id, self._routing.pod_id, e, started, metadata)
                await abort(context, e)
                raise AssertionError("unreachable") from None
            self._served(method, model_id, self._routing.pod_id, None, started, metadata)
            return answer

        return serve

    async def _to_holder(
        self,
        method: str,
        relay: grpc.aio.UnaryUnaryMultiCallable,
        request: bytes,
        model_id: str,
        pod: str,
        context: grpc.aio.ServicerContext,
    ) -> bytes:
        """Straight to the pod holding the model (one hop, as the main process would); else relay."""
        metadata = context.invocation_metadata() or ()
        started = time.monotonic()
        try:
            with self._routing.sending(model_id, pod):
                answer: bytes = await self._peers.call(
                    self._routing.instance(pod).internal_address,
                    method,
                    request,
                    model_id,
                    forwarded_metadata(metadata),
                    context.time_remaining(),
                )
            self._served(method, model_id, pod, None, started, metadata)
            return answer
        except MeshError:  # the pod's instance record went away meanwhile
            return await self._relayed(relay, request, context)
        except grpc.aio.AioRpcError as e:
            outcome = peer_error(e)
            if isinstance(outcome, Passthrough):  # the model's own answer: final
                self._served(method, model_id, pod, outcome, started, metadata)
                await abort(context, outcome)
                raise AssertionError("unreachable") from None
            if isinstance(outcome, Reroute) and outcome.unreachable:
                self._routing.health.unreachable(pod)  # not tried again until its lease would have run out
            return await self._relayed(relay, request, context)  # the main process retries elsewhere

    def _served(
        self,
        method: str,
        model_id: str,
        pod: str,
        error: Exception | None,
        started: float,
        metadata: Sequence[tuple[str, str | bytes]],
    ) -> None:
        status = grpc_status(error)[0].value[0] if error is not None else 0
        self._requests.served(method, model_id, pod, status, (time.monotonic() - started) * 1000, metadata)


class WorkerRouting:
    """The routing of a serving process: this process's view of etcd, its own in-flight book, hits reported
    to the main process. Used by both of its fronts (the HTTP/2 front and ``WorkerProxy``).

    A ready copy here is one the registry names this pod for; a copy the runtime lost answers NOT_FOUND and
    the request is replayed through the main process, which asks the runtime.
    """

    def __init__(self, pod_id: str, table: RoutingTable, usage: UsageLog, health: PeerHealth) -> None:
        self.pod_id = pod_id
        self._table = table
        self._usage = usage
        self.health = health
        self.in_flight = InFlightBook()
        self._turn = 0

    def model_id(self, target: RequestTarget) -> str:
        return resolve_model_id(self._table, target)

    def decide(self, model_id: str, *, only_here: bool = False) -> Route:
        """The decision (mesh/routing/decision.py); this process acts on ServeHere and ForwardTo only."""
        record = self._table.model(model_id)
        here = CopyHere.READY if record is not None and self.pod_id in record.holders else CopyHere.NONE
        self._turn += 1
        return decide_route(
            self.pod_id,
            model_id,
            record,
            self.health.live_instances(),
            here,
            self.in_flight.counts,
            turn=self._turn,
            only_here=only_here,
        )

    def instance(self, pod_id: str) -> InstanceRecord:
        versioned = self._table.instances.get(pod_id)
        if versioned is None:
            raise MeshError(grpc.StatusCode.UNAVAILABLE, f"pod {pod_id} is gone")
        return versioned.record

    def acquire(self, model_id: str, pod_id: str) -> None:
        """In the book; served here, a hit for the main process (its cache does not pin this process's
        requests: see the module docstring)."""
        self.in_flight.started(pod_id)
        if pod_id == self.pod_id:
            self._usage.hit(model_id, int(time.time() * 1000))

    def release(self, model_id: str, pod_id: str) -> None:
        self.in_flight.finished(pod_id)

    @contextlib.contextmanager
    def sending(self, model_id: str, pod_id: str) -> Iterator[None]:
        self.acquire(model_id, pod_id)
        try:
            yield
        finally:
            self.release(model_id, pod_id)


async def report_usage(
    usage: UsageLog,
    metrics: MeshMetrics,
    internal_address: str,
    stop: asyncio.Event,
    peers: PeerPool,
) -> None:
    """Every second, and once more when stopping: the hits and the metrics since the last report (to the
    main process's internal port, on the peers' channel to it: with TLS, as a pod with its certificate)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), REPORT_INTERVAL_S)
        reports = [(USAGE_METHOD, usage.drain())] if usage.counts else []
        counted = metrics.drain()
        if counted:
            reports.append((METRICS_METHOD, json.dumps(counted).encode()))
        for method, report in reports:
            try:
                await peers.channel(internal_address).unary_unary(method)(report, timeout=5)
            except grpc.aio.AioRpcError as e:
                log.warning("report to the main process not delivered: %s", e.code().name)


async def _stop_when_orphaned(parent: int, stop: asyncio.Event) -> None:
    """A worker must not outlive its main process (SIGKILLed, it cannot stop its workers)."""
    while not stop.is_set():
        if os.getppid() != parent:
            log.error("the pod's main process is gone: stopping")
            stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def start_grpc_worker(
    settings: Settings,
    routing: WorkerRouting,
    runtime: RuntimeClient,
    methods: MethodTable,
    delegate: grpc.aio.Channel,
    peers: PeerPool,
    tls: PodTls,
) -> Callable[[], Awaitable[None]]:
    """--front=grpc: the worker's own grpc.aio server on the pod's port; returns how to stop it."""
    server = grpc.aio.server(options=grpc_server_options(settings, public=True, reuse_port=True))
    health_checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_checks, server)
    reflection.enable_server_reflection(REFLECTED_SERVICES, server)  # answered here, not relayed
    proxy = WorkerProxy(routing, runtime, methods, delegate, peers, settings.request_log())
    server.add_generic_rpc_handlers((CountedRequests(proxy, runtime.metrics),))
    tls.add_port(server, settings.address, internal=False)
    await server.start()
    for service in ("", *SERVED_SERVICES):  # as the main process
        await health_checks.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop() -> None:
        await health_checks.enter_graceful_shutdown()
        await server.stop(grace=5)

    return stop


async def run_worker(
    settings: Settings, delegate: str, methods: MethodTable, parent: int, stop: asyncio.Event
) -> None:
    orphaned = asyncio.create_task(_stop_when_orphaned(parent, stop))
    store = EtcdStore(
        settings.etcd_connection, settings.etcd_prefix, reload_interval_s=settings.tls_reload_interval_s
    )
    table = RoutingTable()
    synced = asyncio.Event()
    watch = asyncio.create_task(store.run_watch(table, synced))
    metrics = metrics_for(settings.metrics_config)  # shipped to the main process, which exports the sum
    tracing = tracing_for(settings)
    tls = PodTls.from_settings(settings)
    runtime = RuntimeClient(
        settings.runtime_spi, settings.runtime_serving, settings.max_message_bytes, metrics=metrics
    )
    delegate_channel = grpc.aio.insecure_channel(
        delegate, options=message_size_options(settings.max_message_bytes)
    )
    usage = UsageLog()
    peers = PeerPool(settings.max_message_bytes, tls.to_peers_grpc)
    try:
        await asyncio.wait_for(synced.wait(), timeout=30)
        routing = WorkerRouting(
            settings.pod_id, table, usage, PeerHealth(table, suspect_s=settings.lease_ttl_s)
        )
        stop_serving: Callable[[], Awaitable[None]]
        if settings.front == "h2":  # the main process's front, over this worker's view; relays to main
            front = H2Front(
                routing,
                methods,
                settings.runtime_serving,
                delegate.removeprefix("unix:"),
                settings.max_message_bytes,
                limits=FrontLimits.from_settings(settings),
                metrics=metrics,
                requests=settings.request_log(),
                tracing=tracing,
                peer_ssl=PodTls.ssl_of(tls.to_peers_h2),
            )
            await front.start(
                settings.host, settings.grpc_port, reuse_port=True, tls=PodTls.ssl_of(tls.front)
            )
            stop_serving = functools.partial(front.stop, 5.0)
        else:
            stop_serving = await start_grpc_worker(
                settings, routing, runtime, methods, delegate_channel, peers, tls
            )
        reloading = asyncio.create_task(tls.keep_reloading(settings.tls_reload_interval_s))
        reporting = asyncio.create_task(
            report_usage(
                usage,
                metrics,
                f"{main_host(settings.host)}:{settings.internal_port}",
                stop,
                peers,
            )
        )
        log.info("serving process %d of pod %s on %s", os.getpid(), settings.pod_id, settings.address)
        freeze_startup_heap()
        await stop.wait()
        reloading.cancel()
        await stop_serving()
        await reporting
    finally:
        for task in (watch, orphaned):
            task.cancel()
        await asyncio.gather(watch, orphaned, return_exceptions=True)
        await delegate_channel.close()
        await peers.close()
        await runtime.close()
        await store.close()
        tracing.shutdown()


def worker_command() -> list[str]:
    return [sys.executable, "-m", "mesh.process.serving_worker"]


def main(argv: Sequence[str] | None = None) -> None:
    """A worker takes the pod's own flags; the main process adds the delegate and methods to its env."""
    settings = parse_settings(argv)
    delegate = os.environ[DELEGATE_ENV]
    methods = decode_methods(os.environ[METHODS_ENV])
    parent = int(os.environ[PARENT_ENV])
    run_until_signalled(settings, lambda stop: run_worker(settings, delegate, methods, parent, stop))


if __name__ == "__main__":
    main()
