"""Length limits of the ids and strings a client sends, checked before anything reaches etcd (pure).

Sizes are UTF-8 bytes. Model and vmodel ids become etcd keys and travel in every forwarded request's
headers; they are short in practice, so 1 KiB leaves room while keeping a registry record far below etcd's
request limit (1.5 MiB by default) and every header block far below HTTP/2's usual 16 KiB.
"""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.message import Message

MAX_ID_BYTES = 1024  # model id, vmodel id (management API and data plane), vmodel owner
MAX_TYPE_BYTES = 256  # ModelInfo.type
MAX_PATH_BYTES = 4096  # ModelInfo.path
MAX_KEY_BYTES = 4096  # ModelInfo.key (a storage key, or modelmesh-serving's JSON naming one)

# Every string field of the management requests (protos/model_mesh.proto), by its path in the request.
FIELD_LIMITS: Mapping[str, int] = {
    "modelId": MAX_ID_BYTES,
    "vModelId": MAX_ID_BYTES,
    "targetModelId": MAX_ID_BYTES,
    "expectedTargetModelId": MAX_ID_BYTES,
    "owner": MAX_ID_BYTES,
    "modelInfo.type": MAX_TYPE_BYTES,
    "modelInfo.path": MAX_PATH_BYTES,
    "modelInfo.key": MAX_KEY_BYTES,
}


def utf8_length_over(value: str, limit: int) -> bool:
    """Whether ``value`` is longer than ``limit`` bytes in UTF-8; one len() for the usual short value."""
    length = len(value)
    if length > limit:
        return True
    if length * 4 <= limit:  # a code point is at most 4 bytes
        return False
    return len(value.encode("utf-8", "surrogatepass")) > limit


def length_error(what: str, value: str, limit: int) -> str | None:
    """The INVALID_ARGUMENT message when ``value`` is over ``limit`` bytes, else None."""
    if not utf8_length_over(value, limit):
        return None
    size = len(value.encode("utf-8", "surrogatepass"))
    return f"{what} is {size} bytes long; the limit is {limit} bytes (UTF-8)"


def id_error(what: str, value: str) -> str | None:
    """A model or vmodel id over MAX_ID_BYTES: the message naming ``what`` carried it, else None."""
    return length_error(what, value, MAX_ID_BYTES)


def request_error(request: Message, limits: Mapping[str, int] = FIELD_LIMITS, prefix: str = "") -> str | None:
    """The first string field of ``request`` (nested messages included) over its limit, as a message."""
    for field, value in request.ListFields():
        name = prefix + field.name
        if isinstance(value, str):
            limit = limits.get(name)
            error = length_error(name, value, limit) if limit is not None else None
        elif isinstance(value, Message):
            error = request_error(value, limits, name + ".")
        else:
            continue
        if error is not None:
            return error
    return None
