"""The adapter's two listeners and their limits: the ModelRuntime SPI port (grpc.aio) and ``/metrics``.

Both bind 127.0.0.1 unless told otherwise: their client is the adapter's own pod (and a scraper). They are
still built for any client, each limit a flag (``add_listener_arguments``):

======================  ===============================  ==================================================
flag (env)              default                          SPI port (grpc core channel argument)
======================  ===============================  ==================================================
--max-concurrent-       100                              grpc.max_concurrent_streams (advertised; a stream
streams                                                  past it is refused with RST_STREAM REFUSED_STREAM)
--max-connections       64                               grpc.max_allowed_incoming_connections (closed as
                                                         accepted); /metrics: connections at once (503)
--max-header-list-      16384                            grpc.max_metadata_size and
bytes                                                    grpc.absolute_max_metadata_size (equal: exact)
--max-message-bytes     4 MiB                            grpc.max_receive/send_message_length
                                                         (RESOURCE_EXHAUSTED past it)
--handshake-timeout-s   10                               grpc.server_handshake_timeout_ms (accept to the
                                                         client's SETTINGS), grpc.keepalive_timeout_ms;
                                                         /metrics: each read of a request (then closed)
--idle-timeout-s        300                              grpc.max_connection_idle_ms (no call open: GOAWAY),
                                                         grpc.keepalive_time_ms
======================  ===============================  ==================================================

Fixed, as on the pod's ports: a client pinging more often than every 5 s without data gets GOAWAY
ENHANCE_YOUR_CALM on its third early ping. The pod's channel to the adapter sends no keepalive pings.

``/metrics`` answers HTTP/1.0, one request per connection (prometheus_client's handler), never reads a body,
and the standard library's parser bounds a request's lines and header count (400/431 past them).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
from dataclasses import dataclass, fields
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, MetricsHandler

MAX_PING_STRIKES = 2  # early pings tolerated before GOAWAY (grpc core's default)
MIN_PING_INTERVAL_MS = 5000  # pings closer than this, with no data sent in between, are early
GRPC_INT_MAX = 2**31 - 1
BUSY_ANSWER = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True)
class ListenerLimits:
    max_concurrent_streams: int = 100
    max_connections: int = 64
    max_header_list_bytes: int = 16384
    max_message_bytes: int = 4 * 1024 * 1024
    handshake_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ListenerLimits:
        return cls(**{limit.name: getattr(args, limit.name) for limit in fields(cls)})  # one flag each


def add_listener_arguments(parser: argparse.ArgumentParser) -> None:
    """The limit flags of both listeners (module docstring); env ``ADAPTER_<FLAG>``."""
    defaults = ListenerLimits()
    for name, kind, what in (
        ("max_concurrent_streams", int, "calls open at once on one SPI connection"),
        ("max_connections", int, "connections at once per listener"),
        ("max_header_list_bytes", int, "a call's metadata, in bytes"),
        ("max_message_bytes", int, "an SPI request or reply, in bytes"),
        ("handshake_timeout_s", float, "seconds for a new connection's hello, and for each read of /metrics"),
        ("idle_timeout_s", float, "seconds an SPI connection may stay without a call"),
    ):
        env = "ADAPTER_" + name.upper()
        default = getattr(defaults, name)
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=kind(os.environ.get(env) or default),
            help=f"{what} (env {env}, default {default})",
        )


def _ms(seconds: float) -> int:
    return max(1, min(GRPC_INT_MAX, round(seconds * 1000)))


def _count(value: int) -> int:
    return max(0, min(GRPC_INT_MAX - 1, value))  # grpc core asserts that a cap is below INT_MAX


def spi_server_options(limits: ListenerLimits) -> list[tuple[str, int]]:
    """grpc core channel arguments of the SPI port (the table above)."""
    header_bytes = _count(limits.max_header_list_bytes)
    return [
        ("grpc.max_receive_message_length", _count(limits.max_message_bytes)),
        ("grpc.max_send_message_length", _count(limits.max_message_bytes)),
        ("grpc.so_reuseport", 0),  # a port in use is an error, not a silent share
        ("grpc.max_concurrent_streams", _count(limits.max_concurrent_streams)),
        ("grpc.max_metadata_size", header_bytes),
        ("grpc.absolute_max_metadata_size", header_bytes),
        ("grpc.max_allowed_incoming_connections", _count(limits.max_connections)),
        ("grpc.max_connection_idle_ms", _ms(limits.idle_timeout_s)),
        ("grpc.server_handshake_timeout_ms", _ms(limits.handshake_timeout_s)),
        ("grpc.keepalive_time_ms", _ms(limits.idle_timeout_s)),
        ("grpc.keepalive_timeout_ms", _ms(limits.handshake_timeout_s)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
    ]


class MetricsServer(ThreadingHTTPServer):
    """``/metrics`` on a thread per connection, at most ``max_connections`` of them: one past the cap is
    answered 503 and closed as it is accepted; a read that waits past the timeout closes its connection."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog (socketserver's 5 drops connects while threads start)

    def __init__(self, host: str, port: int, registry: CollectorRegistry, limits: ListenerLimits) -> None:
        handler: Any = type(
            "AdapterMetricsHandler",
            (MetricsHandler.factory(registry),),
            {"timeout": limits.handshake_timeout_s},  # a socket timeout on every read
        )
        self._slots = threading.BoundedSemaphore(max(1, limits.max_connections))
        super().__init__((host, port), handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.setblocking(False)  # the accept loop never waits on a refused client
                request.send(BUSY_ANSWER)
                request.recv(65536)  # what it sent already: unread bytes would make the close a reset
            self.close_request(request)  # not shutdown_request: that gives a slot back
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self._slots.release()  # first: a client that sees its answer end finds its slot free again
        super().shutdown_request(request)


def start_metrics_server(
    host: str, port: int, registry: CollectorRegistry, limits: ListenerLimits
) -> MetricsServer:
    server = MetricsServer(host, port, registry, limits)
    threading.Thread(target=server.serve_forever, name="adapter-metrics", daemon=True).start()
    return server
