"""No secret reaches a log, an error, a metric or a status page.

A full local mesh with TLS everywhere (etcd with TLS and a user, models from S3 with real credentials),
logging at DEBUG with one line per request and chosen headers, is driven through its paths, good and bad:
loads from S3 and from disk, a load with wrong S3 credentials, inference over gRPC and REST with an
``authorization`` header, management errors. Then every log file of every process, every answer and error
message the clients got, the metrics of every pod and the status pages are searched for the secrets the run
used: the S3 secret keys (good and bad), the etcd passwords, every private key.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from harness.certificates import MeshCertificates
from harness.cluster import ROOT_PASSWORD, LocalMesh, MotoServer
from harness.demo import Example, infer, write_examples
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc

pytestmark = pytest.mark.integration

BEARER = "Bearer tok-6d1f0e9a2b7c"
WRONG_SECRET = "wrong-secret-8c2e51f0a9"


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalMesh, dict[str, Example], list[str]]]:
    root = tmp_path_factory.mktemp("no-secrets")
    (root / "models").mkdir()
    moto = MotoServer.start(root)
    try:
        examples, storage_config = write_examples(root / "models", moto)
        examples.pop("add-one")  # MLServer pods only
        config = json.loads(storage_config.read_text())
        good_secret = config["local-s3"]["secret_access_key"]
        config["wrong-s3"] = dict(config["local-s3"], secret_access_key=WRONG_SECRET)
        storage_config.write_text(json.dumps(config))
        examples["iris-wrong-key"] = Example("sklearn", "s3://models/iris-tree", key="wrong-s3")
        mesh = LocalMesh(
            root / "mesh",
            pods=2,
            certificates=MeshCertificates.create(root / "certs"),
            adapter_args=[f"--storage-config={storage_config}", "--log-level=DEBUG"],
            pod_args=[
                "--log-level=DEBUG",
                "--log-each-invoke=true",
                '--log-request-headers={"x-tenant": "tenant"}',
            ],
        )
        with mesh:
            assert mesh.certificates is not None and mesh.etcd is not None and mesh.etcd.security is not None
            secrets = [good_secret, WRONG_SECRET, mesh.etcd.security.password, ROOT_PASSWORD, BEARER]
            for key_file in (root / "certs").glob("*.key"):
                body = [line for line in key_file.read_text().splitlines() if not line.startswith("-----")]
                secrets += [body[0], body[len(body) // 2]]  # any piece of a private key
            yield mesh, examples, secrets
    finally:
        moto.process.stop()


def test_no_secret_in_logs_answers_metrics_or_status_pages(
    secured: tuple[LocalMesh, dict[str, Example], list[str]],
) -> None:
    mesh, examples, secrets = secured
    assert mesh.certificates is not None
    ca = str(mesh.certificates.ca_file)
    entry = mesh.stacks[0].pod
    assert entry is not None
    seen: list[str] = []  # every answer and error a client got
    with mesh.channel(entry.address) as channel:
        management = mm_grpc.ModelMeshStub(channel)
        for model_id, example in examples.items():
            info = mm.ModelInfo(type=example.type, path=example.path, key=example.key)
            status = management.registerModel(
                mm.RegisterModelRequest(modelId=model_id, modelInfo=info, loadNow=True, sync=True), timeout=60
            )
            seen.append(str(status))
        # the load with the wrong S3 secret failed, and says so without the secret
        failed = management.getModelStatus(mm.GetStatusRequest(modelId="iris-wrong-key"), timeout=10)
        assert failed.status == mm.ModelStatusInfo.LOADING_FAILED, failed
        assert failed.errors, failed
        seen.append(str(failed))
        client = triton.InferenceServerClient(entry.address, ssl=True, root_certificates=ca)
        headers = {"authorization": BEARER, "x-tenant": "tenant-1"}
        for model_id in ("iris-logistic", "iris-tree-s3"):
            seen.append(infer(client, model_id, examples[model_id]))
            tensor = triton.InferInput("input-0", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
            client.infer(model_id, [tensor], headers=headers)
        for bad in ("iris-wrong-key", "not-registered"):
            with pytest.raises(triton.InferenceServerException) as refused:
                client.infer(bad, [tensor], headers=headers)
            seen.append(str(refused.value))
        with pytest.raises(grpc.RpcError) as unknown:
            management.ensureLoaded(mm.EnsureLoadedRequest(modelId="not-registered"), timeout=10)
        seen.append(str(unknown.value.details()))
        client.close()

    context = ssl.create_default_context(cafile=ca)
    for stack in mesh.stacks:
        assert stack.pod is not None
        rest = f"https://{stack.pod.rest_address}"
        for path in (
            "/mesh/status",
            "/mesh/models",
            "/status",
            "/v2/models/iris-wrong-key",
            "/v2/models/iris-wrong-key/ready",
        ):
            try:
                with urllib.request.urlopen(rest + path, context=context, timeout=10) as reply:
                    seen.append(reply.read().decode())
            except urllib.error.HTTPError as e:
                seen.append(e.read().decode())
        request = urllib.request.Request(
            rest + "/v2/models/iris-logistic/infer",
            data=json.dumps(
                {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}
            ).encode(),
            headers={"authorization": BEARER, "content-type": "application/json"},
        )
        with urllib.request.urlopen(request, context=context, timeout=20) as reply:
            seen.append(reply.read().decode())
        with urllib.request.urlopen(
            f"https://{stack.pod.metrics_address}/metrics", context=context, timeout=10
        ) as reply:
            seen.append(reply.read().decode())

    logs = {path: path.read_text(errors="replace") for path in mesh.work_dir.rglob("*.log")}
    assert len(logs) >= 7  # etcd, and per pod: mesh, adapter, MLServer
    assert any("iris-wrong-key" in text for text in logs.values())  # the failure was logged ...
    assert any("x-tenant" in text or "tenant-1" in text for text in logs.values())  # ... and the requests
    leaks = [
        f"{where}: {secret[:6]}..."
        for secret in secrets
        for where, text in [*((str(p), t) for p, t in logs.items()), *(("answer", a) for a in seen)]
        if secret in text
    ]
    assert not leaks, leaks
