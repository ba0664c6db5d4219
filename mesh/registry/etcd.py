"""One connection to etcd: the channel (plaintext or TLS), the auth token, the members to fail over to.

aetcd 1.0 opens only plaintext channels and never renews its auth token (etcd's simple tokens die with
the etcd process that issued them), so the store talks to etcd's gRPC services through this class, with
aetcd's generated stubs and messages. Connection settings follow ModelMesh's etcd JSON file (``KV_STORE=
etcd:/path``): endpoints, userid, password, root_prefix, certificate(_file), client_key(_file),
client_certificate(_file), override_authority.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from aetcd import rpc

from mesh.errors import StoreError

log = logging.getLogger(__name__)

# gRPC backs off reconnecting up to two minutes by default: after an etcd outage a pod would keep a stale view
# (its watch not re-established) for that long. Retry within a second instead.
ETCD_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # a watch or snapshot page of large records must not hit gRPC's 4 MiB default
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)


class UncertainWrite(StoreError):
    """A transaction's member went away before it answered: it may or may not have been applied."""


class WatchCompacted(StoreError):
    """The watch's start revision is older than etcd's compaction: read a snapshot again."""


@dataclass(frozen=True)
class EtcdConfig:
    """Where etcd is and how to prove who we are. The password never appears in a repr."""

    endpoints: tuple[str, ...]  # host:port each
    tls: bool = False
    ca_pem: bytes | None = None  # None with tls: the system's roots
    client_cert_pem: bytes | None = None
    client_key_pem: bytes | None = field(default=None, repr=False)
    username: str = ""
    password: str = field(default="", repr=False)
    root_prefix: str = ""
    authority: str = ""  # the name etcd's certificate must carry, when it is not the endpoint's host
    files: tuple[str, ...] = ()  # the connection file and the files it names: read again when they change

    @classmethod
    def from_endpoints(cls, raw: str) -> EtcdConfig:
        """``host:port[,host:port...]``, each optionally ``http://`` or ``https://``."""
        endpoints, schemes = split_endpoints(raw)
        return cls(endpoints=endpoints, tls="https" in schemes)

    @classmethod
    def from_kv_store(cls, value: str) -> EtcdConfig:
        """ModelMesh's ``KV_STORE`` value: ``etcd:/path/to/etcd_connection`` (or the bare path)."""
        return cls.from_file(value.removeprefix("etcd:"))

    @classmethod
    def from_file(cls, path: str | Path) -> EtcdConfig:
        """ModelMesh's etcd connection JSON; relative file names are beside the JSON file."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"etcd config {path}: {e}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("endpoints"), str):
            raise ValueError(f'etcd config {path}: expected a JSON object with "endpoints": "host:port,..."')

        files = [str(path)]

        def pem(inline: str, file_key: str) -> bytes | None:
            if isinstance(doc.get(inline), str):
                return str(doc[inline]).encode()
            if isinstance(doc.get(file_key), str):
                files.append(str(path.parent / str(doc[file_key])))
                try:
                    return (path.parent / str(doc[file_key])).read_bytes()
                except OSError as e:
                    raise ValueError(f"etcd config {path}: {file_key}: {e}") from None
            return None

        endpoints, schemes = split_endpoints(doc["endpoints"])
        ca = pem("certificate", "certificate_file")
        cert = pem("client_certificate", "client_certificate_file")
        key = pem("client_key", "client_key_file")
        if (cert is None) != (key is None):
            raise ValueError(f"etcd config {path}: client_certificate and client_key go together")
        username, password = str(doc.get("userid") or ""), str(doc.get("password") or "")
        if bool(username) != bool(password):
            raise ValueError(f"etcd config {path}: userid and password go together")
        return cls(
            endpoints=endpoints,
            tls="https" in schemes or ca is not None or cert is not None,
            ca_pem=ca,
            client_cert_pem=cert,
            client_key_pem=key,
            username=username,
            password=password,
            root_prefix=str(doc.get("root_prefix") or "").strip("/"),
            authority=str(doc.get("override_authority") or ""),
            files=tuple(files),
        )

    def stamp(self) -> tuple[float, ...]:
        """The modification times of its files (a changed stamp: read the connection file again)."""
        stamps = []
        for name in self.files:
            try:
                stamps.append(os.stat(name).st_mtime)
            except OSError:
                stamps.append(-1.0)
        return tuple(stamps)


def split_endpoints(raw: str) -> tuple[tuple[str, ...], set[str]]:
    endpoints: list[str] = []
    schemes: set[str] = set()
    for item in filter(None, (part.strip() for part in raw.split(","))):
        scheme, sep, rest = item.partition("://")
        if sep:
            if scheme not in ("http", "https"):
                raise ValueError(f"etcd endpoint {item!r}: only http:// or https://")
            schemes.add(scheme)
            item = rest.rstrip("/")
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"etcd endpoint {item!r} is not host:port")
        endpoints.append(item)
    if not endpoints:
        raise ValueError("no etcd endpoint")
    if len(schemes) > 1:
        raise ValueError("etcd endpoints mix http:// and https://")
    return tuple(endpoints), schemes


def created_at(key: bytes, revision: int) -> Any:
    """Compare: the key was created at ``revision`` (0: it does not exist)."""
    return rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=key, create_revision=revision)


def modified_at(key: bytes, revision: int) -> Any:
    """Compare: the key was last written at ``revision`` (0: it does not exist)."""
    return rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, key=key, mod_revision=revision)


T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...] | None


class EtcdConnection:
    """Unary calls and streams to etcd, with the token attached and renewed, and failover between members.

    A call that finds its member unreachable moves the next calls to the next member. Reads and writes
    that may be repeated are tried again there (``_call``); a transaction is not (it may have been applied)
    and raises UncertainWrite. A call refused for an expired or unknown token is retried once with a new
    token (etcd rejected it before doing anything).
    """

    def __init__(self, config: EtcdConfig, timeout_s: float = 5.0, reload_interval_s: float = 10.0) -> None:
        self.config = config
        self._timeout_s = timeout_s
        self._reload_interval_s = reload_interval_s
        self._stamp = config.stamp()
        self._checked_at = time.monotonic()
        self._member = random.randrange(len(config.endpoints))  # pods spread over the members
        self._channel: grpc.aio.Channel | None = None
        self._token: str | None = None
        self._auth_lock: asyncio.Lock | None = None

    @property
    def endpoint(self) -> str:
        return self.config.endpoints[self._member]

    def _open(self) -> grpc.aio.Channel:
        if self.config.files and time.monotonic() - self._checked_at >= self._reload_interval_s:
            self._reload_if_changed()
        if self._channel is None:
            options: list[tuple[str, Any]] = list(ETCD_CHANNEL_OPTIONS)
            if not self.config.tls:
                self._channel = grpc.aio.insecure_channel(self.endpoint, options=options)
            else:
                if self.config.authority:
                    options.append(("grpc.ssl_target_name_override", self.config.authority))
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=self.config.ca_pem,
                    private_key=self.config.client_key_pem,
                    certificate_chain=self.config.client_cert_pem,
                )
                self._channel = grpc.aio.secure_channel(self.endpoint, credentials, options=options)
        return self._channel

    def _next_member(self, failed: grpc.aio.Channel) -> None:
        """Leave an unreachable member (once per failed channel, however many calls saw it fail)."""
        if len(self.config.endpoints) < 2 or failed is not self._channel:
            return
        self._retire_channel()
        self._member = (self._member + 1) % len(self.config.endpoints)
        self._token = None  # simple tokens are per member
        log.warning("etcd member unreachable; trying %s", self.endpoint)

    def _retire_channel(self) -> None:
        """The next call opens a new channel; calls in flight finish on this one, closed after a grace."""
        if self._channel is not None:
            old, self._channel = self._channel, None
            asyncio.get_running_loop().create_task(old.close(grace=self._timeout_s))

    def _reload_if_changed(self) -> None:
        """Rotated certificates (a Kubernetes secret rewritten): the next calls go on a channel made from
        them; calls in flight finish on the old one. A half-written rotation is read at the next check."""
        self._checked_at = time.monotonic()
        stamp = self.config.stamp()
        if stamp == self._stamp:
            return
        try:
            config = EtcdConfig.from_file(self.config.files[0])
        except ValueError as e:
            log.warning("etcd connection file changed but cannot be read yet: %s", e)
            return
        self._stamp = stamp
        self.config = config
        self._member %= len(config.endpoints)
        self._token = None
        self._retire_channel()
        log.info("etcd connection settings reloaded")

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    # -- authentication -------------------------------------------------------------
    async def _metadata(self) -> Metadata:
        if not self.config.username:
            return None
        if self._token is None:
            if self._auth_lock is None:
                self._auth_lock = asyncio.Lock()
            async with self._auth_lock:
                if self._token is None:
                    self._token = await self._authenticate()
        return (("token", self._token),)

    async def _authenticate(self) -> str:
        channel = self._open()
        request = rpc.AuthenticateRequest(name=self.config.username, password=self.config.password)
        try:
            reply = await rpc.AuthStub(channel).Authenticate(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                self._next_member(channel)
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                # etcd's "authentication failed": never repeat what was sent
                raise StoreError(f"etcd refused the credentials of user {self.config.username!r}") from None
            raise StoreError(f"{e.code().name}: {e.details()}", e.code()) from None
        return str(reply.token)

    # -- calls ------------------------------------------------------------------------
    async def _call(self, run: Callable[[grpc.aio.Channel, Metadata], Awaitable[T]], safe: bool) -> T:
        """``run`` on the current member, with the token renewed once if etcd forgot it. A member found
        unreachable moves the next call to the next member; a ``safe`` call (a read, or a write whose
        repetition changes nothing) is tried again there, once per member. An unsafe one raises
        UncertainWrite: it may have been applied, and only the caller can tell by reading."""
        tries = len(self.config.endpoints) if safe else 1
        renewed = False
        while True:
            channel = self._open()
            try:
                return await run(channel, await self._metadata())
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED and self.config.username and not renewed:
                    renewed = True  # etcd restarted (its tokens went with it) or the token expired
                    self._token = None
                    continue
                # a member gone (UNAVAILABLE), or one waiting for a leader that is gone (its proposals
                # wait until etcd's own request timeout, past ours): another try may find a leader
                if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    if e.code() == grpc.StatusCode.UNAVAILABLE:
                        self._next_member(channel)
                    tries -= 1
                    if tries > 0:
                        continue
                    if not safe:
                        raise UncertainWrite(f"{e.code().name}: {e.details()}", e.code()) from e
                raise StoreError(f"{e.code().name}: {e.details()}", e.code()) from e

    async def _unary(self, method: Callable[[grpc.aio.Channel], Any], request: Any, safe: bool = True) -> Any:
        async def run(channel: grpc.aio.Channel, metadata: Metadata) -> Any:
            return await method(channel)(request, timeout=self._timeout_s, metadata=metadata)

        return await self._call(run, safe)

    async def range(self, request: Any) -> Any:
        return await self._unary(lambda c: rpc.KVStub(c).Range, request)

    async def txn(self, request: Any) -> Any:
        """A transaction: never repeated by this class (see UncertainWrite)."""
        return await self._unary(lambda c: rpc.KVStub(c).Txn, request, safe=False)

    async def put(self, request: Any) -> Any:
        """A plain put (the same value again changes nothing the mesh reads)."""
        return await self._unary(lambda c: rpc.KVStub(c).Put, request)

    async def get(self, key: bytes) -> Any | None:
        """The key's KeyValue, or None."""
        reply = await self.range(rpc.RangeRequest(key=key))
        return reply.kvs[0] if reply.kvs else None

    async def grant_lease(self, ttl_s: int) -> int:
        # repeated, a grant leaves an unused lease behind, which expires after its TTL
        reply = await self._unary(lambda c: rpc.LeaseStub(c).LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl_s))
        return int(reply.ID)

    async def revoke_lease(self, lease_id: int) -> None:
        await self._unary(lambda c: rpc.LeaseStub(c).LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease_id))

    async def refresh_lease(self, lease_id: int) -> int:
        """One keep-alive; returns the TTL etcd now gives the lease (0 or less: the lease is gone)."""

        async def run(channel: grpc.aio.Channel, metadata: Metadata) -> Any:
            stream = rpc.LeaseStub(channel).LeaseKeepAlive(metadata=metadata, timeout=self._timeout_s)
            try:
                await stream.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                return await stream.read()
            finally:
                stream.cancel()

        reply = await self._call(run, safe=True)
        if reply is grpc.aio.EOF:
            raise StoreError("etcd closed the keep-alive stream")
        return int(reply.TTL)

    async def watch(self, key: bytes, range_end: bytes, start_revision: int) -> AsyncIterator[Any]:
        """Events on [key, range_end) from ``start_revision`` on, until the stream breaks (StoreError)."""
        channel = self._open()
        stream = rpc.WatchStub(channel).Watch(metadata=await self._metadata())
        try:
            create = rpc.WatchCreateRequest(key=key, range_end=range_end, start_revision=start_revision)
            await stream.write(rpc.WatchRequest(create_request=create))
            while True:
                reply = await stream.read()
                if reply is grpc.aio.EOF:
                    raise StoreError("etcd ended the watch")
                if reply.compact_revision:
                    raise WatchCompacted(
                        f"revision {start_revision} compacted (now {reply.compact_revision})"
                    )
                if reply.canceled:
                    raise StoreError(f"etcd cancelled the watch: {reply.cancel_reason}")
                for event in reply.events:
                    yield event
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                self._token = None
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                self._next_member(channel)
            raise StoreError(f"{e.code().name}: {e.details()}", e.code()) from e
        finally:
            stream.cancel()


PUT = rpc.Event.PUT
