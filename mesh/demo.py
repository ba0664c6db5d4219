"""The quick start: a local mesh on built-in defaults, two example models, inference through the mesh.

Starts etcd and a pool of pods (each: mesh, MLServer adapter, MLServer) on loopback,
trains and saves two iris classifiers, registers them through the ModelMesh
API, sends KServe v2 inference through the mesh with tritonclient, prints the
results and stops everything (or keeps it up with --keep-running).
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import joblib
import numpy as np
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from mesh.devcluster import LocalMesh
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc

SAMPLES = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)


def train_examples(directory: Path) -> dict[str, Path]:
    x, y = load_iris(return_X_y=True)
    models = {
        "iris-logistic": LogisticRegression(max_iter=500),
        "iris-tree": DecisionTreeClassifier(random_state=0),
    }
    paths = {}
    for name, model in models.items():
        model.fit(x, y)
        (directory / name).mkdir(parents=True, exist_ok=True)
        joblib.dump(model, directory / name / "model.joblib")
        paths[name] = directory / name
    return paths


def run_demo(mesh: LocalMesh, models: dict[str, Path]) -> None:
    assert mesh.pod is not None
    species = load_iris().target_names
    with grpc.insecure_channel(mesh.pod.address) as channel:
        management = mm_grpc.ModelMeshStub(channel)
        for model_id, path in models.items():
            info = mm.ModelInfo(type="sklearn", path=str(path))
            status = management.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info))
            print(f"registered {model_id:14} -> {mm.ModelStatusInfo.ModelStatus.Name(status.status)}")

        # every pod is the endpoint: ask the last pod, which forwards to wherever the model loads
        entry = mesh.stacks[-1].pod
        assert entry is not None
        client = triton.InferenceServerClient(entry.address)
        for model_id in models:
            tensor = triton.InferInput("input-0", list(SAMPLES.shape), "FP32")
            tensor.set_data_from_numpy(SAMPLES)
            start = time.perf_counter()
            result = client.infer(model_id, [tensor])
            first_ms = (time.perf_counter() - start) * 1000
            start = time.perf_counter()
            client.infer("any-name", [tensor], headers={"mm-model-id": model_id})
            warm_ms = (time.perf_counter() - start) * 1000
            labels = [str(species[int(i)]) for i in np.asarray(result.as_numpy("predict")).ravel()]
            print(
                f"infer {model_id:14} -> {labels}"
                f"  (first call {first_ms:.0f} ms incl. load, then {warm_ms:.1f} ms)"
            )

        rest = triton_http.InferenceServerClient(entry.rest_address)
        tensor_json = triton_http.InferInput("input-0", list(SAMPLES.shape), "FP32")
        tensor_json.set_data_from_numpy(SAMPLES, binary_data=False)
        output = triton_http.InferRequestedOutput("predict", binary_data=False)
        result_json = rest.infer("iris-tree", [tensor_json], outputs=[output])
        labels = [str(species[int(i)]) for i in np.asarray(result_json.as_numpy("predict")).ravel()]
        print(f"REST  {'iris-tree':14} -> {labels}  (POST /v2/models/iris-tree/infer)")

        for model_id in models:
            status = management.getModelStatus(mm.GetStatusRequest(modelId=model_id))
            copies = ", ".join(
                f"{c.location}:{mm.ModelStatusInfo.ModelStatus.Name(c.copyStatus)}"
                for c in status.modelCopyInfos
            )
            print(f"status {model_id:13} -> {mm.ModelStatusInfo.ModelStatus.Name(status.status)} [{copies}]")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="modelmesh-demo", description=__doc__)
    parser.add_argument(
        "--work-dir", type=Path, help="where processes keep data and logs (default: a temp dir)"
    )
    parser.add_argument(
        "--pods", type=int, default=2, help="pod stacks (mesh + adapter + MLServer), default 2"
    )
    parser.add_argument("--keep-running", action="store_true", help="leave the mesh up until Ctrl-C")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="modelmesh-demo-") as tmp:
        work_dir = args.work_dir or Path(tmp)
        models = train_examples(work_dir / "models")
        print(f"starting etcd and {args.pods} pods (mesh + MLServer adapter + MLServer) under {work_dir} ...")
        with LocalMesh(work_dir / "mesh", pods=args.pods) as mesh:
            assert mesh.etcd is not None
            print(f"  etcd        {mesh.etcd.endpoint:22} pid {mesh.etcd.process.pid}")
            for stack in mesh.stacks:
                assert stack.pod is not None
                print(
                    f"  {stack.pod_id:10}  {stack.pod.address:22} pid {stack.pod.process.pid}"
                    f"  (REST {stack.pod.rest_address}; adapter pid {stack.adapter.process.pid},"
                    f" runtime pid {stack.runtime.process.pid})"
                )
            run_demo(mesh, models)
            if args.keep_running:
                endpoints = ", ".join(s.pod.address for s in mesh.stacks if s.pod)
                print(f"mesh endpoints (any of them): {endpoints}; Ctrl-C to stop")
                stop = threading.Event()
                signal.signal(signal.SIGINT, lambda *_: stop.set())
                signal.signal(signal.SIGTERM, lambda *_: stop.set())
                stop.wait()
            print("stopping ...")
        print("all processes stopped")


if __name__ == "__main__":
    main()
