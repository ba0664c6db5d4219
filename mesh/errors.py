"""Errors the mesh answers with, and the rule for load failures (docs/ARCHITECTURE.md, the error rule).

Load failures: FAILED_PRECONDITION when the request cannot succeed until an
operator acts on the model's definition or the pool (the adapter rejected the
model without trying to load it, the model is larger than the pod's whole
capacity); INTERNAL for everything else (runtime error during the load, load
timeout), as ModelMesh does. The message is the failure's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


class BadRequest(ValueError):
    """The request itself is wrong (INVALID_ARGUMENT): which model it is for is unclear, or its bytes do not
    parse. ``what`` prefixes the message a client gets."""

    what = ""

    def client_message(self) -> str:
        return f"{self.what}{self}"


class MeshError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Codes from the adapter's loadModel that mean "no load was attempted": the model itself is wrong.
REJECTED_BY_ADAPTER = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION})


def load_failure_code(adapter_code: grpc.StatusCode | None) -> grpc.StatusCode:
    if adapter_code in REJECTED_BY_ADAPTER:
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


@dataclass
class Reroute(Exception):
    """What a serve-there callable raises when another pod should be tried."""

    error: MeshError
    exclude: bool = True  # the pod failed: do not try it again for this request
    prefer: str | None = None  # the pod to try next (it has claimed the load)
    unreachable: bool = False  # the pod did not answer at all (not: answered that it cannot serve)


class StoreError(Exception):
    """etcd could not do what was asked (unreachable, refused, timed out): the client may try again.

    ``code``: etcd's gRPC status, when the error came from a call.
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code
