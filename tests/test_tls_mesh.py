"""Two pods with TLS on every port: clients' certificates from one CA, pods' from another (mutual TLS between
pods). Real clients (grpcio, tritonclient with ssl=True, urllib over https) infer through the pod without the
model, which forwards to the holder over mutual TLS; plaintext and wrongly certified clients are refused;
only a pod certificate opens the internal port; certificates rotated under traffic lose no request."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import trustme
from cryptography import x509
from tritonclient.grpc import service_pb2 as v2

from harness.cluster import PodProcess
from load_tests.echo_runtime import INFER_METHOD, MODEL_TYPE
from load_tests.hop import infer_request
from load_tests.processes import EchoProcess, start_echo_pod
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.support import poll_until
from tests.test_etcd_security import secured_etcd
from tests.test_tls_units import issue

pytestmark = pytest.mark.integration


@dataclass
class TlsMesh:
    a: PodProcess  # serves no echo model: forwards everything to b
    b: PodProcess
    servers_ca: trustme.CA
    clients_ca: trustme.CA
    pods_ca: trustme.CA
    directory: Path
    server_trust: str  # what clients verify the pods' external certificate with
    start_pod: Callable[[str, str], PodProcess]  # (name, model types) -> another pod of this mesh

    def credentials(self, client_cert: bool = False) -> grpc.ChannelCredentials:
        trust = Path(self.server_trust).read_bytes()
        if not client_cert:
            return grpc.ssl_channel_credentials(root_certificates=trust)
        files = issue(self.clients_ca, self.directory / "client", "client")
        return grpc.ssl_channel_credentials(
            root_certificates=trust,
            private_key=Path(files.key).read_bytes(),
            certificate_chain=Path(files.cert).read_bytes(),
        )

    def infer(self, address: str, model_id: str, **metadata: str) -> str:
        with grpc.secure_channel(address, self.credentials()) as channel:
            answer = channel.unary_unary(INFER_METHOD)(
                infer_request(model_id), metadata=tuple(metadata.items()), timeout=20
            )
        return str(v2.ModelInferResponse.FromString(answer).model_name)


def pod_args(directory: Path, external: str, internal: str, servers_ca: str, pods_ca: str) -> list[str]:
    return [
        f"--tls-cert={directory / external}.pem",
        f"--tls-key={directory / external}.key",
        f"--tls-trust={servers_ca}",  # client certificates: the clients' CA
        "--tls-client-auth=OPTIONAL",
        f"--internal-tls-cert={directory / internal}.pem",
        f"--internal-tls-key={directory / internal}.key",
        f"--internal-tls-trust={pods_ca}",
        "--tls-reload-interval-s=0.5",
    ]


@pytest.fixture(scope="module")
def tls_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsMesh]:
    root = tmp_path_factory.mktemp("tls")
    servers_ca, clients_ca, pods_ca = trustme.CA(), trustme.CA(), trustme.CA()
    certs = root / "certs"
    server_trust = issue(servers_ca, certs, "external-a").trust
    clients_trust = certs / "clients-ca.pem"
    clients_ca.cert_pem.write_to_path(str(clients_trust))
    pods_trust = issue(pods_ca, certs, "pod-a").trust
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(server_trust).read_bytes())
    with contextlib.ExitStack() as stack:
        etcd, _ = secured_etcd(root / "etcd-tls")  # TLS with client certificates, and a user
        stack.callback(etcd.process.stop)

        def start_pod(name: str, types: str) -> PodProcess:
            echo = EchoProcess.start(root / f"echo-{name}", f"echo-{name}")
            stack.callback(echo.stop)
            issue(servers_ca, certs, f"external-{name}")
            issue(pods_ca, certs, f"pod-{name}")
            args = pod_args(certs, f"external-{name}", f"pod-{name}", str(clients_trust), pods_trust)
            pod = start_echo_pod(
                root / name,
                etcd,
                echo,
                f"pod-{name}",
                model_types=types,
                extra_args=args,
                credentials=credentials,
            )
            stack.callback(pod.process.stop)
            return pod

        pods = [start_pod("a", "none"), start_pod("b", MODEL_TYPE)]
        with grpc.secure_channel(pods[0].address, credentials) as channel:
            mm_grpc.ModelMeshStub(channel).registerModel(
                mm.RegisterModelRequest(
                    modelId="secret-model",
                    modelInfo=mm.ModelInfo(type=MODEL_TYPE, path="size=100"),
                    loadNow=True,
                    sync=True,
                ),
                timeout=30,
            )
            mm_grpc.ModelMeshStub(channel).registerModel(
                mm.RegisterModelRequest(
                    modelId="other-model",
                    modelInfo=mm.ModelInfo(type=MODEL_TYPE, path="size=100"),
                    loadNow=True,
                    sync=True,
                ),
                timeout=30,
            )
        yield TlsMesh(pods[0], pods[1], servers_ca, clients_ca, pods_ca, certs, server_trust, start_pod)


def test_a_tls_client_infers_through_the_forwarding_pod(tls_mesh: TlsMesh) -> None:
    assert tls_mesh.infer(tls_mesh.a.address, "secret-model") == "secret-model"  # a -> b over mutual TLS
    assert tls_mesh.infer(tls_mesh.b.address, "secret-model") == "secret-model"
    with grpc.secure_channel(tls_mesh.a.address, tls_mesh.credentials(client_cert=True)) as channel:
        answer = channel.unary_unary(INFER_METHOD)(
            infer_request("secret-model"), timeout=20
        )  # OPTIONAL: with one
    assert v2.ModelInferResponse.FromString(answer).model_name == "secret-model"


def test_tritonclient_with_ssl_infers(tls_mesh: TlsMesh) -> None:
    client = triton.InferenceServerClient(
        tls_mesh.a.address, ssl=True, root_certificates=tls_mesh.server_trust
    )
    tensor = triton.InferInput("INPUT0", [4], "FP32")
    tensor.set_data_from_numpy(np.zeros(4, dtype=np.float32))
    assert client.infer("secret-model", [tensor]).get_response().model_name == "secret-model"
    assert client.is_server_live()
    client.close()


def test_plaintext_and_wrongly_certified_clients_are_refused(tls_mesh: TlsMesh) -> None:
    with grpc.insecure_channel(tls_mesh.a.address) as channel, pytest.raises(grpc.RpcError) as plain:
        channel.unary_unary(INFER_METHOD)(infer_request("secret-model"), timeout=5)
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    stranger = trustme.CA()
    wrong_trust = grpc.ssl_channel_credentials(root_certificates=stranger.cert_pem.bytes())
    with (
        grpc.secure_channel(tls_mesh.a.address, wrong_trust) as channel,
        pytest.raises(grpc.RpcError) as unverified,
    ):
        channel.unary_unary(INFER_METHOD)(infer_request("secret-model"), timeout=5)
    assert unverified.value.code() == grpc.StatusCode.UNAVAILABLE  # the client does not trust the pod
    forged = issue(stranger, tls_mesh.directory / "forged", "client")  # a client certificate nobody signed
    forged_client = grpc.ssl_channel_credentials(
        root_certificates=Path(tls_mesh.server_trust).read_bytes(),
        private_key=Path(forged.key).read_bytes(),
        certificate_chain=Path(forged.cert).read_bytes(),
    )
    with (
        grpc.secure_channel(tls_mesh.a.address, forged_client) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        channel.unary_unary(INFER_METHOD)(infer_request("secret-model"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_only_a_pod_certificate_opens_the_internal_port(tls_mesh: TlsMesh) -> None:
    internal = tls_mesh.b.internal_address
    pods_trust = tls_mesh.pods_ca.cert_pem.bytes()
    headers = (("mm-internal-model", "secret-model"),)
    for credentials in (
        grpc.ssl_channel_credentials(root_certificates=pods_trust),  # no certificate
        tls_mesh.credentials(client_cert=True),  # a client's certificate, not a pod's (and the wrong trust)
    ):
        with grpc.secure_channel(internal, credentials) as channel, pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(INFER_METHOD)(infer_request("secret-model"), metadata=headers, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    client_cert = issue(tls_mesh.clients_ca, tls_mesh.directory / "client-internal", "client")
    as_client = grpc.ssl_channel_credentials(
        root_certificates=pods_trust,
        private_key=Path(client_cert.key).read_bytes(),
        certificate_chain=Path(client_cert.cert).read_bytes(),
    )
    with grpc.secure_channel(internal, as_client) as channel, pytest.raises(grpc.RpcError) as refused:
        channel.unary_unary(INFER_METHOD)(infer_request("secret-model"), metadata=headers, timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(internal) as channel, pytest.raises(grpc.RpcError):
        channel.unary_unary(INFER_METHOD)(infer_request("secret-model"), metadata=headers, timeout=5)


def test_the_external_port_never_honours_internal_headers(tls_mesh: TlsMesh) -> None:
    for pod in (tls_mesh.a, tls_mesh.b):
        served = tls_mesh.infer(pod.address, "secret-model", **{"mm-internal-model": "other-model"})
        assert served == "secret-model"  # the request's own model, whatever the header says


def test_rest_over_https(tls_mesh: TlsMesh) -> None:
    context = ssl.create_default_context(cafile=tls_mesh.server_trust)
    with urllib.request.urlopen(
        f"https://{tls_mesh.a.rest_address}/v2/health/ready", context=context, timeout=10
    ) as r:
        assert r.status == 200
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://{tls_mesh.a.rest_address}/v2/health/ready", timeout=5)


def test_certificates_rotated_under_traffic_lose_nothing(tls_mesh: TlsMesh) -> None:
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal served
        while not stop.is_set():
            # a new channel now and then: new handshakes meet whatever certificate is current
            with grpc.secure_channel(tls_mesh.a.address, tls_mesh.credentials()) as channel:
                call = channel.unary_unary(INFER_METHOD)
                for _ in range(20):
                    try:
                        call(infer_request("secret-model"), timeout=10)
                        served += 1
                    except grpc.RpcError as e:
                        failures.append(f"{e.code().name}: {e.details()}")

    def served_serial() -> int:
        """The serial number of the certificate a new handshake with pod a's external port gets."""
        context = ssl.create_default_context(cafile=tls_mesh.server_trust)
        context.set_alpn_protocols(["h2"])
        host, port = tls_mesh.a.address.rsplit(":", 1)
        with (
            socket.create_connection((host, int(port))) as raw,
            context.wrap_socket(raw, server_hostname=host) as s,
        ):
            der = s.getpeercert(binary_form=True)
        assert der is not None
        return int(x509.load_der_x509_certificate(der).serial_number)

    before = served_serial()
    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        poll_until(lambda: served >= 50, what="traffic flowing")
        # external and pod certificates both rotated (the same CAs, new keys), as a secret's mount would be
        issue(tls_mesh.servers_ca, tls_mesh.directory, "external-a")
        issue(tls_mesh.pods_ca, tls_mesh.directory, "pod-a")
        poll_until(
            lambda: served_serial() != before, timeout_s=20, what="new handshakes get the new certificate"
        )
        rotated_at = served
        poll_until(lambda: served >= rotated_at + 100, what="traffic after the rotation")
    finally:
        stop.set()
        worker.join(30)
    assert not failures, failures[:5]
    assert (
        tls_mesh.infer(tls_mesh.a.address, "secret-model") == "secret-model"
    )  # forwarding with the new pod cert


def test_meshctl_speaks_tls(tls_mesh: TlsMesh) -> None:
    meshctl = Path(sys.executable).parent / "meshctl"
    env = {**os.environ, "MESH_ENDPOINT": tls_mesh.a.address, "MESH_REST_ENDPOINT": tls_mesh.a.rest_address}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(meshctl), *args], env=env, capture_output=True, text=True, timeout=60)

    status = run("--tls-ca", tls_mesh.server_trust, "-o", "json", "status", "secret-model")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "LOADED"
    listed = run("--tls-ca", tls_mesh.server_trust, "-o", "json", "list")  # REST, over https
    assert listed.returncode == 0, listed.stderr
    assert "secret-model" in {m["id"] for m in json.loads(listed.stdout)}
    plain = run("-o", "json", "status", "secret-model")
    assert plain.returncode == 5, plain.stdout  # the mesh is unreachable without TLS


def test_vmodels_through_tls(tls_mesh: TlsMesh) -> None:
    with grpc.secure_channel(tls_mesh.a.address, tls_mesh.credentials()) as channel:
        management = mm_grpc.ModelMeshStub(channel)
        status = management.setVModel(
            mm.SetVModelRequest(vModelId="secret-v", targetModelId="other-model", loadNow=True, sync=True),
            timeout=30,
        )
        assert status.activeModelId == "other-model"
        answer = channel.unary_unary(INFER_METHOD)(
            infer_request(""), metadata=(("mm-vmodel-id", "secret-v"),), timeout=20
        )
        assert v2.ModelInferResponse.FromString(answer).model_name == "other-model"
        management.setVModel(
            mm.SetVModelRequest(vModelId="secret-v", targetModelId="secret-model", sync=True), timeout=30
        )
        answer = channel.unary_unary(INFER_METHOD)(
            infer_request(""), metadata=(("mm-vmodel-id", "secret-v"),), timeout=20
        )
        assert v2.ModelInferResponse.FromString(answer).model_name == "secret-model"
        management.deleteVModel(mm.DeleteVModelRequest(vModelId="secret-v"), timeout=30)


def test_failover_under_tls_when_the_holder_dies(tls_mesh: TlsMesh) -> None:
    """Last in the module: pod b goes. A third pod (certified by the same CAs) takes its models."""
    tls_mesh.start_pod("c", MODEL_TYPE)
    assert tls_mesh.infer(tls_mesh.a.address, "secret-model") == "secret-model"
    tls_mesh.b.process.kill()
    poll_until(
        lambda: _served(tls_mesh, "secret-model"), timeout_s=40, what="secret-model served again, from pod c"
    )
    with grpc.secure_channel(tls_mesh.a.address, tls_mesh.credentials()) as channel:
        status = mm_grpc.ModelMeshStub(channel).getModelStatus(
            mm.GetStatusRequest(modelId="secret-model"), timeout=10
        )
    assert status.status == mm.ModelStatusInfo.LOADED


def _served(tls_mesh: TlsMesh, model_id: str) -> bool:
    try:
        return tls_mesh.infer(tls_mesh.a.address, model_id) == model_id
    except grpc.RpcError:
        return False
