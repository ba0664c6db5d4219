"""Unit tests of the Triton adapter's pure helpers (no processes)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from runtime_adapters.triton.adapter import (
    CONFIG_FILE,
    MARKER_FILE,
    ONNX_TEMPLATE,
    InvalidModel,
    check_python_model,
    find_onnx_file,
    normalize_model_type,
    onnx_model_config,
    python_model_config,
    stub_model_dir,
    validate_model_id,
    write_onnx_model,
    write_python_model,
)

PYTHON_CONFIG = """
name: "something-else"   # the adapter renames it
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""

ONNXRUNTIME_CONFIG = """
name: "orig"
platform: "onnxruntime_onnx"
max_batch_size: 8
default_model_filename: "weights.onnx"
version_policy { specific { versions: [ 3 ] } }
input [ { name: "X" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""


def parsed(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize(
    "model_id", ["m", "iris-1", "model__isvc-6b4f", "a:b", "a@b", "a=b+c", "x.y", "_x", "L" * 200]
)
def test_valid_ids(model_id: str) -> None:
    validate_model_id(model_id)


@pytest.mark.parametrize(
    "model_id", ["", "a b", "a/b", "../x", ".hidden", "-x", "a\tb", "模型", "a\nb", "L" * 201, "a'b", 'a"b']
)
def test_invalid_ids(model_id: str) -> None:
    with pytest.raises(InvalidModel):
        validate_model_id(model_id)


def test_model_types_case_insensitive() -> None:
    assert normalize_model_type("Python") == "python"
    assert normalize_model_type(" TRITON-PYTHON ") == "python"
    assert normalize_model_type("ONNX") == "onnx"
    with pytest.raises(InvalidModel, match="supported: onnx, python, triton-python"):
        normalize_model_type("sklearn")


def test_python_config_renamed_top_level_only() -> None:
    config = parsed(python_model_config(PYTHON_CONFIG, "iris:v1"))
    assert config.name == "iris:v1"
    assert config.backend == "python"
    assert [t.name for t in config.input] == ["INPUT0"]
    assert [t.name for t in config.output] == ["OUTPUT0"]


def test_python_config_without_name_or_backend_gets_both() -> None:
    config = parsed(python_model_config('input [ { name: "name" data_type: TYPE_FP32 dims: [1] } ]', "m"))
    assert (config.name, config.backend, config.input[0].name) == ("m", "python", "name")


def test_python_config_rejects_other_backends_and_garbage() -> None:
    with pytest.raises(InvalidModel, match="python-backend"):
        python_model_config('platform: "onnxruntime_onnx"', "m")
    with pytest.raises(InvalidModel, match="python-backend"):
        python_model_config('backend: "pytorch"', "m")
    with pytest.raises(InvalidModel, match="not a valid Triton model config"):
        python_model_config("name: [unclosed", "m")


def test_onnx_config_generated_without_a_config() -> None:
    config = parsed(onnx_model_config(None, "double"))
    assert (config.name, config.backend, config.platform) == ("double", "python", "")
    assert config.max_batch_size == 0
    assert len(config.instance_group) == 1
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.instance_group[0].count == 1
    assert not config.input and not config.output  # filled in by auto-complete from the graph


def test_onnx_config_from_an_onnxruntime_config() -> None:
    config = parsed(onnx_model_config(ONNXRUNTIME_CONFIG, "double"))
    assert (config.name, config.backend, config.platform) == ("double", "python", "")
    assert config.max_batch_size == 8
    assert [t.name for t in config.input] == ["X"]
    assert not config.default_model_filename
    assert not config.HasField("version_policy")


def make_python_model(root: Path) -> Path:
    (root / "1").mkdir(parents=True)
    (root / CONFIG_FILE).write_text(PYTHON_CONFIG)
    (root / "1" / "model.py").write_text("class TritonPythonModel: ...\n")
    return root


def test_write_python_model_layout(tmp_path: Path) -> None:
    src = make_python_model(tmp_path / "src")
    dest = tmp_path / "repo" / "iris:v1"
    write_python_model(src, dest, "iris:v1")
    assert parsed((dest / CONFIG_FILE).read_text()).name == "iris:v1"
    assert (dest / "1" / "model.py").read_text() == (src / "1" / "model.py").read_text()
    assert (dest / MARKER_FILE).read_text() == "iris:v1"
    # The rewrite never writes through a hard link into the user's files.
    assert (src / CONFIG_FILE).read_text() == PYTHON_CONFIG


def test_check_python_model_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidModel, match="directory"):
        check_python_model(tmp_path / "nope.py")
    (tmp_path / "m").mkdir()
    with pytest.raises(InvalidModel, match=CONFIG_FILE):
        check_python_model(tmp_path / "m")
    (tmp_path / "m" / CONFIG_FILE).write_text(PYTHON_CONFIG)
    with pytest.raises(InvalidModel, match=r"model\.py"):
        check_python_model(tmp_path / "m")


def test_find_onnx_file_layouts(tmp_path: Path) -> None:
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(b"x")
    assert find_onnx_file(bare) == bare
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "model.onnx").write_bytes(b"x")
    assert find_onnx_file(flat) == flat / "model.onnx"
    versioned = tmp_path / "versioned"
    for v in ("1", "2"):
        (versioned / v).mkdir(parents=True)
        (versioned / v / "model.onnx").write_bytes(b"x")
    assert find_onnx_file(versioned) == versioned / "2" / "model.onnx"
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "weights.onnx").write_bytes(b"x")
    assert find_onnx_file(loose) == loose / "weights.onnx"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidModel, match=r"no model\.onnx"):
        find_onnx_file(tmp_path / "empty")
    (tmp_path / "m.joblib").write_bytes(b"x")
    with pytest.raises(InvalidModel, match=r"\.onnx file"):
        find_onnx_file(tmp_path / "m.joblib")


def test_write_onnx_model_wraps_the_template(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "1").mkdir(parents=True)
    (src / "1" / "model.onnx").write_bytes(b"onnx bytes")
    (src / CONFIG_FILE).write_text(ONNXRUNTIME_CONFIG)
    dest = tmp_path / "repo" / "double"
    write_onnx_model(src, dest, "double")
    assert (dest / "1" / "model.onnx").read_bytes() == b"onnx bytes"
    assert (dest / "1" / "model.py").read_text() == ONNX_TEMPLATE.read_text()
    config = parsed((dest / CONFIG_FILE).read_text())
    assert (config.name, config.backend, config.max_batch_size) == ("double", "python", 8)
    assert (dest / MARKER_FILE).read_text() == "double"

    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(InvalidModel, match="empty"):
        write_onnx_model(empty, tmp_path / "repo" / "e", "e")


def test_onnx_template_is_a_python_backend_model() -> None:
    tree = ast.parse(ONNX_TEMPLATE.read_text())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    methods = {f.name for f in classes["TritonPythonModel"].body if isinstance(f, ast.FunctionDef)}
    assert {"auto_complete_config", "initialize", "execute"} <= methods


def test_stub_model_dir_from_cmdline() -> None:
    cmdline = [
        "/x/backends/python/triton_python_backend_stub",
        "/repo/iris:v1/1/model.py",
        "triton_python_backend_shm_region_1",
        "1048576",
        "1048576",
        "123",
        "/x/backends/python",
        "336",
        "iris:v1_0_0",
        "DEFAULT",
    ]
    assert stub_model_dir(cmdline) == Path("/repo/iris:v1")
    assert stub_model_dir(["/usr/bin/python3", "/repo/m/1/model.py"]) is None
    assert stub_model_dir([]) is None
