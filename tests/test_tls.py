"""HTTPS: the node's certificate (given, reused or generated) and `pyedge run --tls`."""

from __future__ import annotations

import datetime
import hashlib
import http.client
import ipaddress
import re
import socket
import ssl
import stat
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_server import cli, create_app
from edge_server.config import load_settings
from edge_server.security.tls import CertificateError, TlsFiles, ensure_certificate, server_tls
from pyedge import ConfigError
from pyedge.security import Role
from tests.conftest import free_port
from tests.test_run import Node, request, start_node, stop_node, wait_ready

FINGERPRINT_RE = re.compile(r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")


def make_pair(directory: Path, name: str, days: int = 30) -> tuple[Path, Path]:
    """A self-signed certificate and its key, valid from yesterday for `days` days."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def sha256_colons(der: bytes) -> str:
    """The fingerprint as browsers show it, computed independently of edge_server.security.tls."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --- ensure_certificate -------------------------------------------------------------------


def test_a_generated_certificate_names_the_node_and_is_its_own_ca(tmp_path: Path) -> None:
    files = ensure_certificate(tmp_path)

    assert files.cert == tmp_path / "tls" / "server.crt"
    assert files.key == tmp_path / "tls" / "server.key"
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert not [p.name for p in files.cert.parent.iterdir() if p.name.startswith(".")]
    certificate = load(files.cert)
    assert files.fingerprint == sha256_colons(certificate.public_bytes(serialization.Encoding.DER))
    assert FINGERPRINT_RE.match(files.fingerprint)

    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = sans.get_values_for_type(x509.IPAddress)
    names = sans.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in ips
    assert ipaddress.ip_address("::1") in ips
    assert socket.gethostname().lower() in names
    assert "localhost" in names
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    public_key = certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    lifetime = certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert lifetime > datetime.timedelta(days=9 * 365)


def test_the_generated_certificate_is_reused(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path)
    written = first.cert.read_bytes(), first.key.read_bytes()
    second = ensure_certificate(tmp_path)
    assert second == first
    assert (second.cert.read_bytes(), second.key.read_bytes()) == written


@pytest.mark.parametrize("damage", ["other key", "garbage cert", "key missing", "expiring"])
def test_a_broken_or_expiring_generated_certificate_is_replaced(
    tmp_path: Path, damage: str
) -> None:
    first = ensure_certificate(tmp_path)
    if damage == "other key":
        _cert, other_key = make_pair(tmp_path / "other", "other")
        first.key.write_bytes(other_key.read_bytes())
    elif damage == "garbage cert":
        first.cert.write_text("not a certificate\n")
    elif damage == "key missing":
        first.key.unlink()
    else:
        cert, key = make_pair(tmp_path / "old", "old", days=10)
        first.cert.write_bytes(cert.read_bytes())
        first.key.write_bytes(key.read_bytes())
    second = ensure_certificate(tmp_path)
    assert second.fingerprint != first.fingerprint
    assert ensure_certificate(tmp_path) == second


def test_a_given_pair_is_used_as_is(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path / "given", "edge.example.com")
    files = ensure_certificate(tmp_path / "data", cert, key)
    assert files == TlsFiles(
        cert, key, sha256_colons(load(cert).public_bytes(serialization.Encoding.DER))
    )
    assert not (tmp_path / "data" / "tls").exists()


def test_a_mismatched_pair_names_the_key_file(tmp_path: Path) -> None:
    cert, _key = make_pair(tmp_path / "a", "a")
    _other, key = make_pair(tmp_path / "b", "b")
    with pytest.raises(CertificateError) as error:
        ensure_certificate(tmp_path / "data", cert, key)
    assert error.value.role == "key"
    assert str(key) in str(error.value)
    assert f"is not the private key of the certificate {cert}" in str(error.value)


@pytest.mark.parametrize("broken", ["missing", "garbage"])
def test_an_unusable_given_certificate_names_the_file(tmp_path: Path, broken: str) -> None:
    _cert, key = make_pair(tmp_path, "node")
    cert = tmp_path / "wrong.crt"
    if broken == "garbage":
        cert.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateError) as error:
        ensure_certificate(tmp_path / "data", cert, key)
    assert error.value.role == "cert"
    assert str(cert) in str(error.value)
    expected = "cannot read it" if broken == "missing" else "not a PEM certificate"
    assert expected in str(error.value)


# --- the settings -------------------------------------------------------------------------


def test_a_mismatched_pair_in_the_settings_names_the_setting(tmp_path: Path) -> None:
    cert, _key = make_pair(tmp_path / "a", "a")
    _other, key = make_pair(tmp_path / "b", "b")
    settings = load_settings(
        environ={
            "EDGE_DATA_DIR": str(tmp_path / "data"),
            "EDGE_TLS": "1",
            "EDGE_TLS_CERT": str(cert),
            "EDGE_TLS_KEY": str(key),
        }
    )
    with pytest.raises(ConfigError) as error:
        server_tls(settings)
    assert (error.value.key, error.value.source) == ("EDGE_TLS_KEY", "environment EDGE_TLS_KEY")
    assert str(key) in str(error.value)


def test_run_refuses_a_certificate_without_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, _key = make_pair(tmp_path, "node")
    monkeypatch.setenv("EDGE_TLS_CERT", str(cert))
    # The certificate is checked before the broker starts: none is started here.
    code = cli.main(
        [
            "run",
            "--tls",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(free_port()),
            "--mqtt-port",
            str(free_port()),
        ]
    )
    assert code == 2
    assert "EDGE_TLS_CERT (from environment EDGE_TLS_CERT): EDGE_TLS_KEY must be set" in (
        capsys.readouterr().err
    )


def test_the_session_cookie_is_secure_under_tls(app_config: dict[str, Any]) -> None:
    app = create_app({**app_config, "EDGE_TLS": True})
    try:
        app.extensions["pyedge.auth"].accounts.add_user("ada", "a-long-password", Role.ADMIN)
        response = app.test_client().post(
            "/api/auth/login",
            json={"name": "ada", "password": "a-long-password"},
            base_url="https://localhost",
        )
        assert response.status_code == 200
        cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith("session="))
        assert "Secure" in cookie
        assert "HttpOnly" in cookie
        assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
    finally:
        app.extensions["pyedge"].close()


# --- pyedge run --tls ---------------------------------------------------------------------


@pytest.fixture
def tls_node(tmp_path: Path) -> Iterator[Node]:
    # custom-service alone: its health does not depend on a Docker engine being reachable.
    node = start_node(tmp_path, "--tls", EDGE_SERVICES="custom-service")
    yield node
    stop_node(node)


def wait_for_file(node: Node, path: Path, timeout: float = 15) -> None:
    """Until `pyedge run` has written `path` (atomically, so it is complete)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert node.process.poll() is None, node.process.stdout.read()  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.05)


def test_run_tls_serves_https_with_the_generated_certificate(tls_node: Node) -> None:
    ca = tls_node.data_dir / "tls" / "server.crt"
    wait_for_file(tls_node, ca)
    context = ssl.create_default_context(cafile=str(ca))
    # Python 3.13's default, checked here on every version: OpenSSL's strict X.509 rules.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    tls_node.tls = context
    wait_ready(tls_node)

    status, health = request(tls_node.url("/api/health"), context=context)
    assert status in (200, 503)
    assert health["node"] == tls_node.node_id

    # The hostname SAN verifies too, not only 127.0.0.1.
    with (
        socket.create_connection(("127.0.0.1", tls_node.http_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=socket.gethostname()) as tls,
    ):
        served = tls.getpeercert(binary_form=True)
    assert served == ssl.PEM_cert_to_DER_cert(ca.read_text())

    with pytest.raises((http.client.HTTPException, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{tls_node.http_port}/api/health", timeout=10)

    stop_node(tls_node)
    output = tls_node.process.stdout.read()  # type: ignore[union-attr]
    announced = re.search(r"HTTPS certificate (\S+) fingerprint SHA256 (\S+)", output)
    assert announced, output
    assert Path(announced[1]) == ca
    assert announced[2] == sha256_colons(served)
    assert f"serving https://127.0.0.1:{tls_node.http_port}/" in output
