"""The route decision (mesh/routing/decision.py): one table of situations and the route each must get."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import pytest

from mesh.registry.records import InstanceRecord, LoadFailure, ModelRecord
from mesh.routing.decision import (
    CopyHere,
    FailurePolicy,
    ForwardTo,
    LoadOn,
    Refuse,
    Route,
    ServeHere,
    decide_route,
    least_busy,
)
from mesh.routing.inflight import InFlightBook

NOW_MS = 10_000_000
GiB = 1 << 30


def pod(models: int = 0, types: tuple[str, ...] = ("sk",), free: int = GiB) -> InstanceRecord:
    return InstanceRecord(
        address="127.0.0.1:1",
        internal_address="127.0.0.1:2",
        capacity_bytes=GiB,
        used_bytes=GiB - free,
        runtime_types=list(types),
        model_count=models,
    )


# Placement's order, all else equal: fewest models first, so a (0), then b (1), then c (2).
MODELS_HELD = {"a": 0, "b": 1, "c": 2}


def failure(age_ms: int = 0, code: str = "INTERNAL") -> LoadFailure:
    return LoadFailure(time_ms=NOW_MS - age_ms, message=f"failed {age_ms} ms ago", code=code)


@dataclass
class Case:
    name: str
    want: Route
    holders: tuple[str, ...] | None = ()  # None: the view has no record of the model
    loading: tuple[str, ...] = ()
    failures: dict[str, LoadFailure] = field(default_factory=dict)
    live: tuple[str, ...] = ("a", "b", "c")
    here: CopyHere = CopyHere.NONE
    in_flight: dict[str, int] = field(default_factory=dict)
    avoid: tuple[str, ...] = ()
    preferred: str | None = None
    turn: int = 0
    only_here: bool = False
    model_type: str = "sk"
    pods: dict[str, InstanceRecord] = field(default_factory=dict)  # overrides of pod()


HERE = ServeHere()
CASES = [
    # -- a copy is ready here
    Case("only copy here", HERE, holders=("a",), here=CopyHere.READY),
    Case("ready here before the registry lists it", HERE, holders=(), here=CopyHere.READY),
    Case("ready here, view has no record yet", HERE, holders=None, here=CopyHere.READY),
    Case("two copies, here less busy", HERE, holders=("a", "b"), here=CopyHere.READY, in_flight={"b": 2}),
    Case(
        "two copies, here busier", ForwardTo("b"), ("a", "b"), here=CopyHere.READY, in_flight={"a": 3, "b": 1}
    ),
    Case("two copies, tie, turn 0 starts at a", HERE, holders=("a", "b"), here=CopyHere.READY, turn=0),
    Case("two copies, tie, turn 1 starts at b", ForwardTo("b"), ("a", "b"), here=CopyHere.READY, turn=1),
    Case("ready here but avoided", ForwardTo("b"), holders=("a", "b"), here=CopyHere.READY, avoid=("a",)),
    Case("a peer's slow requests count", HERE, ("a", "b"), here=CopyHere.READY, in_flight={"b": 8}),
    # -- copies elsewhere
    Case("one copy on a peer", ForwardTo("b"), holders=("b",)),
    Case("copies on two peers, c less busy", ForwardTo("c"), holders=("b", "c"), in_flight={"b": 1}),
    Case("copies on two peers, turn picks", ForwardTo("c"), holders=("b", "c"), turn=1),
    Case("holder not live", LoadOn("a"), holders=("x",)),
    Case("holder avoided: load elsewhere", LoadOn("a"), holders=("b",), avoid=("b",)),
    Case("registry lists here, copy not ready, peer has one", ForwardTo("b"), holders=("a", "b")),
    Case("registry lists here only, copy not ready: load here", LoadOn("a"), holders=("a",)),
    # -- loads in progress
    Case("loading here, no copy anywhere", LoadOn("a"), here=CopyHere.LOADING),
    Case("loading here, but a peer holds it", ForwardTo("b"), holders=("b",), here=CopyHere.LOADING),
    Case("loading on a peer", LoadOn("c"), loading=("c",)),
    Case("loading on a dead peer: placement", LoadOn("a"), loading=("x",)),
    Case("loading on an avoided peer: placement", LoadOn("a"), loading=("c",), avoid=("c",)),
    Case("loading here, here avoided", LoadOn("b"), here=CopyHere.LOADING, avoid=("a",), loading=("b",)),
    # -- a peer claimed the load (preferred)
    Case("preferred peer holds it", ForwardTo("c"), holders=("b", "c"), preferred="c"),
    Case("preferred peer is loading it", LoadOn("c"), preferred="c"),
    Case("preferred is this pod, ready", HERE, holders=("b",), here=CopyHere.READY, preferred="a"),
    Case("preferred is this pod, not ready", LoadOn("a"), holders=("b",), preferred="a"),
    Case("preferred peer is dead", ForwardTo("b"), holders=("b",), preferred="x"),
    Case("preferred peer is avoided", ForwardTo("b"), holders=("b",), preferred="c", avoid=("c",)),
    # -- placement
    Case("no copy: the pod with fewest models", LoadOn("a")),
    Case(
        "no copy: fewest models, then most room",
        LoadOn("c"),
        pods={"a": pod(3), "b": pod(1, free=GiB // 2), "c": pod(1, free=GiB)},
    ),
    Case(
        "no copy: only c serves the type", LoadOn("c"), pods={"a": pod(types=("x",)), "b": pod(types=("x",))}
    ),
    Case("no copy: failed pods pass", LoadOn("c"), failures={"a": failure(), "b": failure()}),
    Case(
        "too many recent failures: the newest one's code",
        Refuse(grpc.StatusCode.FAILED_PRECONDITION, "failed 5 ms ago"),
        failures={"a": failure(50), "b": failure(5, "FAILED_PRECONDITION"), "c": failure(70)},
    ),
    Case("old failures expire", LoadOn("a"), failures={"a": failure(700_000), "b": failure(700_000)}),
    Case(
        "every live pod failed recently",
        Refuse(grpc.StatusCode.INTERNAL, "failed 1 ms ago"),
        live=("a", "b"),
        failures={"a": failure(1), "b": failure(2)},
    ),
    Case(
        "no pod serves the type",
        Refuse(grpc.StatusCode.FAILED_PRECONDITION, "no pod serves model type 'sk'", no_placement=True),
        pods={p: pod(types=("xgb",)) for p in "abc"},
    ),
    Case(
        "every pod avoided",
        Refuse(grpc.StatusCode.UNAVAILABLE, "no pod can load m now"),
        avoid=("a", "b", "c"),
    ),
    Case("no live pods at all", Refuse(grpc.StatusCode.UNAVAILABLE, "no pod can load m now"), live=()),
    # -- unknown models
    Case("no record, nothing here", Refuse(grpc.StatusCode.NOT_FOUND, "model not found: m"), holders=None),
    Case(
        "no record, ready here but avoided",
        Refuse(grpc.StatusCode.NOT_FOUND, "model not found: m"),
        holders=None,
        here=CopyHere.READY,
        avoid=("a",),
    ),
    # -- a peer forwarded it (the internal ports)
    Case("forwarded, ready here", HERE, holders=("b",), here=CopyHere.READY, only_here=True),
    Case("forwarded, not here: load here even with copies elsewhere", LoadOn("a"), ("b",), only_here=True),
    Case("forwarded, no record: load here (the loader says why not)", LoadOn("a"), None, only_here=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide_route(case: Case) -> None:
    live = {p: case.pods.get(p, pod(MODELS_HELD[p])) for p in case.live}
    record = (
        None
        if case.holders is None
        else ModelRecord(
            type=case.model_type,
            holders={p: NOW_MS - 1000 for p in case.holders},
            loading={p: NOW_MS - 10 for p in case.loading},
            failures=dict(case.failures),
        )
    )
    route = decide_route(
        "a",
        "m",
        record,
        live,
        case.here,
        case.in_flight,
        avoid=case.avoid,
        preferred=case.preferred,
        turn=case.turn,
        only_here=case.only_here,
        now_ms=NOW_MS,
        failures=FailurePolicy(expiry_ms=600_000, max_failures=3),
    )
    assert route == case.want


def test_ties_rotate_over_every_copy() -> None:
    """Sequential traffic (nothing in flight) uses each of three copies equally."""
    picks = [least_busy(["a", "b", "c"], {}, turn) for turn in range(30)]
    assert {p: picks.count(p) for p in "abc"} == {"a": 10, "b": 10, "c": 10}


def test_least_busy_wins_over_the_rotation() -> None:
    for turn in range(10):
        assert least_busy(["a", "b", "c"], {"a": 2, "c": 1}, turn) == "b"


def test_the_book_counts_per_pod_and_forgets_idle_pods() -> None:
    book = InFlightBook()
    book.started("a")
    book.started("a")
    with book.sending("b"):
        assert dict(book.counts) == {"a": 2, "b": 1}
    book.finished("a")
    book.finished("a")
    assert dict(book.counts) == {}


def test_the_book_releases_when_the_call_fails() -> None:
    book = InFlightBook()
    with pytest.raises(RuntimeError), book.sending("b"):
        raise RuntimeError("the peer hung up")
    assert dict(book.counts) == {}
