"""The KServe v2 REST paths, routed like the gRPC proxy: resolve, load here if needed, forward the bytes.

The model is the ``mm-model-id`` / ``mm-vmodel-id`` header, else the name in the
path; the runtime's REST port sees the concrete id in the path. Bodies are not
parsed. Server-level paths and model readiness are answered by the mesh.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import aiohttp
import grpc
from aiohttp import web

from mesh.dispatch import Dispatcher
from mesh.errors import MeshError
from mesh.target import RequestTarget, TargetError, header_target, name_target

log = logging.getLogger(__name__)

# gRPC status -> HTTP status, as grpc-gateway maps them.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# Headers of this hop or ours; the rest reach the runtime.
_DROPPED = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade"}
)


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class RestGateway:
    def __init__(
        self, dispatch: Dispatcher, runtime_rest: str, server_name: str, version: str, max_body_bytes: int
    ) -> None:
        self._dispatch = dispatch
        self._runtime_base = f"http://{runtime_rest}" if runtime_rest else ""
        self._metadata = {"name": server_name, "version": version, "extensions": []}
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=max_body_bytes)
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        self.app.add_routes(
            [
                web.get("/v2/health/live", self._live),
                web.get("/v2/health/ready", self._live),
                web.get("/v2", self._server_metadata),
                web.get(model + "/ready", self._model_ready),
                web.get(versioned + "/ready", self._model_ready),
                web.get(model, self._forward),
                web.get(versioned, self._forward),
                web.post(model + "/infer", self._forward),
                web.post(versioned + "/infer", self._forward),
            ]
        )

    async def start(self, host: str, port: int) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True} if request.path.endswith("live") else {"ready": True})

    async def _server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(self._metadata)

    @staticmethod
    def _target(request: web.Request) -> RequestTarget:
        return header_target(request.headers.items()) or name_target(request.match_info["name"])

    async def _model_ready(self, request: web.Request) -> web.Response:
        """200 when registered and loaded somewhere, 400 otherwise (the v2 REST convention); never loads."""
        try:
            target = self._target(request)
        except TargetError as e:
            return error(400, str(e))
        ready = self._dispatch.ready(target)
        return web.json_response({"name": target.id, "ready": ready}, status=200 if ready else 400)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if self._session is None or not self._runtime_base:
            return error(501, "REST inference needs the runtime's REST address (--runtime-rest)")
        try:
            model_id = self._dispatch.model_id(self._target(request))
            await self._dispatch.ensure_local(model_id, None)
        except TargetError as e:
            return error(400, str(e))
        except MeshError as e:
            return error(HTTP_STATUS.get(e.code, 500), e.message)
        path = f"/v2/models/{quote(model_id, safe='')}"
        if "version" in request.match_info:
            path += f"/versions/{quote(request.match_info['version'], safe='')}"
        if request.path.endswith("/infer"):
            path += "/infer"
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in _DROPPED and not k.lower().startswith("mm-")
        }
        body = await request.read()
        with self._dispatch.serving(model_id):
            try:
                async with self._session.request(
                    request.method,
                    self._runtime_base + path,
                    data=body,
                    headers=headers,
                    params=request.query,
                    skip_auto_headers=("Content-Type",),  # pass the client's content type, or none
                ) as upstream:
                    payload = await upstream.read()
                    content_type = upstream.headers.get("Content-Type", "application/json")
                    return web.Response(
                        status=upstream.status, body=payload, headers={"Content-Type": content_type}
                    )
            except aiohttp.ClientError as e:
                return error(503, f"runtime unreachable: {e}")
