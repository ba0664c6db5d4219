"""The KServe v2 REST paths, routed like the gRPC proxy: resolve, load here if needed, forward the bytes.

The model is the ``mm-model-id`` / ``mm-vmodel-id`` header, else the name in the
path; the runtime's REST port sees the concrete id in the path. Bodies and their
``Content-Encoding`` / ``Content-Type`` / ``Inference-Header-Content-Length`` go
both ways as they came, never decoded: the mesh only checks that an infer
request's JSON part is well formed, when it can see it (mesh/fronts/server_limits.py:
limits, body reading). Server-level paths, model readiness, the statistics of a
model loaded nowhere and the repository index are answered by the mesh. Every
error the gateway answers is ``{"error": ...}`` as JSON.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from typing import Any
from urllib.parse import quote

import aiohttp
import grpc
from aiohttp import web
from aiohttp.typedefs import Handler

from mesh.errors import MeshError, Reroute
from mesh.fronts.server_limits import (
    BINARY_HEADER,
    GuardedListener,
    RestLimits,
    content_encoded,
    guard_middleware,
    json_error,
    json_response,
    read_body,
)
from mesh.models.local import LoadClaimed
from mesh.observe.logs import RequestLog
from mesh.observe.metrics import MeshMetrics, UncountedMetrics
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
from mesh.registry.snapshot import MODEL_STATES
from mesh.registry.status import IndexEntry
from mesh.routing.router import LoadHereFailed, Router
from mesh.routing.target import RequestTarget, TargetError, header_target, name_target
from mesh.status_page import EventLimits, status_routes

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
# HTTP status -> the gRPC status a request is counted and logged with (the inverse of the above).
GRPC_CODE = {
    **{
        http: code.value[0]
        for code, http in HTTP_STATUS.items()
        if code != grpc.StatusCode.FAILED_PRECONDITION
    },
    200: grpc.StatusCode.OK.value[0],
    401: grpc.StatusCode.UNAUTHENTICATED.value[0],
    403: grpc.StatusCode.PERMISSION_DENIED.value[0],
    408: grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
    413: grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
    500: grpc.StatusCode.INTERNAL.value[0],
}
# The v2 gRPC method each per-model REST path is (what the metrics and logs call it).
V2_GRPC = "/inference.GRPCInferenceService/"


def grpc_code(http_status: int) -> int:
    if http_status in GRPC_CODE:
        return GRPC_CODE[http_status]
    return grpc.StatusCode.OK.value[0] if http_status < 300 else grpc.StatusCode.UNKNOWN.value[0]


# The answer's headers that say what its body is (and that it varies by Accept-Encoding): they come back
# with it, as the body does.
_BODY_HEADERS = frozenset({"content-type", "content-encoding", BINARY_HEADER.lower(), "vary"})
# What a peer's answer says to this pod (not to the client).
_PEER_MARKERS = frozenset({REDIRECT_TRAILER, LOAD_FAILED_TRAILER})
# Headers of this hop or ours; the rest (Content-Encoding included) reach the runtime as they came.
_DROPPED = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",  # answered by this hop's server; the body is in hand
    }
)
# What aiohttp's client would add of its own: the runtime sees the client's, or none (no gzip asked for).
_NOT_ADDED = ("Content-Type", "Accept-Encoding", "Accept", "User-Agent")
# The per-model v2 paths forwarded to a pod that holds the model, after /v2/models/{name}[/versions/{v}].
METADATA, INFER, CONFIG, STATS = "", "/infer", "/config", "/stats"
FORWARDED = (METADATA, INFER, CONFIG, STATS)
GRPC_METHOD = {
    suffix: V2_GRPC + name
    for suffix, name in (
        (METADATA, "ModelMetadata"),
        (INFER, "ModelInfer"),
        (CONFIG, "ModelConfig"),
        (STATS, "ModelStatistics"),
    )
}
MAX_MESSAGE_CHARS = 4096  # of an upstream's error text, in the mesh's own messages


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return json_error(status, message, headers)


class RuntimeReply(Exception):
    """The runtime's REST answer, carried through the router as RuntimeNotFound's answer."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(answer_text(response))
        self.response = response


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (no such route 404, wrong method 405, ...) as JSON, with their status and
    headers (``Allow``), like every other error of the gateway."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        kept = {k: v for k, v in e.headers.items() if k.lower() not in ("content-type", "content-length")}
        return error(e.status, f"{e.reason}: {request.method} {request.path}", kept)


def per_model_route(path: str, suffix: str, handler: Handler) -> web.RouteDef:
    """The route of one per-model v2 path: POST for infer, GET (and HEAD) for the others."""
    return web.post(path, handler) if suffix == INFER else web.get(path, handler)


def model_path(model_id: str, version: str | None, suffix: str) -> str:
    """The v2 path of ``suffix`` for the concrete model id (and version), as the runtime sees it."""
    path = f"/v2/models/{quote(model_id, safe='')}"
    if version is not None:
        path += f"/versions/{quote(version, safe='')}"
    return path + suffix


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's headers a runtime or peer gets: all but this hop's and the mesh's own (``mm-*``)."""
    return {k: v for k, v in headers.items() if k.lower() not in _DROPPED and not k.lower().startswith("mm-")}


def empty_statistics(model_id: str, version: str) -> dict[str, Any]:
    """v2 statistics of a model loaded nowhere (Triton's JSON): nothing counted, and nothing loaded for it."""
    return {
        "model_stats": [
            {
                "name": model_id,
                "version": version,
                "last_inference": 0,
                "inference_count": 0,
                "execution_count": 0,
                "inference_stats": {},
                "batch_stats": [],
            }
        ]
    }


def index_json(entries: list[IndexEntry]) -> list[dict[str, str]]:
    """The repository index as Triton's REST answer lists it."""
    return [{"name": e.name, "version": e.version, "state": e.state, "reason": e.reason} for e in entries]


def index_ready_only(body: bytes) -> bool:
    """``ready`` of a v2 repository index request body (empty: False); ValueError saying why it is not one."""
    if not body.strip():
        return False
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"the request body is not valid JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise ValueError("the request body is not a JSON object")
    ready = parsed.get("ready", False)
    if not isinstance(ready, bool):
        raise ValueError(f"'ready' must be true or false, not {ready!r}")
    return ready


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def body_text(body: bytes) -> str:
    """An error body's message: its JSON ``error`` if it has one, else its text (clipped)."""
    clipped = body[:MAX_MESSAGE_CHARS]
    try:
        parsed = json.loads(clipped)
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])
    return clipped.decode("utf-8", "replace").strip()


def answer_text(response: web.Response) -> str:
    """What an upstream answer says, for the mesh's own messages; an encoded body is not decoded for it."""
    body = response.body
    if content_encoded(response.headers) or not isinstance(body, bytes):
        return f"HTTP {response.status}"
    return body_text(body) or f"HTTP {response.status}"


def upstream_answer(status: int, headers: Mapping[str, str], body: bytes, from_peer: bool) -> web.Response:
    """A runtime's or peer's answer as the client gets it: the body and what says what it is, as they came;
    an error that is not JSON becomes ``{"error": its text}`` (unless encoded: that is not read)."""
    names = _BODY_HEADERS | _PEER_MARKERS if from_peer else _BODY_HEADERS
    kept = {k: v for k, v in headers.items() if k.lower() in names}
    if status >= 400 and not is_json(headers.get("Content-Type", "")) and not content_encoded(headers):
        markers = {k: v for k, v in kept.items() if k.lower() not in _BODY_HEADERS}
        return error(status, body_text(body) or f"HTTP {status}", markers)
    return web.Response(status=status, body=body, headers=kept)


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
        status_limits: EventLimits | None = None,
        metrics: MeshMetrics | None = None,
        requests: RequestLog | None = None,
    ) -> None:
        self._router = router
        self._metrics = metrics or UncountedMetrics()  # REST inference is api_request as gRPC's is
        self._requests = requests or RequestLog(router.pod_id)
        self._front_counts = front_counts
        self._load_timings = load_timings
        self._runtime_base = f"http://{runtime_rest}" if runtime_rest else ""
        self._metadata = {"name": server_name, "version": version, "extensions": []}
        self._session: aiohttp.ClientSession | None = None
        self._to_peers_tls: ssl.SSLContext | None = None
        self._runners: list[web.AppRunner] = []
        self._listeners: list[GuardedListener] = []
        self._max_body_bytes = max_body_bytes
        self.limits = limits or RestLimits()
        header_bytes = self.limits.max_header_list_bytes
        self.app = web.Application(
            client_max_size=max_body_bytes, middlewares=[json_errors, guard_middleware(header_bytes)]
        )
        # Peers forward REST requests to a listener of its own, as gRPC ones go to the internal port:
        # the public port never takes an mm-internal-model header at its word.
        # (What a peer forwards carries the client's headers and its own: twice the client's limit.)
        self.internal_app = web.Application(
            client_max_size=max_body_bytes, middlewares=[json_errors, guard_middleware(2 * header_bytes)]
        )
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        self.internal_app.add_routes(
            [
                per_model_route(base + suffix, suffix, self._serving_forwarded(suffix))
                for suffix in FORWARDED
                for base in (model, versioned)
            ]
        )
        self.app.add_routes(
            [
                web.get("/v2/health/live", self._live),
                web.get("/v2/health/ready", self._live),
                web.get("/v2", self._server_metadata),
                web.get("/v2/models/stats", self._all_statistics),  # before {name}: "stats" is no model
                web.get("/v2/repository/index", self._repository_index),
                web.post("/v2/repository/index", self._repository_index),
                *status_routes(router.mesh_status, status_limits),
                web.get("/mesh/status", self._status),
                web.get("/mesh/models", self._models),
                web.get("/mesh/pools", self._pools),
                web.get("/mesh/front", self._front),
                web.get("/mesh/loads", self._loads),
                web.get(model + "/ready", self._model_ready),
                web.get(versioned + "/ready", self._model_ready),
                *(
                    per_model_route(base + suffix, suffix, self._forwarding(suffix))
                    for suffix in FORWARDED
                    for base in (model, versioned)
                ),
            ]
        )

    async def start(
        self,
        host: str,
        port: int,
        internal_port: int,
        tls: ssl.SSLContext | None = None,
        internal_tls: ssl.SSLContext | None = None,
        to_peers_tls: ssl.SSLContext | None = None,
    ) -> None:
        """Both listeners, each behind a connection guard (fronts/server_limits.py): cap, request deadline.
        With TLS: ``tls`` on the public port, ``internal_tls`` (pod certificates only) on the peers' one, and
        ``to_peers_tls`` for this pod's calls to theirs."""
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._to_peers_tls = to_peers_tls
        internal_limits = replace(self.limits, max_header_list_bytes=2 * self.limits.max_header_list_bytes)
        for app, app_port, limits, context in (
            (self.app, port, self.limits, tls),
            (self.internal_app, internal_port, internal_limits, internal_tls),
        ):
            runner = web.AppRunner(app, **limits.handler_args())
            await runner.setup()
            self._runners.append(runner)
            listener = GuardedListener(runner, limits)
            await listener.start(host, app_port, tls=context)
            self._listeners.append(listener)

    async def stop(self) -> None:
        for listener in self._listeners:
            listener.close()
        for runner in self._runners:
            await runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _live(self, request: web.Request) -> web.Response:
        return json_response({"live": True} if request.path.endswith("live") else {"ready": True})

    async def _server_metadata(self, request: web.Request) -> web.Response:
        return json_response(self._metadata)

    async def _pools(self, request: web.Request) -> web.Response:
        """Per pool: pods, capacity and use, request rate, models that could not be placed."""
        return json_response({pool: asdict(stats) for pool, stats in self._router.pool_stats().items()})

    async def _status(self, request: web.Request) -> web.Response:
        """Pods and what each holds, model counts, vmodels, loads in progress, recent failures, the leader."""
        return json_response(self._router.mesh_status())

    async def _models(self, request: web.Request) -> web.Response:
        """Registered models and their state; ``state``, ``pod`` and ``limit`` narrow the list."""
        state, pod, limit = (request.query.get(name) for name in ("state", "pod", "limit"))
        if state is not None and state not in MODEL_STATES:
            return error(400, f"state must be one of {', '.join(MODEL_STATES)}")
        if limit is not None and not limit.isdigit():
            return error(400, "limit must be a number of models")
        views = self._router.list_models(state, pod, int(limit) if limit is not None else None)
        return json_response([asdict(view) for view in views])

    async def _front(self, request: web.Request) -> web.Response:
        """--front=h2: gRPC streams answered on the fast path, relayed to grpc.aio, and replayed there."""
        if self._front_counts is None:
            return error(404, "this pod runs the grpc.aio front (--front=grpc)")
        return json_response(self._front_counts())

    async def _loads(self, request: web.Request) -> web.Response:
        """Where this pod's recent loads spent their time: the runtime's part, the queue, the mesh's own."""
        if self._load_timings is None:
            return error(404, "no load timings on this pod")
        last = request.query.get("last", "")
        if last and not last.isdigit():
            return error(400, "last must be a number of loads")
        return json_response(self._load_timings(int(last) if last else None))

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
        return json_response({"name": target.id, "ready": ready}, status=200 if ready else 400)

    async def _repository_index(self, request: web.Request) -> web.Response:
        """Every registered model and its state in the mesh (Triton's REST index); ``{"ready": true}``
        in a POST body keeps only the READY ones. Answered from this pod's view: no runtime is asked."""
        ready_only = False
        if request.method == "POST":
            body = await self._read_body(request)
            if isinstance(body, web.Response):
                return body
            if content_encoded(request.headers):  # the one body the mesh reads itself: it decodes none
                return error(415, "the repository index request body must not be encoded")
            try:
                ready_only = index_ready_only(body)
            except ValueError as e:
                return error(400, str(e))
        return json_response(index_json(self._router.repository_index(ready_only)))

    def _forwarding(self, suffix: str) -> Handler:
        method = GRPC_METHOD[suffix]

        async def forward(request: web.Request) -> web.StreamResponse:
            """Counted and logged as the gRPC method it is; ``_forward`` routes it."""
            started, served = time.monotonic(), ["", ""]  # model id, pod
            response: web.StreamResponse | None = None
            try:
                response = await self._forward(request, suffix, served)
                return response
            finally:
                status = (
                    grpc_code(response.status) if response is not None else grpc.StatusCode.CANCELLED.value[0]
                )
                ms = (time.monotonic() - started) * 1000
                body = response.body if isinstance(response, web.Response) else None
                size = len(body) if isinstance(body, bytes) else None
                model_id = served[0] if status == 0 else ""  # made-up ids make no series
                self._metrics.request(method, status, ms, request.content_length or 0, size, model_id)
                self._requests.served(method, served[0], served[1], status, ms, request.headers.items())

        return forward

    def _serving_forwarded(self, suffix: str) -> Handler:
        async def serve(request: web.Request) -> web.Response:
            return await self._serve_forwarded(request, suffix)

        return serve

    async def _forward(self, request: web.Request, suffix: str, served: list[str]) -> web.StreamResponse:
        """A per-model path (``suffix``: metadata, infer, config, stats), routed like an inference: to the
        runtime here or a holder's internal REST port, loading the model first if no pod has it."""
        if self._session is None or not self._runtime_base:
            return error(501, "REST inference needs the runtime's REST address (--runtime-rest)")
        body = await self._read_body(request, check_json=suffix == INFER)
        if isinstance(body, web.Response):
            return body
        try:
            model_id = served[0] = await self._router.model_id_after_miss(self._target(request))
            if suffix == STATS and not self._router.loaded_somewhere(model_id):
                return json_response(empty_statistics(model_id, request.match_info.get("version", "")))

            async def here() -> web.Response:
                served[1] = self._router.pod_id
                response = await self._call(
                    self._runtime_base, request, model_id, suffix, body, internal=False
                )
                return acted_on(from_runtime_http(response.status), response, "runtime unavailable")

            async def there(pod_id: str, avoid: frozenset[str]) -> web.Response:
                served[1] = pod_id
                rest_address = self._router.instance(pod_id).internal_rest_address
                if not rest_address:
                    raise Reroute(MeshError(grpc.StatusCode.UNAVAILABLE, f"pod {pod_id} serves no REST"))
                base = f"{'https' if self._to_peers_tls else 'http'}://{rest_address}"
                response = await self._call(base, request, model_id, suffix, body, internal=True, avoid=avoid)
                return acted_on(from_peer_http(response.status, response.headers), response)

            return await self._router.route(model_id, None, here, there)
        except RuntimeReply as reply:  # the runtime has the model: its 404 is the request's own
            return reply.response
        except MESH_ERRORS as e:
            return http_error(e)

    async def _serve_forwarded(self, request: web.Request, suffix: str) -> web.Response:
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
            response = await self._call(self._runtime_base, request, model_id, suffix, body, internal=False)
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
        """The body as it came, within the size limit and the request deadline; or the error to answer."""
        return await read_body(request, self._max_body_bytes, self.limits.request_read_timeout_s, check_json)

    async def _all_statistics(self, request: web.Request) -> web.Response:
        """Statistics naming no model (perf_analyzer asks so): this pod's runtime's own, for the models it
        holds; a runtime without the route (MLServer) answers for itself."""
        if self._session is None or not self._runtime_base:
            return error(501, "REST needs the runtime's REST address (--runtime-rest)")
        try:
            async with self._session.get(
                self._runtime_base + "/v2/models/stats",
                headers=forwarded_headers(request.headers),
                params=request.query,
                skip_auto_headers=_NOT_ADDED,
            ) as upstream:
                payload = await upstream.read()
                return upstream_answer(upstream.status, upstream.headers, payload, from_peer=False)
        except aiohttp.ClientError as e:
            return error(503, f"runtime unreachable: {e}")

    async def _call(
        self,
        base: str,
        request: web.Request,
        model_id: str,
        suffix: str,
        body: bytes,
        internal: bool,
        avoid: frozenset[str] = frozenset(),
    ) -> web.Response:
        """Send the request to a runtime or a peer gateway, with the concrete id in the path; the body and
        headers go as they came, and the answer's come back so."""
        assert self._session is not None
        path = model_path(model_id, request.match_info.get("version"), suffix)
        headers = forwarded_headers(request.headers)
        if internal:
            headers[INTERNAL_MODEL_HEADER] = model_id
            if avoid:
                headers[AVOID_HEADER] = ",".join(sorted(avoid))
        started, status = time.monotonic(), grpc.StatusCode.UNAVAILABLE.value[0]
        peer_tls: ssl.SSLContext | bool = self._to_peers_tls if internal and self._to_peers_tls else True
        try:
            async with self._session.request(
                request.method,
                base + path,
                data=body or None,
                headers=headers,
                params=request.query,
                skip_auto_headers=_NOT_ADDED,
                ssl=peer_tls,  # True: the default (for the runtime on loopback: plain http)
            ) as upstream:
                payload = await upstream.read()  # as it came: the session decodes nothing
                status = grpc_code(upstream.status)
                return upstream_answer(upstream.status, upstream.headers, payload, from_peer=internal)
        except aiohttp.ClientError as e:
            raise Reroute(
                MeshError(grpc.StatusCode.UNAVAILABLE, f"unreachable: {e}"), unreachable=internal
            ) from e
        finally:
            if not internal:  # this pod's runtime: invoke_model, as a gRPC call to it is
                ms = (time.monotonic() - started) * 1000
                self._metrics.invoked(GRPC_METHOD[suffix], status, ms, model_id)


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
    message = unavailable or answer_text(response)
    raised = outcome_exception(outcome, RuntimeReply(response), code, message)
    assert raised is not None
    raise raised
