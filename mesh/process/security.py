"""The TLS a pod's process serves and calls with, built once from its settings (mesh/tls.py does the TLS).

External ports: the gRPC port (ALPN h2) and REST take ``--tls-cert``/``--tls-key`` and check clients as
``--tls-client-auth`` says. Internal ports (the peers' gRPC and REST ports) require a pod certificate signed
by the internal trust; calls to peers present this pod's. The unix sockets behind the front, the runtime and
the adapter stay plaintext: they are this pod's own, on loopback or a local socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass, field

import grpc

from mesh.process.settings import Settings
from mesh.tls import (
    ALPN_H2,
    ClientAuth,
    ReloadingChannelCredentials,
    ReloadingContext,
    client_context,
    grpc_server_credentials,
    server_context,
)

log = logging.getLogger(__name__)


@dataclass
class PodTls:
    """Every context of one process; all None without TLS."""

    front: ReloadingContext | None = None  # the external gRPC port (the HTTP/2 front), ALPN h2
    rest: ReloadingContext | None = None  # the external REST port (and the metrics port)
    internal_front: ReloadingContext | None = None  # peers' calls (the internal front): pod certificates only
    internal_rest: ReloadingContext | None = None
    to_peers_h2: ReloadingContext | None = None  # the front's connections to peers' internal ports
    to_peers_rest: ReloadingContext | None = None  # the REST gateway's calls to peers
    to_peers_grpc: ReloadingChannelCredentials | None = None  # grpc.aio channels to peers
    external_server: grpc.ServerCredentials | None = None  # --front=grpc: grpc.aio on the external port
    internal_server: grpc.ServerCredentials | None = None  # --front=grpc: grpc.aio on the internal port
    _contexts: list[ReloadingContext | ReloadingChannelCredentials] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return self.front is not None

    @classmethod
    def from_settings(cls, settings: Settings) -> PodTls:
        external, internal = settings.external_tls, settings.internal_tls
        if external is None or internal is None:
            return cls()
        tls = cls(
            front=server_context(external, settings.client_auth, ALPN_H2),
            rest=server_context(external, settings.client_auth),
            internal_front=server_context(internal, ClientAuth.REQUIRE, ALPN_H2),
            internal_rest=server_context(internal, ClientAuth.REQUIRE),
            to_peers_h2=client_context(internal, ALPN_H2),
            to_peers_rest=client_context(internal),
            to_peers_grpc=ReloadingChannelCredentials(internal),
            external_server=grpc_server_credentials(external, settings.client_auth),
            internal_server=grpc_server_credentials(internal, ClientAuth.REQUIRE),
        )
        tls._contexts = [
            c
            for c in (
                tls.front,
                tls.rest,
                tls.internal_front,
                tls.internal_rest,
                tls.to_peers_h2,
                tls.to_peers_rest,
                tls.to_peers_grpc,
            )
            if c is not None
        ]
        return tls

    @staticmethod
    def ssl_of(context: ReloadingContext | None) -> ssl.SSLContext | None:
        return context.context if context is not None else None

    def reload(self) -> int:
        """Load rotated files into every context and the peer channels' credentials; how many changed
        (grpc.aio servers' credentials look themselves)."""
        return sum(1 for c in self._contexts if c.reload())

    async def keep_reloading(self, interval_s: float) -> None:
        if not self._contexts:
            return
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(Exception):  # a reload never stops the pod; ReloadingContext logs why
                self.reload()

    def add_port(self, server: grpc.aio.Server, address: str, *, internal: bool) -> None:
        """A grpc.aio TCP port: TLS when configured, else plaintext."""
        credentials = self.internal_server if internal else self.external_server
        if credentials is None:
            server.add_insecure_port(address)
        else:
            server.add_secure_port(address, credentials)
