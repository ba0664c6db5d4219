"""Protobuf wire-format scanning and splicing of one string field.

The hot path never parses a request message: it reads the model id from a
top-level string field (field 1, ``model_name`` in the v2 messages) and writes
the concrete id back, leaving every other byte as it came. Only top-level
fields are walked; embedded messages and tensor bytes are skipped by length.
"""

from __future__ import annotations

from collections.abc import Sequence

from mesh.errors import BadRequest

_VARINT, _FIXED64, _LENGTH_DELIMITED, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5


class WireFormatError(BadRequest):
    """The bytes are not a well-formed protobuf message."""

    what = "malformed request: "


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    end = len(data)
    while pos < end:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise WireFormatError("varint longer than 10 bytes")
    raise WireFormatError("truncated varint")


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_spans(data: bytes, field_number: int) -> list[tuple[int, int, int]]:
    """Every occurrence of a length-delimited top-level field.

    Returns ``(field_start, value_start, value_end)`` per occurrence, in order.
    Raises WireFormatError on malformed input, or when the field appears with
    another wire type.
    """
    spans: list[tuple[int, int, int]] = []
    pos = 0
    end = len(data)
    while pos < end:
        start = pos
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireFormatError("field number 0")
        if wire_type == _LENGTH_DELIMITED:
            length, pos = _read_varint(data, pos)
            value_end = pos + length
            if value_end > end:
                raise WireFormatError("length-delimited field runs past the end")
            if number == field_number:
                spans.append((start, pos, value_end))
            pos = value_end
        elif number == field_number:
            raise WireFormatError(f"field {field_number} is not length-delimited")
        elif wire_type == _VARINT:
            _, pos = _read_varint(data, pos)
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        else:  # groups (3, 4) are not used by proto3 messages
            raise WireFormatError(f"unsupported wire type {wire_type}")
        if pos > end:
            raise WireFormatError("fixed-width field runs past the end")
    return spans


def read_string_field(data: bytes, field_number: int = 1) -> str | None:
    """The value of a top-level string field (the last occurrence wins, as in protobuf), or None."""
    spans = field_spans(data, field_number)
    if not spans:
        return None
    _, start, end = spans[-1]
    try:
        return data[start:end].decode("utf-8")
    except UnicodeDecodeError as e:
        raise WireFormatError(f"field {field_number} is not valid UTF-8") from e


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return encode_varint(field_number << 3 | _LENGTH_DELIMITED) + encode_varint(len(payload)) + payload


def _without_spans(data: bytes, spans: Sequence[tuple[int, int, int]]) -> bytes:
    if not spans:
        return data
    parts = []
    pos = 0
    for field_start, _, value_end in spans:
        parts.append(data[pos:field_start])
        pos = value_end
    parts.append(data[pos:])
    return b"".join(parts)


def inject_string(data: bytes, path: Sequence[int], value: str) -> bytes:
    """Set the string field at ``path`` (field numbers; all but the last are embedded messages).

    Existing occurrences are removed and one is written first in its message:
    protobuf accepts fields in any order, and the last occurrence would win anyway.
    """
    if not path:
        raise ValueError("empty injection path")
    number = path[0]
    spans = field_spans(data, number)
    if len(path) == 1:
        payload = value.encode("utf-8")
    else:
        inner = data[spans[-1][1] : spans[-1][2]] if spans else b""
        payload = inject_string(inner, path[1:], value)
    return _length_delimited(number, payload) + _without_spans(data, spans)


def with_model_id(request: bytes, id_path: Sequence[int], model_id: str, field1: str | None = None) -> bytes:
    """The request with ``model_id`` at ``id_path``: the same object when it is there already.

    ``field1``: the request's field 1 when the caller has read it already (saves a second scan).
    """
    if list(id_path) == [1] and field1 is not None:
        return request if field1 == model_id else inject_string(request, id_path, model_id)
    if len(id_path) == 1 and read_string_field(request, id_path[0]) == model_id:
        return request
    return inject_string(request, id_path, model_id)
