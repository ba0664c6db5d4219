"""Unit tests of the adapter's pure helpers (no processes)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import psutil
import pytest

from runtime_adapters.common.cli import adapter_parser
from runtime_adapters.common.listener import ListenerLimits, spi_server_options
from runtime_adapters.common.memory import default_capacity_bytes, memory_limit_bytes
from runtime_adapters.common.model_files import (
    ModelFilesError,
    files_size,
    predicted_size,
    resolve_model_path,
)
from runtime_adapters.mlserver.adapter import (
    MLServerAdapter,
    MLServerAdapterConfig,
    UnsupportedModelType,
    folder_name,
    implementation_for,
)


def test_resolve_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "model.joblib"
    with pytest.raises(ModelFilesError, match=re.escape(str(missing))):
        resolve_model_path(str(missing))


def test_resolve_empty_and_unknown_scheme() -> None:
    with pytest.raises(ModelFilesError):
        resolve_model_path("")
    with pytest.raises(ModelFilesError, match="scheme"):
        resolve_model_path("gs://bucket/model")


def test_resolve_file_uri_and_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "m.joblib"
    f.write_bytes(b"x")
    assert resolve_model_path(f"file://{f}") == f
    monkeypatch.chdir(tmp_path)
    resolved = resolve_model_path("m.joblib")
    assert resolved.is_absolute() and resolved.samefile(f)


def test_files_size_file_and_dir_sum(tmp_path: Path) -> None:
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "a.bin").write_bytes(b"a" * 100)
    (d / "sub" / "b.bin").write_bytes(b"b" * 23)
    assert files_size(d / "a.bin") == 100
    assert files_size(d) == 123


def test_predicted_size_factor_and_floor(tmp_path: Path) -> None:
    f = tmp_path / "m.bin"
    f.write_bytes(b"x" * 1000)
    assert predicted_size(f, 0) == 1250
    assert predicted_size(f, 5000) == 5000


def test_folder_name_safe_unique_deterministic() -> None:
    ids = ["a/b:c", "a_b_c", "a/b/c", "../etc/passwd", ".hidden", "", "x" * 500, "模型/1", "a b"]
    names = [folder_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert names == [folder_name(i) for i in ids]
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name), name
        assert len(name) <= 100
    assert folder_name("my-model__isvc-1").startswith("my-model__isvc-1-")


def test_type_mapping_case_insensitive() -> None:
    assert implementation_for("sklearn") == "mlserver_sklearn.SKLearnModel"
    assert implementation_for("SKLearn") == "mlserver_sklearn.SKLearnModel"
    assert implementation_for("xgboost") == "mlserver_xgboost.XGBoostModel"
    assert implementation_for("LightGBM") == "mlserver_lightgbm.LightGBMModel"
    with pytest.raises(UnsupportedModelType, match="unsupported model type"):
        implementation_for("onnx")


def test_capacity_defaults_from_the_cgroup_limit(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("2147483648\n")  # cgroup v2: 2 GiB
    assert memory_limit_bytes(tmp_path) == 2 << 30
    assert default_capacity_bytes(tmp_path) == (2 << 30) - int((2 << 30) * 0.2)
    (tmp_path / "memory.max").write_text("max\n")  # unlimited: the machine's memory
    assert memory_limit_bytes(tmp_path) == psutil.virtual_memory().total
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(512 << 20))
    assert default_capacity_bytes(v1) == (512 << 20) - (256 << 20)  # the reserve never goes below 256 MiB


def test_capacity_from_the_runtime_containers_limit(tmp_path: Path) -> None:
    """In a Kubernetes pod the runtime has a container of its own: its limit (downward API) is the one."""
    (tmp_path / "memory.max").write_text(str(256 << 20))  # the adapter's own small container
    assert default_capacity_bytes(tmp_path, runtime_limit_bytes=4 << 30) == (4 << 30) - int((4 << 30) * 0.2)
    assert default_capacity_bytes(tmp_path) == 0  # without it, the adapter's own limit leaves nothing


# -- the listeners' limits (runtime_adapters/common/listener.py) --------------------------------------------


def test_listener_flags_default_to_the_documented_limits() -> None:
    args = adapter_parser("adapter", "test").parse_args([])
    assert ListenerLimits.from_args(args) == ListenerLimits()


def test_listener_flags_and_their_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTER_MAX_CONNECTIONS", "7")
    monkeypatch.setenv("ADAPTER_IDLE_TIMEOUT_S", "2.5")
    args = adapter_parser("adapter", "test").parse_args(["--max-concurrent-streams=3"])
    limits = ListenerLimits.from_args(args)
    assert (limits.max_connections, limits.idle_timeout_s, limits.max_concurrent_streams) == (7, 2.5, 3)
    # a flag wins over its environment
    args = adapter_parser("adapter", "test").parse_args(["--max-connections=9"])
    assert ListenerLimits.from_args(args).max_connections == 9


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        (
            ListenerLimits(),
            {
                "grpc.max_concurrent_streams": 100,
                "grpc.max_allowed_incoming_connections": 64,
                "grpc.max_metadata_size": 16384,
                "grpc.absolute_max_metadata_size": 16384,
                "grpc.max_receive_message_length": 4 << 20,
                "grpc.max_send_message_length": 4 << 20,
                "grpc.server_handshake_timeout_ms": 10_000,
                "grpc.max_connection_idle_ms": 300_000,
                "grpc.keepalive_time_ms": 300_000,
                "grpc.keepalive_timeout_ms": 10_000,
                "grpc.http2.max_ping_strikes": 2,
            },
        ),
        (  # past a C int: capped, never an overflow in grpc core
            ListenerLimits(max_connections=2**40, idle_timeout_s=1e12, handshake_timeout_s=0.0001),
            {
                "grpc.max_allowed_incoming_connections": 2**31 - 2,
                "grpc.max_connection_idle_ms": 2**31 - 1,
                "grpc.server_handshake_timeout_ms": 1,
            },
        ),
    ],
)
def test_spi_server_options(limits: ListenerLimits, expected: dict[str, int]) -> None:
    options = dict(spi_server_options(limits))
    assert {key: options[key] for key in expected} == expected


def test_a_loaded_marker_removed_while_the_purge_reads_them_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runtimeStatus purges while unloads may still finish: a marker gone between the listing and its read
    is a model unloaded already, not an error (it failed runtimeStatus with FileNotFoundError)."""

    async def marked() -> list[str]:
        adapter = MLServerAdapter(MLServerAdapterConfig("127.0.0.1:1", tmp_path))
        try:
            for name in ("kept", "going"):
                marker = adapter.loaded_marker(name)
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(name)
            read_text = Path.read_text

            def unloaded_meanwhile(path: Path, *args: object, **kwargs: object) -> str:
                if path == adapter.loaded_marker("going"):
                    path.unlink()
                return read_text(path)

            monkeypatch.setattr(Path, "read_text", unloaded_meanwhile)
            return adapter._marked_models()
        finally:
            await adapter.close()

    assert asyncio.run(marked()) == ["kept"]
