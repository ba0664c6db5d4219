"""The quick start: a local mesh on built-in defaults, example models, inference through one endpoint.

Starts etcd, a local S3 endpoint (moto_server), a pool of MLServer pods and a Triton pod (each pod: mesh,
adapter, runtime) on loopback; trains and saves two iris classifiers (one of them uploaded to S3) and writes
a Triton python-backend model; registers them through the ModelMesh API; sends KServe v2 inference through
one pod with tritonclient (gRPC and REST) while the models load wherever placement puts them; prints the
results and where each model landed; stops everything (or keeps it up with --keep-running).
"""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from harness.certificates import MeshCertificates
from harness.cluster import LocalMesh, MotoServer
from harness.triton import triton_installed
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc

SAMPLES = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)

ADD_ONE_CONFIG = """name: "add-one"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""
ADD_ONE_MODEL = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (x + 1).astype(np.float32))
            responses.append(pb_utils.InferenceResponse([out]))
        return responses
"""


@dataclass(frozen=True)
class Example:
    type: str
    path: str
    key: str = ""


def write_examples(directory: Path, moto: MotoServer) -> tuple[dict[str, Example], Path]:
    """Two iris classifiers (one uploaded to S3), a Triton python model, and the storage config."""
    x, y = load_iris(return_X_y=True)
    for name, model in (
        ("iris-logistic", LogisticRegression(max_iter=500)),
        ("iris-tree", DecisionTreeClassifier(random_state=0)),
    ):
        (directory / name).mkdir(parents=True, exist_ok=True)
        joblib.dump(model.fit(x, y), directory / name / "model.joblib")
    credentials = moto.create_user()
    s3 = moto.client(credentials)
    s3.create_bucket(Bucket="models")
    s3.upload_file(str(directory / "iris-tree" / "model.joblib"), "models", "iris-tree/model.joblib")
    storage_config = directory / "storage-config.json"
    storage_config.write_text(json.dumps({"local-s3": moto.storage_entry(credentials, "models")}))
    (directory / "add-one" / "1").mkdir(parents=True, exist_ok=True)
    (directory / "add-one" / "config.pbtxt").write_text(ADD_ONE_CONFIG)
    (directory / "add-one" / "1" / "model.py").write_text(ADD_ONE_MODEL)
    examples = {
        "iris-logistic": Example("sklearn", str(directory / "iris-logistic")),
        "iris-tree-s3": Example("sklearn", "s3://models/iris-tree", key="local-s3"),
        "add-one": Example("python", str(directory / "add-one")),
    }
    return examples, storage_config


def infer(client: triton.InferenceServerClient, model_id: str, example: Example) -> str:
    if example.type == "python":
        tensor = triton.InferInput("INPUT0", [3], "FP32")
        tensor.set_data_from_numpy(np.array([1.0, 2.0, 3.0], dtype=np.float32))
        return f"{[1.0, 2.0, 3.0]} + 1 = {client.infer(model_id, [tensor]).as_numpy('OUTPUT0').tolist()}"
    tensor = triton.InferInput("input-0", list(SAMPLES.shape), "FP32")
    tensor.set_data_from_numpy(SAMPLES)
    species = load_iris().target_names
    labels = np.asarray(client.infer(model_id, [tensor]).as_numpy("predict")).ravel()
    return str([str(species[int(i)]) for i in labels])


def run_demo(mesh: LocalMesh, examples: dict[str, Example]) -> None:
    entry = mesh.stacks[0].pod  # every pod is the endpoint; this one forwards to wherever models land
    assert entry is not None
    ca = str(mesh.certificates.ca_file) if mesh.certificates else None
    with mesh.channel(entry.address) as channel:
        management = mm_grpc.ModelMeshStub(channel)
        for model_id, example in examples.items():
            info = mm.ModelInfo(type=example.type, path=example.path, key=example.key)
            status = management.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info))
            where = example.path if len(example.path) < 40 else "..." + example.path[-37:]
            print(f"registered {model_id:14} {example.type:8} {where:40} -> {_name(status.status)}")

        client = triton.InferenceServerClient(entry.address, ssl=ca is not None, root_certificates=ca)
        for model_id, example in examples.items():
            start = time.perf_counter()
            answer = infer(client, model_id, example)
            first_ms = (time.perf_counter() - start) * 1000
            start = time.perf_counter()
            infer(client, model_id, example)
            warm_ms = (time.perf_counter() - start) * 1000
            timing = f"first {first_ms:.0f} ms incl. load, then {warm_ms:.1f} ms"
            print(f"infer {model_id:14} -> {answer}  ({timing})")

        rest = triton_http.InferenceServerClient(
            entry.rest_address,
            ssl=ca is not None,
            ssl_options={"ca_certs": ca} if ca else None,
        )
        tensor = triton_http.InferInput("input-0", list(SAMPLES.shape), "FP32")
        tensor.set_data_from_numpy(SAMPLES, binary_data=False)
        output = triton_http.InferRequestedOutput("predict", binary_data=False)
        labels = np.asarray(
            rest.infer("iris-logistic", [tensor], outputs=[output]).as_numpy("predict")
        ).ravel()
        species = load_iris().target_names
        names = [str(species[int(i)]) for i in labels]
        scheme = "https" if ca else "http"
        print(f"REST  {'iris-logistic':14} -> {names}  (POST {scheme}://.../v2/models/iris-logistic/infer)")

        for model_id in examples:
            status = management.getModelStatus(mm.GetStatusRequest(modelId=model_id))
            copies = ", ".join(f"{c.location}:{_name(c.copyStatus)}" for c in status.modelCopyInfos)
            print(f"status {model_id:13} -> {_name(status.status)} [{copies}]")


def _name(status: int) -> str:
    return mm.ModelStatusInfo.ModelStatus.Name(status)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="modelmesh-demo", description=__doc__)
    parser.add_argument(
        "--work-dir", type=Path, help="where processes keep data and logs (default: a temp dir)"
    )
    parser.add_argument(
        "--pods", type=int, default=2, help="MLServer pods (mesh + adapter + MLServer), default 2"
    )
    parser.add_argument("--keep-running", action="store_true", help="leave the mesh up until Ctrl-C")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="TLS on every port (certificates made here), mutual TLS between pods, etcd with TLS and a user",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="modelmesh-demo-") as tmp:
        work_dir = args.work_dir or Path(tmp)
        (work_dir / "models").mkdir(parents=True, exist_ok=True)
        moto = MotoServer.start(work_dir)
        try:
            examples, storage_config = write_examples(work_dir / "models", moto)
            triton_pods = 1 if triton_installed() else 0
            if not triton_pods:
                del examples["add-one"]
                print("(Triton is not installed here: deploy/local/setup-triton.sh; skipping the Triton pod)")
            print(
                f"starting etcd, {args.pods} MLServer pods and {triton_pods} Triton pod under {work_dir} ..."
            )
            print(f"  S3 (moto)   {moto.endpoint:22} pid {moto.process.pid}")
            adapter_args = [f"--storage-config={storage_config}"]
            with LocalMesh(
                work_dir / "mesh",
                pods=args.pods,
                triton_pods=triton_pods,
                adapter_args=adapter_args,
                certificates=MeshCertificates.create(work_dir / "certs") if args.tls else None,
            ) as mesh:
                assert mesh.etcd is not None
                print(f"  etcd        {mesh.etcd.url:22} pid {mesh.etcd.process.pid}")
                if mesh.certificates:
                    print(f"  TLS: clients verify the mesh with {mesh.certificates.ca_file}")
                for stack in mesh.stacks:
                    assert stack.pod is not None
                    print(
                        f"  {stack.pod_id:10}  {stack.pod.address:22} pid {stack.pod.process.pid}"
                        f"  (REST {stack.pod.rest_address}; types {stack.model_types};"
                        f" adapter pid {stack.adapter.process.pid}, runtime pid {stack.runtime.process.pid})"
                    )
                run_demo(mesh, examples)
                if args.keep_running:
                    endpoints = ", ".join(s.pod.address for s in mesh.stacks if s.pod)
                    print(f"mesh endpoints (any of them): {endpoints}; Ctrl-C to stop")
                    if mesh.certificates:
                        print(f"  meshctl --tls-ca {mesh.certificates.ca_file} --endpoint <one of them> list")
                    stop = threading.Event()
                    signal.signal(signal.SIGINT, lambda *_: stop.set())
                    signal.signal(signal.SIGTERM, lambda *_: stop.set())
                    stop.wait()
                print("stopping ...")
        finally:
            moto.process.stop()
        print("all processes stopped")


if __name__ == "__main__":
    main()
