"""The node's TLS certificate: the one the operator gives, or a self-signed one in the data dir.

HTTPS (`pyedge run --tls`) and the broker's TLS listener share it. Without a given pair,
the first run generates an EC P-256 certificate (fast to make and to use on a Pi) naming
the node's hostnames and IP addresses, and later runs reuse it, so that a fingerprint a
client pinned or a file it trusts stays valid.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import itertools
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_server.files import write_atomic
from pyedge import PyEdgeError
from pyedge.config import LoadedConfig
from pyedge.tls import CERT_FILE, KEY_FILE, TLS_DIR

logger = logging.getLogger(__name__)

VALID_DAYS = 3650
# A certificate this close to its end is replaced at start-up rather than left to expire.
RENEW_BEFORE = datetime.timedelta(days=30)
# A device without a real-time clock may boot with a clock slightly behind.
BACKDATE = datetime.timedelta(days=1)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# /proc/net/if_inet6 scope of link-local addresses: useless in a certificate without a zone.
IPV6_LINK_SCOPE = 0x20


class CertificateError(PyEdgeError):
    """A given certificate or key is unusable; `role` is "cert" or "key", `path` the file."""

    def __init__(self, role: str, path: Path, problem: str) -> None:
        what = "certificate" if role == "cert" else "private key"
        super().__init__(f"TLS {what} {path}: {problem}")
        self.role = role
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class TlsFiles:
    """A usable certificate and key pair, with the certificate's SHA-256 fingerprint."""

    cert: Path
    key: Path
    fingerprint: str


def ensure_certificate(
    data_dir: Path, cert: Path | None = None, key: Path | None = None
) -> TlsFiles:
    """The given pair checked, else `<data_dir>/tls/server.*` reused or generated.

    Raises CertificateError naming the file when a given one is unreadable or the pair
    does not match, and ValueError when only one of cert and key is given.
    """
    if (cert is None) != (key is None):
        raise ValueError("give both cert and key, or neither")
    if cert is not None and key is not None:
        certificate = _check_pair(cert, key)
        if _expires_soon(certificate, datetime.timedelta(0)):
            # The operator's own certificate: clients will say so; not a reason to stay down.
            logger.warning(
                "TLS certificate %s expired on %s", cert, certificate.not_valid_after_utc
            )
        return TlsFiles(cert, key, fingerprint(certificate))

    directory = data_dir / TLS_DIR
    cert, key = directory / CERT_FILE, directory / KEY_FILE
    if cert.exists() or key.exists():
        try:
            certificate = _check_pair(cert, key)
        except CertificateError as exc:
            logger.warning("replacing the generated TLS certificate: %s", exc)
        else:
            if not _expires_soon(certificate, RENEW_BEFORE):
                return TlsFiles(cert, key, fingerprint(certificate))
            logger.warning(
                "replacing the generated TLS certificate %s: it expires on %s",
                cert,
                certificate.not_valid_after_utc,
            )
    try:
        certificate = _generate(cert, key)
    except OSError as exc:
        raise CertificateError("cert", cert, f"cannot write it: {exc}") from exc
    files = TlsFiles(cert, key, fingerprint(certificate))
    logger.warning(
        "generated a self-signed TLS certificate %s for %s: clients must trust this file "
        "or check its fingerprint SHA256 %s",
        cert,
        ", ".join(_san_names(certificate)),
        files.fingerprint,
    )
    return files


def server_tls(settings: LoadedConfig) -> TlsFiles:
    """ensure_certificate for EDGE_TLS_CERT / EDGE_TLS_KEY; ConfigError naming the setting."""
    cert, key = settings["EDGE_TLS_CERT"], settings["EDGE_TLS_KEY"]
    if cert is None and key is not None:
        raise settings.error("EDGE_TLS_KEY", "EDGE_TLS_CERT must be set with it")
    if key is None and cert is not None:
        raise settings.error("EDGE_TLS_CERT", "EDGE_TLS_KEY must be set with it")
    try:
        return ensure_certificate(settings["EDGE_DATA_DIR"], cert, key)
    except CertificateError as exc:
        if cert is None:
            raise  # the generated files: no setting to name
        raise settings.error(
            "EDGE_TLS_CERT" if exc.role == "cert" else "EDGE_TLS_KEY", str(exc)
        ) from exc


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER encoding as browsers show it: colon-separated uppercase hex."""
    digest = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)).upper()


def _check_pair(cert: Path, key: Path) -> x509.Certificate:
    """The certificate (the first one in a chain file), checked to belong to the key."""
    try:
        certificates = x509.load_pem_x509_certificates(cert.read_bytes())
    except OSError as exc:
        raise CertificateError("cert", cert, f"cannot read it: {exc.strerror}") from exc
    except ValueError as exc:
        raise CertificateError("cert", cert, "not a PEM certificate") from exc
    try:
        private_key = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except OSError as exc:
        raise CertificateError("key", key, f"cannot read it: {exc.strerror}") from exc
    except TypeError as exc:
        raise CertificateError("key", key, "encrypted keys are not supported") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateError("key", key, "not a PEM private key") from exc
    leaf = certificates[0]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private_key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise CertificateError("key", key, f"is not the private key of the certificate {cert}")
    return leaf


def _expires_soon(certificate: x509.Certificate, margin: datetime.timedelta) -> bool:
    now = datetime.datetime.now(datetime.UTC)
    return certificate.not_valid_after_utc - margin <= now


def _generate(cert: Path, key: Path) -> x509.Certificate:
    """A new self-signed key and certificate for this node, written atomically."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname()
    dns = _dns_names(hostname)
    ips = node_addresses(hostname)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])])
    public_key = private_key.public_key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [*(x509.DNSName(n) for n in dns), *(x509.IPAddress(ip) for ip in ips)]
            ),
            critical=False,
        )
        # Its own CA, so that clients can trust this one file (curl --cacert, requests'
        # verify=, paho's tls_set(ca_certs=)); OpenSSL's strict checks want the key usage
        # and both key identifiers on a CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
    )
    certificate = builder.sign(private_key, hashes.SHA256())
    cert.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The key first: a crash between the two leaves a mismatched pair, which the next
    # start replaces, never a new certificate beside an old key.
    write_atomic(
        key,
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    write_atomic(cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return certificate


def _dns_names(hostname: str) -> list[str]:
    """The hostname, its FQDN, its mDNS name and localhost, without repeats."""
    names = [hostname, socket.getfqdn(hostname)]
    short = hostname.split(".")[0]
    if short and short != "localhost":
        names.append(f"{short}.local")  # how Raspberry Pi OS announces itself (avahi)
    names.append("localhost")
    unique: list[str] = []
    for name in names:
        name = name.strip().rstrip(".").lower()
        if name and name.isascii() and not _is_ip(name) and name not in unique:
            unique.append(name)
    return unique


def node_addresses(hostname: str | None = None) -> list[IPAddress]:
    """Every IP address of this node, loopback first, read without external tools."""
    found: list[IPAddress] = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    found += _proc_ipv4()
    found += _proc_ipv6()
    found += _resolved(hostname or socket.gethostname())
    found += _outbound()
    unique: list[IPAddress] = []
    for address in found:
        if address not in unique and not (address.version == 6 and address.is_link_local):
            unique.append(address)
    return unique


def _proc_ipv4() -> Iterable[IPAddress]:
    # Linux: each local address appears in fib_trie as a leaf followed by "/32 host LOCAL".
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        return []
    found = []
    for previous, line in itertools.pairwise(lines):
        if line.strip() == "/32 host LOCAL":
            candidate = previous.strip().removeprefix("|--").strip()
            if _is_ip(candidate):
                found.append(ipaddress.ip_address(candidate))
    return found


def _proc_ipv6() -> Iterable[IPAddress]:
    # Linux: one line per address: hex address, ifindex, prefix length, scope, flags, name.
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and len(fields[0]) == 32 and int(fields[3], 16) != IPV6_LINK_SCOPE:
            found.append(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
    return found


def _resolved(hostname: str) -> Iterable[IPAddress]:
    # Where /proc is missing (macOS) this and _outbound are all there is.
    try:
        infos = socket.getaddrinfo(hostname, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def _outbound() -> Iterable[IPAddress]:
    # A UDP "connect" sends nothing; it only picks the source address of the default route.
    found = []
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((probe, 9))
                found.append(ipaddress.ip_address(sock.getsockname()[0].split("%")[0]))
        except OSError:
            continue
    return found


def _san_names(certificate: x509.Certificate) -> list[str]:
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in names]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
