"""meshctl's pure parts: exit codes, the batch file, numbers and times for people, the tables (no I/O).

Every function here takes data and answers data (or a rich renderable); meshctl.py calls and prints.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from protos import model_mesh_pb2 as mm

# -- exit codes ---------------------------------------------------------------------------------------
OK = 0
FAILED = 1  # the call failed in a way not below
USAGE = 2  # click/typer's own code for a usage error
NOT_FOUND = 3
INVALID = 4  # INVALID_ARGUMENT or ALREADY_EXISTS
UNREACHABLE = 5  # UNAVAILABLE, connection refused, DEADLINE_EXCEEDED
BATCH_PARTIAL = 6  # some items of a batch register failed

EXIT_CODES_HELP = """Exit codes:
  0  ok
  1  the call failed otherwise (a load failed, FAILED_PRECONDITION, ...)
  2  usage error (bad option or argument, unreadable batch file)
  3  not found (NOT_FOUND)
  4  invalid argument or already exists (INVALID_ARGUMENT, ALREADY_EXISTS)
  5  the mesh is unreachable (UNAVAILABLE, refused, DEADLINE_EXCEEDED)
  6  some items of a batch register failed"""

_EXIT_OF_STATUS = {
    "OK": OK,
    "NOT_FOUND": NOT_FOUND,
    "INVALID_ARGUMENT": INVALID,
    "ALREADY_EXISTS": INVALID,
    "UNAVAILABLE": UNREACHABLE,
    "DEADLINE_EXCEEDED": UNREACHABLE,
}

# HTTP status -> the gRPC status it stands for (the inverse of grpc-gateway's mapping, mesh/fronts/rest.py).
_STATUS_OF_HTTP = {
    200: "OK",
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",  # a proxy in front of the mesh could not reach it
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def exit_code(status: str) -> int:
    """The exit code for a gRPC status name ("NOT_FOUND", ...); an unknown name is a plain failure."""
    return _EXIT_OF_STATUS.get(status.upper(), FAILED)


def status_of_http(http_status: int) -> str:
    """The gRPC status name an HTTP answer's status stands for."""
    if http_status in _STATUS_OF_HTTP:
        return _STATUS_OF_HTTP[http_status]
    if 200 <= http_status < 300:
        return "OK"
    if 400 <= http_status < 500:
        return "FAILED_PRECONDITION"
    return "UNKNOWN"


# -- the batch file -----------------------------------------------------------------------------------
BatchFormat = Literal["csv", "json"]
FIELDS = ("modelId", "type", "path", "key")
REQUIRED = ("modelId", "type")
_FIELD_OF = {re.sub(r"[-_ ]", "", name).lower(): name for name in FIELDS}


class BatchFileError(ValueError):
    """The batch file as a whole cannot be read (not CSV/JSON, wrong shape, unknown columns)."""


@dataclass(frozen=True)
class BatchItem:
    where: str  # "line 3" or "item 2", for the summary
    model_id: str
    type: str
    path: str
    key: str = ""


@dataclass(frozen=True)
class BatchProblem:
    """An entry of the file that is not a model (registered nowhere, listed in the summary)."""

    where: str
    model_id: str
    message: str


def field_name(column: str) -> str | None:
    """``modelId``, ``model_id``, ``MODELID`` -> ``modelId``; None for a column that is not a field."""
    return _FIELD_OF.get(re.sub(r"[-_ ]", "", column.strip()).lower())


def batch_format(filename: str, text: str) -> BatchFormat:
    """By the name's suffix (.csv, .json), else by the content (a JSON list starts with '[')."""
    lowered = filename.lower()
    if lowered.endswith(".json"):
        return "json"
    if lowered.endswith((".csv", ".txt")):
        return "csv"
    return "json" if text.lstrip().startswith("[") else "csv"


def parse_batch(text: str, fmt: BatchFormat) -> tuple[list[BatchItem], list[BatchProblem]]:
    """The models of a batch file and its entries that are not models. Raises BatchFileError."""
    return parse_json_batch(text) if fmt == "json" else parse_csv_batch(text)


def _item(where: str, values: Mapping[str, str]) -> BatchItem | BatchProblem:
    missing = [name for name in REQUIRED if not values.get(name, "").strip()]
    model_id = values.get("modelId", "").strip()
    if missing:
        return BatchProblem(where, model_id, f"missing {', '.join(missing)}")
    return BatchItem(
        where,
        model_id,
        values["type"].strip(),
        values.get("path", "").strip(),
        values.get("key", "").strip(),
    )


def _split(entries: Iterable[BatchItem | BatchProblem]) -> tuple[list[BatchItem], list[BatchProblem]]:
    items: list[BatchItem] = []
    problems: list[BatchProblem] = []
    for entry in entries:
        (items if isinstance(entry, BatchItem) else problems).append(entry)  # type: ignore[arg-type]
    return items, problems


def parse_csv_batch(text: str) -> tuple[list[BatchItem], list[BatchProblem]]:
    """Rows of modelId,type,path[,key]; a header row naming the columns (in any order) is optional.
    Blank lines and lines starting with '#' are skipped."""
    try:
        rows = [
            (number, row)
            for number, row in enumerate(csv.reader(io.StringIO(text)), start=1)
            if row and any(cell.strip() for cell in row) and not row[0].lstrip().startswith("#")
        ]
    except csv.Error as e:
        raise BatchFileError(f"not CSV: {e}") from e
    if not rows:
        return [], []
    columns: list[str] = list(FIELDS)
    first = [field_name(cell) for cell in rows[0][1]]
    if "modelId" in first:  # a header row
        unknown = [cell for cell, name in zip(rows[0][1], first, strict=True) if name is None]
        if unknown:
            raise BatchFileError(
                f"unknown column(s) {', '.join(map(repr, unknown))}; known: {', '.join(FIELDS)}"
            )
        missing = [name for name in REQUIRED if name not in first]
        if missing:
            raise BatchFileError(f"the header names no {', '.join(missing)} column")
        columns = [name for name in first if name is not None]
        rows = rows[1:]
    entries: list[BatchItem | BatchProblem] = []
    for number, row in rows:
        where = f"line {number}"
        cells = [cell.strip() for cell in row]
        if len(cells) > len(columns):
            model_id = cells[0] if columns[0] == "modelId" else ""
            entries.append(
                BatchProblem(where, model_id, f"{len(cells)} columns, expected at most {len(columns)}")
            )
            continue
        entries.append(_item(where, dict(zip(columns, cells, strict=False))))
    return _split(entries)


def parse_json_batch(text: str) -> tuple[list[BatchItem], list[BatchProblem]]:
    """A JSON list of objects with modelId, type, path and key (optional)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise BatchFileError(f"not JSON: {e}") from e
    if not isinstance(document, list):
        raise BatchFileError(f"expected a JSON list of models, got {type(document).__name__}")
    entries: list[BatchItem | BatchProblem] = []
    for index, entry in enumerate(document, start=1):
        where = f"item {index}"
        if not isinstance(entry, dict):
            entries.append(BatchProblem(where, "", f"not an object: {json.dumps(entry)[:60]}"))
            continue
        values: dict[str, str] = {}
        problem = ""
        for key, value in entry.items():
            name = field_name(str(key))
            if name is None:
                problem = f"unknown field {key!r}"
            elif not isinstance(value, str):
                problem = f"{name} must be a string, not {type(value).__name__}"
            else:
                values[name] = value
        raw_id = entry.get("modelId")
        if problem:
            entries.append(BatchProblem(where, raw_id if isinstance(raw_id, str) else "", problem))
        else:
            entries.append(_item(where, values))
    return _split(entries)


# -- numbers and times --------------------------------------------------------------------------------
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB'; bytes as a whole number; powers of 1024."""
    if n < 0:
        return "-" + human_bytes(-n)
    value = float(n)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def use_percent(used: int, capacity: int) -> float | None:
    """Used bytes as a percentage of capacity; None without capacity."""
    if capacity <= 0:
        return None
    return 100.0 * used / capacity


def format_percent(percent: float | None) -> str:
    return "-" if percent is None else f"{percent:.1f}%"


def use_style(percent: float | None) -> str:
    if percent is None:
        return "dim"
    if percent >= 90:
        return "red"
    return "yellow" if percent >= 70 else "green"


def duration(seconds: float) -> str:
    """42 -> '42s', 125 -> '2m05s', 7300 -> '2h01m', 200000 -> '2d07h'."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def age(time_ms: int, now_ms: int) -> str:
    """How long before now a time (ms since the epoch) was: '5s ago'; '-' for no time."""
    if time_ms <= 0:
        return "-"
    if time_ms > now_ms:
        return "now"
    return duration((now_ms - time_ms) / 1000) + " ago"


def format_time(time_ms: int) -> str:
    """ms since the epoch -> '2024-05-01 12:00:00Z'; '-' for no time."""
    if time_ms <= 0:
        return "-"
    return datetime.fromtimestamp(time_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# -- gRPC answers as JSON-ready data ---------------------------------------------------------------------
MODEL_STATUS_NAMES = {value: name for name, value in mm.ModelStatusInfo.ModelStatus.items()}
VMODEL_STATUS_NAMES = {value: name for name, value in mm.VModelStatusInfo.VModelStatus.items()}


def model_status_data(model_id: str, info: mm.ModelStatusInfo) -> dict[str, Any]:
    return {
        "modelId": model_id,
        "status": MODEL_STATUS_NAMES.get(info.status, str(info.status)),
        "errors": list(info.errors),
        "copies": [
            {
                "pod": copy.location,
                "state": MODEL_STATUS_NAMES.get(copy.copyStatus, str(copy.copyStatus)),
                "time_ms": copy.time,
            }
            for copy in info.modelCopyInfos
        ],
    }


def vmodel_status_data(vmodel_id: str, info: mm.VModelStatusInfo) -> dict[str, Any]:
    target = info.targetModelStatus if info.HasField("targetModelStatus") else None
    return {
        "vModelId": vmodel_id,
        "status": VMODEL_STATUS_NAMES.get(info.status, str(info.status)),
        "activeModelId": info.activeModelId,
        "targetModelId": info.targetModelId,
        "owner": info.owner,
        "activeModelStatus": model_status_data(info.activeModelId, info.activeModelStatus)
        if info.HasField("activeModelStatus")
        else None,
        "targetModelStatus": model_status_data(info.targetModelId, target) if target is not None else None,
    }


# -- tables ---------------------------------------------------------------------------------------------
STATE_STYLES = {
    "LOADED": "green",
    "DEFINED": "green",
    "LOADING": "yellow",
    "TRANSITIONING": "yellow",
    "NOT_LOADED": "dim",
    "LOADING_FAILED": "red",
    "TRANSITION_FAILED": "red",
    "NOT_FOUND": "red",
    "UNKNOWN": "magenta",
}


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def _joined(names: Sequence[str], most: int = 3) -> str:
    if not names:
        return "-"
    shown = ", ".join(names[:most])
    return shown + (f" +{len(names) - most}" if len(names) > most else "")


def model_status_table(data: Mapping[str, Any], now_ms: int) -> RenderableType:
    """``status MODEL_ID``: the status, the errors (newest first) and the copies."""
    summary = Table.grid(padding=(0, 1))
    summary.add_column(style="bold")
    summary.add_column(overflow="fold")
    summary.add_row("model", str(data["modelId"]))
    summary.add_row("status", state_text(str(data["status"])))
    for index, message in enumerate(data["errors"]):
        summary.add_row("error" if index == 0 else "", Text(str(message), style="red"))
    parts: list[RenderableType] = [summary]
    if data["copies"]:
        copies = Table(title="copies", title_justify="left", expand=False)
        copies.add_column("POD", overflow="fold")
        copies.add_column("STATE")
        copies.add_column("SINCE")
        copies.add_column("AGE", justify="right")
        for copy in data["copies"]:
            copies.add_row(
                str(copy["pod"]),
                state_text(str(copy["state"])),
                format_time(copy["time_ms"]),
                age(copy["time_ms"], now_ms),
            )
        parts.append(copies)
    return Group(*parts)


def vmodel_status_table(data: Mapping[str, Any]) -> RenderableType:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("vmodel", str(data["vModelId"]))
    grid.add_row("status", state_text(str(data["status"])))
    if data["status"] != "NOT_FOUND":
        grid.add_row("owner", str(data["owner"]) or "-")
        for label, model_key, status_key in (
            ("active", "activeModelId", "activeModelStatus"),
            ("target", "targetModelId", "targetModelStatus"),
        ):
            status = data.get(status_key)
            if label == "target" and data["targetModelId"] == data["activeModelId"] and not status:
                continue  # not in transition: the target is the active model
            line = Text(str(data[model_key]) or "-")
            if status:
                line.append(" ")
                line.append_text(state_text(str(status["status"])))
                for message in status["errors"][:1]:
                    line.append(f" {message}", style="red")
            grid.add_row(label, line)
    return grid


def models_table(models: Sequence[Mapping[str, Any]], now_ms: int) -> Table:
    """``list``: one row per model of ``GET /mesh/models``."""
    table = Table(caption=f"{len(models)} model(s)", caption_justify="left")
    table.add_column("MODEL", overflow="fold")
    table.add_column("TYPE")
    table.add_column("STATUS")
    table.add_column("HOLDERS", overflow="fold")
    table.add_column("LOADING", overflow="fold")
    table.add_column("LAST USED", justify="right")
    table.add_column("VMODELS", justify="right")
    table.add_column("ERROR", overflow="fold", style="red")
    for model in models:
        errors = model.get("errors") or []
        table.add_row(
            str(model.get("id", "")),
            str(model.get("type", "")),
            state_text(str(model.get("status", ""))),
            _joined(model.get("holders") or []),
            _joined(model.get("loading") or []),
            age(int(model.get("last_used_ms") or 0), now_ms),
            str(model.get("vmodel_refcount", 0)),
            str(errors[0]) if errors else "",
        )
    return table


def use_text(used: int, capacity: int) -> Text:
    percent = use_percent(used, capacity)
    return Text(format_percent(percent), style=use_style(percent))


def pools_table(pools: Mapping[str, Mapping[str, Any]]) -> Table:
    """``pools``: one row per pool of ``GET /mesh/pools``, with its use of capacity."""
    table = Table()
    table.add_column("POOL", overflow="fold")
    table.add_column("PODS", justify="right")
    table.add_column("USED", justify="right")
    table.add_column("CAPACITY", justify="right")
    table.add_column("USE", justify="right")
    table.add_column("MODELS", justify="right")
    table.add_column("REQ/MIN", justify="right")
    table.add_column("UNPLACED", justify="right")
    table.add_column("DRAINING", justify="right")
    for name in sorted(pools):
        pool = pools[name]
        used, capacity = int(pool.get("used_bytes", 0)), int(pool.get("capacity_bytes", 0))
        unplaced = int(pool.get("unplaced_models", 0))
        table.add_row(
            name,
            str(pool.get("pods", 0)),
            human_bytes(used),
            human_bytes(capacity),
            use_text(used, capacity),
            str(pool.get("loaded_models", 0)),
            str(pool.get("requests_per_min", 0)),
            Text(str(unplaced), style="red" if unplaced else ""),
            str(pool.get("shutting_down", 0)),
        )
    return table


def pod_state(pod: Mapping[str, Any]) -> Text:
    """What a pod is doing, in a word or two: dead, draining, runtime down, up; leader marked."""
    if not pod.get("alive", False):
        text = Text("dead", style="red")
    elif pod.get("shutting_down", False):
        text = Text("draining", style="yellow")
    elif not pod.get("runtime_ready", True):
        text = Text("runtime down", style="red")
    else:
        text = Text("up", style="green")
    if pod.get("leader", False):
        text.append(" leader", style="bold cyan")
    return text


def pods_table(pods: Sequence[Mapping[str, Any]], now_ms: int) -> Table:
    table = Table(title="pods", title_justify="left")
    table.add_column("POD", overflow="fold")
    table.add_column("POOL")
    table.add_column("STATE")
    table.add_column("MODELS", justify="right")
    table.add_column("LOADING", justify="right")
    table.add_column("USED", justify="right")
    table.add_column("CAPACITY", justify="right")
    table.add_column("USE", justify="right")
    table.add_column("REQ/MIN", justify="right")
    table.add_column("UNPLACED", justify="right")
    table.add_column("UP", justify="right")
    table.add_column("ADDRESS", overflow="fold", style="dim")
    for pod in pods:
        used, capacity = int(pod.get("used_bytes", 0)), int(pod.get("capacity_bytes", 0))
        start = int(pod.get("start_ms", 0))
        unplaced = int(pod.get("unplaced_models", 0))
        table.add_row(
            str(pod.get("id", "")),
            str(pod.get("pool", "")),
            pod_state(pod),
            str(pod.get("model_count", 0)),
            str(pod.get("loading_count", 0)),
            human_bytes(used),
            human_bytes(capacity),
            use_text(used, capacity),
            str(pod.get("requests_per_min", 0)),
            Text(str(unplaced), style="red" if unplaced else ""),
            duration((now_ms - start) / 1000) if start > 0 else "-",
            str(pod.get("address", "")),
        )
    return table


TOP_LOADS = 10
TOP_FAILURES = 5


def top_frame(status: Mapping[str, Any], now_ms: int, source: str = "", problem: str = "") -> RenderableType:
    """One frame of ``top``: a summary line, the pods, loads in progress and recent failures."""
    counts = status.get("models", {})
    header = Text()
    header.append("meshctl top", style="bold")
    if source:
        header.append(f"  {source}", style="dim")
    header.append(f"  {format_time(int(status.get('time_ms', now_ms)))}", style="dim")
    summary = Text()
    summary.append(f"leader {status.get('leader') or '-'}")
    summary.append(f"  models {counts.get('registered', 0)}: ")
    summary.append(f"{counts.get('loaded', 0)} loaded", style="green")
    summary.append(", ")
    summary.append(f"{counts.get('loading', 0)} loading", style="yellow")
    summary.append(f", {counts.get('not_loaded', 0)} not loaded, ")
    failed = int(counts.get("loading_failed", 0))
    summary.append(f"{failed} failed", style="red" if failed else "")
    summary.append(f"  vmodels {len(status.get('vmodels', []))}")
    pods = status.get("pods", [])
    alive = sum(1 for pod in pods if pod.get("alive"))
    summary.append(f"  pods {alive}/{len(pods)} alive")
    parts: list[RenderableType] = [header, summary]
    if problem:
        parts.append(Text(problem, style="bold red"))
    parts.append(pods_table(pods, now_ms))
    loads = status.get("loads_in_progress", [])
    if loads:
        table = Table(title=f"loads in progress ({len(loads)})", title_justify="left")
        table.add_column("MODEL", overflow="fold")
        table.add_column("POD")
        table.add_column("FOR", justify="right")
        for load in loads[:TOP_LOADS]:
            since = int(load.get("since_ms", 0))
            table.add_row(
                str(load.get("model", "")), str(load.get("pod", "")), duration((now_ms - since) / 1000)
            )
        parts.append(table)
    failures = status.get("recent_failures", [])
    if failures:
        table = Table(title=f"recent failures ({len(failures)})", title_justify="left")
        table.add_column("MODEL", overflow="fold")
        table.add_column("POD")
        table.add_column("WHEN", justify="right")
        table.add_column("MESSAGE", overflow="fold", style="red")
        for failure in failures[:TOP_FAILURES]:
            table.add_row(
                str(failure.get("model", "")),
                str(failure.get("pod", "")),
                age(int(failure.get("time_ms", 0)), now_ms),
                str(failure.get("message", "")),
            )
        parts.append(table)
    return Group(*parts)


# -- the batch summary -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchFailure:
    where: str
    model_id: str
    status: str  # gRPC status name, or INVALID_ARGUMENT for an entry of the file that is not a model
    message: str


def batch_summary_data(
    total: int, registered: Sequence[str], failures: Sequence[BatchFailure], not_attempted: Sequence[str]
) -> dict[str, Any]:
    return {
        "total": total,
        "registered": list(registered),
        "failed": [
            {"where": f.where, "modelId": f.model_id, "status": f.status, "message": f.message}
            for f in failures
        ],
        "not_attempted": list(not_attempted),
    }


def batch_summary_table(failures: Sequence[BatchFailure]) -> Table:
    table = Table(title=f"{len(failures)} failed", title_justify="left", title_style="bold red")
    table.add_column("WHERE")
    table.add_column("MODEL", overflow="fold")
    table.add_column("STATUS")
    table.add_column("MESSAGE", overflow="fold")
    for failure in failures:
        table.add_row(failure.where, failure.model_id or "-", failure.status, failure.message)
    return table


def batch_exit_code(failures: Sequence[BatchFailure], not_attempted: Sequence[str]) -> int:
    """5 when the mesh was unreachable (the batch stops at the first UNAVAILABLE), 6 when some items
    failed otherwise, else 0."""
    if not_attempted or any(f.status == "UNAVAILABLE" for f in failures):
        return UNREACHABLE
    return BATCH_PARTIAL if failures else OK


def shorten(text: str, most: int = 120) -> str:
    """An over-long id or message cut for a table cell, saying how long it was."""
    if len(text) <= most:
        return text
    return f"{text[: most - 20]}… ({len(text)} chars)"
