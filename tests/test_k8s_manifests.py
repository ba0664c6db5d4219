"""deploy/k8s, offline: every overlay renders (kubectl's kustomize) and every object is valid against the
schemas of a current Kubernetes (kubernetes-validate); the settings in the manifests are the code's settings,
and the pieces a pool needs (probes, drain time, limits the adapter reads, disruption budget, autoscaler,
network policy, secrets in the formats the code reads) are there."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mesh.process.settings import OPTIONS, parse_settings
from mesh.registry.etcd import EtcdConfig
from runtime_adapters.common.storage import load_storage_config
from runtime_adapters.mlserver.main import build_parser as mlserver_parser
from runtime_adapters.triton.main import build_parser as triton_parser

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
KUBERNETES_VERSION = "1.31.0"
ADAPTER_PARSERS = {"modelmesh-mlserver-adapter": mlserver_parser, "modelmesh-triton-adapter": triton_parser}


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed (deploy/local/setup.sh installs it)"
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def objects(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [o for o in rendered(overlay) if o["kind"] == kind]


def deployments() -> Iterator[tuple[str, dict[str, Any]]]:
    for overlay in OVERLAYS:
        for deployment in objects(overlay, "Deployment"):
            yield overlay, deployment


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == name)


def test_the_overlays_are_there() -> None:
    assert set(OVERLAYS) >= {"mlserver", "triton", "both", "external-etcd"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_kubernetes(overlay: str) -> None:
    docs = rendered(overlay)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises with the field at fault
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "modelmesh-py", doc["metadata"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_settings_are_the_codes_settings(overlay: str) -> None:
    """Every MM_* setting of the mesh pod has one place (the ConfigMap, or the pool's Deployment when it is
    per pod), and the manifests set none the code does not know."""
    (config,) = [c for c in objects(overlay, "ConfigMap") if c["metadata"]["name"] == "mesh-config"]
    known = {o.env for o in OPTIONS}
    assert set(config["data"]) <= known, set(config["data"]) - known
    for deployment in objects(overlay, "Deployment"):
        mesh = container(deployment["spec"]["template"], "mesh")
        per_pod = {e["name"] for e in mesh["env"]}
        assert per_pod <= known, per_pod - known
        assert not per_pod & set(config["data"]), per_pod & set(config["data"])  # one place each
        assert per_pod | set(config["data"]) == known, known - per_pod - set(config["data"])
        # and together they are settings a pod starts with
        env = {**config["data"], **{e["name"]: e.get("value", "x") for e in mesh["env"]}}
        env["KV_STORE"], env["MM_ETCD_ENDPOINT"] = "", "etcd:2379"  # the file is the cluster's; read below
        settings = parse_settings([], env=env)
        assert settings.host == "0.0.0.0" and settings.metrics_port == 2112


def test_adapters_take_the_arguments_they_are_given() -> None:
    for _, deployment in deployments():
        adapter = container(deployment["spec"]["template"], "adapter")
        (command,) = adapter["command"]
        args = ADAPTER_PARSERS[command]().parse_args(adapter["args"])
        assert args.host == "127.0.0.1"  # pod-local: the adapter is reached over loopback only
        assert str(args.storage_config) == "/storage-config"
        env = {e["name"]: e for e in adapter["env"]}
        limit = env["RUNTIME_MEMORY_LIMIT_BYTES"]["valueFrom"]["resourceFieldRef"]
        runtime = container(deployment["spec"]["template"], limit["containerName"])
        assert limit["resource"] == "limits.memory" and runtime["resources"]["limits"]["memory"]


def test_mlservers_scanned_repository_is_shared_and_in_memory() -> None:
    """The adapter makes and removes a settings file in MLServer's scanned folder at every load: in memory."""
    pools = [
        d
        for _, d in deployments()
        if "mlserver" in {c["name"] for c in d["spec"]["template"]["spec"]["containers"]}
    ]
    assert pools
    for deployment in pools:
        pod = deployment["spec"]["template"]
        adapter, mlserver = container(pod, "adapter"), container(pod, "mlserver")
        repository = str(mlserver_parser().parse_args(adapter["args"]).repository_dir)
        assert mlserver["command"] == ["mlserver", "start", repository]
        mounts = {
            name: {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            for name, c in (("adapter", adapter), ("mlserver", mlserver))
        }
        volume = mounts["adapter"][repository]
        assert mounts["mlserver"][repository] == volume
        (spec,) = [v for v in pod["spec"]["volumes"] if v["name"] == volume]
        assert spec["emptyDir"]["medium"] == "Memory"


def test_a_pool_pod_is_built_to_drain_and_be_probed() -> None:
    for overlay, deployment in deployments():
        spec = deployment["spec"]
        pod = spec["template"]["spec"]
        assert [c["name"] for c in pod["containers"]][:2] == ["mesh", "adapter"] and len(
            pod["containers"]
        ) == 3
        assert pod["shareProcessNamespace"] is True  # the adapter reads the runtime's memory by its process
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert all(c["resources"]["limits"]["memory"] for c in pod["containers"])
        mesh = container(spec["template"], "mesh")
        assert (
            mesh["readinessProbe"]["grpc"]["port"] == 8033 and mesh["livenessProbe"]["grpc"]["port"] == 8033
        )
        assert mesh["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
        config = next(c for c in objects(overlay, "ConfigMap") if c["metadata"]["name"] == "mesh-config")
        assert pod["terminationGracePeriodSeconds"] > int(
            config["data"]["MM_LOAD_TIMEOUT_S"]
        )  # a hand-over fits
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        labels = spec["selector"]["matchLabels"]
        budgets = [
            p
            for p in objects(overlay, "PodDisruptionBudget")
            if p["spec"]["selector"]["matchLabels"] == labels
        ]
        assert budgets and budgets[0]["spec"]["maxUnavailable"] == 1
        scalers = [
            h
            for h in objects(overlay, "HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        ]
        assert (
            scalers
            and scalers[0]["spec"]["metrics"][0]["pods"]["metric"]["name"] == "modelmesh_instance_used_bps"
        )


def test_the_internal_ports_admit_only_mesh_pods() -> None:
    for overlay in OVERLAYS:
        (policy,) = [p for p in objects(overlay, "NetworkPolicy") if p["metadata"]["name"] == "mesh-pods"]
        for rule in policy["spec"]["ingress"]:
            ports = {p["port"] for p in rule["ports"]}
            if ports & {8034, 8035}:
                (source,) = rule["from"]
                assert source["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "mesh-pod"
                assert not ports & {8033, 8008}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_secrets_are_in_the_formats_the_code_reads(overlay: str, tmp_path: Path) -> None:
    secrets = {s["metadata"]["name"]: s["stringData"] for s in objects(overlay, "Secret")}
    etcd_dir = tmp_path / "etcd"
    etcd_dir.mkdir()
    for name, value in secrets["etcd-connection"].items():
        (etcd_dir / name).write_text(value)
    config = EtcdConfig.from_file(etcd_dir / "etcd_connection")
    assert len(config.endpoints) >= 2  # several members: a pod fails over between them
    if overlay != "external-etcd":
        statefulset = objects(overlay, "StatefulSet")[0]
        assert statefulset["spec"]["replicas"] == 3 == len(config.endpoints)
    storage_dir = tmp_path / "storage"
    storage_dir.mkdir()
    for name, value in secrets["storage-config"].items():
        (storage_dir / name).write_text(value)
    assert load_storage_config(storage_dir)["localMinIO"].bucket


def test_the_images_build_files_are_there() -> None:
    images = K8S.parent / "images"
    for overlay in OVERLAYS:
        for doc in objects(overlay, "Deployment"):
            for c in doc["spec"]["template"]["spec"]["containers"]:
                name = c["image"].split("/")[-1].split(":")[0]
                assert (images / f"{name}.Dockerfile").exists(), c["image"]
    for build in images.glob("*.Dockerfile"):
        text = build.read_text()
        assert "USER 1000" in text and "constraints" in text, build  # non-root, pinned
    # what each container runs is what its image provides: the mesh image's console scripts, the runtime
    # images' own command (MLServer's CMD) or entry point (Triton's, given arguments only)
    scripts = set(tomllib.loads((K8S.parent.parent / "pyproject.toml").read_text())["project"]["scripts"])
    for overlay in OVERLAYS:
        for doc in objects(overlay, "Deployment"):
            for c in doc["spec"]["template"]["spec"]["containers"]:
                image = c["image"].split("/")[-1].split(":")[0]
                build = (images / f"{image}.Dockerfile").read_text()
                if image == "mesh":
                    assert c["command"][0] in scripts, c["command"]
                elif "command" in c:
                    assert f'CMD ["{c["command"][0]}"' in build, (image, c["command"])
                else:
                    assert "ENTRYPOINT" in build, image


def test_the_manifests_json_values_parse() -> None:
    for overlay in OVERLAYS:
        for secret in objects(overlay, "Secret"):
            for value in secret["stringData"].values():
                if value.lstrip().startswith("{"):
                    json.loads(value)
