"""meshctl's calls: the ModelMesh gRPC API (sync grpcio stubs) and the pod's REST port (urllib).

Every failure is a CliError carrying the gRPC status name, the message and the exit code it means.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc

from mesh.cli.render import INVALID, UNREACHABLE, exit_code, status_of_http
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc

DEFAULT_ENDPOINT = "127.0.0.1:8033"
DEFAULT_REST = "127.0.0.1:8008"


class CliError(Exception):
    """A call that failed: ``status`` is the gRPC status name, ``code`` the exit code."""

    def __init__(self, status: str, message: str, code: int | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.code = exit_code(status) if code is None else code


def rpc_error(e: grpc.RpcError) -> CliError:
    call = cast(grpc.Call, e)
    code = call.code()
    name = code.name if code is not None else "UNKNOWN"
    return CliError(name, call.details() or name)


def rest_base(endpoint: str, tls: bool = False) -> str:
    """``host:port`` or a URL -> the URL REST paths are appended to (no trailing slash)."""
    base = endpoint if "://" in endpoint else f"{'https' if tls else 'http'}://{endpoint}"
    return base.rstrip("/")


@dataclass(frozen=True)
class ClientTls:
    """How meshctl speaks TLS to a mesh: the CA its pods' certificates are checked against, and a client
    certificate for meshes that require one (``--tls-ca``, ``--tls-cert``, ``--tls-key``)."""

    ca: str
    cert: str = ""
    key: str = ""

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        try:
            root = Path(self.ca).read_bytes()
            chain = Path(self.cert).read_bytes() if self.cert else None
            key = Path(self.key).read_bytes() if self.key else None
        except OSError as e:
            raise CliError("INVALID_ARGUMENT", f"cannot read {e.filename}: {e.strerror}", INVALID) from None
        return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)

    def ssl_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.ca)
            if self.cert:
                context.load_cert_chain(self.cert, self.key or None)
        except (OSError, ssl.SSLError) as e:
            raise CliError("INVALID_ARGUMENT", f"TLS files: {e}", INVALID) from None
        return context


class MeshClient:
    """One mesh: its gRPC endpoint (a channel opened on first use) and its REST endpoint."""

    def __init__(self, endpoint: str, rest: str, timeout_s: float, tls: ClientTls | None = None) -> None:
        self.endpoint = endpoint
        self.rest = rest
        self.timeout_s = timeout_s
        self.tls = tls
        self._channel: grpc.Channel | None = None
        self._stub: mm_grpc.ModelMeshStub | None = None

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._stub = None

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stub(self) -> mm_grpc.ModelMeshStub:
        if self._stub is None:
            self._channel = (
                grpc.insecure_channel(self.endpoint)
                if self.tls is None
                else grpc.secure_channel(self.endpoint, self.tls.grpc_credentials())
            )
            self._stub = mm_grpc.ModelMeshStub(self._channel)
        return self._stub

    def _call(self, method: str, request: Any, timeout_s: float | None = None) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as e:
            raise rpc_error(e) from None

    # -- gRPC: mmesh.ModelMesh --------------------------------------------------------------------------
    def register(
        self,
        model_id: str,
        type_: str,
        path: str,
        key: str = "",
        load: bool = False,
        sync: bool = False,
        timeout_s: float | None = None,
    ) -> mm.ModelStatusInfo:
        request = mm.RegisterModelRequest(
            modelId=model_id,
            modelInfo=mm.ModelInfo(type=type_, path=path, key=key),
            loadNow=load,
            sync=sync,
        )
        return self._call("registerModel", request, timeout_s)

    def unregister(self, model_id: str) -> None:
        self._call("unregisterModel", mm.UnregisterModelRequest(modelId=model_id))

    def status(self, model_id: str) -> mm.ModelStatusInfo:
        return self._call("getModelStatus", mm.GetStatusRequest(modelId=model_id))

    def ensure_loaded(
        self, model_id: str, sync: bool = True, timeout_s: float | None = None
    ) -> mm.ModelStatusInfo:
        return self._call("ensureLoaded", mm.EnsureLoadedRequest(modelId=model_id, sync=sync), timeout_s)

    def set_vmodel(self, request: mm.SetVModelRequest, timeout_s: float | None = None) -> mm.VModelStatusInfo:
        return self._call("setVModel", request, timeout_s)

    def vmodel_status(self, vmodel_id: str, owner: str = "") -> mm.VModelStatusInfo:
        return self._call("getVModelStatus", mm.GetVModelStatusRequest(vModelId=vmodel_id, owner=owner))

    def delete_vmodel(self, vmodel_id: str, owner: str = "") -> None:
        self._call("deleteVModel", mm.DeleteVModelRequest(vModelId=vmodel_id, owner=owner))

    # -- REST: /mesh/* ------------------------------------------------------------------------------------
    def get_json(self, path: str, query: Mapping[str, str | int | None] | None = None) -> Any:
        """GET ``path`` on the REST endpoint and decode its JSON; the error JSON's message on failure."""
        params = {k: str(v) for k, v in (query or {}).items() if v is not None and v != ""}
        url = rest_base(self.rest, self.tls is not None) + path
        url += "?" + urllib.parse.urlencode(params) if params else ""
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        context = self.tls.ssl_context() if self.tls is not None else None
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=context) as reply:
                body = reply.read()
        except urllib.error.HTTPError as e:
            raise CliError(status_of_http(e.code), f"{url}: {error_message(e.read(), e.reason)}") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, TimeoutError):
                raise CliError("DEADLINE_EXCEEDED", f"{url}: no answer in {self.timeout_s:g}s") from None
            raise CliError("UNAVAILABLE", f"{url}: {reason}", UNREACHABLE) from None
        except TimeoutError:
            raise CliError("DEADLINE_EXCEEDED", f"{url}: no answer in {self.timeout_s:g}s") from None
        except OSError as e:  # reset mid-answer and the like
            raise CliError("UNAVAILABLE", f"{url}: {e}") from None
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            raise CliError("INTERNAL", f"{url}: the answer is not JSON: {body[:100]!r}") from None

    def models(self, state: str | None = None, pod: str | None = None, limit: int | None = None) -> list[Any]:
        return cast(list[Any], self.get_json("/mesh/models", {"state": state, "pod": pod, "limit": limit}))

    def pools(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.get_json("/mesh/pools"))

    def mesh_status(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.get_json("/mesh/status"))


def error_message(body: bytes, reason: object) -> str:
    """The ``{"error": ...}`` of a mesh error answer, else the body's start, else the HTTP reason."""
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return cast(str, document["error"])
    text = body[:200].decode("utf-8", "replace").strip()
    return text or str(reason)
