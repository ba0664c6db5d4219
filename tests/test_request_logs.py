"""One structured line per inference request (MM_LOG_EACH_INVOKE), JSON logs, never a secret: the log lines
themselves (pure), then a real pod's log file under real clients, on both fronts."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest

from harness.cluster import EtcdServer
from load_tests.echo_runtime import INFER_METHOD, MODEL_TYPE
from load_tests.hop import infer_request, register
from load_tests.processes import EchoProcess, start_echo_pod
from mesh.observe.logs import REQUESTS_LOGGER, JsonFormatter, RequestLog
from tests.support import poll_until

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def test_a_request_line_has_the_fields_and_only_the_named_headers(caplog: pytest.LogCaptureFixture) -> None:
    log = RequestLog("pod-a", enabled=True, headers={"x-request-id": "request_id"})
    with caplog.at_level(logging.INFO, logger=REQUESTS_LOGGER):
        log.served(
            MODEL_INFER, "m1", "pod-b", 0, 1.25, [("X-Request-Id", "r-1"), ("authorization", "Bearer s3cr3t")]
        )
        log.served(MODEL_INFER, "m2", "pod-a", 5, 2.0, [(b"x-request-id", b"r-2")])
    first, second = (r.fields for r in caplog.records)  # type: ignore[attr-defined]
    assert first == {
        "model": "m1",
        "method": "ModelInfer",
        "pod": "pod-a",
        "served_by": "pod-b",
        "status": "OK",
        "ms": 1.25,
        "request_id": "r-1",
    }
    assert (second["status"], second["request_id"]) == ("NOT_FOUND", "r-2")
    assert "s3cr3t" not in caplog.text
    assert "m1" in caplog.records[0].getMessage() and "pod-b" in caplog.records[0].getMessage()


def test_nothing_is_logged_unless_asked(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=REQUESTS_LOGGER):
        RequestLog("pod-a").served(MODEL_INFER, "m1", "pod-a", 0, 1.0)
    assert not caplog.records


def test_the_json_formatter_writes_one_object_with_the_fields() -> None:
    record = logging.LogRecord("mesh.x", logging.WARNING, __file__, 1, "loaded %s", ("m1",), None)
    record.fields = {"model": "m1"}
    line = json.loads(JsonFormatter().format(record))
    assert (line["level"], line["logger"], line["message"], line["model"]) == (
        "WARNING",
        "mesh.x",
        "loaded m1",
        "m1",
    )
    assert line["time"].endswith("Z")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.LogRecord("mesh.x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(JsonFormatter().format(failed))["exception"]


# -- a real pod ---------------------------------------------------------------------------------------------
def request_lines(log_file: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in log_file.read_text().splitlines():
        if raw.startswith("{"):
            line = json.loads(raw)  # every line of the pod's own logging is JSON: this fails if one is not
            if line["logger"] == REQUESTS_LOGGER:
                lines.append(line)
    return lines


@pytest.mark.integration
@pytest.mark.parametrize("front", ["h2", "grpc"])
def test_a_pod_logs_each_request_as_json(tmp_path: Path, front: str) -> None:
    headers = json.dumps({"X-Request-Id": "request_id"})
    args = [
        f"--front={front}",
        "--log-each-invoke=true",
        "--log-format=json",
        f"--log-request-headers={headers}",
    ]
    with contextlib.ExitStack() as stack:
        etcd = EtcdServer.start(tmp_path / "etcd")
        stack.callback(etcd.process.stop)
        echo = EchoProcess.start(tmp_path / "echo")
        stack.callback(echo.stop)
        pod = start_echo_pod(tmp_path / "pod", etcd, echo, "pod-l", extra_args=args)
        stack.callback(pod.process.stop)
        register(pod.address, "logged", MODEL_TYPE, "size=100")
        secret = "Bearer do-not-log-me"
        with grpc.insecure_channel(pod.address) as channel:
            infer = channel.unary_unary(INFER_METHOD)
            for index in range(3):
                metadata = (("x-request-id", f"req-{index}"), ("authorization", secret))
                infer(infer_request("logged"), metadata=metadata, timeout=10)
            with pytest.raises(grpc.RpcError):
                infer(infer_request("absent"), metadata=(("x-request-id", "req-missing"),), timeout=10)
        log_file = tmp_path / "pod" / "pod-l.log"
        poll_until(lambda: len(request_lines(log_file)) >= 4, what="four request lines")
        lines = {line.get("request_id"): line for line in request_lines(log_file)}
        assert len(request_lines(log_file)) == 4  # one line per request, whichever process decided it
        for index in range(3):
            line = lines[f"req-{index}"]
            assert (line["model"], line["method"], line["status"]) == ("logged", "ModelInfer", "OK")
            assert line["pod"] == line["served_by"] == "pod-l"
            assert line["ms"] > 0
        assert lines["req-missing"]["status"] == "NOT_FOUND"
        assert "do-not-log-me" not in log_file.read_text()
