"""The store against a real etcd with TLS (client certificates) and users: what works, what is refused and
how clearly, a restart (etcd forgets its tokens), a user held to its prefix, failover to a second member."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from harness.cluster import EtcdSecurity, EtcdServer
from harness.processes import free_port
from mesh.errors import StoreError
from mesh.registry.etcd import EtcdConfig
from mesh.registry.records import InstanceRecord, ModelRecord
from mesh.registry.store import EtcdStore
from tests.test_store import watched
from tests.test_tls_units import issue

pytestmark = pytest.mark.integration

PASSWORD = "etcd-pass-7f3a9c"


def secured_etcd(root: Path, granted_prefix: str = "") -> tuple[EtcdServer, EtcdSecurity]:
    ca = trustme.CA()
    server = issue(ca, root / "certs", "etcd-server", "127.0.0.1", "localhost")
    client = issue(ca, root / "certs", "etcd-client", "mesh-pod")
    security = EtcdSecurity(
        ca=Path(server.trust),
        server_cert=Path(server.cert),
        server_key=Path(server.key),
        client_cert=Path(client.cert),
        client_key=Path(client.key),
        username="mesh",
        password=PASSWORD,
        granted_prefix=granted_prefix,
    )
    return EtcdServer.start(root / "etcd", security=security), security


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[tuple[EtcdServer, EtcdConfig]]:
    etcd, _ = secured_etcd(tmp_path, granted_prefix="mm/")
    try:
        yield etcd, EtcdConfig.from_file(etcd.connection_file(tmp_path / "etcd_connection"))
    finally:
        etcd.stop()


@contextlib.asynccontextmanager
async def store_of(config: EtcdConfig, prefix: str = "mm/svc/") -> AsyncIterator[EtcdStore]:
    store = EtcdStore(config, prefix, timeout_s=3.0)
    try:
        yield store
    finally:
        await store.close()


async def test_tls_and_a_user_register_watch_and_lease(
    secure: tuple[EtcdServer, EtcdConfig],
) -> None:
    etcd, config = secure
    assert config.tls and config.username == "mesh"
    async with store_of(config) as store, watched(store) as table:
        _, revision = await store.create_model("m1", ModelRecord(type="sklearn", path="/m1"))
        await table.wait_for_revision(revision)
        assert table.model("m1") == ModelRecord(type="sklearn", path="/m1")
        await store.register_instance(
            "pod-a", InstanceRecord(address="127.0.0.1:1", capacity_bytes=1 << 20), ttl_s=5
        )
        assert await store.campaign("pod-a")
    # what the store wrote is there for etcd's own client too, under the granted prefix
    assert "mm/svc/registry/m1" in etcd.etcdctl(
        "--user", f"mesh:{PASSWORD}", "get", "--prefix", "mm/", "--keys-only"
    )


async def test_a_wrong_password_is_refused_clearly_without_repeating_it(
    secure: tuple[EtcdServer, EtcdConfig],
) -> None:
    _, config = secure
    async with store_of(replace(config, password="not-the-password")) as store:
        with pytest.raises(StoreError) as refused:
            await store.get_model("m1")
    assert "refused the credentials of user 'mesh'" in str(refused.value)
    assert "not-the-password" not in str(refused.value)


async def test_without_a_client_certificate_or_without_tls_etcd_refuses(
    secure: tuple[EtcdServer, EtcdConfig],
) -> None:
    _, config = secure
    async with store_of(replace(config, client_cert_pem=None, client_key_pem=None)) as store:
        with pytest.raises(StoreError, match="UNAVAILABLE"):
            await store.get_model("m1")
    async with store_of(replace(config, tls=False)) as store:
        with pytest.raises(StoreError, match="UNAVAILABLE"):
            await store.get_model("m1")
    # a client certificate from another CA
    stranger = trustme.CA().issue_cert("mesh-pod")
    forged = replace(
        config,
        client_cert_pem=stranger.cert_chain_pems[0].bytes(),
        client_key_pem=stranger.private_key_pem.bytes(),
    )
    async with store_of(forged) as store:
        with pytest.raises(StoreError, match="UNAVAILABLE"):
            await store.get_model("m1")


async def test_a_user_held_to_its_prefix_cannot_write_elsewhere(
    secure: tuple[EtcdServer, EtcdConfig],
) -> None:
    _, config = secure
    async with store_of(config, prefix="other/svc/") as store:
        with pytest.raises(StoreError, match="PERMISSION_DENIED"):
            await store.create_model("m1", ModelRecord(type="t"))


async def test_after_an_etcd_restart_the_token_is_renewed_and_the_watch_resumes(
    secure: tuple[EtcdServer, EtcdConfig],
) -> None:
    etcd, config = secure
    async with store_of(config) as store, watched(store) as table:
        _, revision = await store.create_model("before", ModelRecord(type="t"))
        await table.wait_for_revision(revision)
        etcd.restart()  # etcd's simple tokens are in memory: the store's token is gone with it
        for _ in range(100):  # etcd answers UNAVAILABLE until it has its leader again
            try:
                _, revision = await store.create_model("after", ModelRecord(type="t"))
                break
            except StoreError as e:
                assert "UNAUTHENTICATED" not in str(e) and "token" not in str(e)
                await asyncio.sleep(0.1)
        await table.wait_for_revision(revision, timeout_s=15)
        assert table.model("after") is not None and table.model("before") is not None


async def test_an_unreachable_member_is_left_for_the_next(etcd: EtcdServer) -> None:
    dead = f"127.0.0.1:{free_port()}"
    config = EtcdConfig.from_endpoints(f"{dead},{etcd.endpoint}")
    for _ in range(4):  # whichever member a connection starts on, reads and writes reach the live one
        async with store_of(config) as store:
            assert await store.get_model("m1") == (None, 0)
            await store.update_model("m1", lambda r: ModelRecord(type="t"))
            assert (await store.get_model("m1"))[0] == ModelRecord(type="t")
            await store.update_model("m1", lambda r: None)


async def test_rotated_client_certificates_are_used_without_a_restart(tmp_path: Path) -> None:
    """The connection file's certificates are replaced: first by one etcd does not trust (calls fail once
    the store has read it, which shows it does), then by a good one again (calls work again), one store."""
    etcd, security = secured_etcd(tmp_path)
    try:
        config = EtcdConfig.from_file(etcd.connection_file(tmp_path / "etcd_connection"))
        good_cert, good_key = security.client_cert.read_bytes(), security.client_key.read_bytes()
        store = EtcdStore(config, "mm/svc/", timeout_s=2.0, reload_interval_s=0.2)
        try:
            await store.create_model("m1", ModelRecord(type="t"))
            stranger = trustme.CA().issue_cert("mesh-pod")
            stranger.cert_chain_pems[0].write_to_path(str(security.client_cert))
            stranger.private_key_pem.write_to_path(str(security.client_key))

            async def reads() -> bool:
                try:
                    await store.get_model("m1")
                    return True
                except StoreError:
                    return False

            await _eventually(lambda: reads(), False)
            security.client_cert.write_bytes(good_cert)
            security.client_key.write_bytes(good_key)
            await _eventually(lambda: reads(), True)
            assert (await store.get_model("m1"))[0] == ModelRecord(type="t")
        finally:
            await store.close()
    finally:
        etcd.stop()


async def _eventually(check: Callable[[], Awaitable[bool]], want: bool, timeout_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while await check() != want:
        assert asyncio.get_running_loop().time() < deadline, f"never {want}"
        await asyncio.sleep(0.1)
