"""The pod's logs: text or one JSON object per line (``--log-format``), and one line per inference request
when ``MM_LOG_EACH_INVOKE`` is set (``RequestLog``).

A request's line names the model, the method, this pod, the pod that served it, the status and the time
taken; request headers only those ``MM_LOG_REQUEST_HEADERS`` names, each under its log key. Headers that
carry credentials cannot be named (mesh/process/settings.py refuses them), and nothing else of a request
is logged: not its body, not an error's message.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.observe.metrics import code_name, method_label

REQUESTS_LOGGER = "mesh.requests"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FIELDS = "fields"  # the LogRecord attribute a structured line's fields are in


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, a request line's fields, the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str, log_format: str = "text") -> None:
    """The process's root handler, on stderr (replacing any earlier one)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in HEADER_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))


# Protocol libraries that log every header they code at DEBUG (credentials included): never below INFO.
HEADER_LOGGERS = ("hpack", "h2", "hyperframe", "aiohttp.client", "botocore", "urllib3")


@dataclass(frozen=True)
class RequestLog:
    """``MM_LOG_EACH_INVOKE``: a line per inference request, written where its route was decided."""

    pod_id: str
    enabled: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case header name -> log key

    def served(
        self,
        method: str,
        model_id: str,
        served_by: str,
        status: int,
        ms: float,
        metadata: Iterable[tuple[str | bytes, str | bytes]] = (),
    ) -> None:
        if not self.enabled:
            return
        fields: dict[str, Any] = {
            "model": model_id,
            "method": method_label(method),
            "pod": self.pod_id,
            "served_by": served_by,
            "status": code_name(status),
            "ms": round(ms, 3),
        }
        if self.headers:
            for name, value in metadata:
                key = self.headers.get(_text(name).lower())
                if key is not None:
                    fields[key] = _text(value)
        text = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("model", "method", "status", "ms"))
        logging.getLogger(REQUESTS_LOGGER).info(
            "%s %s %s %.1f ms %s",
            fields["method"],
            model_id or "-",
            fields["status"],
            ms,
            text,
            extra={FIELDS: fields},
        )


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
