"""What an answer means for a request, and how the mesh's errors reach a client (pure, but for ``abort``).

One vocabulary for every answer a pod gets from its runtime or from a peer, whatever the transport:

- ``OK``: the answer is the client's.
- ``COPY_LOST``: the runtime said "not found" for a model this pod holds. It may have lost the copy, or the
  request may ask for a version or input the model lacks; the runtime is asked (mesh/models/copies.py),
  and the copy is reloaded once, or the answer goes to the client unchanged.
- ``TRY_ANOTHER``: this copy cannot serve now (the runtime or the pod is down, the pod's load failed, or it
  names the pod that claimed the load: ``prefer``); another copy or pod may.
- ``PASS_THROUGH``: the answer is the client's as it came, whatever its code.

One decoder per transport and side: ``from_runtime`` / ``from_peer`` for a gRPC status (a grpc.aio error,
or HTTP/2 trailers read by the front), ``from_runtime_http`` / ``from_peer_http`` for a REST answer. Every
front acts on these; ``grpc_status`` is the one mapping from the mesh's exceptions to a gRPC status.

Pods forward to each other with the external protocol plus a few ``mm-internal-*`` headers and trailers,
named here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import grpc

from mesh.errors import BadRequest, MeshError, Reroute, StoreError

INTERNAL_PREFIX = "mm-internal-"
# Set on a peer's own UNAVAILABLE answer (its runtime is down): the peer itself is fine.
RUNTIME_DOWN_TRAILER = "mm-internal-runtime-down"
# The concrete model id a forwarded request is for.
INTERNAL_MODEL_HEADER = "mm-internal-model"
# Set by a pod that would not load a model because another pod has claimed the load: that pod's id.
REDIRECT_TRAILER = "mm-internal-redirect"
# Set on errors that are a failed load (so the sender may try another pod), not the runtime's answer.
LOAD_FAILED_TRAILER = "mm-internal-load-failed"
# Set by a pod on a runtime answer it passed through after the check (the request's own error): the sender
# returns it as it came, even when its code (Triton's UNAVAILABLE "... not found") would otherwise reroute.
RUNTIME_ANSWER_TRAILER = "mm-internal-runtime-answer"
# On LOAD_METHOD: load an extra copy even though other pods hold the model (scale-up by request rate).
COPY_HEADER = "mm-internal-copy"
# Pods the sender found unreachable for this request, comma-separated.
AVOID_HEADER = "mm-internal-avoid"
# Internal-only method: make sure the model is loaded on the receiving pod (management ensureLoaded).
LOAD_METHOD = "/mmesh.internal.Peer/ensureLoaded"

Metadata = Sequence[tuple[str, str | bytes]]
MAX_SAID_CHARS = 512  # of a "not found" answer's text, kept to recognise it (mesh/models/copies.py)
OK_CODE = grpc.StatusCode.OK.value[0]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
ABORTED = grpc.StatusCode.ABORTED.value[0]
INTERNAL = grpc.StatusCode.INTERNAL.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
UNKNOWN = grpc.StatusCode.UNKNOWN.value[0]
_INTERNAL_PREFIX_BYTES = INTERNAL_PREFIX.encode()
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class Verdict(Enum):
    OK = "ok"
    COPY_LOST = "copy lost?"
    TRY_ANOTHER = "try another copy"
    PASS_THROUGH = "pass through"


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    prefer: str | None = None  # TRY_ANOTHER: the pod that claimed the load (try it next, this one too)
    unreachable: bool = False  # TRY_ANOTHER: the pod did not answer, or cannot serve anything now

    @property
    def route_decides(self) -> bool:
        """The route acts on this answer (reload, another copy); otherwise the client gets it."""
        return self.verdict is Verdict.COPY_LOST or self.verdict is Verdict.TRY_ANOTHER


OK = Outcome(Verdict.OK)
COPY_LOST = Outcome(Verdict.COPY_LOST)
TRY_ANOTHER = Outcome(Verdict.TRY_ANOTHER)
PASS_THROUGH = Outcome(Verdict.PASS_THROUGH)


def status_code(code: int) -> grpc.StatusCode:
    return _CODES.get(code, grpc.StatusCode.UNKNOWN)


# -- gRPC status: from the runtime, from a peer ----------------------------------------------------
def says_not_found(code: int, details: str) -> bool:
    """A runtime's answer that says it has no such model (or version): NOT_FOUND, or UNAVAILABLE saying a
    model is "not found" (what some Triton versions answer for an unknown model or version; a transport's
    UNAVAILABLE, a DNS "domain name not found" say, names no model and still means the runtime is down)."""
    if code == NOT_FOUND:
        return True
    text = details.lower()
    return code == UNAVAILABLE and "not found" in text and "model" in text


def from_runtime(code: int, details: str) -> Outcome:
    """This pod's runtime answered a request for a model it holds with status ``code``."""
    if code == OK_CODE:
        return OK
    if says_not_found(code, details):
        return COPY_LOST
    if code == UNAVAILABLE:  # the runtime is down: another pod may serve it
        return TRY_ANOTHER
    return PASS_THROUGH


def from_peer(code: int, trailers: Mapping[str, str]) -> Outcome:
    """A peer's answer to a forwarded request, by its status and ``mm-internal-*`` trailers."""
    if code == OK_CODE:
        return OK
    if RUNTIME_ANSWER_TRAILER in trailers:  # the peer checked: the runtime's own answer
        return PASS_THROUGH
    redirect = trailers.get(REDIRECT_TRAILER)
    if code == ABORTED and redirect:
        return Outcome(Verdict.TRY_ANOTHER, prefer=redirect)
    if code == UNAVAILABLE or (code == INTERNAL and LOAD_FAILED_TRAILER in trailers):
        # Every answer a pod gives itself carries an mm-internal trailer; without one, the pod never answered.
        # A pod whose runtime is down answers, but cannot serve anything either.
        answered = any(k.startswith(INTERNAL_PREFIX) for k in trailers)
        return Outcome(Verdict.TRY_ANOTHER, unreachable=not answered or RUNTIME_DOWN_TRAILER in trailers)
    return PASS_THROUGH


def rpc_trailers(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """A grpc.aio error's trailing metadata, text values (the decoders' input)."""
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in error.trailing_metadata() or ()}


def from_http2_trailers(trailers: Iterable[tuple[bytes, bytes]], via_peer: bool) -> Outcome:
    """A gRPC answer's trailers as the HTTP/2 front reads them (raw header fields), from the runtime or,
    ``via_peer``, from a peer. (grpc-message is not decoded: no verdict here turns on it.)"""
    code = UNKNOWN
    internal: dict[str, str] = {}
    for key, value in trailers:
        if key == b"grpc-status":
            code = int(value) if value.isdigit() else UNKNOWN
        elif key.startswith(_INTERNAL_PREFIX_BYTES):
            internal[key.decode("latin-1")] = value.decode("latin-1")
    if via_peer:
        return from_peer(code, internal)
    return TRY_ANOTHER if code == UNAVAILABLE else from_runtime(code, "")  # down, or Triton's "not found"


# -- HTTP: from the runtime's REST port, from a peer's --------------------------------------------
def from_runtime_http(status: int) -> Outcome:
    if status < 400:
        return OK
    if status == 404:  # MLServer and Triton: no such model (or version)
        return COPY_LOST
    if status == 503:
        return TRY_ANOTHER
    return PASS_THROUGH


def from_peer_http(status: int, headers: Mapping[str, str]) -> Outcome:
    if status < 400:
        return OK
    if status == 409 and headers.get(REDIRECT_TRAILER):
        return Outcome(Verdict.TRY_ANOTHER, prefer=headers[REDIRECT_TRAILER])
    if status == 503 or (status == 500 and LOAD_FAILED_TRAILER in headers):
        return TRY_ANOTHER
    return PASS_THROUGH


# -- outcomes as the exceptions the route's loop acts on ------------------------------------------
class Passthrough(Exception):
    """A final gRPC answer from a runtime or a peer, returned to the client as it came."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details

    @classmethod
    def of(cls, error: grpc.aio.AioRpcError) -> Passthrough:
        return cls(error.code(), error.details() or "")


class RuntimeNotFound(Exception):
    """COPY_LOST: the runtime answered "not found" for a model this pod holds; the copy check says what
    that means. ``answer`` is the runtime's own answer, given to the client when the model is there after
    all; ``said`` is that answer as text (code and message), what a "ready" verdict is remembered by.
    """

    def __init__(self, answer: Exception, said: str) -> None:
        super().__init__(said)
        self.answer = answer
        self.said = said[:MAX_SAID_CHARS]


def outcome_exception(
    outcome: Outcome, answer: Exception, code: grpc.StatusCode, message: str
) -> Exception | None:
    """What the route acts on for ``outcome``: the answer ``answer`` (status ``code``, ``message``) as
    RuntimeNotFound, Reroute or itself (pass through); None for OK."""
    if outcome.verdict is Verdict.COPY_LOST:
        return RuntimeNotFound(answer, f"{code.name} {message}")
    if outcome.verdict is Verdict.TRY_ANOTHER:
        return Reroute(
            MeshError(code, message),
            exclude=outcome.prefer is None,
            prefer=outcome.prefer,
            unreachable=outcome.unreachable,
        )
    if outcome.verdict is Verdict.PASS_THROUGH:
        return answer
    return None


def runtime_error(error: grpc.aio.AioRpcError) -> Exception:
    """This pod's runtime's gRPC error, as the exception the route acts on."""
    outcome = from_runtime(error.code().value[0], error.details() or "")
    details = error.details() or ""
    message = f"runtime unavailable: {details}" if outcome.verdict is Verdict.TRY_ANOTHER else details
    return outcome_exception(outcome, Passthrough.of(error), error.code(), message) or Passthrough.of(error)


def peer_error(error: grpc.aio.AioRpcError) -> Exception:
    """A peer's gRPC error, as the exception the route acts on."""
    outcome = from_peer(error.code().value[0], rpc_trailers(error))
    answer = Passthrough.of(error)
    return outcome_exception(outcome, answer, error.code(), answer.details) or answer


# -- the mesh's exceptions -> gRPC status ----------------------------------------------------------
def grpc_status(error: Exception) -> tuple[grpc.StatusCode, str]:
    """The one mapping from what the mesh raises to the status a client gets. Anything else is a bug."""
    if isinstance(error, MeshError):
        return error.code, error.message
    if isinstance(error, Reroute):  # nowhere left to try
        return error.error.code, error.error.message
    if isinstance(error, Passthrough):
        return error.code, error.details
    if isinstance(error, BadRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, error.client_message()
    if isinstance(error, StoreError):
        return grpc.StatusCode.UNAVAILABLE, f"etcd unavailable: {error or type(error).__name__}"
    raise error


MESH_ERRORS = (MeshError, Reroute, Passthrough, BadRequest, StoreError)


async def abort(context: grpc.aio.ServicerContext, error: Exception, trailers: Metadata = ()) -> None:
    """End the call with ``error``'s status (``grpc_status``); never returns."""
    code, message = grpc_status(error)
    await context.abort(code, message, trailing_metadata=tuple(trailers))
