"""Where a request goes: the one decision every front asks (pure).

Given what this process knows (the model's record in its view, the live pods, the state of this pod's
own copy, the in-flight book) and what the request has learned so far (pods to avoid, a pod that claimed
the load), ``decide_route`` answers one of:

- ``ServeHere``: this pod's runtime has a ready copy; send it the request.
- ``ForwardTo(pod)``: a live peer holds a copy; send the request to its internal port.
- ``LoadOn(pod)``: no copy can take the request now. This pod's id: load here (or wait for the load in
  progress), then serve. A peer's id: forward; that peer loads the model, then serves.
- ``Refuse(code, message)``: nothing can serve it; the request's answer is this error.

The fronts' fast paths (the HTTP/2 front, the serving processes) act on ServeHere and ForwardTo and hand
everything else to the main process's ``Router``, which acts on all four inside its retry loop.

Copies: the least busy by the in-flight book (requests this process has in flight, per pod, whatever the
model), ties rotating with ``turn`` so that even sequential traffic uses every copy.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum

import grpc

from mesh.registry.records import InstanceRecord, ModelRecord
from mesh.registry.status import unexpired_failures
from mesh.routing.placement import choose_load_target, serves_type


class CopyHere(Enum):
    """This pod's own copy of the model, as the deciding process knows it."""

    NONE = "none"
    LOADING = "loading"  # a load is in progress here (the main process only knows this)
    READY = "ready"  # the runtime has it: the main process's loader says so, a serving process's view


@dataclass(frozen=True, slots=True)
class ServeHere:
    pass


@dataclass(frozen=True, slots=True)
class ForwardTo:
    pod: str


@dataclass(frozen=True, slots=True)
class LoadOn:
    pod: str


@dataclass(frozen=True, slots=True)
class Refuse:
    code: grpc.StatusCode
    message: str
    no_placement: bool = False  # no live pod serves the model's type: nothing changes until an operator acts


Route = ServeHere | ForwardTo | LoadOn | Refuse
SERVE_HERE = ServeHere()


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    """When recent load failures stop new load attempts (``MM_LOAD_FAILURE_EXPIRY_TIME_MS`` and friends)."""

    expiry_ms: int = 600_000
    max_failures: int = 3


def least_busy(pods: list[str], in_flight: Mapping[str, int], turn: int) -> str:
    """The pod with the fewest requests in flight; among equals, the one ``turn`` comes to first."""
    start = turn % len(pods)
    ordered = pods[start:] + pods[:start]
    return min(ordered, key=lambda p: in_flight.get(p, 0))


def decide_route(
    pod_id: str,
    model_id: str,
    record: ModelRecord | None,
    live: Mapping[str, InstanceRecord],
    here: CopyHere,
    in_flight: Mapping[str, int],
    *,
    avoid: Collection[str] = (),
    preferred: str | None = None,
    turn: int = 0,
    only_here: bool = False,
    now_ms: int = 0,
    failures: FailurePolicy | None = None,
) -> Route:
    """The route for one attempt at a request for the concrete ``model_id`` (see the module docstring).

    ``avoid``: pods this request must not try (they failed it). ``preferred``: the pod a peer named as
    loading the model. ``only_here``: a peer forwarded the request; it is served or loaded here, never
    forwarded again.
    """
    if only_here:
        return SERVE_HERE if here is CopyHere.READY else LoadOn(pod_id)
    here_ok = pod_id not in avoid
    ready_here = here_ok and here is CopyHere.READY
    if record is None:  # a copy loaded here a moment ago may be ahead of this view; otherwise unknown
        return SERVE_HERE if ready_here else Refuse(grpc.StatusCode.NOT_FOUND, f"model not found: {model_id}")
    if preferred is not None and preferred in live and preferred not in avoid:
        if preferred == pod_id:
            return SERVE_HERE if ready_here else LoadOn(pod_id)
        return ForwardTo(preferred) if preferred in record.holders else LoadOn(preferred)
    holders = [p for p in record.holders if p != pod_id and p in live and p not in avoid]
    if ready_here:
        holders.append(pod_id)  # even before the registry lists it: the runtime has the copy
    if holders:  # a copy elsewhere beats waiting for one being loaded here
        pod = holders[0] if len(holders) == 1 else least_busy(sorted(holders), in_flight, turn)
        return SERVE_HERE if pod == pod_id else ForwardTo(pod)
    if here_ok and (here is CopyHere.LOADING or (pod_id in record.holders and pod_id in live)):
        return LoadOn(pod_id)  # on its way here (or listed here and lost: the load repairs it)
    loading = [p for p in record.loading if p in live and p not in avoid]
    if loading:
        return LoadOn(loading[0])
    return placement(model_id, record, live, avoid, now_ms, failures or FailurePolicy())


def placement(
    model_id: str,
    record: ModelRecord,
    live: Mapping[str, InstanceRecord],
    avoid: Collection[str],
    now_ms: int,
    policy: FailurePolicy,
) -> LoadOn | Refuse:
    """No copy anywhere: the pod to load it on, or why none can (pods with an unexpired failure pass)."""
    failed = unexpired_failures(record, now_ms, policy.expiry_ms)
    newest = max(failed.values(), key=lambda f: f.time_ms, default=None)
    if newest is not None and len(failed) >= policy.max_failures:
        return Refuse(grpc.StatusCode[newest.code], newest.message)
    target = choose_load_target(model_id, record.type, live, set(avoid) | set(failed))
    if target is not None:
        return LoadOn(target)
    if newest is not None:
        return Refuse(grpc.StatusCode[newest.code], newest.message)
    if live and not any(serves_type(instance, record.type) for instance in live.values()):
        # Only this needs an operator (a pool for the type); busy, stopping or runtime-less pods pass.
        message = f"no pod serves model type '{record.type}'"
        return Refuse(grpc.StatusCode.FAILED_PRECONDITION, message, no_placement=True)
    return Refuse(grpc.StatusCode.UNAVAILABLE, f"no pod can load {model_id} now")
