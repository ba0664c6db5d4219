"""Certificates for a local mesh with TLS everywhere, made on the spot (trustme): nothing to install or keep.

Two authorities, as a cluster would have them: the mesh's (external certificates the clients verify, and
etcd's server certificate) and the pods' (internal certificates between pods, and the client certificates
etcd accepts). Every certificate names 127.0.0.1 and localhost, where the local mesh listens.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import grpc
import trustme

from harness.cluster import EtcdSecurity

NAMES = ("127.0.0.1", "localhost")


@dataclass
class MeshCertificates:
    directory: Path
    mesh_ca: trustme.CA
    pods_ca: trustme.CA

    @classmethod
    def create(cls, directory: Path) -> MeshCertificates:
        directory.mkdir(parents=True, exist_ok=True)
        certificates = cls(directory, trustme.CA(), trustme.CA())
        certificates.mesh_ca.cert_pem.write_to_path(str(certificates.ca_file))
        certificates.pods_ca.cert_pem.write_to_path(str(certificates.pods_ca_file))
        return certificates

    @property
    def ca_file(self) -> Path:
        """What clients verify the mesh with (meshctl --tls-ca, tritonclient root_certificates)."""
        return self.directory / "mesh-ca.pem"

    @property
    def pods_ca_file(self) -> Path:
        return self.directory / "pods-ca.pem"

    def issue(self, ca: trustme.CA, name: str, *identities: str) -> tuple[Path, Path]:
        """(certificate chain, private key) files for ``identities`` signed by ``ca``."""
        issued = ca.issue_cert(*(identities or NAMES))
        cert, key = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        issued.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        return cert, key

    def pod_args(self, pod_id: str) -> list[str]:
        """A pod's TLS flags: its external certificate, its pod certificate, the pods' CA."""
        external_cert, external_key = self.issue(self.mesh_ca, f"{pod_id}-external")
        internal_cert, internal_key = self.issue(self.pods_ca, f"{pod_id}-internal")
        return [
            f"--tls-cert={external_cert}",
            f"--tls-key={external_key}",
            f"--internal-tls-cert={internal_cert}",
            f"--internal-tls-key={internal_key}",
            f"--internal-tls-trust={self.pods_ca_file}",
        ]

    def etcd_security(self, username: str = "mesh") -> EtcdSecurity:
        """etcd with TLS, client certificates from the pods' CA, and a user with a fresh password."""
        server_cert, server_key = self.issue(self.mesh_ca, "etcd-server")
        client_cert, client_key = self.issue(self.pods_ca, "etcd-client", "mesh-pod")
        both = self.directory / "etcd-trust.pem"  # etcd verifies clients and clients verify etcd with it
        both.write_bytes(self.mesh_ca.cert_pem.bytes() + self.pods_ca.cert_pem.bytes())
        return EtcdSecurity(
            ca=both,
            server_cert=server_cert,
            server_key=server_key,
            client_cert=client_cert,
            client_key=client_key,
            username=username,
            password=secrets.token_urlsafe(18),
        )

    def client_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca_file.read_bytes())
