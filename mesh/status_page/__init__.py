"""The live status page on the REST port (being written)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web


def status_routes(snapshot: Callable[[], dict[str, Any]]) -> list[web.RouteDef]:
    """The page's routes; ``snapshot`` is ``Router.mesh_status`` (what ``GET /mesh/status`` answers)."""
    return []
