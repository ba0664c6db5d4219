"""Which model an inference request is for: the ``mm-*`` headers, else field 1 of the request (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from mesh.errors import BadRequest
from mesh.limits import MAX_ID_BYTES, id_error
from mesh.routing.wire import WireFormatError, read_string_field

MODEL_ID_HEADER = "mm-model-id"
VMODEL_ID_HEADER = "mm-vmodel-id"
_SURELY_SHORT = MAX_ID_BYTES // 4  # ids of at most this many characters fit the limit in any encoding


class TargetKind(Enum):
    MODEL = "model"  # mm-model-id: a concrete model id
    VMODEL = "vmodel"  # mm-vmodel-id: a vmodel id
    NAME = "name"  # field 1 of the request: a vmodel id, else a model id


@dataclass(frozen=True)
class RequestTarget:
    kind: TargetKind
    id: str


class TargetError(BadRequest):
    """The request does not say clearly which model it is for (INVALID_ARGUMENT)."""


def _header_value(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def header_target(metadata: Iterable[tuple[str, str | bytes]]) -> RequestTarget | None:
    """The target named by ``mm-model-id`` / ``mm-vmodel-id`` (or their -bin forms), if any."""
    model_ids: list[str] = []
    vmodel_ids: list[str] = []
    for key, value in metadata:
        key = key.lower()
        if key in (MODEL_ID_HEADER, MODEL_ID_HEADER + "-bin"):
            model_ids.append(_header_value(value))
        elif key in (VMODEL_ID_HEADER, VMODEL_ID_HEADER + "-bin"):
            vmodel_ids.append(_header_value(value))
    if model_ids and vmodel_ids:
        raise TargetError(f"both {MODEL_ID_HEADER} and {VMODEL_ID_HEADER} headers given; send one")
    if len(model_ids) > 1 or len(vmodel_ids) > 1:
        raise TargetError("the model id header is given more than once")
    if not (model_ids or vmodel_ids):
        return None
    kind, header = (TargetKind.MODEL, MODEL_ID_HEADER) if model_ids else (TargetKind.VMODEL, VMODEL_ID_HEADER)
    target_id = (model_ids or vmodel_ids)[0]
    if not target_id:
        raise TargetError(f"empty {header} header")
    if len(target_id) > _SURELY_SHORT:
        _check_length(f"the {header} header", target_id)
    return RequestTarget(kind, target_id)


def request_target(metadata: Iterable[tuple[str, str | bytes]], body: bytes) -> RequestTarget:
    """gRPC: the headers, else field 1 (``model_name``) of the request bytes."""
    target = header_target(metadata)
    if target is not None:
        return target
    try:
        name = read_string_field(body, 1)
    except WireFormatError as e:
        raise TargetError(f"no {MODEL_ID_HEADER} header and the request's field 1 is unreadable: {e}") from e
    return name_target(name)


def name_target(name: str | None) -> RequestTarget:
    """The model name the request carries itself (field 1, or the REST path)."""
    if name is None:
        raise TargetError(f"no model id: send an {MODEL_ID_HEADER} header or set model_name")
    if not name:
        raise TargetError("empty model_name and no model id header")
    if len(name) > _SURELY_SHORT:
        _check_length("model_name", name)
    return RequestTarget(TargetKind.NAME, name)


def _check_length(what: str, target_id: str) -> None:
    """An id over the limit is refused before it is looked up, logged or forwarded (mesh/limits.py)."""
    error = id_error(what, target_id)
    if error is not None:
        raise TargetError(error)
