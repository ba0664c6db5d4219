"""The quick start: a local mesh on built-in defaults, two example models, inference through the mesh.

Starts etcd, MLServer, the MLServer adapter and one mesh pod on loopback,
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

        client = triton.InferenceServerClient(mesh.pod.address)
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

        rest = triton_http.InferenceServerClient(mesh.pod.rest_address)
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
    parser.add_argument("--keep-running", action="store_true", help="leave the mesh up until Ctrl-C")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="modelmesh-demo-") as tmp:
        work_dir = args.work_dir or Path(tmp)
        models = train_examples(work_dir / "models")
        print(f"starting etcd, MLServer, the MLServer adapter and a mesh pod under {work_dir} ...")
        with LocalMesh(work_dir / "mesh") as mesh:
            assert mesh.etcd and mesh.mlserver and mesh.adapter and mesh.pod
            print(f"  etcd      {mesh.etcd.endpoint:22} pid {mesh.etcd.process.pid}")
            print(f"  MLServer  {mesh.mlserver.grpc_address:22} pid {mesh.mlserver.pid}")
            print(f"  adapter   {mesh.adapter.address:22} pid {mesh.adapter.process.pid}")
            print(f"  mesh pod  {mesh.pod.address:22} pid {mesh.pod.process.pid}  <- the one endpoint")
            print(f"            {mesh.pod.rest_address:22} (KServe v2 REST)")
            run_demo(mesh, models)
            if args.keep_running:
                print(f"mesh endpoint {mesh.pod.address}; Ctrl-C to stop")
                stop = threading.Event()
                signal.signal(signal.SIGINT, lambda *_: stop.set())
                signal.signal(signal.SIGTERM, lambda *_: stop.set())
                stop.wait()
            print("stopping ...")
        print("all processes stopped")


if __name__ == "__main__":
    main()
