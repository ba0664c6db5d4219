"""The metrics port: ``GET /metrics`` (and ``/``) answers the pod's Prometheus exposition.

A scraper is a client like any other: the port sits behind the REST ports' connection guard
(fronts/server_limits.py) with the same limits (connections, header bytes, request and idle time), and a
request body is never read. The text is made at scrape time (observe/export.py).
"""

from __future__ import annotations

import ssl

from aiohttp import web

from mesh.fronts.server_limits import GuardedListener, RestLimits, guard_middleware
from mesh.observe.export import CONTENT_TYPE, Exposition


class MetricsPort:
    def __init__(self, exposition: Exposition, limits: RestLimits | None = None) -> None:
        self.limits = limits or RestLimits()
        self._exposition = exposition
        self.app = web.Application(
            client_max_size=1024, middlewares=[guard_middleware(self.limits.max_header_list_bytes)]
        )
        self.app.router.add_get("/metrics", self._scrape)
        self.app.router.add_get("/", self._scrape)
        self._runner: web.AppRunner | None = None
        self.listener: GuardedListener | None = None

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        self._runner = web.AppRunner(self.app, **self.limits.handler_args())
        await self._runner.setup()
        self.listener = GuardedListener(self._runner, self.limits)
        await self.listener.start(host, port, tls=tls)

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _scrape(self, request: web.Request) -> web.Response:
        return web.Response(body=self._exposition.text(), headers={"Content-Type": CONTENT_TYPE})
