"""TLS contexts from PEM files (mesh/tls.py), against real handshakes on loopback with a CA of the test's own
(trustme): server auth, the three client-auth modes, peers' mutual TLS, reloading rotated files."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from pathlib import Path

import grpc
import pytest
import trustme
from cryptography import x509

from mesh.routing.peers import PeerPool
from mesh.tls import (
    ClientAuth,
    ReloadingChannelCredentials,
    TlsError,
    TlsFiles,
    client_context,
    read_checked,
    server_context,
)


def issue(ca: trustme.CA, directory: Path, name: str, *identities: str) -> TlsFiles:
    """A certificate for ``identities`` (default 127.0.0.1) signed by ``ca``, with ``ca`` as the trust."""
    directory.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert(*(identities or ("127.0.0.1",)))
    cert.private_key_pem.write_to_path(str(directory / f"{name}.key"))
    cert.cert_chain_pems[0].write_to_path(str(directory / f"{name}.pem"))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(directory / f"{name}.pem"), append=True)
    ca.cert_pem.write_to_path(str(directory / f"{name}-ca.pem"))
    return TlsFiles(
        str(directory / f"{name}.pem"), str(directory / f"{name}.key"), str(directory / f"{name}-ca.pem")
    )


async def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[str | None, dict | None]:  # type: ignore[type-arg]
    """Connect ``client`` to a server on ``server``: (the ALPN protocol, the certificate the server saw)."""
    seen: list[dict | None] = []  # type: ignore[type-arg]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("peercert"))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="127.0.0.1"
        )
        assert await reader.read() == b"ok"
        protocol = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.close()
        return protocol, seen[0] if seen else None
    finally:
        listener.close()
        await listener.wait_closed()


def plain_client(trust: str, alpn: tuple[str, ...] = ("h2",)) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=trust)
    context.set_alpn_protocols(list(alpn))
    return context


def test_server_auth_with_alpn_h2(tmp_path: Path) -> None:
    ca = trustme.CA()
    files = issue(ca, tmp_path, "pod")
    server = server_context(TlsFiles(files.cert, files.key), ClientAuth.NONE, alpn=("h2",))
    protocol, peer = asyncio.run(handshake(server.context, plain_client(files.trust)))
    assert protocol == "h2" and not peer


def test_client_auth_require_refuses_a_client_without_a_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    pod = issue(ca, tmp_path, "pod")
    server = server_context(pod, ClientAuth.REQUIRE)
    with pytest.raises((ssl.SSLError, ConnectionResetError, AssertionError)):
        asyncio.run(handshake(server.context, plain_client(pod.trust)))
    peer_client = client_context(issue(ca, tmp_path, "other-pod"))
    _, peer = asyncio.run(handshake(server.context, peer_client.context))
    assert peer and peer["subjectAltName"] == (("IP Address", "127.0.0.1"),)


def test_client_auth_optional_takes_both_but_never_a_stranger(tmp_path: Path) -> None:
    ca, stranger_ca = trustme.CA(), trustme.CA()
    pod = issue(ca, tmp_path, "pod")
    server = server_context(pod, ClientAuth.OPTIONAL)
    _, anonymous = asyncio.run(handshake(server.context, plain_client(pod.trust)))
    assert not anonymous
    _, known = asyncio.run(handshake(server.context, client_context(issue(ca, tmp_path, "client")).context))
    assert known
    stranger = client_context(issue(stranger_ca, tmp_path / "s", "client"))
    stranger.context.load_verify_locations(pod.trust)  # it trusts the server; the server does not trust it
    with pytest.raises((ssl.SSLError, ConnectionResetError, AssertionError)):
        asyncio.run(handshake(server.context, stranger.context))


def test_a_client_refuses_a_server_its_trust_did_not_sign(tmp_path: Path) -> None:
    server = server_context(issue(trustme.CA(), tmp_path, "pod"), ClientAuth.NONE)
    other = issue(trustme.CA(), tmp_path / "o", "client")
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(handshake(server.context, client_context(other).context))


def test_reload_serves_the_rotated_certificate_to_new_handshakes(tmp_path: Path) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    files = issue(old_ca, tmp_path, "pod")
    old_trust = tmp_path / "old-ca.pem"
    old_ca.cert_pem.write_to_path(str(old_trust))
    server = server_context(TlsFiles(files.cert, files.key), ClientAuth.NONE)
    assert not server.reload()  # nothing changed
    asyncio.run(handshake(server.context, plain_client(str(old_trust))))
    rotated = issue(new_ca, tmp_path, "pod")  # the same paths, rewritten
    assert server.reload()
    asyncio.run(handshake(server.context, plain_client(rotated.trust)))
    with pytest.raises(ssl.SSLCertVerificationError):  # what is served now is the new CA's
        asyncio.run(handshake(server.context, plain_client(str(old_trust))))


def test_a_half_written_rotation_keeps_the_current_certificate(tmp_path: Path) -> None:
    files = issue(trustme.CA(), tmp_path, "pod")
    server = server_context(TlsFiles(files.cert, files.key), ClientAuth.NONE)
    Path(files.cert).write_text("-----BEGIN CERTIFICATE-----\ntruncated")
    assert not server.reload()
    # the trust still verifies what is served: the old certificate
    Path(files.cert).unlink()
    asyncio.run(handshake(server.context, plain_client(files.trust)))


def test_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    files = issue(trustme.CA(), tmp_path, "pod")
    with pytest.raises(TlsError, match="trust"):
        server_context(TlsFiles(files.cert, files.key), ClientAuth.REQUIRE)
    with pytest.raises(TlsError, match="trust"):
        client_context(TlsFiles(files.cert, files.key))
    with pytest.raises(TlsError, match=r"missing\.pem"):
        server_context(TlsFiles(str(tmp_path / "missing.pem"), files.key), ClientAuth.NONE)
    with pytest.raises(TlsError):  # a key that is not the certificate's
        other = issue(trustme.CA(), tmp_path / "o", "other")
        server_context(TlsFiles(files.cert, other.key), ClientAuth.NONE)


def test_a_rotation_written_file_by_file_is_picked_up_once_complete(tmp_path: Path) -> None:
    ca = trustme.CA()
    files = issue(ca, tmp_path, "pod")
    server = server_context(TlsFiles(files.cert, files.key), ClientAuth.NONE)
    new = ca.issue_cert("127.0.0.1")
    new.cert_chain_pems[0].write_to_path(files.cert)  # the certificate first: it does not fit the old key
    assert not server.reload()
    new.private_key_pem.write_to_path(files.key)  # then the key
    assert server.reload()
    asyncio.run(handshake(server.context, plain_client(files.trust)))


def served_serial(context: ssl.SSLContext, trust: str) -> int:
    """The serial number of the certificate a new handshake with ``context`` gets."""
    seen: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def run() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=plain_client(trust))
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            seen.append(x509.load_der_x509_certificate(der).serial_number)
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(run())
    return seen[0]


def written_later(files: TlsFiles, seconds: int) -> None:
    """Modification times ``seconds`` ahead: a rewrite within one clock tick may keep the old ones."""
    later = time.time_ns() + seconds * 10**9
    for path in (files.cert, files.key):
        os.utime(path, ns=(later, later))


def test_a_rotation_that_lands_while_the_files_are_loaded_is_loaded_next(tmp_path: Path) -> None:
    ca = trustme.CA()
    files = issue(ca, tmp_path, "pod")
    server = server_context(TlsFiles(files.cert, files.key), ClientAuth.NONE)
    issue(ca, tmp_path, "pod")  # a first rotation ...
    written_later(files, 1)
    load = server._load

    def load_then_rotate_again() -> None:
        load()
        issue(ca, tmp_path, "pod")  # ... and a second one while the first is being loaded
        written_later(files, 2)

    server._load = load_then_rotate_again  # type: ignore[method-assign]
    assert server.reload()
    server._load = load  # type: ignore[method-assign]
    assert server.files.changed()  # the second rotation is still to load: it was not taken for loaded
    assert server.reload()
    newest = x509.load_pem_x509_certificate(Path(files.cert).read_bytes()).serial_number
    assert served_serial(server.context, files.trust) == newest


def test_grpc_credentials_refuse_files_caught_mid_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = trustme.CA()
    issued = issue(ca, tmp_path, "pod")
    files = TlsFiles(issued.cert, issued.key, issued.trust)
    old_chain = Path(files.cert).read_bytes()
    issue(ca, tmp_path, "pod")  # rotated: new key, new certificate
    real_read = TlsFiles.read
    reads = [0]

    def first_read_mid_rotation(self: TlsFiles) -> tuple[bytes, bytes, bytes | None]:
        chain, key, trust = real_read(self)
        reads[0] += 1
        return (old_chain if reads[0] == 1 else chain), key, trust  # the new key beside the old certificate

    monkeypatch.setattr(TlsFiles, "read", first_read_mid_rotation)
    with pytest.raises(TlsError, match="changed while they were read"):
        read_checked(files)  # the pair on disk fits, but what was read first does not
    assert files.changed()  # not marked as loaded: the next look reads them again
    chain, key, _ = read_checked(files)
    assert chain == Path(files.cert).read_bytes() and key == Path(files.key).read_bytes()
    assert not files.changed()


# -- grpc.aio channels to peers after a rotation ----------------------------------------------------------
ECHO = "/test.Echo/Call"


class _Echo(grpc.GenericRpcHandler):
    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return request

        return grpc.unary_unary_rpc_method_handler(echo)


async def _pod_port(files: TlsFiles, port: int = 0) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio port that takes only clients with a certificate from ``files``' trust (a pod's internal)."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_Echo(),))
    chain, key, trust = files.read()
    credentials = grpc.ssl_server_credentials([(key, chain)], trust or b"", require_client_auth=True)
    port = server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    return server, port


def test_peer_channels_present_the_rotated_certificate(tmp_path: Path) -> None:
    """After the pods' authority and certificates are rotated, a peer that trusts only the new authority
    still takes this pod's calls: they go on a new channel with the new certificate."""
    old_ca, new_ca = trustme.CA(), trustme.CA()
    server_files = issue(old_ca, tmp_path / "server", "pod-b")
    client_files = issue(old_ca, tmp_path / "client", "pod-a")
    credentials = ReloadingChannelCredentials(client_files)
    peers = PeerPool(1 << 20, credentials)

    async def run() -> None:
        server, port = await _pod_port(server_files)
        address = f"127.0.0.1:{port}"
        first = peers.channel(address)
        assert await first.unary_unary(ECHO)(b"before", timeout=10) == b"before"
        assert not credentials.reload()  # nothing changed: the same channel
        assert peers.channel(address) is first
        # the rotation: both pods' certificates and the trust, to a new authority; the peer restarts on it
        issue(new_ca, tmp_path / "server", "pod-b")
        issue(new_ca, tmp_path / "client", "pod-a")
        written_later(client_files, 1)
        await server.stop(None)
        server, _ = await _pod_port(server_files, port)
        try:
            with pytest.raises(grpc.aio.AioRpcError):  # the old certificate: the peer refuses it
                await first.unary_unary(ECHO)(b"old", timeout=5)
            assert credentials.reload() and credentials.generation == 1
            second = peers.channel(address)
            assert second is not first
            assert await second.unary_unary(ECHO)(b"after", timeout=10) == b"after"
        finally:
            await peers.close()
            await server.stop(None)

    asyncio.run(run())
