"""The live status page on the REST port.

- ``GET /status``: one page (``static/status.html``, its script and style served from this package under
  ``/status/static/``; nothing from elsewhere, and a Content-Security-Policy that allows nothing else). The
  script draws the snapshot as text nodes only: model ids are the clients' and are never parsed as HTML.
- ``GET /status/events``: server-sent events. The snapshot (what ``GET /mesh/status`` answers) as one
  ``snapshot`` event at once and again whenever it changes (checked every ``check_interval_s``; ``time_ms``
  alone is no change), a heartbeat comment when nothing was sent for ``heartbeat_s``. However many streams are
  open, the snapshot is computed at most twice per interval and serialised once per change (``StatusFeed``).
  At most ``max_streams`` are open at once (the next is answered 503 JSON); a stream ends when its client goes
  away, when a write is not taken within ``write_timeout_s`` (a client that does not read), after
  ``max_stream_s`` (the browser reconnects after ``retry_ms``) and when the server shuts down. The page closes
  its stream when it is left (``pagehide``: the back/forward cache would keep it open) and reconnects when
  shown again; refused a stream, it polls ``/mesh/status`` every second and tries the stream again after
  5 s, doubling to 60 s (``?mode=poll`` polls from the start). Its models table is ``/mesh/models``.

The pure parts: ``changed`` (has the snapshot changed), ``sse_event`` / ``sse_comment`` / ``sse_retry`` (the
stream's bytes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from mesh.process.settings import Settings

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
PAGE = "status.html"
ASSETS = {"status.js": "text/javascript", "status.css": "text/css"}  # served under /status/static/
EVENT = "snapshot"
JSON_TYPE = "application/json"
# The page loads only its own script and style and talks only to its own origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

Snapshot = Callable[[], Mapping[str, Any]]


@dataclass(frozen=True)
class EventLimits:
    """What the event streams may make the pod hold and do."""

    max_streams: int = 64  # open at once; the next is answered 503
    check_interval_s: float = 0.5  # how often a stream looks for a change
    heartbeat_s: float = 15.0  # a comment when nothing else was sent for this long
    write_timeout_s: float = 10.0  # a write the client does not take within this ends the stream
    max_stream_s: float = 600.0  # then the stream ends and the browser reconnects
    retry_ms: int = 1000  # the browser's reconnect delay (the stream's ``retry:`` field)

    @classmethod
    def from_settings(cls, settings: Settings) -> EventLimits:
        """``--status-max-streams``, ``--status-write-timeout-s``, ``--status-max-stream-s``."""
        return cls(
            max_streams=settings.status_max_streams,
            write_timeout_s=settings.status_write_timeout_s,
            max_stream_s=settings.status_max_stream_s,
        )


# --- pure ---------------------------------------------------------------------------------------------


def comparable(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The snapshot without its clock: what must differ for a change."""
    return {key: value for key, value in snapshot.items() if key != "time_ms"}


def changed(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> bool:
    """Whether ``current`` says anything ``previous`` did not (a new ``time_ms`` alone says nothing)."""
    return previous is None or comparable(previous) != comparable(current)


def sse_event(data: str, event: str = EVENT, event_id: int | None = None) -> bytes:
    """One server-sent event: every line of ``data`` its own ``data:`` field (the client joins them)."""
    lines = [f"event: {event}"] if event else []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.extend(f"data: {line}" for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


def sse_comment(text: str) -> bytes:
    """A comment line (the client ignores it; it keeps the connection and its proxies awake)."""
    return "".join(f": {line}\n" for line in text.splitlines() or [""]).encode() + b"\n"


def sse_retry(ms: int) -> bytes:
    """The client's reconnect delay."""
    return f"retry: {ms}\n\n".encode()


def json_answer(status: int, data: object, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON answer typed exactly ``application/json``, as the rest of the REST port answers."""
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers=headers, content_type=JSON_TYPE
    )


# --- the feed -----------------------------------------------------------------------------------------


class StatusFeed:
    """The snapshot as every stream sends it: computed at most once per ``max_age_s`` however many streams
    ask, its version raised and its JSON written once per change."""

    def __init__(self, snapshot: Snapshot, max_age_s: float, clock: Callable[[], float] = time.monotonic):
        self._snapshot = snapshot
        self._max_age_s = max_age_s
        self._clock = clock
        self._checked_at: float | None = None
        self._last: Mapping[str, Any] | None = None
        self.version = 0  # 0: nothing yet
        self.payload = ""

    def current(self) -> tuple[int, str]:
        """The latest version and its JSON (``(0, "")`` until a snapshot was taken)."""
        now = self._clock()
        if self._checked_at is None or now - self._checked_at >= self._max_age_s:
            self._checked_at = now
            try:
                snapshot = self._snapshot()
            except Exception:  # the view's problem; the streams keep the last picture and try again
                log.exception("the status snapshot failed")
                return self.version, self.payload
            if changed(self._last, snapshot):
                self._last = snapshot
                self.version += 1
                self.payload = json.dumps(snapshot, separators=(",", ":"))
        return self.version, self.payload


# --- the handlers -------------------------------------------------------------------------------------


def _closing(request: web.Request) -> bool:
    """The client went away, or the server is shutting down.

    aiohttp does not cancel a handler whose client left (its ``handler_cancellation`` is off), and a runner's
    cleanup waits up to its shutdown timeout (60 s) for handlers still running: a stream watches for both.
    ``RequestHandler`` has no public flag for the second; ``_close`` is what ``Server.pre_shutdown`` sets
    (tests/test_status_page_units.py fails if that changes).
    """
    transport = request.transport
    if transport is None or transport.is_closing():
        return True
    protocol = request.protocol
    return bool(getattr(protocol, "_close", False) or getattr(protocol, "_force_close", False))


class StatusPage:
    """``/status``, its assets and ``/status/events`` over one snapshot callable."""

    def __init__(self, snapshot: Snapshot, limits: EventLimits | None = None) -> None:
        self.limits = limits or EventLimits()
        # streams look every check_interval_s; a snapshot half that old is fresh enough for any of them
        self.feed = StatusFeed(snapshot, self.limits.check_interval_s / 2)
        self.open_streams = 0
        self._page = (STATIC / PAGE).read_bytes()
        self._assets = {name: ((STATIC / name).read_bytes(), kind) for name, kind in ASSETS.items()}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/status", self.page),
            web.get("/status/events", self.events, allow_head=False),
            web.get("/status/static/{name}", self.asset),
        ]

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(body=self._page, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)

    async def asset(self, request: web.Request) -> web.Response:
        found = self._assets.get(request.match_info["name"])
        if found is None:
            return json_answer(404, {"error": f"no such file: {request.path}"})
        body, kind = found
        return web.Response(body=body, content_type=kind, charset="utf-8", headers=PAGE_HEADERS)

    async def events(self, request: web.Request) -> web.StreamResponse:
        if self.open_streams >= self.limits.max_streams:
            return json_answer(
                503,
                {"error": f"{self.limits.max_streams} status event streams are open; poll /mesh/status"},
                {"Retry-After": "5"},
            )
        self.open_streams += 1
        try:
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-store",
                    "X-Accel-Buffering": "no",  # a proxy in front must not hold events back
                }
            )
            await response.prepare(request)
            if await self._stream(request, response):
                with suppress(ConnectionError):
                    await response.write_eof()
            return response
        finally:
            self.open_streams -= 1

    async def _stream(self, request: web.Request, response: web.StreamResponse) -> bool:
        """Send events until the stream must end; whether it ended cleanly (the connection still usable)."""
        limits = self.limits
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + limits.max_stream_s
        if not await self._send(request, response, sse_retry(limits.retry_ms)):
            return False
        sent, last_write = 0, loop.time()
        while not _closing(request):
            now = loop.time()
            if now >= ends_at:
                return True
            version, payload = self.feed.current()
            if version != sent:
                if not await self._send(request, response, sse_event(payload, EVENT, version)):
                    return False
                sent, last_write = version, loop.time()
            elif now - last_write >= limits.heartbeat_s:
                if not await self._send(request, response, sse_comment("heartbeat")):
                    return False
                last_write = loop.time()
            await asyncio.sleep(limits.check_interval_s)
        return False

    async def _send(self, request: web.Request, response: web.StreamResponse, data: bytes) -> bool:
        """Write ``data``; False (and the connection dropped) if the client is gone or does not take it."""
        try:
            async with asyncio.timeout(self.limits.write_timeout_s):
                await response.write(data)
        except ConnectionError:
            return False
        except TimeoutError:
            if request.transport is not None:
                request.transport.abort()  # what it left unread goes nowhere
            return False
        return True


def status_routes(snapshot: Snapshot, limits: EventLimits | None = None) -> list[web.RouteDef]:
    """The page's routes; ``snapshot`` is ``Router.mesh_status`` (what ``GET /mesh/status`` answers)."""
    return StatusPage(snapshot, limits).routes()
