"""Rendered Kubernetes manifests (deploy/k8s), run as local processes: what a cluster would run.

Each container of the etcd StatefulSet and of a pool's Deployment becomes a child process with the
container's own command, arguments and environment: ConfigMap and Secret values resolved, the downward API
answered (pod name, pod IP = 127.0.0.1, a container's memory limit), each volume a temporary folder (a
Secret's keys written as files, an ``emptyDir`` shared by the pod's containers), service names on loopback.
Pods of a cluster have an IP each; here they share 127.0.0.1, so each replica's ports are moved to free ones
(the same number everywhere it appears in that pod). Images' entry points map to this checkout's commands.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.processes import VENV_BIN, ChildProcess, default_mlserver_bin, etcd_binary

Manifest = dict[str, Any]
UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "K": 10**3, "M": 10**6, "G": 10**9}


def entry_points() -> dict[str, str]:
    """An image's command -> this checkout's installed program."""
    return {
        "modelmesh-pod": str(VENV_BIN / "modelmesh-pod"),
        "modelmesh-mlserver-adapter": str(VENV_BIN / "modelmesh-mlserver-adapter"),
        "modelmesh-triton-adapter": str(VENV_BIN / "modelmesh-triton-adapter"),
        "mlserver": str(default_mlserver_bin()),
        "/usr/local/bin/etcd": str(etcd_binary()),
        "sleep": "sleep",
    }


def quantity_bytes(text: str) -> int:
    for suffix, factor in UNITS.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) references to the container's environment."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def of_kind(docs: Iterable[Manifest], kind: str, name: str) -> Manifest:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


@dataclass
class LocalPod:
    """One replica: its containers' processes, and how its ports were moved."""

    name: str
    ports: dict[int, int]  # the manifest's port -> this replica's
    processes: dict[str, ChildProcess] = field(default_factory=dict)
    spec: Manifest = field(default_factory=dict)

    def port(self, manifest_port: int) -> int:
        return self.ports.get(manifest_port, manifest_port)

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()


class Launcher:
    """Turns pod specs into processes under ``work_dir``; ``rewrite`` maps every string it hands a process."""

    def __init__(self, docs: list[Manifest], work_dir: Path) -> None:
        self.docs = docs
        self.work_dir = work_dir
        self.hosts: dict[str, str] = {}  # "name:port" of a service address -> "127.0.0.1:port"
        self.commands = entry_points()

    def config_map(self, name: str) -> dict[str, str]:
        return dict(of_kind(self.docs, "ConfigMap", name).get("data", {}))

    def secret(self, name: str) -> dict[str, str]:
        return dict(of_kind(self.docs, "Secret", name).get("stringData", {}))

    def rewrite(self, text: str, pod: LocalPod, mounts: dict[str, Path]) -> str:
        for address, local in self.hosts.items():
            text = text.replace(address, local)
        text = text.replace("0.0.0.0", "127.0.0.1")  # tests bind loopback only
        for path, folder in sorted(mounts.items(), key=lambda item: -len(item[0])):
            text = re.sub(rf"(?<![\w/]){re.escape(path)}(?=/|$|\W)", str(folder), text)
        for old, new in pod.ports.items():
            text = re.sub(rf"(?<![0-9]){old}(?![0-9])", str(new), text)
        return text

    def start_pod(
        self, name: str, spec: Manifest, ports: dict[int, int], wait: Callable[[LocalPod], None]
    ) -> LocalPod:
        """Start every container of ``spec`` as replica ``name``, its ports moved as ``ports`` says; returns
        once ``wait`` (its readiness) returns."""
        pod = LocalPod(name, ports, spec=spec)
        directory = self.work_dir / name
        volumes: dict[str, Path] = {}
        for volume in spec.get("volumes", []):
            folder = directory / "volumes" / volume["name"]
            folder.mkdir(parents=True, exist_ok=True)
            if "secret" in volume:
                for key, value in self.secret(volume["secret"]["secretName"]).items():
                    (folder / key).write_text(self.rewrite(value, pod, {}))
            volumes[volume["name"]] = folder
        limits = {c["name"]: c.get("resources", {}).get("limits", {}) for c in spec["containers"]}
        try:
            for container in spec["containers"]:
                mounts = {}
                for mount in container.get("volumeMounts", []):  # a StatefulSet's claim: a folder of its own
                    mounts[mount["mountPath"]] = (
                        volumes.get(mount["name"]) or directory / "claims" / mount["name"]
                    )
                    mounts[mount["mountPath"]].mkdir(parents=True, exist_ok=True)
                env = self.environment(container, name, limits)
                env = {k: self.rewrite(v, pod, mounts) for k, v in env.items()}
                env = {k: expand(v, env) for k, v in env.items()}
                argv = [expand(a, env) for a in [*container.get("command", []), *container.get("args", [])]]
                argv = [self.rewrite(a, pod, mounts) for a in argv]
                argv[0] = self.commands[argv[0]]
                pod.processes[container["name"]] = ChildProcess(
                    f"{name}/{container['name']}",
                    argv,
                    directory / f"{container['name']}.log",
                    env=env,
                    cwd=directory,
                )
            wait(pod)
        except BaseException:
            pod.stop()
            raise
        return pod

    def environment(
        self, container: Manifest, pod_name: str, limits: dict[str, dict[str, str]]
    ) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(self.config_map(source["configMapRef"]["name"]))
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = str(item["value"])
                continue
            ref = item["valueFrom"]
            if "fieldRef" in ref:
                env[item["name"]] = {"metadata.name": pod_name, "status.podIP": "127.0.0.1"}[
                    ref["fieldRef"]["fieldPath"]
                ]
            elif "resourceFieldRef" in ref:
                resource = ref["resourceFieldRef"]
                owner = resource.get("containerName", container["name"])
                env[item["name"]] = str(quantity_bytes(limits[owner][resource["resource"].split(".", 1)[1]]))
            elif "configMapKeyRef" in ref:
                env[item["name"]] = self.config_map(ref["configMapKeyRef"]["name"])[
                    ref["configMapKeyRef"]["key"]
                ]
            elif "secretKeyRef" in ref:
                env[item["name"]] = self.secret(ref["secretKeyRef"]["name"])[ref["secretKeyRef"]["key"]]
        return env


def pod_ports(spec: Manifest) -> set[int]:
    """The ports a pod's containers listen on or call each other at: declared container ports, loopback
    addresses (127.0.0.1:N) and port settings (``*PORT`` variables, ``--*port=N`` arguments)."""
    ports = {p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
    for c in spec["containers"]:
        texts = [str(item.get("value", "")) for item in c.get("env", [])] + list(c.get("args", []))
        for item in c.get("env", []):
            if item["name"].endswith("PORT") and str(item.get("value", "")).isdigit():
                ports.add(int(item["value"]))
        for text in texts:
            ports |= {int(m) for m in re.findall(r"127\.0\.0\.1:(\d+)", text)}
            if match := re.fullmatch(r"--[\w-]*port=(\d+)", text):
                ports.add(int(match.group(1)))
    return ports
