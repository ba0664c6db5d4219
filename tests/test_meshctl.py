"""meshctl end to end: the installed console script against a real local mesh (etcd, MLServer, adapter, pod).

Every test runs ``.venv/bin/meshctl`` as a child process with MESH_ENDPOINT / MESH_REST_ENDPOINT set, and
checks its exit code, its stdout (one JSON document with ``--output json``) and its stderr.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.processes import VENV_BIN, free_port
from tests.conftest import MeshClients
from tests.support import ExampleModel, poll_until, train_iris

pytestmark = pytest.mark.integration

MESHCTL = VENV_BIN / "meshctl"


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)  # the whole of stdout is one document


@dataclass(frozen=True)
class Cli:
    endpoint: str
    rest: str
    model: ExampleModel
    work: Path

    def env(self, endpoint: str | None = None, rest: str | None = None) -> dict[str, str]:
        return {
            **os.environ,
            "MESH_ENDPOINT": endpoint or self.endpoint,
            "MESH_REST_ENDPOINT": rest or self.rest,
        }

    def __call__(self, *args: str, endpoint: str | None = None, rest: str | None = None) -> Run:
        done = subprocess.run(
            [str(MESHCTL), *args],
            env=self.env(endpoint, rest),
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        return Run(done.returncode, done.stdout, done.stderr)

    def json(self, *args: str) -> Any:
        run = self("--output", "json", *args)
        assert run.code == 0, run
        return run.json()

    @property
    def path(self) -> str:
        return str(self.model.path)


@pytest.fixture(scope="module")
def cli(local_mesh: MeshClients, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    pod = local_mesh.mesh.pod
    assert pod is not None
    work = tmp_path_factory.mktemp("meshctl")
    yield Cli(pod.address, pod.rest_address, train_iris(work / "iris", "logistic"), work)


def dead_endpoint() -> str:
    return f"127.0.0.1:{free_port()}"


def test_help_documents_the_exit_codes(cli: Cli) -> None:
    run = cli("--help")
    assert run.code == 0
    for line in ("Exit codes", "3  not found", "5  the mesh is unreachable", "6  some items"):
        assert line in run.stdout
    assert cli().code == 2  # no command: usage


def test_register_status_load_unregister(cli: Cli) -> None:
    registered = cli.json("register", "one", "--type", "sklearn", "--path", cli.path)
    assert registered == {"modelId": "one", "status": "NOT_LOADED", "errors": [], "copies": []}
    assert cli("register", "one", "--type", "sklearn", "--path", cli.path).code == 0  # same info: idempotent

    table = cli("status", "one")
    assert table.code == 0 and "NOT_LOADED" in table.stdout and table.stderr == ""

    loaded = cli.json("load", "one", "--timeout", "60")
    assert loaded["status"] == "LOADED"
    status = cli.json("status", "one")
    assert status["status"] == "LOADED"
    assert [(c["pod"], c["state"]) for c in status["copies"]] == [("pod-a", "LOADED")]
    assert status["copies"][0]["time_ms"] > 0
    shown = cli("status", "one")
    assert "pod-a" in shown.stdout and "LOADED" in shown.stdout and "ago" in shown.stdout

    assert cli.json("unregister", "one") == {"modelId": "one", "unregistered": True}
    gone = cli("--output", "json", "status", "one")
    assert gone.code == 3 and gone.json()["status"] == "NOT_FOUND"
    assert "NOT_FOUND" in gone.stderr


def test_register_with_other_info_is_already_exists(cli: Cli) -> None:
    assert cli("register", "taken", "--type", "sklearn", "--path", cli.path).code == 0
    run = cli("register", "taken", "--type", "sklearn", "--path", cli.path + "-other")
    assert run.code == 4
    assert run.stdout == ""
    assert run.stderr.startswith("meshctl: ALREADY_EXISTS: ") and "taken" in run.stderr


def test_invalid_arguments_exit_4(cli: Cli) -> None:
    run = cli("register", "x" * 1100, "--type", "sklearn", "--path", cli.path)
    assert run.code == 4 and "INVALID_ARGUMENT" in run.stderr and "1024" in run.stderr
    assert cli("register", "empty-type", "--type", "", "--path", cli.path).code == 4


def test_usage_errors_exit_2(cli: Cli) -> None:
    assert cli("register", "m").code == 2  # no --type
    assert cli("register").code == 2  # neither MODEL_ID nor --file
    assert cli("list", "--state", "SLEEPING").code == 2
    assert cli("--output", "yaml", "list").code == 2
    assert cli("register", "--file", str(cli.work / "no-such-file.csv")).code == 2
    broken = cli.work / "broken.json"
    broken.write_text("{not json")
    run = cli("register", "--file", str(broken))
    assert run.code == 2 and "not JSON" in run.stderr


def test_register_sync_of_a_missing_path_fails_with_the_load_error(cli: Cli) -> None:
    run = cli("register", "nowhere", "--type", "sklearn", "--path", str(cli.work / "missing"), "--sync")
    assert run.code == 1
    assert "LOADING_FAILED" in run.stdout
    assert run.stderr.startswith("meshctl: LOADING_FAILED: ") and "does not exist" in run.stderr
    assert cli("load", "nowhere").code == 1  # the failure is remembered


def test_batch_csv_registers_the_good_rows_and_lists_the_bad(cli: Cli) -> None:
    long_id = "y" * 1100
    rows = [
        "modelId,type,path",
        f"batch-1,sklearn,{cli.path}",
        f"batch-2,sklearn,{cli.path}",
        f"{long_id},sklearn,{cli.path}",
        f"batch-3,sklearn,{cli.path}",
        f"batch-1,sklearn,{cli.path}-elsewhere",  # the same id with another path
        "batch-4,,/nowhere",  # no type: never sent
    ]
    batch = cli.work / "models.csv"
    batch.write_text("\n".join(rows) + "\n")

    run = cli("--output", "json", "register", "--file", str(batch), "--parallel", "1")
    assert run.code == 6, run
    summary = run.json()
    assert summary["total"] == 6
    assert sorted(summary["registered"]) == ["batch-1", "batch-2", "batch-3"]
    assert [(f["where"], f["status"]) for f in summary["failed"]] == [
        ("line 4", "INVALID_ARGUMENT"),
        ("line 6", "ALREADY_EXISTS"),
        ("line 7", "INVALID_ARGUMENT"),
    ]
    assert summary["failed"][0]["modelId"].endswith("(1100 chars)")
    assert summary["not_attempted"] == []
    assert "3 of 6 failed" in run.stderr

    table = cli("register", "--file", str(batch))  # again, as a table: the good rows are idempotent
    assert table.code == 6
    assert "registered 3 of 6" in table.stdout and "3 failed" in table.stdout
    assert "ALREADY_EXISTS" in table.stdout and "line 6" in table.stdout and "missing type" in table.stdout
    assert "registering" in table.stderr  # the progress bar's last frame

    listed = {m["id"] for m in cli.json("list")}
    assert {"batch-1", "batch-2", "batch-3"} <= listed and "batch-4" not in listed


def test_batch_json_with_load(cli: Cli) -> None:
    batch = cli.work / "models.json"
    batch.write_text(
        json.dumps(
            [
                {"modelId": "json-1", "type": "sklearn", "path": cli.path},
                {"modelId": "json-2", "type": "sklearn", "path": cli.path, "key": ""},
            ]
        )
    )
    summary = cli.json("register", "--file", str(batch), "--load")
    assert summary["failed"] == [] and sorted(summary["registered"]) == ["json-1", "json-2"]

    def both_loaded() -> bool:
        return all(cli.json("status", m)["status"] == "LOADED" for m in ("json-1", "json-2"))

    poll_until(both_loaded, 60, "the batch's models loaded")


def test_list_with_filters(cli: Cli) -> None:
    for model_id in ("list-loaded", "list-idle"):
        assert cli("register", model_id, "--type", "sklearn", "--path", cli.path).code == 0
    assert cli("load", "list-loaded").code == 0

    loaded = {m["id"]: m for m in cli.json("list", "--state", "LOADED")}
    assert "list-loaded" in loaded and "list-idle" not in loaded
    entry = loaded["list-loaded"]
    assert entry["holders"] == ["pod-a"] and entry["type"] == "sklearn" and entry["status"] == "LOADED"
    assert set(entry) == {
        "id",
        "type",
        "status",
        "holders",
        "loading",
        "errors",
        "last_used_ms",
        "vmodel_refcount",
    }

    idle = {m["id"] for m in cli.json("list", "--state", "NOT_LOADED")}
    assert "list-idle" in idle and "list-loaded" not in idle
    on_pod = {m["id"] for m in cli.json("list", "--pod", "pod-a")}
    assert "list-loaded" in on_pod and "list-idle" not in on_pod
    assert cli.json("list", "--pod", "no-such-pod") == []
    assert len(cli.json("list", "--limit", "2")) == 2
    table = cli("list", "--state", "LOADED")
    assert table.code == 0 and "list-loaded" in table.stdout and "pod-a" in table.stdout


def test_vmodel_set_get_delete(cli: Cli) -> None:
    created = cli.json(
        "vmodel", "set", "vm", "--target", "vm-1", "--type", "sklearn", "--path", cli.path, "--load", "--sync"
    )
    assert (created["status"], created["activeModelId"], created["targetModelId"]) == (
        "DEFINED",
        "vm-1",
        "vm-1",
    )
    assert created["activeModelStatus"]["status"] == "LOADED"

    got = cli.json("vmodel", "get", "vm")
    assert got["status"] == "DEFINED" and got["activeModelId"] == "vm-1"
    assert cli.json("status", "vm-1")["status"] == "LOADED"  # auto-created
    refcount = {m["id"]: m["vmodel_refcount"] for m in cli.json("list")}
    assert refcount["vm-1"] == 1

    referenced = cli("unregister", "vm-1")
    assert referenced.code == 1 and "FAILED_PRECONDITION" in referenced.stderr

    shown = cli("vmodel", "get", "vm")
    assert shown.code == 0 and "DEFINED" in shown.stdout and "vm-1" in shown.stdout
    assert cli("vmodel", "get", "vm", "--owner", "someone-else").code == 3

    assert cli.json("vmodel", "delete", "vm") == {"vModelId": "vm", "deleted": True}
    missing = cli("--output", "json", "vmodel", "get", "vm")
    assert missing.code == 3 and missing.json()["status"] == "NOT_FOUND"
    assert cli("vmodel", "delete", "vm").code == 0  # unknown: a no-op, as ModelMesh answers


def test_vmodel_set_errors(cli: Cli) -> None:
    run = cli("vmodel", "set", "vm-orphan", "--target", "no-such-model")  # no --type to create it
    assert run.code == 3 and run.stderr.startswith("meshctl: NOT_FOUND: ") and "no-such-model" in run.stderr
    update = cli("vmodel", "set", "vm-orphan", "--target", "taken", "--update-only")
    assert update.code == 3 and "vm-orphan" in update.stderr
    assert (
        cli("vmodel", "set", "vm-orphan", "--target", "m", "--path", "/p").code == 2
    )  # --path without --type


def test_pools(cli: Cli) -> None:
    assert cli("register", "pooled", "--type", "sklearn", "--path", cli.path, "--sync").code == 0
    pools = cli.json("pools")
    assert len(pools) == 1
    (pool,) = pools.values()
    assert pool["pods"] == 1 and pool["capacity_bytes"] == 512 * 1024 * 1024
    assert pool["used_bytes"] > 0 and pool["loaded_models"] >= 1
    table = cli("pools")
    assert table.code == 0 and "%" in table.stdout and "512.0 MiB" in table.stdout


def test_top_once(cli: Cli) -> None:
    assert cli("register", "top-model", "--type", "sklearn", "--path", cli.path).code == 0
    poll_until(lambda: cli.json("top")["leader"] == "pod-a", what="pod-a is the leader")  # on its own too
    run = cli("top", "--once")
    assert run.code == 0
    assert "meshctl top" in run.stdout and "pod-a" in run.stdout and "up leader" in run.stdout
    assert "512.0 MiB" in run.stdout
    status = cli.json("top")  # json: the status document, once
    assert [p["id"] for p in status["pods"]] == ["pod-a"]
    assert status["leader"] == "pod-a" and status["models"]["registered"] >= 1


def test_top_runs_until_interrupted(cli: Cli) -> None:
    child = subprocess.Popen(
        [str(MESHCTL), "top", "--interval", "0.2"],
        env=cli.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        # it says when its view runs (an interrupt during start-up tests nothing of top's own)
        assert child.stderr is not None
        ready, _, _ = select.select([child.stderr], [], [], 30)
        assert ready, "meshctl top never started its view"
        started = child.stderr.readline()
        assert "Ctrl-C to stop" in started, started
        # off a terminal rich shows the last frame when the view ends; before that, let a few frames pass
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(1.0)
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, stderr
    assert "pod-a" in stdout


def test_unknown_model_is_exit_3(cli: Cli) -> None:
    for args in (("status", "never-registered"), ("load", "never-registered"), ("vmodel", "get", "never")):
        run = cli(*args)
        assert run.code == 3, (args, run)
        assert "NOT_FOUND" in run.stderr
    assert cli("unregister", "never-registered").code == 0  # a no-op, as ModelMesh answers


def test_a_dead_endpoint_is_exit_5(cli: Cli) -> None:
    dead = dead_endpoint()
    for args in (
        ("status", "one"),
        ("load", "one"),
        ("register", "m", "--type", "sklearn"),
        ("vmodel", "get", "v"),
    ):
        run = cli(*args, endpoint=dead)
        assert run.code == 5, (args, run)
        assert run.stderr.startswith("meshctl: UNAVAILABLE: ") and run.stdout == ""
    for rest_args in (("list",), ("pools",), ("top", "--once"), ("--output", "json", "list")):
        run = cli(*rest_args, rest=dead)
        assert run.code == 5, (rest_args, run)
        assert "UNAVAILABLE" in run.stderr and "refused" in run.stderr and run.stdout == ""

    batch = cli.work / "unreachable.csv"
    batch.write_text("".join(f"dead-{i},sklearn,{cli.path}\n" for i in range(5)))
    run = cli("--output", "json", "register", "--file", str(batch), "--parallel", "1", endpoint=dead)
    assert run.code == 5
    summary = run.json()
    assert [f["status"] for f in summary["failed"]] == ["UNAVAILABLE"]  # stopped at the first
    assert len(summary["not_attempted"]) == 4 and summary["registered"] == []


def test_the_endpoint_options_beat_the_environment(cli: Cli) -> None:
    dead = dead_endpoint()
    run = cli(
        "--endpoint", cli.endpoint, "--rest", cli.rest, "--output", "json", "list", endpoint=dead, rest=dead
    )
    assert run.code == 0 and isinstance(run.json(), list)
