"""Scenario "churn": real MLServer pods living on their misses.

Two parts, each on a fresh local mesh (etcd, one MLServer pod stack: MLServer, its adapter, the pod):

- **churn**: a few hundred small sklearn models (iris LogisticRegression, ~1 KB files) and a few large ones
  (nearest neighbours over a repeated iris, megabytes), a Zipf trace over them, room for about a fifth, 8
  requests in flight through the pod's inference port. Reported: throughput, p50/p99, hit ratio, loads per
  second, and where the loads' time went (the pod's ``/mesh/loads``: runtime load, runtime unload, the queue
  for a loading slot, the mesh's own part).
- **miss cost by models loaded**: the pod is filled with L small models (L = 20, 100, 500), then misses
  one at a time (``ensureLoaded`` sync of a model not loaded, from a blocking stub as the bare loads are: each
  evicts one): the miss's p50 through the mesh and its phases, next to MLServer's bare load of the same model
  with an empty repository (warmed by one load, as a pod's adapter warms MLServer; on an MLServer running
  beside the mesh, timed in blocks alternating with the misses) and an in-process ``joblib.load``. A miss
  should not grow with L.

Every small model counts as ``SMALL_SIZE`` bytes (the adapter's ``--min-model-size-bytes``) so that "a fifth
fits" means the same whatever the adapter measures for a tiny model.

    .venv/bin/python -m load_tests.churn [--full] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from tritonclient.grpc import service_pb2 as v2
from tritonclient.grpc import service_pb2_grpc as v2_grpc

from harness.cluster import LocalMesh, MLServerProcess
from harness.demo import ADD_ONE_CONFIG, ADD_ONE_MODEL
from harness.triton import TritonProcess, triton_installed
from load_tests.cpu import cpu_seconds
from load_tests.loadgen import LoadResult, closed_loop, raw_call
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
SMALL_SIZE = 1 << 20  # what a small model counts for (min model size)
ALPHA = 1.0
FIT = 0.2  # the pod's room as a fraction of all models' bytes
MISS_BLOCK = 5  # misses timed in a row before as many bare loads
IRIS_X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


@dataclass(frozen=True)
class ChurnSettings:
    small_models: int = 300
    large_models: int = 3
    large_repeat: int = 400  # iris rows x this: ~1.5 MB per large model
    in_flight: int = 8
    warm_up_requests: int = 300
    requests: int = 1500
    max_seconds: float = 180.0
    loaded_levels: tuple[int, ...] = (20, 100, 500)
    misses: int = 20  # in blocks of MISS_BLOCK, each followed by as many bare loads
    seed: int = 0
    rounds: int = 3  # the churn trace, each on a fresh mesh: medians over them


def zipf_trace(models: int, requests: int, seed: int) -> list[int]:
    """Model indexes, rank r drawn with weight r**-ALPHA."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, models + 1, dtype=float) ** -ALPHA
    return [int(i) for i in rng.choice(models, size=requests, p=weights / weights.sum())]


def infer_body(model_id: str) -> bytes:
    tensor = v2.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP32", shape=list(IRIS_X.shape))
    return v2.ModelInferRequest(
        model_name=model_id, inputs=[tensor], raw_input_contents=[IRIS_X.tobytes()]
    ).SerializeToString()


def write_models(directory: Path, large_repeat: int) -> tuple[Path, Path]:
    """One small and one large model folder; every model id of a kind is registered with that path."""
    x, y = load_iris(return_X_y=True)
    small, large = directory / "small", directory / "large"
    small.mkdir(parents=True, exist_ok=True)
    large.mkdir(parents=True, exist_ok=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), small / "model.joblib")
    knn = KNeighborsClassifier(n_neighbors=1).fit(np.repeat(x, large_repeat, 0), np.repeat(y, large_repeat))
    joblib.dump(knn, large / "model.joblib")
    return small, large


def register(address: str, models: dict[str, Path]) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = mm_grpc.ModelMeshStub(channel)
        for model_id, path in models.items():
            info = mm.ModelInfo(type="sklearn", path=str(path))
            stub.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info), timeout=30)


def load_timings(rest_address: str, last: int | None = None) -> dict[str, Any]:
    query = f"?last={last}" if last else ""
    with urllib.request.urlopen(f"http://{rest_address}/mesh/loads{query}", timeout=10) as reply:
        return json.loads(reply.read())


def used_bytes(rest_address: str) -> int:
    with urllib.request.urlopen(f"http://{rest_address}/mesh/pools", timeout=10) as reply:
        return sum(int(pool["used_bytes"]) for pool in json.loads(reply.read()).values())


def _phase_p50s(timings: dict[str, Any]) -> dict[str, float]:
    return {name: figures["p50_ms"] for name, figures in timings["phases"].items()}


# -- part 1: churn -------------------------------------------------------------------------------
async def run_churn_trace(work_dir: Path, settings: ChurnSettings, adapter_args: list[str]) -> dict[str, Any]:
    small, large = write_models(work_dir / "models", settings.large_repeat)
    large_size = int((large / "model.joblib").stat().st_size * 1.25)
    models = {f"small-{i:04d}": small for i in range(settings.small_models)}
    models |= {f"large-{i}": large for i in range(settings.large_models)}
    total_bytes = settings.small_models * SMALL_SIZE + settings.large_models * max(large_size, SMALL_SIZE)
    capacity = int(FIT * total_bytes)
    ids = list(models)
    random.Random(settings.seed).shuffle(ids)  # popularity does not follow the names
    trace = zipf_trace(len(ids), settings.warm_up_requests + settings.requests, settings.seed)
    bodies = [infer_body(ids[i]) for i in trace]
    with LocalMesh(
        work_dir / "mesh", capacity_bytes=capacity, min_model_size_bytes=SMALL_SIZE, adapter_args=adapter_args
    ) as mesh:
        pod = mesh.pod
        assert pod is not None
        register(pod.address, models)
        async with grpc.aio.insecure_channel(pod.address) as channel:
            call = raw_call(channel, INFER_METHOD)
            await closed_loop(
                call,
                bodies[: settings.warm_up_requests],
                settings.in_flight,
                settings.warm_up_requests,
                settings.max_seconds,
            )
            before = load_timings(pod.rest_address)
            result: LoadResult = await closed_loop(
                call,
                bodies[settings.warm_up_requests :],
                settings.in_flight,
                settings.requests,
                settings.max_seconds,
            )
            after = load_timings(pod.rest_address)
            loads = after["loads"] - before["loads"]
            phases = load_timings(pod.rest_address, last=loads)
    return {
        "models": len(models),
        "capacity_bytes": capacity,
        "fits": f"{capacity / total_bytes:.0%} of all bytes",
        "throughput": round(result.throughput, 1),
        "p50_ms": round(result.p50_ms, 1),
        "p99_ms": round(result.p99_ms, 1),
        "requests": result.ok,
        "errors": result.errors,
        "hit_ratio": round(1 - loads / max(1, result.ok), 3),
        "loads_per_s": round(loads / result.duration_s, 2),
        "load_phases_p50_ms": _phase_p50s(phases),
    }


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput, with every round's figures beside it (the spread)."""
    ordered = sorted(rounds, key=lambda r: float(r["throughput"]))
    chosen = dict(ordered[len(ordered) // 2])
    chosen["rounds"] = [{k: r[k] for k in ("throughput", "p50_ms", "p99_ms", "hit_ratio")} for r in rounds]
    return chosen


# -- part 2: the miss cost by models loaded --------------------------------------------------------
async def _ensure_loaded(stub: mm_grpc.ModelMeshStub, model_id: str) -> float:
    start = time.perf_counter()
    await stub.ensureLoaded(mm.EnsureLoadedRequest(modelId=model_id, sync=True), timeout=300)
    return time.perf_counter() - start


def timed_ensure_loaded(stub: mm_grpc.ModelMeshStub, model_id: str) -> float:
    """Seconds of one ensureLoaded(sync) through a blocking stub: the client the bare loads are timed
    with, so that the two sides of the ratio pay the same client."""
    start = time.perf_counter()
    stub.ensureLoaded(mm.EnsureLoadedRequest(modelId=model_id, sync=True), timeout=300)
    return time.perf_counter() - start


def cpu_ms_by_process(pids: dict[str, int]) -> dict[str, float]:
    """Each named process's time on CPU so far, in ms, its children included (MLServer's workers, a pod's
    serving processes) but for the client, whose children are all the others."""
    return {name: 1000 * cpu_seconds([pid], children=name != "client") for name, pid in pids.items()}


async def miss_cost(
    work_dir: Path, loaded: int, settings: ChurnSettings, adapter_args: list[str]
) -> dict[str, Any]:
    small, _ = write_models(work_dir / "models", 1)
    spare = loaded // 2 + 8  # to top the pod up if loads at once evicted more than they had to
    models = {f"m-{i:05d}": small for i in range(loaded + spare + settings.misses)}
    ids = list(models)
    with (
        LocalMesh(
            work_dir / "mesh",
            capacity_bytes=loaded * SMALL_SIZE,
            min_model_size_bytes=SMALL_SIZE,
            adapter_args=adapter_args,
        ) as mesh,
        bare_mlserver(work_dir / "bare", small) as bare,
    ):
        pod = mesh.pod
        assert pod is not None
        register(pod.address, models)
        async with grpc.aio.insecure_channel(pod.address) as channel:
            stub = mm_grpc.ModelMeshStub(channel)
            fill_start = time.perf_counter()
            pending = iter(ids[:loaded])

            async def filler() -> None:
                for model_id in pending:
                    await _ensure_loaded(stub, model_id)

            await asyncio.gather(*(filler() for _ in range(settings.in_flight)))
            topped_up = 0
            while used_bytes(pod.rest_address) < (loaded - 1) * SMALL_SIZE and topped_up < spare:
                await _ensure_loaded(stub, ids[loaded + topped_up])  # full: every miss below evicts
                topped_up += 1
            fill_s = time.perf_counter() - fill_start
        # the filling's channel is closed first: the timed calls are the only client work
        assert mesh.etcd is not None
        stack = mesh.stacks[0]
        pids = {
            "pod": pod.process.pid,
            "adapter": stack.adapter.process.pid,
            "mlserver": stack.runtime.process.pid,
            "etcd": mesh.etcd.process.pid,
            "client": os.getpid(),
        }
        misses: list[float] = []
        bare_loads: list[float] = []
        cpu_ms = dict.fromkeys(pids, 0.0)
        with grpc.insecure_channel(pod.address) as timed_channel:
            timed = mm_grpc.ModelMeshStub(timed_channel)
            timed.getModelStatus(mm.GetStatusRequest(modelId=ids[0]), timeout=30)  # connected
            # The machine's speed drifts by tens of percent within a minute: blocks of misses alternate with
            # blocks of bare loads, so that the ratio compares loads timed at the same moments.
            timed_ids = ids[loaded + spare :]
            for block in (timed_ids[i : i + MISS_BLOCK] for i in range(0, len(timed_ids), MISS_BLOCK)):
                # the client is read last before and first after: reading the others (a walk of /proc for
                # their children) is not its misses' work
                before = cpu_ms_by_process(pids)
                misses += [timed_ensure_loaded(timed, m) for m in block]
                after = cpu_ms_by_process(dict(reversed(pids.items())))
                cpu_ms = {name: cpu_ms[name] + after[name] - before[name] for name in pids}
                # the first bare load is not timed: the last miss's holder record and unload run beside it
                loads = timed_repository_loads(bare, BARE_MODEL, len(block) + 1, timeout_s=60)
                bare_loads += loads[1:]
        phases = load_timings(pod.rest_address, last=settings.misses)
    return {
        "loaded": loaded,
        "fill_s": round(fill_s, 1),
        "fill_loads_per_s": round(loaded / fill_s, 1),
        "miss_p50_ms": round(1000 * statistics.median(misses), 1),
        "bare_load_ms": round(1000 * statistics.median(bare_loads), 2),
        "miss_vs_bare_load": round(statistics.median(misses) / statistics.median(bare_loads), 2),
        "miss_max_ms": round(1000 * max(misses), 1),
        "phases_p50_ms": _phase_p50s(phases),
        # every process a miss keeps busy (on 2 cores they wait for each other): where the time beyond the
        # runtime's own load goes
        "cpu_ms_per_miss": {name: round(cpu_ms[name] / len(misses), 2) for name in pids},
    }


def triton_python_model(directory: Path, name: str) -> Path:
    source = directory / name
    (source / "1").mkdir(parents=True, exist_ok=True)
    (source / "config.pbtxt").write_text(ADD_ONE_CONFIG.replace('name: "add-one"', f'name: "{name}"'))
    (source / "1" / "model.py").write_text(ADD_ONE_MODEL)
    return source


def bare_triton_load(work_dir: Path, rounds: int = 5) -> float:
    """Triton's own load of a python-backend model (it starts the model's stub process): median ms."""
    repository = work_dir / "repository"
    triton_python_model(repository, "bare-add-one")
    with (
        TritonProcess.start(repository, work_dir) as server,
        grpc.insecure_channel(server.grpc_address) as channel,
    ):
        times = timed_repository_loads(
            v2_grpc.GRPCInferenceServiceStub(channel), "bare-add-one", rounds, timeout_s=120
        )
    return round(1000 * statistics.median(times), 1)


def timed_repository_loads(
    stub: v2_grpc.GRPCInferenceServiceStub, model: str, rounds: int, timeout_s: float
) -> list[float]:
    """Seconds of each of ``rounds`` RepositoryModelLoad calls to a runtime, the model unloaded in between."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        stub.RepositoryModelLoad(v2.RepositoryModelLoadRequest(model_name=model), timeout=timeout_s)
        times.append(time.perf_counter() - start)
        stub.RepositoryModelUnload(v2.RepositoryModelUnloadRequest(model_name=model), timeout=timeout_s)
    return times


async def triton_miss_cost(work_dir: Path, misses: int = 6) -> dict[str, Any]:
    """Misses of python-backend models through a Triton pod, one at a time, next to Triton's own load."""
    source = triton_python_model(work_dir / "models", "add-one")
    models = {f"py-{i}": source for i in range(misses)}
    with LocalMesh(work_dir / "mesh", pods=0, triton_pods=1) as mesh:
        pod = mesh.stacks[0].pod
        assert pod is not None
        with grpc.insecure_channel(pod.address) as channel:
            stub = mm_grpc.ModelMeshStub(channel)
            for model_id, path in models.items():
                info = mm.ModelInfo(type="python", path=str(path))
                stub.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info), timeout=30)
        async with grpc.aio.insecure_channel(pod.address) as aio_channel:
            aio_stub = mm_grpc.ModelMeshStub(aio_channel)
            times = [await _ensure_loaded(aio_stub, model_id) for model_id in models]
        phases = load_timings(pod.rest_address, last=misses)
    bare = bare_triton_load(work_dir / "bare")
    miss = round(1000 * statistics.median(times), 1)
    return {
        "triton_bare_load_ms": bare,
        "miss_p50_ms": miss,
        "miss_vs_bare_load": round(miss / bare, 2) if bare else None,
        "phases_p50_ms": _phase_p50s(phases),
    }


BARE_MODEL = "bare-model"


@contextlib.contextmanager
def bare_mlserver(work_dir: Path, model_dir: Path) -> Iterator[v2_grpc.GRPCInferenceServiceStub]:
    """An MLServer whose repository holds only the small model, loaded once (its first load imports the
    implementation, near a second, as a pod's adapter does with a probe load before its first model) and
    unloaded: a stub to it, for timed loads."""
    folder = work_dir / "repository" / BARE_MODEL
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.joblib").write_bytes((model_dir / "model.joblib").read_bytes())
    settings = {"name": BARE_MODEL, "implementation": "mlserver_sklearn.SKLearnModel"}
    (folder / "model-settings.json").write_text(json.dumps(settings))
    # one channel for every load: a channel closed between two blocks of misses would run its teardown
    # (threads) during the next block, on the client's CPU
    with (
        MLServerProcess.start(folder.parent, work_dir=work_dir) as server,
        grpc.insecure_channel(server.grpc_address) as channel,
    ):
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        timed_repository_loads(stub, BARE_MODEL, 1, timeout_s=60)
        yield stub


def bare_mlserver_load(work_dir: Path, model_dir: Path, rounds: int = 16) -> float:
    """MLServer's own load of the small model, its repository holding only that model: median ms."""
    with bare_mlserver(work_dir, model_dir) as stub:
        times = timed_repository_loads(stub, BARE_MODEL, rounds, timeout_s=60)
    return round(1000 * statistics.median(times), 2)


def joblib_load_ms(model_dir: Path, rounds: int = 20) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        joblib.load(model_dir / "model.joblib")
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 2)


async def run_churn(
    work_dir: Path,
    full: bool = False,
    adapter_args: Sequence[str] = (),
    settings: ChurnSettings | None = None,
) -> dict[str, Any]:
    settings = settings or (ChurnSettings(requests=3000, misses=40) if full else ChurnSettings())
    args = list(adapter_args)
    small, _ = write_models(work_dir / "reference-models", 1)
    results: dict[str, Any] = {
        "settings": asdict(settings),
        "adapter_args": args,
        "mlserver_bare_load_ms": bare_mlserver_load(work_dir / "bare", small),
        "joblib_load_ms": joblib_load_ms(small),
    }
    rounds = [await run_churn_trace(work_dir / f"churn-{i}", settings, args) for i in range(settings.rounds)]
    results["churn"] = median_round(rounds)
    results["miss_cost"] = [
        await miss_cost(work_dir / f"miss-{loaded}", loaded, settings, args)
        for loaded in settings.loaded_levels
    ]
    if triton_installed():
        results["triton"] = await triton_miss_cost(work_dir / "triton")
    return results


BASELINE = (
    Path(__file__).resolve().parent / "churn_baseline.json"
)  # the adapter before the change, same settings


def baseline() -> dict[str, Any] | None:
    return json.loads(BASELINE.read_text()) if BASELINE.exists() else None


def summary_lines(result: dict[str, Any]) -> list[str]:
    churn, before = result["churn"], (baseline() or {}).get("churn")
    lines = [
        f"MLServer's bare load of a small model (empty repository): {result['mlserver_bare_load_ms']} ms; "
        f"in-process joblib.load: {result['joblib_load_ms']} ms",
        f"churn: {churn['models']} models, room for {churn['fits']}, "
        f"{result['settings']['in_flight']} in flight: "
        f"{churn['throughput']} req/s, p50 {churn['p50_ms']} ms, p99 {churn['p99_ms']} ms, hit ratio "
        f"{churn['hit_ratio']}, {churn['loads_per_s']} loads/s, errors {churn['errors'] or 'none'} "
        f"(the median of {len(churn.get('rounds', [churn]))} rounds by throughput: "
        f"{', '.join(str(r['throughput']) for r in churn.get('rounds', [churn]))} req/s)",
        "churn loads, p50 per phase (ms): "
        + ", ".join(f"{k} {v}" for k, v in churn["load_phases_p50_ms"].items()),
    ]
    if before:
        lines.append(
            "the same churn with the adapter before (load_tests/churn_baseline.json): "
            f"{before['throughput']} req/s, p50 {before['p50_ms']} ms, p99 {before['p99_ms']} ms, "
            f"{before['loads_per_s']} loads/s"
        )
    triton = result.get("triton")
    if triton:
        tp = triton["phases_p50_ms"]
        lines.append(
            f"Triton python-backend models: a miss p50 {triton['miss_p50_ms']} ms through the mesh, "
            f"Triton's own load {triton['triton_bare_load_ms']} ms ({triton['miss_vs_bare_load']}x; "
            f"it starts the model's stub process: Triton's cost); runtime load {tp['runtime_load']} ms, "
            f"mesh {tp['mesh']} ms"
        )
    for row in result["miss_cost"]:
        phases = row["phases_p50_ms"]
        bare = row.get("bare_load_ms", result["mlserver_bare_load_ms"])
        lines.append(
            f"{row['loaded']} models loaded: a miss p50 {row['miss_p50_ms']} ms "
            f"({row['miss_vs_bare_load']}x the bare load timed beside it, {bare} ms; "
            f"runtime load {phases['runtime_load']}, "
            f"waiting for unloads {phases['runtime_unload']}, mesh {phases['mesh']} ms of which the size "
            f"prediction {phases['predict']}; the holder record after the reply {phases['publish']} ms), "
            f"filling took {row['fill_s']} s "
            f"({row['fill_loads_per_s']} loads/s)"
        )
        cpu = row.get("cpu_ms_per_miss")
        if cpu:
            lines[-1] += (
                "; CPU per miss (ms): "
                + ", ".join(f"{name} {ms}" for name, ms in cpu.items())
                + f" ({sum(cpu.values()):.1f} in all, on 2 cores)"
            )
    return lines


def goal_checks(result: dict[str, Any]) -> list[tuple[str, str, bool | None, str]]:
    """(goal, measured, met, shortfall) rows for RESULTS.md's goals table."""
    rows: list[tuple[str, str, bool | None, str]] = []
    at_100 = next((r for r in result["miss_cost"] if r["loaded"] == 100), None)
    if at_100 is not None and at_100["miss_vs_bare_load"] is not None:
        ratio = at_100["miss_vs_bare_load"]
        rows.append(
            (
                "miss p50 with 100 models loaded ≤ 2x MLServer's bare load",
                f"{at_100['miss_p50_ms']} ms, {ratio}x the bare "
                f"{at_100.get('bare_load_ms', result['mlserver_bare_load_ms'])} ms",
                ratio <= 2,
                f"{ratio}x instead of ≤ 2x",
            )
        )
    before = (baseline() or {}).get("churn")
    if before:
        churn = result["churn"]
        gain = churn["throughput"] / before["throughput"] if before["throughput"] else 0
        rows.append(
            (
                "churn throughput ≥ 4x the adapter before",
                f"{churn['throughput']} req/s against {before['throughput']} ({gain:.1f}x)",
                gain >= 4,
                f"{gain:.1f}x instead of ≥ 4x",
            )
        )
        share = churn["p99_ms"] / before["p99_ms"] if before["p99_ms"] else 1
        rows.append(
            (
                "churn p99 ≤ a quarter of the adapter before",
                f"{churn['p99_ms']} ms against {before['p99_ms']} ms ({share:.2f})",
                share <= 0.25,
                f"{share:.2f} of it instead of ≤ 0.25",
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--adapter-arg", action="append", default=[], help="passed to every adapter")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="churn-") as scratch:
        results = asyncio.run(run_churn(Path(scratch), args.full, args.adapter_arg))
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
