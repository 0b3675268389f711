"""Client certificates for the Docker API gateway: a CA of the node's own, issued and revoked.

Docker tools over TLS (the docker CLI's DOCKER_CERT_PATH, Portainer's "Docker API with
TLS" environment) prove who they are with a client certificate. The container-manager
keeps a CA of its own for them, issues each certificate for a PyEdge user and role, and
refuses a revoked one at once (its serial is looked up on every request). The keys are
EC P-256: quick to make and to check on a Pi.
"""

from __future__ import annotations

import datetime
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from container_manager.errors import Conflict, NotFound
from pyedge.accounts import Identity, check_name, now
from pyedge.security import Role
from pyedge.sqlite import transaction

logger = logging.getLogger(__name__)

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_VALID_DAYS = 3650
# A device without a real-time clock may boot with a clock slightly behind.
BACKDATE = datetime.timedelta(days=1)
IDENTITY_KIND = "certificate"

SCHEMA = """
CREATE TABLE IF NOT EXISTS certificates (
    serial TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    user TEXT NOT NULL,
    role TEXT NOT NULL,
    issued_by TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    not_after TEXT NOT NULL,
    revoked_at TEXT
);
"""
FIELDS = ("serial", "name", "user", "role", "issued_by", "issued_at", "not_after", "revoked_at")


@dataclass(frozen=True)
class Issued:
    """A new certificate: its record, and the PEM files a client needs (shown once)."""

    record: dict[str, Any]
    cert_pem: str
    key_pem: str
    ca_pem: str


class ClientCertificates:
    """The gateway's client CA and the certificates it issued, in `<directory>`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._db_path = directory / "certificates.db"
        with self._db() as db:
            db.executescript(SCHEMA)  # a script commits by itself
        # serial -> record of the valid ones: looked up on every request.
        self._valid: dict[str, dict[str, Any]] = {}
        self._reload()

    @property
    def ca_path(self) -> Path:
        """The CA certificate that client certificates are checked against (made if missing)."""
        self._ensure_ca()
        return self.directory / CA_CERT

    def identity(self, serial: str) -> Identity | None:
        """The caller of a verified certificate's serial (hex), or None when revoked."""
        record = self._valid.get(normal_serial(serial))
        if record is None:
            return None
        return Identity(record["user"], Role.parse(record["role"]), IDENTITY_KIND)

    def name_of(self, serial: str) -> str | None:
        """The certificate's name, for the audit log."""
        record = self._valid.get(normal_serial(serial))
        return record["name"] if record else None

    def issue(self, name: str, user: str, role: Role, days: int, issued_by: str) -> Issued:
        """Issue a certificate `name` for `user` with `role`; Conflict if the name is used."""
        check_name(name)
        check_name(user)
        ca_cert, ca_key = self._ensure_ca()
        key = ec.generate_private_key(ec.SECP256R1())
        start = datetime.datetime.now(datetime.UTC) - BACKDATE
        end = start + BACKDATE + datetime.timedelta(days=days)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.COMMON_NAME, name),
                        x509.NameAttribute(
                            NameOID.ORGANIZATIONAL_UNIT_NAME, f"{user} ({role.label})"
                        ),
                    ]
                )
            )
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(key_usage("digital_signature"), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        record = {
            "serial": serial_hex(certificate.serial_number),
            "name": name,
            "user": user,
            "role": role.label,
            "issued_by": issued_by,
            "issued_at": now(),
            "not_after": end.isoformat(timespec="seconds"),
            "revoked_at": None,
        }
        try:
            with self._db(write=True) as db:
                db.execute(
                    f"INSERT INTO certificates ({', '.join(FIELDS)}) "
                    f"VALUES ({', '.join('?' for _ in FIELDS)})",
                    tuple(record[field] for field in FIELDS),
                )
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"a certificate named {name} exists already") from exc
        self._reload()
        logger.info("gateway certificate %s issued for %s (%s)", name, user, role.label)
        return Issued(
            record,
            certificate.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
            ca_cert.public_bytes(serialization.Encoding.PEM).decode(),
        )

    def revoke(self, name: str) -> dict[str, Any]:
        """Revoke the certificate `name` (at once); NotFound if there is none."""
        with self._db(write=True) as db:
            db.execute(
                "UPDATE certificates SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (now(), name),
            )
        self._reload()
        record = next((r for r in self.records() if r["name"] == name), None)
        if record is None:
            raise NotFound(f"no gateway certificate {name}")
        logger.info("gateway certificate %s revoked", name)
        return record

    def records(self) -> list[dict[str, Any]]:
        """Every certificate issued, revoked ones included, by name."""
        with self._db() as db:
            rows = db.execute(
                f"SELECT {', '.join(FIELDS)} FROM certificates ORDER BY name"
            ).fetchall()
        return [dict(zip(FIELDS, row, strict=True)) for row in rows]

    def _reload(self) -> None:
        valid = {r["serial"]: r for r in self.records() if r["revoked_at"] is None}
        self._valid = valid

    @contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection per call (the API's threads), in a transaction, closed after."""
        db = sqlite3.connect(self._db_path, isolation_level=None, timeout=10)
        try:
            with transaction(db, write):
                yield db
        finally:
            db.close()

    def _ensure_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """The CA's certificate and key, made on first use (the key owner-only)."""
        cert_path, key_path = self.directory / CA_CERT, self.directory / CA_KEY
        with self._lock:
            if cert_path.exists() and key_path.exists():
                ca_key = serialization.load_pem_private_key(key_path.read_bytes(), None)
                assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
                return x509.load_pem_x509_certificate(cert_path.read_bytes()), ca_key
            ca_key = ec.generate_private_key(ec.SECP256R1())
            subject = x509.Name(
                [x509.NameAttribute(NameOID.COMMON_NAME, "PyEdge Docker API gateway clients")]
            )
            start = datetime.datetime.now(datetime.UTC) - BACKDATE
            ca_cert = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(subject)
                .public_key(ca_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start)
                .not_valid_after(start + datetime.timedelta(days=CA_VALID_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(key_usage("key_cert_sign", "crl_sign"), critical=True)
                .sign(ca_key, hashes.SHA256())
            )
            key_pem = ca_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(key_pem)
            cert_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
            logger.info("gateway client CA made in %s", self.directory)
            return ca_cert, ca_key


KEY_USAGES = (
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
    "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
)  # fmt: skip


def key_usage(*usages: str) -> x509.KeyUsage:
    """A KeyUsage extension with only `usages` set."""
    return x509.KeyUsage(**{usage: usage in usages for usage in KEY_USAGES})


def serial_hex(serial: int) -> str:
    """A serial number as the store keeps it: uppercase hex without leading zeros."""
    return format(serial, "X")


def normal_serial(serial: str) -> str:
    """A serial as Python's ssl shows it (hex, maybe with a leading zero), as stored."""
    try:
        return serial_hex(int(serial, 16))
    except ValueError:
        return ""
