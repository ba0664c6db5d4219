"""The KServe v2 REST paths, routed like the gRPC proxy: resolve, load here if needed, forward the bytes.

The model is the ``mm-model-id`` / ``mm-vmodel-id`` header, else the name in the
path; the runtime's REST port sees the concrete id in the path. Bodies are not
parsed, beyond checking that an infer request's JSON is well formed before it is
routed (mesh/fronts/server_limits.py: limits, body reading). Server-level paths and
model readiness are answered by the mesh.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from urllib.parse import quote

import aiohttp
import grpc
from aiohttp import web

from mesh.errors import MeshError, Reroute
from mesh.fronts.server_limits import GuardedListener, RestLimits, guard_middleware, read_body
from mesh.models.local import LoadClaimed
from mesh.outcomes import (
    AVOID_HEADER,
    INTERNAL_MODEL_HEADER,
    LOAD_FAILED_TRAILER,
    MESH_ERRORS,
    REDIRECT_TRAILER,
    Outcome,
    Verdict,
    from_peer_http,
    from_runtime_http,
    grpc_status,
    outcome_exception,
)
from mesh.routing.router import LoadHereFailed, Router
from mesh.routing.target import RequestTarget, TargetError, header_target, name_target

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
# Headers of this hop or ours; the rest reach the runtime. The body is forwarded decoded (aiohttp decodes
# a gzip/deflate/br Content-Encoding), so its encoding is not passed on.
_KEPT_RESPONSE_HEADERS = frozenset({"content-type", REDIRECT_TRAILER, LOAD_FAILED_TRAILER})
_DROPPED = frozenset(
    {
        "host",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "upgrade",
    }
)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class RuntimeReply(Exception):
    """The runtime's REST answer, carried through the router as RuntimeNotFound's answer."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


class RestGateway:
    def __init__(
        self,
        router: Router,
        runtime_rest: str,
        server_name: str,
        version: str,
        max_body_bytes: int,
        front_counts: Callable[[], dict[str, int]] | None = None,
        load_timings: Callable[[int | None], dict[str, object]] | None = None,
        limits: RestLimits | None = None,
    ) -> None:
        self._router = router
        self._front_counts = front_counts
        self._load_timings = load_timings
        self._runtime_base = f"http://{runtime_rest}" if runtime_rest else ""
        self._metadata = {"name": server_name, "version": version, "extensions": []}
        self._session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []
        self._listeners: list[GuardedListener] = []
        self._max_body_bytes = max_body_bytes
        self.limits = limits or RestLimits()
        header_bytes = self.limits.max_header_list_bytes
        self.app = web.Application(
            client_max_size=max_body_bytes, middlewares=[guard_middleware(header_bytes)]
        )
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        # Peers forward REST requests to a listener of its own, as gRPC ones go to the internal port:
        # the public port never takes an mm-internal-model header at its word.
        # (What a peer forwards carries the client's headers and its own: twice the client's limit.)
        self.internal_app = web.Application(
            client_max_size=max_body_bytes, middlewares=[guard_middleware(2 * header_bytes)]
        )
        self.internal_app.add_routes(
            [
                web.get(model, self._serve_forwarded),
                web.get(versioned, self._serve_forwarded),
                web.post(model + "/infer", self._serve_forwarded),
                web.post(versioned + "/infer", self._serve_forwarded),
            ]
        )
        self.app.add_routes(
            [
                web.get("/v2/health/live", self._live),
                web.get("/v2/health/ready", self._live),
                web.get("/v2", self._server_metadata),
                web.get("/mesh/pools", self._pools),
                web.get("/mesh/front", self._front),
                web.get("/mesh/loads", self._loads),
                web.get(model + "/ready", self._model_ready),
                web.get(versioned + "/ready", self._model_ready),
                web.get(model, self._forward),
                web.get(versioned, self._forward),
                web.post(model + "/infer", self._forward),
                web.post(versioned + "/infer", self._forward),
            ]
        )

    async def start(self, host: str, port: int, internal_port: int) -> None:
        """Both listeners, each behind a connection guard (fronts/server_limits.py): cap, request deadline."""
        self._session = aiohttp.ClientSession(auto_decompress=False)
        internal_limits = replace(self.limits, max_header_list_bytes=2 * self.limits.max_header_list_bytes)
        for app, app_port, limits in (
            (self.app, port, self.limits),
            (self.internal_app, internal_port, internal_limits),
        ):
            runner = web.AppRunner(app, access_log=None, **limits.handler_args())
            await runner.setup()
            self._runners.append(runner)
            listener = GuardedListener(runner, limits)
            await listener.start(host, app_port)
            self._listeners.append(listener)

    async def stop(self) -> None:
        for listener in self._listeners:
            listener.close()
        for runner in self._runners:
            await runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True} if request.path.endswith("live") else {"ready": True})

    async def _server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(self._metadata)

    async def _pools(self, request: web.Request) -> web.Response:
        """Per pool: pods, capacity and use, request rate, models that could not be placed."""
        return web.json_response({pool: asdict(stats) for pool, stats in self._router.pool_stats().items()})

    async def _front(self, request: web.Request) -> web.Response:
        """--front=h2: gRPC streams answered on the fast path, relayed to grpc.aio, and replayed there."""
        if self._front_counts is None:
            return error(404, "this pod runs the grpc.aio front (--front=grpc)")
        return web.json_response(self._front_counts())

    async def _loads(self, request: web.Request) -> web.Response:
        """Where this pod's recent loads spent their time: the runtime's part, the queue, the mesh's own."""
        if self._load_timings is None:
            return error(404, "no load timings on this pod")
        last = request.query.get("last", "")
        if last and not last.isdigit():
            return error(400, "last must be a number of loads")
        return web.json_response(self._load_timings(int(last) if last else None))

    @staticmethod
    def _target(request: web.Request) -> RequestTarget:
        return header_target(request.headers.items()) or name_target(request.match_info["name"])

    async def _model_ready(self, request: web.Request) -> web.Response:
        """200 when registered and loaded somewhere, 400 otherwise (the v2 REST convention); never loads."""
        try:
            target = self._target(request)
        except TargetError as e:
            return http_error(e)
        ready = self._router.ready(target)
        return web.json_response({"name": target.id, "ready": ready}, status=200 if ready else 400)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if self._session is None or not self._runtime_base:
            return error(501, "REST inference needs the runtime's REST address (--runtime-rest)")
        body = await self._read_body(request, check_json=request.path.endswith("/infer"))
        if isinstance(body, web.Response):
            return body
        try:
            model_id = await self._router.model_id_after_miss(self._target(request))

            async def here() -> web.Response:
                response = await self._call(self._runtime_base, request, model_id, body, internal=False)
                return acted_on(from_runtime_http(response.status), response, "runtime unavailable")

            async def there(pod_id: str, avoid: frozenset[str]) -> web.Response:
                rest_address = self._router.instance(pod_id).internal_rest_address
                if not rest_address:
                    raise Reroute(MeshError(grpc.StatusCode.UNAVAILABLE, f"pod {pod_id} serves no REST"))
                base = f"http://{rest_address}"
                response = await self._call(base, request, model_id, body, internal=True, avoid=avoid)
                return acted_on(from_peer_http(response.status, response.headers), response)

            return await self._router.route(model_id, None, here, there)
        except RuntimeReply as reply:  # the runtime has the model: its 404 is the request's own
            return reply.response
        except MESH_ERRORS as e:
            return http_error(e)

    async def _serve_forwarded(self, request: web.Request) -> web.Response:
        """The internal listener: a peer resolved and routed the request already; serve it here."""
        model_id = request.headers.get(INTERNAL_MODEL_HEADER, "")
        if not model_id or self._session is None or not self._runtime_base:
            return error(
                400, f"forwarded request without {INTERNAL_MODEL_HEADER}, or no runtime REST address"
            )
        body = await self._read_body(request)  # the forwarding pod checked its JSON
        if isinstance(body, web.Response):
            return body
        avoid = request.headers.get(AVOID_HEADER, "")
        self._router.heard_unreachable(p for p in avoid.split(",") if p)
        await self._router.caught_up(model_id)

        async def here() -> web.Response:  # the sender decides on a runtime that is down
            response = await self._call(self._runtime_base, request, model_id, body, internal=False)
            outcome = from_runtime_http(response.status)
            return acted_on(outcome, response) if outcome.verdict is Verdict.COPY_LOST else response

        try:
            return await self._router.serve_here(model_id, None, here)
        except LoadHereFailed as e:
            if isinstance(e.error, LoadClaimed):
                return error(409, e.error.message, {REDIRECT_TRAILER: e.error.holder})
            return http_error(e.error, {LOAD_FAILED_TRAILER: "1"})
        except RuntimeReply as reply:  # the runtime has the model: its 404 is the request's own
            return reply.response

    async def _read_body(self, request: web.Request, check_json: bool = False) -> bytes | web.Response:
        """The body, within the size limit and the request deadline; or the JSON error to answer."""
        return await read_body(request, self._max_body_bytes, self.limits.request_read_timeout_s, check_json)

    async def _call(
        self,
        base: str,
        request: web.Request,
        model_id: str,
        body: bytes,
        internal: bool,
        avoid: frozenset[str] = frozenset(),
    ) -> web.Response:
        """Send the request to a runtime or a peer gateway, with the concrete id in the path."""
        assert self._session is not None
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
        if internal:
            headers[INTERNAL_MODEL_HEADER] = model_id
            if avoid:
                headers[AVOID_HEADER] = ",".join(sorted(avoid))
        try:
            async with self._session.request(
                request.method,
                base + path,
                data=body,
                headers=headers,
                params=request.query,
                skip_auto_headers=("Content-Type",),  # pass the client's content type, or none
            ) as upstream:
                payload = await upstream.read()
                kept = {k: v for k, v in upstream.headers.items() if k.lower() in _KEPT_RESPONSE_HEADERS}
                return web.Response(status=upstream.status, body=payload, headers=kept)
        except aiohttp.ClientError as e:
            raise Reroute(
                MeshError(grpc.StatusCode.UNAVAILABLE, f"unreachable: {e}"), unreachable=internal
            ) from e


def http_error(e: Exception, headers: dict[str, str] | None = None) -> web.Response:
    """The mesh's exceptions as REST errors: their gRPC status (mesh/outcomes.py), mapped as grpc-gateway."""
    code, message = grpc_status(e)
    return error(HTTP_STATUS.get(code, 500), message, headers)


# The gRPC status an HTTP answer the route acts on stands for (what its retries report).
_GRPC_OF_HTTP = {404: grpc.StatusCode.NOT_FOUND, 409: grpc.StatusCode.ABORTED}


def acted_on(outcome: Outcome, response: web.Response, unavailable: str = "") -> web.Response:
    """``response``, unless the route acts on its ``outcome``: then what the route acts on is raised."""
    if not outcome.route_decides:
        return response
    code = _GRPC_OF_HTTP.get(response.status, grpc.StatusCode.UNAVAILABLE)
    message = unavailable or response.text or ""
    raised = outcome_exception(outcome, RuntimeReply(response), code, message)
    assert raised is not None
    raise raised
