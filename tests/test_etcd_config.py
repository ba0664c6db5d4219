"""ModelMesh's etcd connection file and the endpoint list, parsed without etcd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mesh.process.settings import parse_settings
from mesh.registry.etcd import EtcdConfig


def write(directory: Path, doc: object) -> Path:
    path = directory / "etcd_connection"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("raw", "endpoints", "tls"),
    [
        ("127.0.0.1:2379", ("127.0.0.1:2379",), False),
        ("http://a:1,http://b:2", ("a:1", "b:2"), False),
        ("https://etcd.example:2379/", ("etcd.example:2379",), True),
        (" a:1 , b:2 ,", ("a:1", "b:2"), False),
        ("[::1]:2379", ("[::1]:2379",), False),
    ],
)
def test_endpoint_lists(raw: str, endpoints: tuple[str, ...], tls: bool) -> None:
    config = EtcdConfig.from_endpoints(raw)
    assert config.endpoints == endpoints
    assert config.tls is tls


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("", "no etcd endpoint"),
        ("etcd", "is not host:port"),
        ("a:port", "is not host:port"),
        ("unix://sock:1", "only http:// or https://"),
        ("http://a:1,https://b:2", "mix http:// and https://"),
    ],
)
def test_endpoint_lists_refused(raw: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        EtcdConfig.from_endpoints(raw)


def test_the_connection_file_with_certificate_files_beside_it(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(b"CA")
    (tmp_path / "client.pem").write_bytes(b"CERT")
    (tmp_path / "client.key").write_bytes(b"KEY")
    path = write(
        tmp_path,
        {
            "endpoints": "https://10.0.0.1:2379,https://10.0.0.2:2379",
            "userid": "mesh",
            "password": "s3cret-pass",
            "root_prefix": "/tenant-a/",
            "certificate_file": "ca.pem",
            "client_certificate_file": "client.pem",
            "client_key_file": str(tmp_path / "client.key"),
            "override_authority": "etcd.internal",
        },
    )
    config = EtcdConfig.from_file(path)
    assert config.endpoints == ("10.0.0.1:2379", "10.0.0.2:2379")
    assert config.tls
    assert (config.ca_pem, config.client_cert_pem, config.client_key_pem) == (b"CA", b"CERT", b"KEY")
    assert (config.username, config.password) == ("mesh", "s3cret-pass")
    assert config.root_prefix == "tenant-a"
    assert config.authority == "etcd.internal"
    assert "s3cret-pass" not in repr(config) and "KEY" not in repr(config)


def test_inline_certificates_turn_tls_on(tmp_path: Path) -> None:
    config = EtcdConfig.from_file(write(tmp_path, {"endpoints": "10.0.0.1:2379", "certificate": "PEM"}))
    assert config.tls and config.ca_pem == b"PEM"
    plain = EtcdConfig.from_file(write(tmp_path, {"endpoints": "10.0.0.1:2379"}))
    assert not plain.tls and plain.username == ""


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ([], "expected a JSON object"),
        ({"userid": "x"}, "expected a JSON object"),
        ({"endpoints": "a:1", "userid": "mesh"}, "userid and password go together"),
        ({"endpoints": "a:1", "client_certificate": "C"}, "client_certificate and client_key go together"),
        ({"endpoints": "a:1", "certificate_file": "missing.pem"}, "certificate_file"),
        ({"endpoints": "nowhere"}, "is not host:port"),
    ],
)
def test_connection_files_refused(tmp_path: Path, doc: object, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        EtcdConfig.from_file(write(tmp_path, doc))


def test_a_password_in_a_refused_file_is_not_repeated(tmp_path: Path) -> None:
    path = write(tmp_path, {"endpoints": "a:1", "userid": "", "password": "hunter2-pass"})
    with pytest.raises(ValueError) as refused:
        EtcdConfig.from_file(path)
    assert "hunter2-pass" not in str(refused.value)


def test_settings_take_the_connection_file_over_the_endpoints(tmp_path: Path) -> None:
    path = write(tmp_path, {"endpoints": "https://10.0.0.9:2379", "userid": "u", "password": "p"})
    settings = parse_settings(["--etcd-config", f"etcd:{path}"], env={})
    assert settings.etcd_connection.endpoints == ("10.0.0.9:2379",)
    from_env = parse_settings([], env={"KV_STORE": f"etcd:{path}"})
    assert from_env.etcd_connection.username == "u"
    assert parse_settings(["--etcd", "a:1,b:2"], env={}).etcd_connection.endpoints == ("a:1", "b:2")


def test_settings_refuse_an_unreadable_connection_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--etcd-config", f"etcd:{tmp_path / 'absent'}"], env={})
    assert "--etcd-config" in capsys.readouterr().err
