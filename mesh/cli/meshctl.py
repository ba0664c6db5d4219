"""meshctl: drive a mesh from a shell.

Models and vmodels through the ModelMesh gRPC API (``--endpoint``, env ``MESH_ENDPOINT``, default
127.0.0.1:8033); the mesh's picture (models, pools, pods) from a pod's REST port (``--rest``, env
``MESH_REST_ENDPOINT``, default 127.0.0.1:8008). ``--output json`` prints one JSON document on stdout and
nothing else there; progress, spinners and errors go to stderr. Errors are ``meshctl: STATUS: message``.

Exit codes:

- 0  ok
- 1  the call failed in a way not below (e.g. a load failed, FAILED_PRECONDITION, INTERNAL)
- 2  usage error (bad option or argument, unreadable batch file)
- 3  not found (NOT_FOUND: an unknown model or vmodel)
- 4  invalid argument or already exists (INVALID_ARGUMENT, ALREADY_EXISTS)
- 5  the mesh is unreachable (UNAVAILABLE, connection refused, DEADLINE_EXCEEDED)
- 6  some items of a batch register failed (the others were registered)

Unregistering an unknown model or deleting an unknown vmodel is a no-op on the mesh (ModelMesh answers OK),
so those exit 0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from mesh.cli import render
from mesh.cli.client import DEFAULT_ENDPOINT, DEFAULT_REST, ClientTls, CliError, MeshClient
from protos import model_mesh_pb2 as mm

HELP = (
    "Operate a modelmesh-py mesh: register models, load them, manage vmodels, see pools and pods.\n\n"
    + "\b\n"  # click: keep the lines as they are
    + render.EXIT_CODES_HELP
    + "\n\nErrors go to stderr as 'meshctl: STATUS: message'; "
    + "--output json prints one JSON document on stdout."
)

app = typer.Typer(
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
vmodel_app = typer.Typer(help="vmodels: a stable name for a model that can be switched without downtime.")
app.add_typer(vmodel_app, name="vmodel", no_args_is_help=True)


class Output(StrEnum):
    table = "table"
    json = "json"


class State(StrEnum):
    LOADED = "LOADED"
    LOADING = "LOADING"
    NOT_LOADED = "NOT_LOADED"
    LOADING_FAILED = "LOADING_FAILED"


@dataclass
class Settings:
    endpoint: str
    rest: str
    output: Output
    timeout_s: float
    tls: ClientTls | None = None

    @property
    def json(self) -> bool:
        return self.output is Output.json

    def client(self) -> MeshClient:
        return MeshClient(self.endpoint, self.rest, self.timeout_s, self.tls)


def stdout_console() -> Console:
    """Tables for people; off a terminal (a pipe, a test) wide enough that ids are not folded."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console(soft_wrap=False)
    return Console(width=200, soft_wrap=False)


err_console = Console(stderr=True, soft_wrap=True)  # an error on one line, whatever its length


def settings(ctx: typer.Context) -> Settings:
    found = ctx.find_object(Settings)
    assert found is not None, "the main callback sets the settings"
    return found


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def show(renderable: RenderableType) -> None:
    stdout_console().print(renderable)


def fail(error: CliError) -> NoReturn:
    err_console.print(f"meshctl: {error.status}: {error.message}", style="red", markup=False, highlight=False)
    raise typer.Exit(error.code)


def now_ms() -> int:
    return int(time.time() * 1000)


@app.callback()
def main_options(
    ctx: typer.Context,
    endpoint: Annotated[
        str,
        typer.Option("--endpoint", "-e", envvar="MESH_ENDPOINT", help="gRPC ModelMesh endpoint host:port."),
    ] = DEFAULT_ENDPOINT,
    rest: Annotated[
        str, typer.Option("--rest", envvar="MESH_REST_ENDPOINT", help="REST endpoint host:port (or a URL).")
    ] = DEFAULT_REST,
    output: Annotated[
        Output, typer.Option("--output", "-o", help="table for people, json for scripts (one document).")
    ] = Output.table,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Deadline of each call, seconds.")
    ] = 30.0,
    tls_ca: Annotated[
        str,
        typer.Option(
            "--tls-ca",
            envvar="MESH_TLS_CA",
            help="Speak TLS; the CA bundle the mesh's certificate is checked against.",
        ),
    ] = "",
    tls_cert: Annotated[
        str,
        typer.Option(
            "--tls-cert", envvar="MESH_TLS_CERT", help="A client certificate, for meshes that ask for one."
        ),
    ] = "",
    tls_key: Annotated[str, typer.Option("--tls-key", envvar="MESH_TLS_KEY", help="Its private key.")] = "",
) -> None:
    if (tls_cert or tls_key) and not tls_ca:
        raise typer.BadParameter("--tls-cert and --tls-key need --tls-ca")
    tls = ClientTls(tls_ca, tls_cert, tls_key) if tls_ca else None
    ctx.obj = Settings(endpoint, rest, output, timeout, tls)


def call(action: Callable[[], Any]) -> Any:
    """``action()``, its CliError printed and turned into the exit code."""
    try:
        return action()
    except CliError as e:
        fail(e)


# -- models ------------------------------------------------------------------------------------------------
def print_model_status(opts: Settings, data: dict[str, Any]) -> None:
    if opts.json:
        emit_json(data)
    else:
        show(render.model_status_table(data, now_ms()))


@app.command()
def register(
    ctx: typer.Context,
    model_id: Annotated[
        str | None, typer.Argument(help="The model's id (or use --file).", show_default=False)
    ] = None,
    type_: Annotated[str | None, typer.Option("--type", "-t", help="Model type, e.g. sklearn.")] = None,
    path: Annotated[str | None, typer.Option("--path", "-p", help="Where the model's files are.")] = None,
    key: Annotated[str, typer.Option("--key", "-k", help="Storage key.")] = "",
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            exists=True,
            dir_okay=False,
            readable=True,
            help="Register many: CSV (modelId,type,path[,key]) or a JSON list of objects with those fields.",
        ),
    ] = None,
    load: Annotated[bool, typer.Option("--load", help="Load now (loadNow).")] = False,
    sync: Annotated[
        bool, typer.Option("--sync", help="Wait until loaded or failed (implies --load).")
    ] = False,
    parallel: Annotated[int, typer.Option("--parallel", min=1, max=64, help="Batch: calls at once.")] = 4,
) -> None:
    """Register one model, or many with --file (a progress bar, then a summary of the failures)."""
    opts = settings(ctx)
    load = load or sync
    if file is not None:
        if model_id is not None or type_ is not None or path is not None or key:
            raise typer.BadParameter(
                "give either MODEL_ID with --type/--path, or --file", param_hint="--file"
            )
        register_batch(opts, file, load, sync, parallel)
        return
    if model_id is None:
        raise typer.BadParameter("MODEL_ID (or --file) is required", param_hint="MODEL_ID")
    if type_ is None:
        raise typer.BadParameter("--type is required with MODEL_ID", param_hint="--type")
    with opts.client() as client:
        if sync:
            with spinner(f"registering and loading {model_id}"):
                info = call(lambda: client.register(model_id, type_, path or "", key, load, sync))
        else:
            info = call(lambda: client.register(model_id, type_, path or "", key, load, sync))
    data = render.model_status_data(model_id, info)
    print_model_status(opts, data)
    if sync and data["status"] != "LOADED":
        fail(CliError(data["status"], load_failure(model_id, data), render.FAILED))


def load_failure(model_id: str, data: dict[str, Any]) -> str:
    errors = data["errors"]
    return f"{model_id} is {data['status']}" + (f": {errors[0]}" if errors else "")


@dataclass
class BatchRun:
    registered: list[str]
    failures: list[render.BatchFailure]
    not_attempted: list[str]


def register_batch(opts: Settings, file: Path, load: bool, sync: bool, parallel: int) -> None:
    try:
        text = file.read_text(encoding="utf-8")
        items, problems = render.parse_batch(text, render.batch_format(file.name, text))
    except (render.BatchFileError, UnicodeDecodeError) as e:
        raise typer.BadParameter(f"{file}: {e}", param_hint="--file") from None
    failures = {
        p.where: render.BatchFailure(p.where, render.shorten(p.model_id), "INVALID_ARGUMENT", p.message)
        for p in problems
    }
    with opts.client() as client:
        run = run_batch(opts, client, items, load, sync, parallel)
    every = [*failures.values(), *run.failures]
    order = {
        entry: index for index, entry in enumerate([*(p.where for p in problems), *(i.where for i in items)])
    }
    every.sort(key=lambda f: _where_order(f.where, order))
    total = len(items) + len(problems)
    code = render.batch_exit_code(every, run.not_attempted)
    if opts.json:
        emit_json(render.batch_summary_data(total, run.registered, every, run.not_attempted))
    else:
        console = stdout_console()
        console.print(f"registered {len(run.registered)} of {total} model(s) from {file}")
        if every:
            console.print(render.batch_summary_table(every))
        if run.not_attempted:
            console.print(
                f"not attempted (the mesh became unreachable): {len(run.not_attempted)}", style="red"
            )
    if code != render.OK:
        detail = f"{len(every)} of {total} failed"
        if run.not_attempted:
            detail += f", {len(run.not_attempted)} not attempted"
        err_console.print(f"meshctl: {detail}", style="red", markup=False, highlight=False)
        raise typer.Exit(code)


def _where_order(where: str, order: dict[str, int]) -> tuple[int, int]:
    """'line 3' / 'item 2' in file order."""
    number = where.rsplit(" ", 1)[-1]
    return (int(number) if number.isdigit() else order.get(where, 0), order.get(where, 0))


def run_batch(
    opts: Settings, client: MeshClient, items: list[render.BatchItem], load: bool, sync: bool, parallel: int
) -> BatchRun:
    """Register every item, ``parallel`` at once, with a progress bar on stderr; stop at UNAVAILABLE."""
    run = BatchRun([], [], [])
    stop = threading.Event()
    lock = threading.Lock()

    def one(item: render.BatchItem) -> None:
        if stop.is_set():
            with lock:
                run.not_attempted.append(item.model_id)
            return
        try:
            info = client.register(item.model_id, item.type, item.path, item.key, load, sync)
        except CliError as e:
            if e.status == "UNAVAILABLE":
                stop.set()
            with lock:
                run.failures.append(
                    render.BatchFailure(item.where, render.shorten(item.model_id), e.status, e.message)
                )
            return
        status = render.MODEL_STATUS_NAMES.get(info.status, "")
        with lock:
            if sync and status != "LOADED":
                message = info.errors[0] if info.errors else f"{status} after the load"
                run.failures.append(render.BatchFailure(item.where, item.model_id, status, message))
            else:
                run.registered.append(item.model_id)

    progress = Progress(
        SpinnerColumn(),
        TextColumn("registering"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
        disable=not items,
    )
    with progress, ThreadPoolExecutor(max_workers=parallel) as pool:
        task = progress.add_task("register", total=len(items), failed=0)

        def done(_: Future[None]) -> None:
            with lock:
                failed = len(run.failures)
            progress.update(task, advance=1, failed=failed)

        futures = [pool.submit(one, item) for item in items]
        for future in futures:
            future.add_done_callback(done)
        for future in futures:
            future.result()
    return run


@app.command()
def unregister(
    ctx: typer.Context, model_id: Annotated[str, typer.Argument(help="The model's id.", show_default=False)]
) -> None:
    """Unregister a model (its holders unload it). An unknown id is a no-op."""
    opts = settings(ctx)
    with opts.client() as client:
        call(lambda: client.unregister(model_id))
    if opts.json:
        emit_json({"modelId": model_id, "unregistered": True})
    else:
        stdout_console().print(f"unregistered {model_id}", markup=False, highlight=False)


@app.command()
def status(
    ctx: typer.Context, model_id: Annotated[str, typer.Argument(help="The model's id.", show_default=False)]
) -> None:
    """A model's status, errors (newest first) and copies (getModelStatus; never loads). Exit 3 if unknown."""
    opts = settings(ctx)
    with opts.client() as client:
        info = call(lambda: client.status(model_id))
    data = render.model_status_data(model_id, info)
    print_model_status(opts, data)
    if data["status"] == "NOT_FOUND":
        fail(CliError("NOT_FOUND", f"model {model_id} is not registered"))


@app.command("list")
def list_models(
    ctx: typer.Context,
    state: Annotated[State | None, typer.Option("--state", "-s", help="Only models in this state.")] = None,
    pod: Annotated[
        str | None, typer.Option("--pod", help="Only models this pod holds or is loading.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=0, help="At most this many models.")
    ] = None,
) -> None:
    """Registered models by id, with their state, holders and last use (REST GET /mesh/models)."""
    opts = settings(ctx)
    client = opts.client()
    models = call(lambda: client.models(state.value if state else None, pod, limit))
    if opts.json:
        emit_json(models)
    else:
        show(render.models_table(models, now_ms()))


@contextmanager
def spinner(what: str) -> Iterator[None]:
    """A spinner on stderr while a call waits (only where someone sees it)."""
    if not err_console.is_terminal:
        yield
        return
    with err_console.status(what):
        yield


@app.command()
def load(
    ctx: typer.Context,
    model_id: Annotated[str, typer.Argument(help="The model's id.", show_default=False)],
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0.1, help="How long to wait, seconds (default: global --timeout)."),
    ] = None,
) -> None:
    """Load a model and wait until it is loaded or failed (ensureLoaded, sync). Exit 1 if the load failed."""
    opts = settings(ctx)
    wait = timeout or opts.timeout_s
    with opts.client() as client, spinner(f"loading {model_id}"):
        try:
            info = client.ensure_loaded(model_id, sync=True, timeout_s=wait)
        except CliError as e:
            if e.status == "DEADLINE_EXCEEDED":
                e.message = (
                    f"{model_id} not loaded within {wait:g}s (the load may still finish: meshctl status)"
                )
            fail(e)
    data = render.model_status_data(model_id, info)
    print_model_status(opts, data)
    if data["status"] != "LOADED":
        fail(CliError(data["status"], load_failure(model_id, data), render.FAILED))


# -- vmodels -----------------------------------------------------------------------------------------------
def print_vmodel(opts: Settings, data: dict[str, Any]) -> None:
    if opts.json:
        emit_json(data)
    else:
        show(render.vmodel_status_table(data))


@vmodel_app.command("set")
def vmodel_set(
    ctx: typer.Context,
    vmodel_id: Annotated[str, typer.Argument(help="The vmodel's id.", show_default=False)],
    target: Annotated[str, typer.Option("--target", help="The model it should serve.", show_default=False)],
    type_: Annotated[
        str | None,
        typer.Option("--type", "-t", help="Register the target with this type if it does not exist."),
    ] = None,
    path: Annotated[str | None, typer.Option("--path", "-p", help="The target's path (with --type).")] = None,
    key: Annotated[str, typer.Option("--key", "-k", help="The target's storage key (with --type).")] = "",
    auto_delete: Annotated[
        bool, typer.Option("--auto-delete", help="Delete the target model when no vmodel refers to it.")
    ] = False,
    load_now: Annotated[bool, typer.Option("--load", help="Load the target now.")] = False,
    sync: Annotated[bool, typer.Option("--sync", help="Wait for the load or transition.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Switch at once, without waiting for the target.")
    ] = False,
    update_only: Annotated[
        bool, typer.Option("--update-only", help="Fail if the vmodel does not exist.")
    ] = False,
    expected_target: Annotated[
        str, typer.Option("--expected-target", help="Only if its current target is this model.")
    ] = "",
    owner: Annotated[str, typer.Option("--owner", help="The vmodel's owner.")] = "",
) -> None:
    """Create a vmodel or move it to another target (setVModel); --type/--path auto-create the target."""
    opts = settings(ctx)
    if type_ is None and (path is not None or key):
        raise typer.BadParameter(
            "--path/--key describe a target to create: give --type too", param_hint="--type"
        )
    request = mm.SetVModelRequest(
        vModelId=vmodel_id,
        targetModelId=target,
        updateOnly=update_only,
        autoDeleteTargetModel=auto_delete,
        loadNow=load_now,
        force=force,
        sync=sync,
        expectedTargetModelId=expected_target,
        owner=owner,
    )
    if type_ is not None:
        request.modelInfo.CopyFrom(mm.ModelInfo(type=type_, path=path or "", key=key))
    with opts.client() as client:
        if sync:
            with spinner(f"setting {vmodel_id} -> {target}"):
                info = call(lambda: client.set_vmodel(request))
        else:
            info = call(lambda: client.set_vmodel(request))
    print_vmodel(opts, render.vmodel_status_data(vmodel_id, info))


@vmodel_app.command("get")
def vmodel_get(
    ctx: typer.Context,
    vmodel_id: Annotated[str, typer.Argument(help="The vmodel's id.", show_default=False)],
    owner: Annotated[str, typer.Option("--owner", help="Only if it has this owner.")] = "",
) -> None:
    """A vmodel's state, active and target models (getVModelStatus). Exit 3 if unknown."""
    opts = settings(ctx)
    with opts.client() as client:
        info = call(lambda: client.vmodel_status(vmodel_id, owner))
    data = render.vmodel_status_data(vmodel_id, info)
    print_vmodel(opts, data)
    if data["status"] == "NOT_FOUND":
        fail(CliError("NOT_FOUND", f"vmodel {vmodel_id} does not exist"))


@vmodel_app.command("delete")
def vmodel_delete(
    ctx: typer.Context,
    vmodel_id: Annotated[str, typer.Argument(help="The vmodel's id.", show_default=False)],
    owner: Annotated[str, typer.Option("--owner", help="Only if it has this owner.")] = "",
) -> None:
    """Delete a vmodel (deleteVModel). An unknown vmodel is a no-op."""
    opts = settings(ctx)
    with opts.client() as client:
        call(lambda: client.delete_vmodel(vmodel_id, owner))
    if opts.json:
        emit_json({"vModelId": vmodel_id, "deleted": True})
    else:
        stdout_console().print(f"deleted vmodel {vmodel_id}", markup=False, highlight=False)


# -- the mesh's picture --------------------------------------------------------------------------------------
@app.command()
def pools(ctx: typer.Context) -> None:
    """Per pool: pods, capacity, use, loaded models, request rate, unplaced models (REST GET /mesh/pools)."""
    opts = settings(ctx)
    found = call(lambda: opts.client().pools())
    if opts.json:
        emit_json(found)
    else:
        show(render.pools_table(found))


@app.command()
def top(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.2, help="Seconds between frames.")] = 1.0,
) -> None:
    """A live per-pod view (REST GET /mesh/status), refreshed every second; Ctrl-C ends it.
    With --output json: the status document, once."""
    opts = settings(ctx)
    client = opts.client()
    first = call(client.mesh_status)
    if opts.json:
        emit_json(first)
        return
    source = opts.rest
    if once:
        show(render.top_frame(first, now_ms(), source))
        return
    console = stdout_console()
    latest, problem = first, ""
    err_console.print(
        f"meshctl top: {source} every {interval} s; Ctrl-C to stop", markup=False, highlight=False
    )
    # Ctrl-C ends the view between frames: a flag, not an exception landing wherever the main thread is
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with Live(
        render.top_frame(latest, now_ms(), source), console=console, screen=False, auto_refresh=False
    ) as live:
        while not stop.wait(interval):
            try:
                latest, problem = client.mesh_status(), ""
            except CliError as e:
                problem = f"{e.status}: {e.message} (showing the last answer)"
            live.update(render.top_frame(latest, now_ms(), source, problem), refresh=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
