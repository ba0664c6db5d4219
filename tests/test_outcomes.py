"""What an answer means (mesh/outcomes.py): every decoder over a table of answers, and the status mapping."""

from __future__ import annotations

import grpc
import pytest

from mesh.errors import MeshError, Reroute, StoreError
from mesh.outcomes import (
    COPY_LOST,
    LOAD_FAILED_TRAILER,
    OK,
    PASS_THROUGH,
    REDIRECT_TRAILER,
    RUNTIME_ANSWER_TRAILER,
    RUNTIME_DOWN_TRAILER,
    TRY_ANOTHER,
    Outcome,
    Passthrough,
    RuntimeNotFound,
    Verdict,
    from_http2_trailers,
    from_peer,
    from_peer_http,
    from_runtime,
    from_runtime_http,
    grpc_status,
    outcome_exception,
    says_not_found,
)
from mesh.routing.target import TargetError
from mesh.routing.wire import WireFormatError

S = grpc.StatusCode


def code(status: grpc.StatusCode) -> int:
    return status.value[0]


@pytest.mark.parametrize(
    ("status", "details", "want"),
    [
        (S.OK, "", OK),
        (S.NOT_FOUND, "Model m with version 7 not found", COPY_LOST),
        (S.NOT_FOUND, "", COPY_LOST),
        (S.UNAVAILABLE, "Request for unknown model: 'm' is not found", COPY_LOST),  # Triton
        (S.UNAVAILABLE, "failed to connect to all addresses", TRY_ANOTHER),
        (S.UNAVAILABLE, "DNS resolution failed: Domain name not found", TRY_ANOTHER),  # names no model
        (S.INVALID_ARGUMENT, "unexpected inference input 'x'", PASS_THROUGH),
        (S.UNKNOWN, "model m not found", PASS_THROUGH),  # MLServer's error for a bad tensor says more
        (S.INTERNAL, "the model raised", PASS_THROUGH),
        (S.RESOURCE_EXHAUSTED, "too big", PASS_THROUGH),
        (S.DEADLINE_EXCEEDED, "", PASS_THROUGH),
    ],
)
def test_the_runtimes_grpc_answers(status: grpc.StatusCode, details: str, want: Outcome) -> None:
    assert from_runtime(code(status), details) == want
    assert says_not_found(code(status), details) == (want == COPY_LOST)


@pytest.mark.parametrize(
    ("status", "trailers", "want"),
    [
        (S.OK, {}, OK),
        (S.ABORTED, {REDIRECT_TRAILER: "pod-c"}, Outcome(Verdict.TRY_ANOTHER, prefer="pod-c")),
        (S.ABORTED, {}, PASS_THROUGH),  # no pod named: the client's answer
        (S.ABORTED, {REDIRECT_TRAILER: ""}, PASS_THROUGH),
        (S.UNAVAILABLE, {}, Outcome(Verdict.TRY_ANOTHER, unreachable=True)),  # the pod never answered
        (S.UNAVAILABLE, {LOAD_FAILED_TRAILER: "1"}, TRY_ANOTHER),  # it answered: it is alive
        (S.UNAVAILABLE, {RUNTIME_DOWN_TRAILER: "1"}, Outcome(Verdict.TRY_ANOTHER, unreachable=True)),
        (S.INTERNAL, {LOAD_FAILED_TRAILER: "1"}, TRY_ANOTHER),
        (S.INTERNAL, {}, PASS_THROUGH),  # the runtime's own INTERNAL
        (S.NOT_FOUND, {RUNTIME_ANSWER_TRAILER: "1"}, PASS_THROUGH),
        (S.UNAVAILABLE, {RUNTIME_ANSWER_TRAILER: "1"}, PASS_THROUGH),  # checked there: final
        (S.FAILED_PRECONDITION, {LOAD_FAILED_TRAILER: "1"}, PASS_THROUGH),  # cannot load anywhere
        (S.INVALID_ARGUMENT, {}, PASS_THROUGH),
    ],
)
def test_a_peers_grpc_answers(status: grpc.StatusCode, trailers: dict[str, str], want: Outcome) -> None:
    assert from_peer(code(status), trailers) == want


@pytest.mark.parametrize(
    ("trailers", "via_peer", "route_decides"),
    [
        ([(b"grpc-status", b"0")], False, False),
        ([(b"grpc-status", b"5"), (b"grpc-message", b"not%20found")], False, True),
        ([(b"grpc-status", b"14")], False, True),
        ([(b"grpc-status", b"3")], False, False),
        ([(b"grpc-status", b"14")], True, True),
        ([(b"grpc-status", b"10"), (REDIRECT_TRAILER.encode(), b"pod-b")], True, True),
        ([(b"grpc-status", b"13"), (LOAD_FAILED_TRAILER.encode(), b"1")], True, True),
        ([(b"grpc-status", b"13")], True, False),
        ([(b"grpc-status", b"5"), (RUNTIME_ANSWER_TRAILER.encode(), b"1")], True, False),
        ([(b"grpc-status", b"x")], False, False),  # not a number: UNKNOWN, the client's
        ([], True, False),  # no status at all: UNKNOWN
    ],
)
def test_http2_trailers_read_as_the_grpc_decoders_do(
    trailers: list[tuple[bytes, bytes]], via_peer: bool, route_decides: bool
) -> None:
    assert from_http2_trailers(trailers, via_peer).route_decides is route_decides


@pytest.mark.parametrize(
    ("status", "runtime", "peer_headers", "peer"),
    [
        (200, OK, {}, OK),
        (404, COPY_LOST, {}, PASS_THROUGH),  # from a peer: its runtime's answer, checked there
        (503, TRY_ANOTHER, {}, TRY_ANOTHER),
        (409, PASS_THROUGH, {REDIRECT_TRAILER: "pod-c"}, Outcome(Verdict.TRY_ANOTHER, prefer="pod-c")),
        (500, PASS_THROUGH, {LOAD_FAILED_TRAILER: "1"}, TRY_ANOTHER),
        (500, PASS_THROUGH, {}, PASS_THROUGH),
        (400, PASS_THROUGH, {}, PASS_THROUGH),
    ],
)
def test_rest_answers(status: int, runtime: Outcome, peer_headers: dict[str, str], peer: Outcome) -> None:
    assert from_runtime_http(status) == runtime
    assert from_peer_http(status, peer_headers) == peer


def test_outcomes_become_what_the_route_loop_acts_on() -> None:
    answer = Passthrough(S.NOT_FOUND, "version 7 not found")
    lost = outcome_exception(COPY_LOST, answer, S.NOT_FOUND, "version 7 not found")
    assert isinstance(lost, RuntimeNotFound) and lost.answer is answer
    assert lost.said == "NOT_FOUND version 7 not found"
    redirect = outcome_exception(Outcome(Verdict.TRY_ANOTHER, prefer="c"), answer, S.ABORTED, "claimed")
    assert isinstance(redirect, Reroute)
    assert (redirect.prefer, redirect.exclude, redirect.unreachable) == ("c", False, False)
    down = outcome_exception(Outcome(Verdict.TRY_ANOTHER, unreachable=True), answer, S.UNAVAILABLE, "gone")
    assert isinstance(down, Reroute) and down.exclude and down.unreachable
    assert down.error.code is S.UNAVAILABLE and down.error.message == "gone"
    assert outcome_exception(PASS_THROUGH, answer, S.NOT_FOUND, "") is answer
    assert outcome_exception(OK, answer, S.OK, "") is None


def test_said_is_bounded() -> None:
    assert len(RuntimeNotFound(ValueError(), "x" * 10_000).said) == 512


@pytest.mark.parametrize(
    ("error", "want"),
    [
        (MeshError(S.NOT_FOUND, "model not found: m"), (S.NOT_FOUND, "model not found: m")),
        (Reroute(MeshError(S.UNAVAILABLE, "pod b is gone")), (S.UNAVAILABLE, "pod b is gone")),
        (Passthrough(S.OUT_OF_RANGE, "the runtime's own"), (S.OUT_OF_RANGE, "the runtime's own")),
        (TargetError("no model id"), (S.INVALID_ARGUMENT, "no model id")),
        (WireFormatError("truncated varint"), (S.INVALID_ARGUMENT, "malformed request: truncated varint")),
        (StoreError("UNAVAILABLE: down"), (S.UNAVAILABLE, "etcd unavailable: UNAVAILABLE: down")),
    ],
)
def test_one_mapping_from_the_mesh_errors_to_grpc_status(
    error: Exception, want: tuple[grpc.StatusCode, str]
) -> None:
    assert grpc_status(error) == want


def test_an_error_the_mesh_does_not_know_is_not_dressed_up() -> None:
    with pytest.raises(KeyError):
        grpc_status(KeyError("a bug"))
