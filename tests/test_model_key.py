"""ModelInfo.key and ModelInfo.type as modelmesh-serving's controller writes them (pure)."""

from __future__ import annotations

import json

import pytest

from runtime_adapters.common.model_files import ModelFilesError
from runtime_adapters.common.model_key import ModelKey, model_type_name, parse_model_key

CONTROLLER_KEY = json.dumps(
    {
        "storage_key": "localMinIO",
        "storage_params": {"bucket": "modelmesh-example-models"},
        "model_type": {"name": "sklearn", "version": "1"},
        "schema_path": "schema/schema.json",
        "disk_size_bytes": 1234567,
    }
)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("", ModelKey()),
        ("localMinIO", ModelKey(storage_key="localMinIO")),
        (
            CONTROLLER_KEY,
            ModelKey("localMinIO", "modelmesh-example-models", "sklearn", "schema/schema.json", 1234567),
        ),
        (
            '{"storage_key": "k", "model_type": {"name": "onnx"}}',
            ModelKey(storage_key="k", model_type="onnx"),
        ),
        ('{"storage_key": "k", "bucket": "b"}', ModelKey(storage_key="k", bucket="b")),
        ('{"model_type": "xgboost"}', ModelKey(model_type="xgboost")),
        ("{}", ModelKey()),
    ],
)
def test_keys(raw: str, want: ModelKey) -> None:
    assert parse_model_key(raw) == want


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("{not json", "not valid JSON"),
        ('{"storage_params": "b"}', "storage_params"),
        ('{"model_type": 3}', "model_type"),
        ('{"disk_size_bytes": -1}', "disk_size_bytes"),
        ('{"disk_size_bytes": "12"}', "disk_size_bytes"),
        ('{"disk_size_bytes": true}', "disk_size_bytes"),
    ],
)
def test_bad_keys(raw: str, error: str) -> None:
    with pytest.raises(ModelFilesError, match=error):
        parse_model_key(raw)


@pytest.mark.parametrize(
    ("model_type", "key", "want"),
    [
        ("sklearn", "", "sklearn"),
        ("mt:sklearn", "", "sklearn"),
        ("mt:sklearn:1|pv:grpc-v2", "", "sklearn"),
        ("pv:grpc-v2|mt:xgboost", "", "xgboost"),
        ("rt:mlserver-1.x", CONTROLLER_KEY, "sklearn"),  # a runtime label: the key says the format
        ("mt:onnx", CONTROLLER_KEY, "sklearn"),  # the key's model_type wins
        ("rt:triton", "", "rt:triton"),  # nothing better: the adapter refuses it by name
    ],
)
def test_model_type_name(model_type: str, key: str, want: str) -> None:
    assert model_type_name(model_type, parse_model_key(key)) == want
