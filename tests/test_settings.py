"""Settings from flags and the environment."""

from __future__ import annotations

import pytest

from mesh.process.settings import parse_settings, settings_argv


def test_defaults() -> None:
    s = parse_settings([], env={})
    assert s.grpc_port == 8033
    assert s.etcd_prefix == "mm/modelmesh-serving/"
    assert s.runtime_serving == s.runtime_spi
    assert s.pod_id.endswith("-8033")


def test_environment_uses_modelmesh_names_and_flags_win() -> None:
    env = {"MM_SVC_GRPC_PORT": "9000", "MM_SERVICE_NAME": "svc", "MM_KVSTORE_PREFIX": "root"}
    s = parse_settings([], env=env)
    assert (s.grpc_port, s.etcd_prefix) == (9000, "root/svc/")
    s = parse_settings(["--grpc-port", "9100", "--load-failure-expiry-s", "2.5"], env=env)
    assert s.grpc_port == 9100
    assert s.load_failure_expiry_s == 2.5


def test_labels_and_bad_values() -> None:
    assert parse_settings(["--labels", "zone=a, gpu=no"], env={}).labels == {"zone": "a", "gpu": "no"}
    assert parse_settings([], env={"MM_LABELS": ""}).labels == {}
    for argv in (["--labels", "novalue"], ["--grpc-port", "eighty"]):
        with pytest.raises(SystemExit):
            parse_settings(argv, env={})


def test_eviction_policy() -> None:
    assert parse_settings([], env={}).eviction_policy == "lfu-size"  # load_tests: 0.98 of Belady, LRU 0.77
    assert parse_settings(["--eviction-policy", "gdsf"], env={}).eviction_policy == "gdsf"
    assert parse_settings(["--eviction-policy", "LRU"], env={}).eviction_policy == "lru"
    with pytest.raises(SystemExit):
        parse_settings(["--eviction-policy", "random"], env={})


def test_event_loop() -> None:
    assert parse_settings([], env={}).event_loop == "asyncio"
    assert parse_settings([], env={"MM_EVENT_LOOP": "uvloop"}).event_loop == "uvloop"
    with pytest.raises(SystemExit):
        parse_settings(["--event-loop", "trio"], env={})


def test_front() -> None:
    assert parse_settings([], env={}).front == "h2"
    assert parse_settings([], env={"MM_FRONT": "grpc"}).front == "grpc"
    with pytest.raises(SystemExit):
        parse_settings(["--front", "nginx"], env={})


def test_settings_round_trip_through_flags() -> None:
    """A pod's serving processes are started with the pod's settings written back as flags."""
    settings = parse_settings(
        ["--labels", "zone=a,gpu=no", "--model-types", "sklearn,Onnx", "--serving-processes", "2"],
        env={"MM_POD_ID": "p1", "MM_LOAD_TIMEOUT_S": "7.5"},
    )
    assert parse_settings(settings_argv(settings), env={}) == settings


def test_serving_processes_at_least_one() -> None:
    assert parse_settings([], env={}).serving_processes == 1
    with pytest.raises(SystemExit):
        parse_settings(["--serving-processes", "0"], env={})


def test_front_codec() -> None:
    assert parse_settings([], env={}).front_codec == "lean"
    assert parse_settings([], env={"MM_FRONT_CODEC": "h2"}).front_codec == "h2"
    with pytest.raises(SystemExit):
        parse_settings(["--front-codec", "hyper"], env={})


def test_metrics_settings_take_modelmeshs_forms() -> None:
    assert not parse_settings([], env={}).metrics_config.enabled  # off unless asked for
    config = parse_settings([], env={"MM_METRICS_PORT": "9100"}).metrics_config
    assert (config.enabled, config.port, config.per_model) == (True, 9100, False)
    config = parse_settings(
        [], env={"MM_METRICS": "prometheus:port=2200;per_model_metrics=true"}
    ).metrics_config
    assert (config.port, config.per_model, config.fq_names) == (2200, True, False)
    assert parse_settings([], env={"MM_METRICS": "prometheus"}).metrics_config.port == 2112
    assert not parse_settings(
        [], env={"MM_METRICS": "disabled", "MM_METRICS_PORT": "9100"}
    ).metrics_config.enabled
    for bad in ("statsd:port=8126", "prometheus:port=x", "prometheus:scheme=https", "prometheus:colour=red"):
        with pytest.raises(SystemExit):
            parse_settings([], env={"MM_METRICS": bad})


def test_logging_settings() -> None:
    s = parse_settings([], env={})
    assert (s.log_each_invoke, s.log_format, s.logged_headers) == (False, "text", {})
    s = parse_settings(
        [], env={"MM_LOG_EACH_INVOKE": "true", "MM_LOG_REQUEST_HEADERS": '{"X-Request-Id": "request_id"}'}
    )
    assert s.log_each_invoke and s.logged_headers == {"x-request-id": "request_id"}
    assert parse_settings(["--log-format", "json"], env={}).log_format == "json"
    for argv in (
        ["--log-each-invoke", "maybe"],
        ["--log-format", "xml"],
        ["--log-request-headers", "not json"],
        ["--log-request-headers", "{}"],
        ["--log-request-headers", '{"Authorization": "auth"}'],  # a credential is never logged
        ["--log-request-headers", '{"x-a": 1}'],
    ):
        with pytest.raises(SystemExit):
            parse_settings(argv, env={})
    logged = parse_settings(["--log-each-invoke", "1", "--log-request-headers", '{"x-a": "a"}'], env={})
    assert parse_settings(settings_argv(logged), env={}) == logged


def test_status_page_limits_are_settings() -> None:
    from mesh.status_page import EventLimits

    assert EventLimits.from_settings(parse_settings([], env={})) == EventLimits()
    limits = EventLimits.from_settings(
        parse_settings(
            ["--status-max-streams", "3", "--status-max-stream-s", "30"],
            env={"MM_STATUS_WRITE_TIMEOUT_S": "2"},
        )
    )
    assert (limits.max_streams, limits.max_stream_s, limits.write_timeout_s) == (3, 30.0, 2.0)


def test_busy_poll() -> None:
    assert parse_settings([], env={}).busy_poll_us == 300  # load_tests: hop, with and without
    assert parse_settings([], env={"MM_BUSY_POLL_US": "0"}).busy_poll_us == 0
    assert parse_settings(["--busy-poll-us", "50"], env={}).busy_poll_us == 50
    with pytest.raises(SystemExit):
        parse_settings(["--busy-poll-us", "-1"], env={})
