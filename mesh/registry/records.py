"""The records kept in etcd (docs/ARCHITECTURE.md), as dataclasses with a JSON form.

Keys under ``<root>/<service>/``:
  registry/<modelId>   ModelRecord      (no lease)
  vmodels/<vModelId>   VModelRecord     (no lease)
  instances/<podId>    InstanceRecord   (the pod's lease)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Drop keys this version does not know, so newer pods can add fields."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class LoadFailure:
    time_ms: int
    message: str
    # gRPC status name a request gets while the failure is unexpired (see mesh/errors.py)
    code: str = "INTERNAL"


@dataclass
class ModelRecord:
    type: str
    path: str = ""
    key: str = ""
    last_used_ms: int = 0
    # pod id -> ms when it finished loading the model (it serves it)
    holders: dict[str, int] = field(default_factory=dict)
    # pod id -> ms when it started loading the model
    loading: dict[str, int] = field(default_factory=dict)
    # pod id -> the pod's latest failed load
    failures: dict[str, LoadFailure] = field(default_factory=dict)
    vmodel_refcount: int = 0
    auto_delete: bool = False
    # the model's size: predicted at registration, then what the latest load measured on any pod (0: not
    # known): a miss reserves that much without asking its runtime for a prediction
    size_bytes: int = 0

    def same_info(self, type_: str, path: str, key: str) -> bool:
        return (self.type, self.path, self.key) == (type_, path, key)

    def copy(self) -> ModelRecord:
        """A copy whose pod maps can be edited without touching this one (records in the view are shared)."""
        return replace(
            self, holders=dict(self.holders), loading=dict(self.loading), failures=dict(self.failures)
        )

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ModelRecord:
        data: dict[str, Any] = json.loads(raw)
        failures = {
            pod: LoadFailure(**_known_fields(LoadFailure, f)) for pod, f in data.pop("failures", {}).items()
        }
        return cls(failures=failures, **_known_fields(cls, data))


@dataclass
class InstanceRecord:
    address: str  # host:port of the pod's external gRPC endpoint
    internal_address: str = ""  # host:port other pods forward requests to
    internal_rest_address: str = ""  # host:port peers forward REST requests to, if any
    pool: str = "default"
    runtime_types: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    capacity_bytes: int = 0
    used_bytes: int = 0
    model_count: int = 0
    oldest_lru_ms: int = 0
    loading_count: int = 0
    requests_per_min: int = 0
    unplaced_models: int = 0  # models this pod recently found no pod to load on (type or room)
    shutting_down: bool = False
    runtime_ready: bool = True  # false while the pod's runtime is down: no loads go there
    start_ms: int = 0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> InstanceRecord:
        return cls(**_known_fields(cls, json.loads(raw)))


@dataclass
class VModelRecord:
    """An alias: requests go to ``active``; when ``target`` differs, a transition is under way."""

    active: str
    target: str
    owner: str = ""
    failed: bool = False  # the target's load failed; the transition is retried later

    @property
    def in_transition(self) -> bool:
        return self.active != self.target

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> VModelRecord:
        return cls(**_known_fields(cls, json.loads(raw)))
