"""mesh/fronts/server_limits.py: which setting becomes which grpc channel argument and aiohttp limit
(pure)."""

from __future__ import annotations

import json

import pytest

from mesh.fronts.server_limits import (
    GRPC_INT_MAX,
    JSON_CHECK_MAX_BYTES,
    MAX_PING_STRIKES,
    MIN_PING_INTERVAL_MS,
    RestLimits,
    error_bytes,
    grpc_server_options,
    json_part_error,
    relay_stream_limit,
)
from mesh.process.settings import Settings, parse_settings

SETTINGS = Settings(
    max_message_bytes=8 << 20,
    max_concurrent_streams=50,
    max_header_list_bytes=10000,
    max_connections=300,
    idle_timeout_s=120.0,
    handshake_timeout_s=2.5,
    request_read_timeout_s=7.0,
)


def as_dict(options: list[tuple[str, int | str]]) -> dict[str, int | str]:
    names = [name for name, _ in options]
    assert len(names) == len(set(names)), "an argument given twice"
    return dict(options)


def test_a_public_port_gets_every_client_limit() -> None:
    options = as_dict(grpc_server_options(SETTINGS, public=True, reuse_port=False))
    assert options == {
        "grpc.max_receive_message_length": 8 << 20,
        "grpc.max_send_message_length": 8 << 20,
        "grpc.so_reuseport": 0,
        "grpc.max_concurrent_streams": 50,
        "grpc.max_metadata_size": 10000,
        "grpc.absolute_max_metadata_size": 10000,
        "grpc.max_allowed_incoming_connections": 300,
        "grpc.max_connection_idle_ms": 120_000,
        "grpc.server_handshake_timeout_ms": 2500,
        "grpc.keepalive_time_ms": 120_000,
        "grpc.keepalive_timeout_ms": 2500,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_ping_strikes": MAX_PING_STRIKES,
        "grpc.http2.min_ping_interval_without_data_ms": MIN_PING_INTERVAL_MS,
    }


def test_the_relay_keeps_message_limits_and_takes_every_relayed_stream() -> None:
    options = as_dict(grpc_server_options(SETTINGS, public=False, reuse_port=False))
    assert options == {
        "grpc.max_receive_message_length": 8 << 20,
        "grpc.max_send_message_length": 8 << 20,
        "grpc.so_reuseport": 0,
        "grpc.max_concurrent_streams": 300 * 50,  # every client stream the front may have open
        "grpc.max_metadata_size": 20000,
        "grpc.absolute_max_metadata_size": 20000,
    }


def test_reuse_port_is_asked_for() -> None:
    for public in (True, False):
        assert (
            as_dict(grpc_server_options(SETTINGS, public=public, reuse_port=True))["grpc.so_reuseport"] == 1
        )


def test_values_stay_within_grpc_core_ints() -> None:
    huge = Settings(max_connections=10**10, max_concurrent_streams=10**6, idle_timeout_s=1e9)
    public = as_dict(grpc_server_options(huge, public=True, reuse_port=False))
    assert public["grpc.max_allowed_incoming_connections"] == GRPC_INT_MAX - 1  # core asserts < INT_MAX
    assert public["grpc.max_connection_idle_ms"] == GRPC_INT_MAX
    assert relay_stream_limit(huge) == GRPC_INT_MAX - 1
    tiny = Settings(handshake_timeout_s=0.0001)
    assert (
        as_dict(grpc_server_options(tiny, public=True, reuse_port=False))["grpc.server_handshake_timeout_ms"]
        == 1
    )


def test_the_defaults_from_flags() -> None:
    options = as_dict(grpc_server_options(parse_settings([], env={}), public=True, reuse_port=False))
    assert options["grpc.max_concurrent_streams"] == 100
    assert options["grpc.absolute_max_metadata_size"] == 16384
    assert options["grpc.max_allowed_incoming_connections"] == 4096
    assert options["grpc.server_handshake_timeout_ms"] == 10_000
    assert options["grpc.max_connection_idle_ms"] == 300_000


def test_rest_limits_from_settings_and_aiohttp_arguments() -> None:
    limits = RestLimits.from_settings(SETTINGS)
    assert limits == RestLimits(
        max_header_list_bytes=10000, max_connections=300, idle_timeout_s=120.0, request_read_timeout_s=7.0
    )
    assert limits.handler_args() == {
        "keepalive_timeout": 120.0,
        "max_line_size": 5000,
        "max_field_size": 5000,
        "max_headers": 78,
        "auto_decompress": False,  # bodies go on as they came
        "access_log": None,
    }
    # at the default setting, aiohttp's own defaults (8190-byte lines, 128 headers)
    assert RestLimits().handler_args() | {"keepalive_timeout": 0} == {
        "keepalive_timeout": 0,
        "max_line_size": 8192,
        "max_field_size": 8192,
        "max_headers": 128,
        "auto_decompress": False,
        "access_log": None,
    }
    assert RestLimits.from_settings(parse_settings([], env={})) == RestLimits()


@pytest.mark.parametrize(
    ("body", "headers", "problem"),
    [
        (b'{"inputs": []}', {}, None),
        (b'  {"a": 1}\n', {}, None),
        (b'{"inputs": [', {}, "not valid JSON"),
        (b"", {}, "not valid JSON"),
        (b"\xff\xfe", {}, "not valid JSON"),
        (b"[1, 2]", {}, "not a JSON object"),
        (b'"text"', {}, "not a JSON object"),
        (b'{"a": 1}\x00\x01\x02', {"Inference-Header-Content-Length": "8"}, None),
        (b'{"a": 1}\x00\x01\x02', {"Inference-Header-Content-Length": "9"}, "not valid JSON"),
        (b'{"a": 1}', {"Inference-Header-Content-Length": "x"}, "not a number"),
        (b'{"a": 1}', {"Inference-Header-Content-Length": "99"}, "outside"),
        (b'{"a": 1}', {"Inference-Header-Content-Length": "-1"}, "outside"),
    ],
)
def test_json_part_error(body: bytes, headers: dict[str, str], problem: str | None) -> None:
    found = json_part_error(body, headers)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_a_deeply_nested_body_is_an_error_not_a_crash() -> None:
    assert json_part_error(b"[" * 200_000 + b"]" * 200_000, {}) is not None


def test_json_past_the_check_size_is_left_to_the_runtime() -> None:
    assert json_part_error(b"{" + b" " * JSON_CHECK_MAX_BYTES, {}) is None


def test_error_bytes_is_a_whole_json_answer_that_closes() -> None:
    raw = error_bytes(503, "Service Unavailable", "full")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Connection: close" in head and f"Content-Length: {len(body)}".encode() in head
    assert b"\r\nContent-Type: application/json\r\n" in head  # exactly, as every answer of the gateway
    assert json.loads(body) == {"error": "full"}
