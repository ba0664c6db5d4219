"""Model storage: local paths under allowed roots, S3 through a real moto_server, the download cache."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from tritonclient.utils import InferenceServerException

from harness.cluster import LocalMesh, MotoServer, S3Credentials
from protos import model_mesh_pb2 as mm
from protos import model_runtime_pb2, model_runtime_pb2_grpc
from runtime_adapters.common.model_files import ModelFilesError
from runtime_adapters.common.storage import (
    ModelStore,
    S3Location,
    StorageEntry,
    load_storage_config,
    parse_location,
    safe_prefix,
)
from tests.conftest import Examples, MeshClients, open_clients
from tests.support import predict

S = mm.ModelStatusInfo.ModelStatus
CONFIG = {
    "local-s3": StorageEntry(bucket="models", endpoint_url="http://s3"),
    "other": StorageEntry(bucket="b2"),
}
SECRET = "do-not-log-this-secret"


# -- pure -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path,key,expected",
    [
        ("s3://models/iris", "", S3Location("local-s3", "models", "iris")),
        ("s3://b2/x/y", "", S3Location("other", "b2", "x/y")),
        ("s3://models/iris", "other", S3Location("other", "models", "iris")),
        ("iris/v1", "local-s3", S3Location("local-s3", "models", "iris/v1")),
        (
            "iris",
            '{"storage_key": "local-s3", "storage_params": {"bucket": "alt"}}',
            S3Location("local-s3", "alt", "iris"),
        ),
        ("/models/iris", "", Path("/models/iris")),
        ("file:///models/iris", "", Path("/models/iris")),
    ],
)
def test_parse_location(path: str, key: str, expected: Path | S3Location) -> None:
    assert parse_location(path, key, CONFIG) == expected


@pytest.mark.parametrize(
    "path,key",
    [
        ("", ""),
        ("s3://models/../etc", ""),
        ("s3://models//abs", ""),
        ("s3://", ""),
        ("gs://bucket/x", ""),
        ("x", "no-such-key"),
        ("x", "{not json"),
        ("../up", "local-s3"),
    ],
)
def test_bad_locations(path: str, key: str) -> None:
    with pytest.raises(ModelFilesError):
        parse_location(path, key, CONFIG)


@pytest.mark.parametrize("prefix", ["a/../b", "/abs", "", ".."])
def test_safe_prefix_rejects(prefix: str) -> None:
    with pytest.raises(ModelFilesError):
        safe_prefix(prefix)


def test_storage_config_formats(tmp_path: Path) -> None:
    path = tmp_path / "storage.json"
    path.write_text(
        json.dumps(
            {
                "a": {"type": "s3", "default_bucket": "x", "secret_access_key": SECRET},
                "b": json.dumps({"bucket": "y"}),
            }
        )
    )
    config = load_storage_config(path)
    assert config["a"].bucket == "x" and config["b"].bucket == "y"
    assert SECRET not in repr(config)  # secrets stay out of reprs, so out of logs


def test_storage_config_as_a_mounted_secret_directory(tmp_path: Path) -> None:
    """modelmesh-serving's storage-config secret as a volume: one file per key, Kubernetes' ..data links."""
    real = tmp_path / "..2026_12_07_06_00_00.1234"
    real.mkdir()
    (real / "localMinIO").write_text(json.dumps({"type": "s3", "bucket": "m", "secret_access_key": SECRET}))
    (real / "other").write_text(json.dumps({"type": "s3", "default_bucket": "o"}))
    (tmp_path / "..data").symlink_to(real.name)
    for name in ("localMinIO", "other"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    config = load_storage_config(tmp_path)
    assert set(config) == {"localMinIO", "other"}
    assert config["localMinIO"].bucket == "m" and config["other"].bucket == "o"
    assert parse_location("iris/v1", '{"storage_key": "localMinIO"}', config) == S3Location(
        "localMinIO", "m", "iris/v1"
    )


def test_local_paths_must_stay_under_the_roots(tmp_path: Path) -> None:
    root, outside = tmp_path / "models", tmp_path / "outside"
    (root / "good").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.joblib").write_text("x")
    (root / "link").symlink_to(outside)
    store = ModelStore(tmp_path / "cache", {}, model_roots=[root])
    assert store.local_path(str(root / "good"), "") == root / "good"
    for escaping in (
        root / ".." / "outside",
        outside / "secret.joblib",
        root / "link" / "secret.joblib",
        Path("/etc"),
    ):
        with pytest.raises(ModelFilesError, match="outside the allowed model roots"):
            store.local_path(str(escaping), "")


# -- against moto_server ------------------------------------------------------------------------------------
@dataclass
class S3Mesh:
    clients: MeshClients
    moto: MotoServer
    credentials: S3Credentials
    model_root: Path


@pytest.fixture(scope="module")
def s3_mesh(tmp_path_factory: pytest.TempPathFactory, examples: Examples) -> Iterator[S3Mesh]:
    work = tmp_path_factory.mktemp("s3")
    moto = MotoServer.start(work)
    try:
        credentials = moto.create_user()
        s3 = moto.client(credentials)
        s3.create_bucket(Bucket="models")
        s3.upload_file(str(examples.tree.path / "model.joblib"), "models", "iris/tree/model.joblib")
        s3.put_object(Bucket="models", Key="evil/../../escape.txt", Body=b"x")
        # modelmesh-serving's storage-config secret, mounted: a file per key behind Kubernetes' ..data link
        config = work / "storage-config"
        versioned = config / "..2026_12_07_00_00_00.000001"
        versioned.mkdir(parents=True)
        bad = S3Credentials(credentials.access_key_id + "X", SECRET)
        for key, entry in (
            ("local-s3", moto.storage_entry(credentials, "models")),
            ("bad-creds", moto.storage_entry(bad, "models")),
        ):
            (versioned / key).write_text(json.dumps(entry))
            (config / key).symlink_to(f"..data/{key}")
        (config / "..data").symlink_to(versioned.name)
        model_root = examples.logistic.path.parent
        adapter_args = [f"--storage-config={config}", f"--model-root={model_root}"]
        with LocalMesh(work / "mesh", adapter_args=adapter_args) as mesh:
            clients = open_clients(mesh)
            yield S3Mesh(clients, moto, credentials, model_root)
            clients.channel.close()
    finally:
        moto.process.stop()


def downloads(s3_mesh: S3Mesh) -> float:
    assert s3_mesh.clients.mesh.adapter is not None
    return s3_mesh.clients.mesh.adapter.metric("modelmesh_adapter_downloads_total")


def register(s3_mesh: S3Mesh, model_id: str, path: str, key: str = "") -> None:
    info = mm.ModelInfo(type="sklearn", path=path, key=key)
    s3_mesh.clients.management.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=info))


def test_an_s3_model_loads_serves_and_reloads_from_the_cache(s3_mesh: S3Mesh, examples: Examples) -> None:
    clients = s3_mesh.clients
    register(s3_mesh, "s3-tree", "s3://models/iris/tree", key="local-s3")
    assert list(predict(clients.infer, "s3-tree")) == list(examples.tree.expected)
    assert downloads(s3_mesh) == 1
    # unload (unregister), register again, load again: the cached download is used
    clients.management.unregisterModel(mm.UnregisterModelRequest(modelId="s3-tree"))
    register(s3_mesh, "s3-tree", "s3://models/iris/tree", key="local-s3")
    assert list(predict(clients.infer, "s3-tree")) == list(examples.tree.expected)
    # modelmesh-serving's form of the same objects: a storage key in JSON and a path in the bucket
    register(s3_mesh, "s3-tree-json", "iris/tree", key=json.dumps({"storage_key": "local-s3"}))
    assert list(predict(clients.infer, "s3-tree-json")) == list(examples.tree.expected)
    assert downloads(s3_mesh) == 1


def test_modelmesh_serving_controller_registrations(s3_mesh: S3Mesh, examples: Examples) -> None:
    """What modelmesh-serving's controller sends: a vmodel per predictor, the type as a label expression, the
    key as its JSON (storage key, bucket, model type, the puller's disk size), the path inside the bucket."""
    key = json.dumps(
        {
            "storage_key": "local-s3",
            "storage_params": {"bucket": "models"},
            "model_type": {"name": "sklearn"},
            "disk_size_bytes": 4000,
        }
    )
    info = mm.ModelInfo(type="mt:sklearn|pv:grpc-v2", path="iris/tree", key=key)
    status = s3_mesh.clients.management.setVModel(
        mm.SetVModelRequest(
            vModelId="predictor-tree",
            targetModelId="predictor-tree__isvc-1",
            modelInfo=info,
            autoDeleteTargetModel=True,
            loadNow=True,
            sync=True,
            owner="ksp",
        ),
        timeout=60,
    )
    assert status.activeModelId == "predictor-tree__isvc-1", status
    with grpc.insecure_channel(s3_mesh.clients.mesh.adapter.address) as channel:  # type: ignore[union-attr]
        predicted = model_runtime_pb2_grpc.ModelRuntimeStub(channel).predictModelSize(
            model_runtime_pb2.PredictModelSizeRequest(
                modelId="x", modelType=info.type, modelPath=info.path, modelKey=key
            ),
            timeout=10,
        )
    assert predicted.sizeInBytes == 5000  # the puller's disk size x 1.25 (remote files: not measured here)
    model = s3_mesh.clients.status("predictor-tree__isvc-1")
    assert model.status == S.LOADED
    assert list(predict(s3_mesh.clients.infer, "predictor-tree__isvc-1")) == list(examples.tree.expected)


@pytest.mark.parametrize(
    "model_id,path,key,names",
    [
        ("s3-wrong-creds", "s3://models/iris/tree", "bad-creds", "s3://models/iris/tree"),
        ("s3-missing", "s3://models/nothing/here", "local-s3", "s3://models/nothing/here"),
    ],
)
def test_s3_failures_name_the_object_not_the_secret(
    s3_mesh: S3Mesh, model_id: str, path: str, key: str, names: str
) -> None:
    register(s3_mesh, model_id, path, key)
    with pytest.raises(InferenceServerException) as e:
        predict(s3_mesh.clients.infer, model_id)
    assert e.value.status() == "StatusCode.FAILED_PRECONDITION"
    status = s3_mesh.clients.status(model_id)
    assert status.status == S.LOADING_FAILED
    assert names in status.errors[0]
    assert SECRET not in status.errors[0] and SECRET not in str(e.value.message())


def test_traversal_is_rejected_and_nothing_escapes(s3_mesh: S3Mesh, tmp_path: Path) -> None:
    cases = {
        "up-and-out": str(s3_mesh.model_root / ".." / "elsewhere"),
        "absolute-outside": "/etc",
        "s3-dotdot": "s3://models/../models/iris",
        "s3-evil-object": "s3://models/evil",
    }
    for model_id, path in cases.items():
        register(s3_mesh, model_id, path, key="local-s3" if path.startswith("s3") else "")
        with pytest.raises(InferenceServerException) as e:
            predict(s3_mesh.clients.infer, model_id)
        assert e.value.status() == "StatusCode.FAILED_PRECONDITION", (model_id, e.value.message())
    # the object named evil/../../escape.txt was not written anywhere
    mesh_dir = s3_mesh.clients.mesh.work_dir
    assert not [p for p in mesh_dir.parent.rglob("escape.txt")]
    assert not os.path.exists(mesh_dir.parent / "escape.txt")
