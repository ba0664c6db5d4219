"""The field-1 scanner/splicer against real protobuf encodings (tritonclient's v2 messages)."""

from __future__ import annotations

import pytest
from tritonclient.grpc import service_pb2 as v2

from mesh.routing.wire import (
    WireFormatError,
    encode_varint,
    field_spans,
    inject_string,
    read_string_field,
    with_model_id,
)


def infer_request(name: str = "iris", **kwargs: object) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=name, model_version="1", id="req-7", **kwargs)  # type: ignore[arg-type]
    tensor = request.inputs.add(name="input-0", datatype="FP32", shape=[2, 4])
    tensor.parameters["content_type"].string_param = "np"
    request.raw_input_contents.append(bytes(range(32)))
    return request


@pytest.mark.parametrize("name", ["iris", "", "a" * 200, "ünïcode/model:v1", "x" * 20000])
def test_read_matches_protobuf(name: str) -> None:
    data = infer_request(name).SerializeToString()
    expected = name if name else None  # proto3 does not write an empty string
    assert read_string_field(data, 1) == expected


def test_read_absent_field_and_empty_message() -> None:
    assert read_string_field(b"", 1) is None
    data = v2.ModelInferRequest(id="only-id").SerializeToString()
    assert read_string_field(data, 1) is None
    assert read_string_field(data, 3) == "only-id"


@pytest.mark.parametrize("old,new", [("iris", "iris-concrete-123"), ("long" * 50, "s"), ("", "fresh")])
def test_inject_rewrites_only_the_name(old: str, new: str) -> None:
    original = infer_request(old)
    spliced = v2.ModelInferRequest.FromString(inject_string(original.SerializeToString(), [1], new))
    assert spliced.model_name == new
    original.model_name = new
    assert spliced == original  # every other field survives untouched


def test_duplicate_field_last_wins_and_injection_leaves_one() -> None:
    data = (
        infer_request("first").SerializeToString()
        + v2.ModelInferRequest(model_name="second").SerializeToString()
    )
    assert read_string_field(data, 1) == v2.ModelInferRequest.FromString(data).model_name == "second"
    spliced = inject_string(data, [1], "final")
    assert len(field_spans(spliced, 1)) == 1
    assert v2.ModelInferRequest.FromString(spliced).model_name == "final"


def test_nested_injection_path() -> None:
    # ModelInferRequest.inputs (field 5) -> InferInputTensor.name (field 1)
    request = infer_request("m")
    spliced = v2.ModelInferRequest.FromString(inject_string(request.SerializeToString(), [5, 1], "renamed"))
    assert spliced.inputs[0].name == "renamed"
    assert spliced.inputs[0].shape == [2, 4]
    assert spliced.model_name == "m"


def test_fields_of_every_wire_type_are_skipped() -> None:
    # field 2 varint, field 3 fixed64, field 4 fixed32, then field 1
    data = b"\x10" + encode_varint(300) + b"\x19" + bytes(8) + b"\x25" + bytes(4) + b"\x0a\x03abc"
    assert read_string_field(data, 1) == "abc"


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05ab",  # length runs past the end
        b"\x0a",  # truncated length
        b"\x08",  # truncated varint value of another field
        b"\x0b",  # start-group wire type
        b"\x08\x01\x0a\x80",  # truncated varint length
        b"\x00\x01",  # field number 0
        b"\x19\x00\x00",  # fixed64 runs past the end
    ],
)
def test_malformed_input_raises(data: bytes) -> None:
    with pytest.raises(WireFormatError):
        read_string_field(data, 1)


def test_field_one_with_wrong_wire_type_is_an_error() -> None:
    with pytest.raises(WireFormatError):
        read_string_field(b"\x08\x01", 1)  # field 1 as a varint


def test_invalid_utf8_is_an_error() -> None:
    with pytest.raises(WireFormatError):
        read_string_field(b"\x0a\x02\xff\xfe", 1)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**21, 2**63])
def test_varint_round_trip(value: int) -> None:
    encoded = encode_varint(value)
    data = b"\x10" + encoded + b"\x0a\x01z"
    assert read_string_field(data, 1) == "z"
    assert len(encoded) == max(1, (value.bit_length() + 6) // 7)


def test_with_model_id_leaves_a_request_that_names_the_model_as_it_is() -> None:
    request = v2.ModelInferRequest(model_name="m", id="x").SerializeToString()
    assert with_model_id(request, [1], "m") is request
    assert with_model_id(request, [1], "m", field1="m") is request
    changed = v2.ModelInferRequest.FromString(with_model_id(request, [1], "concrete"))
    assert changed.model_name == "concrete" and changed.id == "x"
    # the caller's reading of field 1 is trusted: no second scan
    hinted = with_model_id(request, [1], "concrete", field1="m")
    assert v2.ModelInferRequest.FromString(hinted).model_name == "concrete"
