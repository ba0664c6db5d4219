"""TLS for the pod's ports and its calls to peers, from PEM files (ModelMesh's ``MM_TLS_*`` settings).

External ports (gRPC through the HTTP/2 front or grpc.aio, REST, metrics) take a key/certificate pair
and optionally verify clients (``MM_TLS_CLIENT_AUTH``: NONE, OPTIONAL, REQUIRE, against
``MM_TLS_TRUST_CERT_PATH``).
Internal ports always verify: a peer must present a pod certificate signed by the internal trust (by default
the same files), so only mesh pods can forward to a pod or set ``mm-internal-*`` headers. Calls to peers
present this pod's certificate and verify the peer's.

Files are read again when they change (Kubernetes rotates mounted secrets): ``TlsFiles.changed`` compares
their modification times, and every context built here has a ``reload`` that loads them into the same
``ssl.SSLContext``; new handshakes use the new certificate, established connections keep theirs. grpc.aio
servers get dynamic credentials that look at the files on each handshake.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass, field
from enum import StrEnum

import grpc

log = logging.getLogger(__name__)
ALPN_H2 = ("h2",)


class ClientAuth(StrEnum):
    NONE = "NONE"
    OPTIONAL = "OPTIONAL"
    REQUIRE = "REQUIRE"


class TlsError(ValueError):
    """TLS settings that cannot work (a missing file, a key that does not match, a trust that is needed)."""


@dataclass
class TlsFiles:
    """A PEM certificate chain, its private key and (optionally) the CA bundle the other side is checked
    against. ``changed()`` says whether any of them was rewritten since the last look."""

    cert: str
    key: str
    trust: str = ""
    _seen: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def paths(self) -> tuple[str, ...]:
        return tuple(p for p in (self.cert, self.key, self.trust) if p)

    def stamp(self) -> tuple[float, ...]:
        """The files' modification times now. Taken before they are read: a rotation that lands while they
        are read then shows as a change at the next look, instead of passing for what was loaded."""
        try:
            return tuple(os.stat(p).st_mtime_ns for p in self.paths())
        except OSError:
            return self._seen  # mid-rotation (a file replaced by a symlink swap): look again next time

    def changed(self) -> bool:
        """Whether the files differ from what was last loaded (``loaded()``)."""
        return self.stamp() != self._seen

    def loaded(self, stamp: tuple[float, ...]) -> None:
        """What was loaded: the files as ``stamp`` (taken before reading them) found them."""
        self._seen = stamp

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        try:
            with open(self.cert, "rb") as cert, open(self.key, "rb") as key:
                chain, private = cert.read(), key.read()
            trust = None
            if self.trust:
                with open(self.trust, "rb") as bundle:
                    trust = bundle.read()
        except OSError as e:
            raise TlsError(f"cannot read {e.filename}: {e.strerror}") from None
        return chain, private, trust


class ReloadingContext:
    """An ``ssl.SSLContext`` over ``files``, loaded again by ``reload()``."""

    def __init__(self, context: ssl.SSLContext, files: TlsFiles) -> None:
        self.context = context
        self.files = TlsFiles(files.cert, files.key, files.trust)  # its own record of what it loaded
        stamp = self.files.stamp()
        self._load()
        self.files.loaded(stamp)
        self._failed: tuple[float, ...] = ()

    def _load(self) -> None:
        try:
            self.context.load_cert_chain(self.files.cert, self.files.key)
            if self.files.trust:
                self.context.load_verify_locations(self.files.trust)
        except (OSError, ssl.SSLError) as e:
            raise TlsError(f"TLS files {', '.join(self.files.paths())}: {e}") from None

    def reload(self) -> bool:
        """Load the files again if they changed; False (and the old certificate kept) if they did not or are
        half written: a rotation that writes the certificate, then the key, is picked up once both are in."""
        if not self.files.changed():
            return False
        stamp = self.files.stamp()
        try:
            self._load()
        except TlsError as e:
            if stamp != self._failed:  # once per state of the files, not every interval
                log.error("certificate reload failed, keeping the current one: %s", e)
                self._failed = stamp
            return False
        self.files.loaded(stamp)
        log.info("certificates reloaded from %s", ", ".join(self.files.paths()))
        return True


def server_context(files: TlsFiles, client_auth: ClientAuth, alpn: tuple[str, ...] = ()) -> ReloadingContext:
    """A listener's context: TLS 1.2+, ALPN ``alpn`` if given, clients verified as ``client_auth`` says."""
    if client_auth is not ClientAuth.NONE and not files.trust:
        raise TlsError(
            f"client authentication {client_auth.value} needs a trust bundle (MM_TLS_TRUST_CERT_PATH)"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = {
        ClientAuth.NONE: ssl.CERT_NONE,
        ClientAuth.OPTIONAL: ssl.CERT_OPTIONAL,
        ClientAuth.REQUIRE: ssl.CERT_REQUIRED,
    }[client_auth]
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return ReloadingContext(context, files)


def client_context(files: TlsFiles, alpn: tuple[str, ...] = ()) -> ReloadingContext:
    """A context for calls to peers: this pod's certificate presented, the peer's verified by the trust."""
    if not files.trust:
        raise TlsError("calls to peers need a trust bundle to verify them against")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return ReloadingContext(context, files)


def grpc_server_credentials(files: TlsFiles, client_auth: ClientAuth) -> grpc.ServerCredentials:
    """Credentials for a grpc.aio port that read the files again on the first handshake after they change."""
    if client_auth is not ClientAuth.NONE and not files.trust:
        raise TlsError(f"client authentication {client_auth.value} needs a trust bundle")
    watched = TlsFiles(files.cert, files.key, files.trust)

    def configuration() -> grpc.ServerCertificateConfiguration:
        chain, key, trust = read_checked(watched)
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=trust)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        if not watched.changed():
            return None
        try:
            return configuration()
        except TlsError as e:
            log.error("certificate reload failed, keeping the current one: %s", e)
            return None

    # grpc verifies an offered client certificate either way; REQUIRE also refuses a client without one
    return grpc.dynamic_ssl_server_credentials(
        configuration(), fetch, require_client_authentication=client_auth is ClientAuth.REQUIRE
    )


def read_checked(files: TlsFiles) -> tuple[bytes, bytes, bytes | None]:
    """The files' bytes, once the key is known to fit the certificate, marked as loaded.

    The pair is checked on disk (the ssl module reads only files), so the bytes are read again after the
    check: bytes that changed meanwhile were caught mid-rotation (a new key beside the old certificate) and
    are refused, to be read again at the next look."""
    stamp = files.stamp()
    read = files.read()
    _check_pair(files)
    if files.read() != read:
        raise TlsError(f"TLS files {', '.join(files.paths())} changed while they were read")
    files.loaded(stamp)
    return read


def _check_pair(files: TlsFiles) -> None:
    """The key is the certificate's (grpc would find out only at the next handshake, and fail it)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as e:
        raise TlsError(f"the key does not fit the certificate: {e}") from None


class ReloadingChannelCredentials:
    """Credentials for grpc.aio channels to peers: this pod's certificate, the peer's verified.

    grpc reads a channel's credentials once, when the channel is made, so ``reload()`` makes new ones
    and counts a ``generation``: a channel made with an older one is replaced for new calls (``PeerPool``),
    which then present the rotated certificate and trust the rotated authority."""

    def __init__(self, files: TlsFiles) -> None:
        if not files.trust:
            raise TlsError("calls to peers need a trust bundle to verify them against")
        self.files = TlsFiles(files.cert, files.key, files.trust)  # its own record of what it loaded
        self.generation = 0
        self.credentials = self._read()

    def _read(self) -> grpc.ChannelCredentials:
        chain, key, trust = read_checked(self.files)
        return grpc.ssl_channel_credentials(root_certificates=trust, private_key=key, certificate_chain=chain)

    def reload(self) -> bool:
        """New credentials if the files changed; False (the current ones kept) if not, or half written."""
        if not self.files.changed():
            return False
        try:
            self.credentials = self._read()
        except TlsError as e:
            log.error("certificate reload failed, keeping the current one: %s", e)
            return False
        self.generation += 1
        log.info("peer channel certificates reloaded from %s", ", ".join(self.files.paths()))
        return True
