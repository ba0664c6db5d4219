"""A mesh pod process: wires the store, routing table, loader and gRPC services together.

Start-up: catch up with etcd, wait for the runtime adapter (READY = leftovers
purged), forget any copies an earlier process of this pod left in the
registry, serve, then announce the instance on a lease. SIGTERM/SIGINT stop it
cleanly: stop serving, unload, drop its copies from the registry, revoke the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mesh.cluster.leader import LeaderTasks
from mesh.cluster.management import ModelMeshServicer
from mesh.cluster.scaler import CopyScaler
from mesh.cluster.transitions import Transitions
from mesh.fronts.grpc_proxy import CountedRequests, InferenceProxy, MethodTable, PeerHandler
from mesh.fronts.h2.client import FrontLimits
from mesh.fronts.h2.front import H2Front
from mesh.fronts.metrics_port import MetricsPort
from mesh.fronts.rest import RestGateway
from mesh.fronts.server_limits import RestLimits, grpc_server_options
from mesh.models.cache import EvictionPolicy, ModelCache, default_unload_buffer
from mesh.models.local import ModelLoader
from mesh.models.rates import RateTracker
from mesh.models.runtime_client import RuntimeClient
from mesh.models.runtime_watch import RuntimeWatch
from mesh.observe.export import Exposition, InstanceGauges, MeshCollector
from mesh.observe.metrics import metrics_for
from mesh.process import busy_poll
from mesh.process.entry import freeze_startup_heap, run_until_signalled, tracing_for
from mesh.process.security import PodTls
from mesh.process.serving_worker import (
    DELEGATE_ENV,
    METHODS_ENV,
    PARENT_ENV,
    REFLECTED_SERVICES,
    SERVED_SERVICES,
    delegate_address,
    encode_methods,
    relay_path,
    worker_command,
)
from mesh.process.settings import Settings, parse_settings, settings_argv
from mesh.registry.records import InstanceRecord, ModelRecord
from mesh.registry.store import EtcdStore, Unchanged
from mesh.registry.view import RoutingTable
from mesh.routing.peers import PeerHealth, PeerPool
from mesh.routing.router import Router
from mesh.status_page import EventLimits
from mesh.tls import TlsError

log = logging.getLogger("mesh.process.pod")
SERVER_NAME = "modelmesh-py"
RATE_WINDOW = 6  # intervals in a request rate (10 s intervals: one minute)
VERSION = "0.1.0"


def instance_record(settings: Settings, loader: ModelLoader, router: Router, start_ms: int) -> InstanceRecord:
    cache = loader.cache
    return InstanceRecord(
        address=settings.advertised(settings.grpc_port),
        internal_address=settings.advertised(settings.internal_port),
        internal_rest_address=settings.advertised(settings.internal_rest_port) if settings.rest_port else "",
        pool=settings.pool,
        runtime_types=settings.model_types,
        labels=settings.labels,
        capacity_bytes=cache.capacity,
        used_bytes=cache.taken,
        model_count=len(cache),
        oldest_lru_ms=cache.oldest_last_used_ms() or 0,
        requests_per_min=round(loader.rates.total_per_minute()),
        shutting_down=loader.stopping,
        runtime_ready=not loader.runtime_down,
        unplaced_models=router.unplaced_count(),
        start_ms=start_ms,
    )


def instance_gauges(cache: ModelCache) -> InstanceGauges:
    """ModelMesh's ``modelmesh_instance_*`` figures, read at scrape time."""
    return InstanceGauges(
        capacity_bytes=cache.capacity,
        used_bytes=cache.taken,
        model_count=len(cache),
        lru_ms=cache.oldest_last_used_ms() or 0,
        now_ms=int(time.time() * 1000),
    )


def grpc_server(settings: Settings, *, public: bool, reuse_port: bool = False) -> grpc.aio.Server:
    """public: a port clients or peers connect to; else a unix socket behind the front (server_limits)."""
    return grpc.aio.server(options=grpc_server_options(settings, public=public, reuse_port=reuse_port))


def start_serving_processes(
    settings: Settings, methods: str, count: int | None = None
) -> list[subprocess.Popen[bytes]]:
    """The pod's extra serving processes (serving_worker.py), on its own port; PIDs kept to stop them."""
    env = {
        **os.environ,
        DELEGATE_ENV: delegate_address(settings),
        METHODS_ENV: methods,
        PARENT_ENV: str(os.getpid()),
    }
    return [
        subprocess.Popen([*worker_command(), *settings_argv(settings)], env=env, stdin=subprocess.DEVNULL)
        for _ in range(settings.serving_processes - 1 if count is None else count)
    ]


async def keep_serving_processes(
    settings: Settings, methods: str, workers: list[subprocess.Popen[bytes]]
) -> None:
    """A serving process that exits while the pod runs is replaced (its port share would go unserved)."""
    while True:
        await asyncio.sleep(1.0)
        for index, worker in enumerate(workers):
            if worker.poll() is not None:
                log.error("serving process %d exited (%s): starting another", worker.pid, worker.returncode)
                workers[index] = start_serving_processes(settings, methods, count=1)[0]


async def stop_serving_processes(workers: list[subprocess.Popen[bytes]], timeout_s: float = 10.0) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        try:
            await asyncio.to_thread(worker.wait, timeout_s)
        except subprocess.TimeoutExpired:
            worker.kill()
            await asyncio.to_thread(worker.wait)


async def _forget_stale_copies(store: EtcdStore, table: RoutingTable, pod_id: str) -> None:
    """The adapter purged the runtime, so any copy the registry still names on this pod is gone."""

    def drop(record: ModelRecord | None) -> ModelRecord | None:
        if record is None or (pod_id not in record.holders and pod_id not in record.loading):
            raise Unchanged
        record.holders.pop(pod_id, None)
        record.loading.pop(pod_id, None)
        return record

    for model_id, entry in list(table.models.items()):
        if pod_id in entry.record.holders or pod_id in entry.record.loading:
            await store.update_model(model_id, drop)


async def run_pod(settings: Settings, stop: asyncio.Event) -> None:
    start_ms = int(time.time() * 1000)
    store = EtcdStore(
        settings.etcd_connection, settings.etcd_prefix, reload_interval_s=settings.tls_reload_interval_s
    )
    table = RoutingTable()
    synced = asyncio.Event()
    watch = asyncio.create_task(store.run_watch(table, synced))
    metrics = metrics_for(settings.metrics_config)  # the one this process counts into
    tracing = tracing_for(settings)
    tls = PodTls.from_settings(settings)
    runtime = RuntimeClient(
        settings.runtime_spi, settings.runtime_serving, settings.max_message_bytes, metrics=metrics
    )
    try:
        await asyncio.wait_for(synced.wait(), timeout=30)
        status = await runtime.wait_ready(settings.runtime_ready_timeout_s)
        await _forget_stale_copies(store, table, settings.pod_id)
        unload_buffer = settings.unload_buffer_bytes
        if unload_buffer < 0:
            unload_buffer = default_unload_buffer(
                status.capacityInBytes, status.maxLoadingConcurrency, status.defaultModelSizeInBytes
            )
        cache = ModelCache(
            status.capacityInBytes,
            EvictionPolicy(settings.eviction_policy),
            unload_buffer_bytes=unload_buffer,
        )
        load_timeout_s = status.modelLoadingTimeoutMs / 1000 or settings.load_timeout_s
        peer_health = PeerHealth(table, suspect_s=settings.lease_ttl_s)
        loader = ModelLoader(
            settings.pod_id,
            store,
            table,
            runtime,
            cache,
            load_timeout_s,
            settings.load_failure_expiry_s,
            max_loading_concurrency=status.maxLoadingConcurrency,
            alive=peer_health.alive,
            rates=RateTracker(settings.rate_interval_s, window=RATE_WINDOW),
            metrics=metrics,
        )
        table.model_listeners.append(loader.on_model_changed)
        method_infos = {"/" + m: list(info.idInjectionPath) for m, info in status.methodInfos.items()}
        methods = MethodTable(method_infos, status.allowAnyMethod, status.runtimeVersion)
        peers = PeerPool(settings.max_message_bytes, tls.to_peers_grpc)
        router = Router(
            settings.pod_id,
            table,
            loader,
            peers,
            peer_health,
            settings.load_failure_expiry_s,
            settings.max_load_failures,
            load_timeout_s=load_timeout_s + 10,  # the adapter's own timeout fires first
            registry_revision=store.current_revision,
            tracing=tracing,
        )

        # --front=h2: both gRPC ports are served by the HTTP/2 front, grpc.aio behind each on a unix socket
        front = internal_front = None
        internal_relay = relay_path(settings, settings.internal_port)
        if settings.front == "h2":
            limits = FrontLimits.from_settings(settings)
            front = H2Front(
                router,
                methods,
                settings.runtime_serving,
                relay_path(settings),
                settings.max_message_bytes,
                limits=limits,
                metrics=metrics,
                requests=settings.request_log(),
                tracing=tracing,
                peer_ssl=PodTls.ssl_of(tls.to_peers_h2),
            )
            internal_front = H2Front(
                router,
                methods,
                settings.runtime_serving,
                internal_relay,
                settings.max_message_bytes,
                internal=True,
                limits=limits,
                metrics=metrics,
                tracing=tracing,
            )
        gateway = RestGateway(
            router,
            settings.runtime_rest,
            SERVER_NAME,
            VERSION,
            settings.max_message_bytes,
            front_counts=(lambda: front_counts(front, internal_front)) if front is not None else None,
            load_timings=loader.timings.summary,
            limits=RestLimits.from_settings(settings),
            status_limits=EventLimits.from_settings(settings),
            metrics=metrics,
            requests=settings.request_log(),
        )
        # The external port (--front=grpc) takes clients: the client limits. The unix socket behind the
        # front and the workers takes their few connections, which carry every stream they relay.
        servers: list[grpc.aio.Server] = []
        external = None
        if front is None:
            external = grpc_server(settings, public=True, reuse_port=settings.serving_processes > 1)
            tls.add_port(external, settings.address, internal=False)
            servers.append(external)
        if settings.serving_processes > 1 or front is not None:  # they relay what they do not serve
            relay = grpc_server(settings, public=False)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(relay_path(settings))
            relay.add_insecure_port(delegate_address(settings))
            servers.append(relay)
        transitions = Transitions(store, table, router)
        expiry_s = settings.load_failure_expiry_s
        servicer = ModelMeshServicer(store, table, router, transitions, expiry_s, loader.predict_size)
        health_servicer = health.aio.HealthServicer()
        proxy = InferenceProxy(
            router, peers, runtime, methods, SERVER_NAME, VERSION, settings.request_log(), tracing
        )
        for server in servers:
            servicer.add_to_server(server)
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            reflection.enable_server_reflection(REFLECTED_SERVICES, server)
            # grpc.aio is the edge only on the external port; behind the front, the front counts
            server.add_generic_rpc_handlers(
                (CountedRequests(proxy, metrics) if server is external else proxy,)
            )
        # Peers reach this pod on a port of its own: what arrives there is served here, never forwarded.
        internal = grpc_server(settings, public=internal_front is None)
        internal.add_generic_rpc_handlers((PeerHandler(router, runtime, methods),))
        if internal_front is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(internal_relay)
            internal.add_insecure_port("unix:" + internal_relay)
        else:
            tls.add_port(internal, f"{settings.host}:{settings.internal_port}", internal=True)
        await internal.start()
        for server in servers:
            await server.start()
        if front is not None and internal_front is not None:
            await front.start(
                settings.host,
                settings.grpc_port,
                reuse_port=settings.serving_processes > 1,
                tls=PodTls.ssl_of(tls.front),
            )
            await internal_front.start(
                settings.host, settings.internal_port, tls=PodTls.ssl_of(tls.internal_front)
            )
        if settings.rest_port:
            await gateway.start(
                settings.host,
                settings.rest_port,
                settings.internal_rest_port,
                tls=PodTls.ssl_of(tls.rest),
                internal_tls=PodTls.ssl_of(tls.internal_rest),
                to_peers_tls=PodTls.ssl_of(tls.to_peers_rest),
            )
        metrics_port = None
        if settings.metrics_config.enabled:
            metrics_port = MetricsPort(
                Exposition(MeshCollector(metrics, lambda: instance_gauges(cache), router.mesh_gauges)),
                RestLimits.from_settings(settings),
            )
            await metrics_port.start(settings.host, settings.metrics_config.port, tls=PodTls.ssl_of(tls.rest))
        reloading = asyncio.create_task(tls.keep_reloading(settings.tls_reload_interval_s))
        for service in ("", *SERVED_SERVICES):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)

        def record() -> InstanceRecord:
            return instance_record(settings, loader, router, start_ms)

        await store.register_instance(settings.pod_id, record(), settings.lease_ttl_s)
        worker_methods = encode_methods(method_infos, status.allowAnyMethod, status.runtimeVersion)
        workers = start_serving_processes(settings, worker_methods)
        keeping = asyncio.create_task(keep_serving_processes(settings, worker_methods, workers))
        scaler = CopyScaler(
            settings.pod_id, table, loader, loader.rates, peers, peer_health, settings.scaleup_rpm_threshold
        )
        scaling = asyncio.create_task(scaler.run())
        watching = asyncio.create_task(RuntimeWatch(runtime, loader).run())
        leader = asyncio.create_task(
            LeaderTasks(settings.pod_id, store, table, transitions, interval_s=settings.lease_ttl_s / 2).run()
        )
        keep_alive = asyncio.create_task(
            store.keep_alive(
                settings.pod_id, record, settings.lease_ttl_s, loader.changed, loader.reassert_copies
            )
        )
        log.info(
            "mesh pod %s serving on %s (capacity %d bytes, %d of them kept for unloads)",
            settings.pod_id,
            settings.address,
            cache.capacity,
            cache.unload_buffer,
        )
        rest = f", REST on {settings.host}:{settings.rest_port}" if settings.rest_port else ""
        print(f"mesh pod {settings.pod_id} serving on {settings.address}{rest}", file=sys.stderr, flush=True)
        freeze_startup_heap()

        await stop.wait()
        log.info("stopping %s: handing its models over", settings.pod_id)
        keeping.cancel()
        await asyncio.gather(keeping, return_exceptions=True)
        await stop_serving_processes(workers)
        # No new loads here, and peers stop placing models here once they see shutting_down.
        loader.stopping = True
        loader.changed.set()
        with contextlib.suppress(TimeoutError):
            await table.wait_until(lambda: bool((me := table.instance(settings.pod_id)) and me.shutting_down))
        await scaler.hand_over(timeout_s=load_timeout_s)
        await loader.unload_all(drain_s=5)
        await health_servicer.enter_graceful_shutdown()
        await gateway.stop()
        if metrics_port is not None:
            await metrics_port.stop()
        for serving_front in (front, internal_front):
            if serving_front is not None:
                await serving_front.stop(grace_s=5)
        for server in servers:
            await server.stop(grace=5)
        await internal.stop(grace=5)
        for task in (keep_alive, scaling, leader, watching, reloading):
            task.cancel()
        await asyncio.gather(keep_alive, scaling, leader, watching, reloading, return_exceptions=True)
        await transitions.close()
        await loader.close()
        await peers.close()
        await store.revoke_lease()
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        await runtime.close()
        await store.close()
        tracing.shutdown()


def front_counts(front: H2Front | None, internal: H2Front | None) -> dict[str, int]:
    """Streams per path on both ports, and the main process's busy polls (/mesh/front)."""
    counts = dict(front.counts) if front is not None else {}
    if internal is not None:
        counts.update({f"internal_{k}": v for k, v in internal.counts.items() if k != "fast_to_peer"})
    counts["busy_poll_spun"] = busy_poll.PROCESS_COUNTS.spun
    counts["busy_poll_caught"] = busy_poll.PROCESS_COUNTS.caught
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_settings(argv)
    try:
        run_until_signalled(settings, lambda stop: run_pod(settings, stop))
    except TlsError as e:  # a certificate that cannot be read or used: say which, no traceback
        sys.exit(f"modelmesh-pod: {e}")


if __name__ == "__main__":
    main()
