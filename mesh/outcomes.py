"""The internal protocol between pods, and what a peer's answer means for a request (pure).

Pods forward to each other with the external protocol plus a few ``mm-internal-*`` headers and trailers,
named here; ``peer_outcome`` reads a peer's error as a ``Reroute`` (try another pod) or a ``Passthrough``
(the final answer, returned to the client as it came).
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from mesh.errors import MeshError, Reroute

INTERNAL_PREFIX = "mm-internal-"
# Set on a peer's own UNAVAILABLE answer (its runtime is down): the peer itself is fine.
RUNTIME_DOWN_TRAILER = "mm-internal-runtime-down"
# The concrete model id a forwarded request is for.
INTERNAL_MODEL_HEADER = "mm-internal-model"
# Set by a pod that would not load a model because another pod has claimed the load: that pod's id.
REDIRECT_TRAILER = "mm-internal-redirect"
# Set on errors that are a failed load (so the sender may try another pod), not the runtime's answer.
LOAD_FAILED_TRAILER = "mm-internal-load-failed"
# On LOAD_METHOD: load an extra copy even though other pods hold the model (scale-up by request rate).
COPY_HEADER = "mm-internal-copy"
# Pods the sender found unreachable for this request, comma-separated.
AVOID_HEADER = "mm-internal-avoid"
# Internal-only method: make sure the model is loaded on the receiving pod (management ensureLoaded).
LOAD_METHOD = "/mmesh.internal.Peer/ensureLoaded"

Metadata = Sequence[tuple[str, str | bytes]]


class Passthrough(Exception):
    """A final answer from a runtime or a peer, returned to the client as it came."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(error.details())
        self.code = error.code()
        self.details = error.details() or ""


def peer_outcome(error: grpc.aio.AioRpcError) -> Exception:
    """What a peer's error means for the request: try another pod (Reroute), or return it (Passthrough)."""
    redirect = trailer(error, REDIRECT_TRAILER)
    if error.code() == grpc.StatusCode.ABORTED and redirect:
        return Reroute(MeshError(error.code(), error.details() or ""), exclude=False, prefer=redirect)
    if error.code() == grpc.StatusCode.UNAVAILABLE or (
        error.code() == grpc.StatusCode.INTERNAL and trailer(error, LOAD_FAILED_TRAILER)
    ):
        # Every answer a pod gives itself carries an mm-internal trailer; without one, the pod never answered.
        # A pod whose runtime is down answers, but cannot serve anything either.
        answered = any(k.startswith(INTERNAL_PREFIX) for k, _ in error.trailing_metadata() or ())
        useless = not answered or trailer(error, RUNTIME_DOWN_TRAILER) is not None
        return Reroute(MeshError(error.code(), error.details() or ""), unreachable=useless)
    return Passthrough(error)


def trailer(error: grpc.aio.AioRpcError, key: str) -> str | None:
    for k, v in error.trailing_metadata() or ():
        if k == key:
            return v.decode() if isinstance(v, bytes) else str(v)
    return None
