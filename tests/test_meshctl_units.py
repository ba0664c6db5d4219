"""meshctl's pure parts (mesh/cli/render.py): the batch file, numbers for people, exit codes, the tables.

No I/O: the tables are rendered into a string.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import grpc
import pytest
from rich.console import Console, RenderableType

from mesh.cli import render
from mesh.cli.client import CliError, error_message, rest_base
from mesh.cli.render import BatchFailure, BatchFileError, BatchItem, BatchProblem
from protos import model_mesh_pb2 as mm

S = mm.ModelStatusInfo.ModelStatus
V = mm.VModelStatusInfo.VModelStatus


def text_of(renderable: RenderableType, width: int = 200) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, soft_wrap=False).print(renderable)
    return out.getvalue()


# -- exit codes --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("OK", 0),
        ("NOT_FOUND", 3),
        ("INVALID_ARGUMENT", 4),
        ("ALREADY_EXISTS", 4),
        ("UNAVAILABLE", 5),
        ("DEADLINE_EXCEEDED", 5),
        ("FAILED_PRECONDITION", 1),
        ("INTERNAL", 1),
        ("UNKNOWN", 1),
        ("RESOURCE_EXHAUSTED", 1),
        ("UNIMPLEMENTED", 1),
        ("PERMISSION_DENIED", 1),
        ("CANCELLED", 1),
        ("LOADING_FAILED", 1),  # a model state used as the status of a failed load
        ("not_found", 3),  # case does not matter
        ("", 1),
    ],
)
def test_exit_code_of_a_status(status: str, code: int) -> None:
    assert render.exit_code(status) == code


def test_every_grpc_status_has_an_exit_code_in_range() -> None:
    for code in grpc.StatusCode:
        assert render.exit_code(code.name) in (0, 1, 3, 4, 5)


@pytest.mark.parametrize(
    ("http", "status", "code"),
    [
        (200, "OK", 0),
        (204, "OK", 0),
        (400, "INVALID_ARGUMENT", 4),
        (404, "NOT_FOUND", 3),
        (405, "FAILED_PRECONDITION", 1),
        (409, "ALREADY_EXISTS", 4),
        (413, "FAILED_PRECONDITION", 1),
        (429, "RESOURCE_EXHAUSTED", 1),
        (500, "INTERNAL", 1),
        (501, "UNIMPLEMENTED", 1),
        (502, "UNAVAILABLE", 5),
        (503, "UNAVAILABLE", 5),
        (504, "DEADLINE_EXCEEDED", 5),
        (599, "UNKNOWN", 1),
    ],
)
def test_an_http_status_maps_to_the_grpc_status_and_exit_code(http: int, status: str, code: int) -> None:
    assert render.status_of_http(http) == status
    assert render.exit_code(render.status_of_http(http)) == code


def test_cli_error_carries_its_exit_code() -> None:
    assert CliError("NOT_FOUND", "x").code == 3
    assert CliError("UNAVAILABLE", "x").code == 5
    assert CliError("LOADING_FAILED", "x", render.FAILED).code == 1
    assert str(CliError("ALREADY_EXISTS", "taken")) == "ALREADY_EXISTS: taken"


def failure(where: str, status: str = "INVALID_ARGUMENT") -> BatchFailure:
    return BatchFailure(where, "m", status, "no")


@pytest.mark.parametrize(
    ("failures", "not_attempted", "code"),
    [
        ([], [], 0),
        ([failure("line 1")], [], 6),
        ([failure("line 1"), failure("line 2", "ALREADY_EXISTS")], [], 6),
        ([failure("line 1", "DEADLINE_EXCEEDED")], [], 6),  # one slow item: the others went on
        ([failure("line 1", "UNAVAILABLE")], [], 5),
        ([failure("line 1", "UNAVAILABLE")], ["b", "c"], 5),
        ([], ["b"], 5),
    ],
)
def test_batch_exit_code(failures: list[BatchFailure], not_attempted: list[str], code: int) -> None:
    assert render.batch_exit_code(failures, not_attempted) == code


def test_the_exit_codes_are_in_the_help_text() -> None:
    lines = ("0  ok", "3  not found", "4  invalid argument", "5  the mesh is unreachable", "6  some items")
    for line in lines:
        assert line in render.EXIT_CODES_HELP


# -- the batch file --------------------------------------------------------------------------------------
def test_csv_with_a_header_in_any_order_and_optional_key() -> None:
    items, problems = render.parse_csv_batch("type,modelId,path\nsklearn,a,/m/a\nxgboost, b ,/m/b\n")
    assert problems == []
    assert items == [BatchItem("line 2", "a", "sklearn", "/m/a"), BatchItem("line 3", "b", "xgboost", "/m/b")]


def test_csv_header_names_are_forgiving() -> None:
    items, _ = render.parse_csv_batch("Model_Id,TYPE,path,key\nm,sklearn,/p,k1\n")
    assert items == [BatchItem("line 2", "m", "sklearn", "/p", "k1")]


def test_csv_without_a_header_is_positional() -> None:
    items, problems = render.parse_csv_batch("a,sklearn,/m/a\nb,sklearn,/m/b,secret\n")
    assert problems == []
    assert items[1] == BatchItem("line 2", "b", "sklearn", "/m/b", "secret")


def test_csv_skips_blank_lines_and_comments_and_keeps_line_numbers() -> None:
    text = "# models for the demo\nmodelId,type,path\n\na,sklearn,/a\n   \n# b is later\nb,sklearn,/b\n"
    items, _ = render.parse_csv_batch(text)
    assert [(i.where, i.model_id) for i in items] == [("line 4", "a"), ("line 7", "b")]


def test_csv_rows_that_are_not_models_are_problems_not_errors() -> None:
    text = "modelId,type,path\na,sklearn,/a\nb,,/b\n,sklearn,/c\nd,sklearn,/d,key,extra\ne\n"
    items, problems = render.parse_csv_batch(text)
    assert [i.model_id for i in items] == ["a"]
    assert problems == [
        BatchProblem("line 3", "b", "missing type"),
        BatchProblem("line 4", "", "missing modelId"),
        BatchProblem("line 5", "d", "5 columns, expected at most 3"),
        BatchProblem("line 6", "e", "missing type"),
    ]


def test_csv_path_may_be_empty() -> None:
    items, problems = render.parse_csv_batch("a,sklearn\n")
    assert problems == [] and items == [BatchItem("line 1", "a", "sklearn", "")]


def test_csv_quoted_fields_keep_their_commas() -> None:
    items, _ = render.parse_csv_batch('a,sklearn,"/models/a,b",k\n')
    assert (items[0].path, items[0].key) == ("/models/a,b", "k")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("modelId,type,paths\na,sklearn,/a\n", "unknown column(s) 'paths'"),
        ("modelId,path\na,/a\n", "names no type column"),
    ],
)
def test_csv_with_a_wrong_header_is_a_file_error(text: str, message: str) -> None:
    with pytest.raises(BatchFileError, match=re.escape(message)):
        render.parse_csv_batch(text)


def test_an_empty_file_has_no_models() -> None:
    assert render.parse_csv_batch("") == ([], [])
    assert render.parse_csv_batch("modelId,type,path\n") == ([], [])
    assert render.parse_json_batch("[]") == ([], [])


def test_json_list_of_objects() -> None:
    text = json.dumps(
        [
            {"modelId": "a", "type": "sklearn", "path": "/a"},
            {"modelId": "b", "type": "sklearn", "path": "/b", "key": "k"},
            {"model_id": "c", "type": "sklearn"},
        ]
    )
    items, problems = render.parse_json_batch(text)
    assert problems == []
    assert items == [
        BatchItem("item 1", "a", "sklearn", "/a"),
        BatchItem("item 2", "b", "sklearn", "/b", "k"),
        BatchItem("item 3", "c", "sklearn", ""),
    ]


def test_json_entries_that_are_not_models_are_problems() -> None:
    text = json.dumps(
        [
            {"modelId": "a", "type": "sklearn", "path": "/a"},
            "just a string",
            {"modelId": "b", "path": "/b"},
            {"modelId": "c", "type": "sklearn", "pth": "/c"},
            {"modelId": "d", "type": 3},
        ]
    )
    items, problems = render.parse_json_batch(text)
    assert [i.model_id for i in items] == ["a"]
    assert problems == [
        BatchProblem("item 2", "", 'not an object: "just a string"'),
        BatchProblem("item 3", "b", "missing type"),
        BatchProblem("item 4", "c", "unknown field 'pth'"),
        BatchProblem("item 5", "d", "type must be a string, not int"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not JSON"),
        ('{"models": []}', "expected a JSON list of models, got dict"),
        ("3", "got int"),
    ],
)
def test_json_that_is_not_a_list_is_a_file_error(text: str, message: str) -> None:
    with pytest.raises(BatchFileError, match=message):
        render.parse_json_batch(text)


@pytest.mark.parametrize(
    ("name", "text", "fmt"),
    [
        ("models.csv", "[", "csv"),
        ("models.CSV", "", "csv"),
        ("models.json", "a,b", "json"),
        ("models", "  [{}]", "json"),
        ("models", "a,sklearn,/a", "csv"),
        ("models.txt", "a,sklearn", "csv"),
    ],
)
def test_batch_format_by_suffix_then_content(name: str, text: str, fmt: str) -> None:
    assert render.batch_format(name, text) == fmt


def test_parse_batch_dispatches_on_the_format() -> None:
    assert render.parse_batch("a,sklearn,/a", "csv")[0][0].model_id == "a"
    assert render.parse_batch('[{"modelId": "a", "type": "t"}]', "json")[0][0].where == "item 1"


@pytest.mark.parametrize(
    ("column", "name"),
    [("modelId", "modelId"), ("model-id", "modelId"), (" MODELID ", "modelId"), ("Key", "key"), ("id", None)],
)
def test_field_names(column: str, name: str | None) -> None:
    assert render.field_name(column) == name


# -- numbers and times -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (10 * 1024 * 1024, "10.0 MiB"),
        (512 * 1024 * 1024, "512.0 MiB"),
        (3 * 1024**3 + 1024**3 // 4, "3.2 GiB"),  # 3.25 rounds half to even
        (2 * 1024**4, "2.0 TiB"),
        (5 * 1024**6, "5120.0 PiB"),  # the largest unit takes the rest
        (-2048, "-2.0 KiB"),
    ],
)
def test_human_bytes(n: int, text: str) -> None:
    assert render.human_bytes(n) == text


@pytest.mark.parametrize(
    ("used", "capacity", "percent", "text", "style"),
    [
        (0, 100, 0.0, "0.0%", "green"),
        (50, 200, 25.0, "25.0%", "green"),
        (70, 100, 70.0, "70.0%", "yellow"),
        (1, 3, 100 / 3, "33.3%", "green"),
        (95, 100, 95.0, "95.0%", "red"),
        (120, 100, 120.0, "120.0%", "red"),  # over capacity is shown as it is
        (10, 0, None, "-", "dim"),  # a pod that reports no capacity
        (0, -1, None, "-", "dim"),
    ],
)
def test_use_percent(used: int, capacity: int, percent: float | None, text: str, style: str) -> None:
    assert render.use_percent(used, capacity) == percent
    assert render.format_percent(render.use_percent(used, capacity)) == text
    assert render.use_style(render.use_percent(used, capacity)) == style


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (-3, "0s"), (59.9, "59s"), (60, "1m00s"), (125, "2m05s"), (7300, "2h01m"), (200000, "2d07h")],
)
def test_duration(seconds: float, text: str) -> None:
    assert render.duration(seconds) == text


def test_age_and_time() -> None:
    now = 1_700_000_000_000
    assert render.age(now - 5_000, now) == "5s ago"
    assert render.age(0, now) == "-"
    assert render.age(now + 10, now) == "now"
    assert render.format_time(now) == "2023-11-14 22:13:20Z"
    assert render.format_time(0) == "-"


def test_shorten_an_over_long_id() -> None:
    assert render.shorten("short") == "short"
    long = "x" * 2000
    assert render.shorten(long).endswith("… (2000 chars)") and len(render.shorten(long)) < 130


# -- answers as data and tables ----------------------------------------------------------------------------
def status_info() -> mm.ModelStatusInfo:
    return mm.ModelStatusInfo(
        status=S.LOADED,
        errors=["an old failure"],
        modelCopyInfos=[mm.ModelStatusInfo.ModelCopyInfo(location="pod-a", copyStatus=S.LOADED, time=1_000)],
    )


def test_model_status_data() -> None:
    assert render.model_status_data("m", status_info()) == {
        "modelId": "m",
        "status": "LOADED",
        "errors": ["an old failure"],
        "copies": [{"pod": "pod-a", "state": "LOADED", "time_ms": 1_000}],
    }
    assert render.model_status_data("x", mm.ModelStatusInfo())["status"] == "NOT_FOUND"


def test_model_status_table_shows_status_errors_and_copies() -> None:
    text = text_of(render.model_status_table(render.model_status_data("m", status_info()), 61_000))
    assert "LOADED" in text and "an old failure" in text
    assert "pod-a" in text and "1m00s ago" in text and "1970-01-01 00:00:01Z" in text


def test_vmodel_status_data_and_table() -> None:
    info = mm.VModelStatusInfo(
        status=V.TRANSITIONING,
        activeModelId="m1",
        targetModelId="m2",
        activeModelStatus=mm.ModelStatusInfo(status=S.LOADED),
        targetModelStatus=mm.ModelStatusInfo(status=S.LOADING),
        owner="team",
    )
    data = render.vmodel_status_data("v", info)
    assert data["status"] == "TRANSITIONING" and data["owner"] == "team"
    assert data["activeModelStatus"]["status"] == "LOADED"
    assert data["targetModelStatus"]["status"] == "LOADING"
    text = text_of(render.vmodel_status_table(data))
    assert "m1 LOADED" in text and "m2 LOADING" in text and "team" in text
    settled = render.vmodel_status_data("v", mm.VModelStatusInfo(status=V.DEFINED, activeModelId="m"))
    assert settled["targetModelStatus"] is None
    settled_text = text_of(render.vmodel_status_table({**settled, "targetModelId": "m"}))
    assert "active" in settled_text and "target" not in settled_text  # not in transition
    missing = render.vmodel_status_data("nope", mm.VModelStatusInfo())
    assert missing["status"] == "NOT_FOUND"
    assert "owner" not in text_of(render.vmodel_status_table(missing))


def test_models_table() -> None:
    models: list[dict[str, Any]] = [
        {
            "id": "m1",
            "type": "sklearn",
            "status": "LOADED",
            "holders": ["pod-a", "pod-b", "pod-c", "pod-d"],
            "loading": [],
            "errors": [],
            "last_used_ms": 1_000,
            "vmodel_refcount": 2,
        },
        {"id": "m2", "type": "sklearn", "status": "LOADING_FAILED", "errors": ["file not found"]},
    ]
    text = text_of(render.models_table(models, 11_000))
    assert "pod-a, pod-b, pod-c +1" in text and "10s ago" in text
    assert "LOADING_FAILED" in text and "file not found" in text and "2 model(s)" in text


def test_pools_table_shows_use_percent() -> None:
    pools = {
        "mlserver": {
            "pods": 2,
            "capacity_bytes": 1024**3,
            "used_bytes": 256 * 1024**2,
            "loaded_models": 7,
            "requests_per_min": 120,
            "unplaced_models": 1,
            "shutting_down": 0,
        },
        "empty": {"pods": 0},
    }
    text = text_of(render.pools_table(pools))
    row = next(line for line in text.splitlines() if "mlserver" in line)
    assert "256.0 MiB" in row and "1.0 GiB" in row and "25.0%" in row and "120" in row
    empty = next(line for line in text.splitlines() if "empty" in line)
    assert " - " in empty  # no capacity: no use %
    assert text.index("empty") < text.index("mlserver")  # pools by name


def pod(pod_id: str, **overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": pod_id,
        "alive": True,
        "leader": False,
        "pool": "mlserver",
        "address": "127.0.0.1:9000",
        "capacity_bytes": 1000,
        "used_bytes": 500,
        "model_count": 3,
        "loading_count": 1,
        "requests_per_min": 60,
        "unplaced_models": 0,
        "shutting_down": False,
        "runtime_ready": True,
        "start_ms": 1_000,
    }
    return {**base, **overrides}


@pytest.mark.parametrize(
    ("overrides", "state"),
    [
        ({}, "up"),
        ({"leader": True}, "up leader"),
        ({"alive": False}, "dead"),
        ({"shutting_down": True}, "draining"),
        ({"runtime_ready": False}, "runtime down"),
    ],
)
def test_pod_state(overrides: dict[str, object], state: str) -> None:
    assert render.pod_state(pod("p", **overrides)).plain == state


def test_top_frame() -> None:
    now = 3_601_000
    status = {
        "time_ms": now,
        "leader": "pod-a",
        "models": {"registered": 5, "loaded": 3, "loading": 1, "not_loaded": 0, "loading_failed": 1},
        "pods": [pod("pod-a", leader=True), pod("pod-b", alive=False)],
        "vmodels": [{"id": "v"}],
        "loads_in_progress": [{"model": "m4", "pod": "pod-a", "since_ms": now - 3_000}],
        "recent_failures": [{"model": "m5", "pod": "pod-a", "message": "bad file", "time_ms": now - 60_000}],
    }
    text = text_of(render.top_frame(status, now, "127.0.0.1:8008"))
    assert "leader pod-a" in text and "models 5: 3 loaded, 1 loading, 0 not loaded, 1 failed" in text
    assert "vmodels 1" in text and "pods 1/2 alive" in text
    row = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("pod-a"))
    assert "up leader" in row and "50.0%" in row and "1h00m" in row
    assert "dead" in text
    assert "loads in progress (1)" in text and "3s" in text
    assert "recent failures (1)" in text and "bad file" in text and "1m00s ago" in text
    quiet = text_of(render.top_frame({"pods": []}, now, problem="UNAVAILABLE: gone"))
    assert "loads in progress" not in quiet and "UNAVAILABLE: gone" in quiet and "pods 0/0 alive" in quiet


def test_batch_summary() -> None:
    failures = [BatchFailure("line 3", "b", "ALREADY_EXISTS", "taken")]
    assert render.batch_summary_data(3, ["a", "c"], failures, []) == {
        "total": 3,
        "registered": ["a", "c"],
        "failed": [{"where": "line 3", "modelId": "b", "status": "ALREADY_EXISTS", "message": "taken"}],
        "not_attempted": [],
    }
    text = text_of(render.batch_summary_table(failures))
    assert "1 failed" in text and "line 3" in text and "ALREADY_EXISTS" in text and "taken" in text


# -- the client's pure helpers -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("endpoint", "base"),
    [
        ("127.0.0.1:8008", "http://127.0.0.1:8008"),
        ("http://mesh:8008/", "http://mesh:8008"),
        ("https://mesh.example/api", "https://mesh.example/api"),
    ],
)
def test_rest_base(endpoint: str, base: str) -> None:
    assert rest_base(endpoint) == base


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": "state must be one of LOADED"}', "state must be one of LOADED"),
        (b"<html>bad gateway</html>", "<html>bad gateway</html>"),
        (b"", "Bad Gateway"),
        (b'{"detail": 1}', '{"detail": 1}'),
    ],
)
def test_error_message_of_a_rest_answer(body: bytes, message: str) -> None:
    assert error_message(body, "Bad Gateway") == message
