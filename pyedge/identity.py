"""Forwarded callers: the identity a hub vouches for when it proxies a request to a service.

The hub signs `X-PyEdge-Caller` (base64url of compact JSON: name, kind, role, method, path,
aud, jti, iat, exp) with its Ed25519 key and sends the signature in `X-PyEdge-Caller-Signature`.
A service that holds the hub's public key (`<data>/network/hub.pub`) trusts the caller only
when the signature verifies, the claim is bound to this request's method and path and to
this process's service (`aud`: `<node>/<slug>`), it was not used before (`jti`, a nonce
remembered until it expires; `iat` not before this process started, since the nonces are
kept in memory) and it expires soon: a captured header is worth nothing elsewhere, nothing
a second time, and nothing later.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import logging
import os
import threading
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyedge.accounts import AccountError, Identity, check_name
from pyedge.errors import PyEdgeError
from pyedge.security import Role

# cryptography (~7 MB once loaded) is imported only when a hub's key is in use: a solo
# edge-server, which trusts no hub, never loads it.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

logger = logging.getLogger(__name__)


class CallerRefused(PyEdgeError):
    """A forwarded caller that must not be trusted, with why."""


CALLER_HEADER = "X-PyEdge-Caller"
SIGNATURE_HEADER = "X-PyEdge-Caller-Signature"
# A claim may expire at most this far ahead: the hub signs for less (CALLER_TTL_S), which
# leaves the rest for the two clocks to differ.
MAX_AHEAD_S = 60
CALLER_TTL_S = 30
KINDS = frozenset({"user", "token"})
# Forwarded names get this suffix, so that the audit log tells them from local accounts.
HUB_SUFFIX = "@hub"
NETWORK_DIR = "network"
HUB_PUBLIC_KEY = "hub.pub"


# The process-wide document (its OpenAPI), not under any one service's /api/<slug>: a
# caller for it must still name one of the services served here.
DOCUMENT_PATH = "/api/openapi.json"
# The process's Prometheus metrics, which the edge-server scrapes the same way.
METRICS_PATH = "/metrics"
# Nonces remembered at once at most (each until its claim expires, MAX_AHEAD_S at most):
# 1000 forwarded requests a second, more than a served process answers.
REPLAY_CACHE = 60_000
JTI_MIN, JTI_MAX = 16, 64


class ReplayCache:
    """The nonces (`jti`) of the forwarded callers this process accepted, until they expire."""

    def __init__(self, size: int = REPLAY_CACHE) -> None:
        self.size = size
        # The nonces are in memory only: a claim issued before the cache was made (before
        # this process started) might have been used already, and is refused.
        self.started = int(time.time())
        self._seen: set[str] = set()
        self._expiries: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def use(self, jti: str, exp: float, now: float) -> None:
        """Take `jti` (valid until `exp`) for one request; CallerRefused if it was taken before."""
        with self._lock:
            expiries = self._expiries
            while expiries and expiries[0][0] < now:
                self._seen.discard(heapq.heappop(expiries)[1])
            if jti in self._seen:
                raise CallerRefused("replayed: this caller was used before")
            if len(self._seen) >= self.size:
                # Forgetting one unexpired nonce would let it be replayed: refuse instead.
                raise CallerRefused("too many forwarded callers at once")
            self._seen.add(jti)
            heapq.heappush(expiries, (exp, jti))


_replays = ReplayCache()


def b64url_encode(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """base64url, padded or not; CallerRefused when it is not."""
    try:
        raw = text.encode("ascii")
        return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise CallerRefused(f"not base64url: {exc}") from exc


def encode_claims(claims: Mapping[str, Any]) -> str:
    """The X-PyEdge-Caller value of a claim: base64url of its compact JSON."""
    return b64url_encode(json.dumps(claims, separators=(",", ":")).encode())


def hub_public_key_path(data_dir: Path, configured: Path | None = None) -> Path:
    """The public key of the hub this node trusts: EDGE_HUB_PUBLIC_KEY, else in the data dir.

    The compose bundle sets it to a volume the edge-server writes and the services read,
    since each container has a data dir of its own.
    """
    return Path(configured) if configured else Path(data_dir) / NETWORK_DIR / HUB_PUBLIC_KEY


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo); ValueError otherwise."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def audiences(path: str, node: str, slugs: Collection[str]) -> frozenset[str]:
    """The audiences (`<node>/<slug>`) a forwarded caller of `path` may be signed for here.

    A path under `/api/<slug>` of a service served here belongs to that service; the
    process's own document and metrics to any of them; any other path (the process's
    accounts, its health) to none: no forwarded caller reaches it.
    """
    if path in (DOCUMENT_PATH, METRICS_PATH):
        return frozenset(f"{node}/{slug}" for slug in slugs)
    parts = path.split("/", 3)
    if len(parts) >= 3 and parts[0] == "" and parts[1] == "api" and parts[2] in slugs:
        return frozenset({f"{node}/{parts[2]}"})
    return frozenset()


def check_caller(
    public_key: Ed25519PublicKey,
    headers: Mapping[str, str],
    method: str,
    path: str,
    *,
    audience: Collection[str],
    now: float | None = None,
    replays: ReplayCache | None = None,
) -> Identity:
    """The forwarded caller of a request; CallerRefused saying why it is not to be trusted.

    `audience`: what the claim's `aud` may be here (audiences()). The claim's nonce is
    taken in `replays` (the process's) once everything else checked out.
    """
    value = headers.get(CALLER_HEADER)
    signature = headers.get(SIGNATURE_HEADER)
    if not value:
        raise CallerRefused(f"no {CALLER_HEADER}")
    if not signature:
        raise CallerRefused(f"{CALLER_HEADER} without {SIGNATURE_HEADER}")
    # Loaded already with the key (load_public_key): a lookup in sys.modules.
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(b64url_decode(signature), value.encode("ascii"))
    except (InvalidSignature, UnicodeEncodeError) as exc:
        raise CallerRefused("bad signature") from exc
    # Signed by the hub from here on: what is checked next is that it is meant for this.
    try:
        claims = json.loads(b64url_decode(value))
    except ValueError as exc:
        raise CallerRefused(f"not JSON: {exc}") from exc
    if not isinstance(claims, dict):
        raise CallerRefused("not a JSON object")
    name, kind, role = claims.get("name"), claims.get("kind"), claims.get("role")
    exp, jti, aud = claims.get("exp"), claims.get("jti"), claims.get("aud")
    iat = claims.get("iat")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise CallerRefused("no expiry")
    moment = time.time() if now is None else now
    if exp <= moment:
        raise CallerRefused("expired")
    if exp > moment + MAX_AHEAD_S:
        raise CallerRefused(f"expires more than {MAX_AHEAD_S} s ahead")
    cache = _replays if replays is None else replays
    if not isinstance(iat, int) or isinstance(iat, bool) or iat < cache.started:
        # A replay after a restart, when the nonces seen before are forgotten.
        raise CallerRefused("issued before this process started")
    if claims.get("method") != method.upper():
        raise CallerRefused(f"signed for {claims.get('method')}, not {method.upper()}")
    if claims.get("path") != path:
        raise CallerRefused(f"signed for {claims.get('path')!r}, not {path!r}")
    if not isinstance(aud, str) or aud not in audience:
        raise CallerRefused(
            f"signed for {aud!r}, not for a service here ({', '.join(sorted(audience)) or 'none'})"
        )
    if not isinstance(jti, str) or not JTI_MIN <= len(jti) <= JTI_MAX:
        raise CallerRefused("no nonce (jti)")
    if kind not in KINDS:
        raise CallerRefused(f"bad kind {kind!r}")
    if not isinstance(name, str) or not isinstance(role, str):
        raise CallerRefused("no name or role")
    try:
        check_name(name)
        parsed = Role.parse(role)
    except (AccountError, ValueError) as exc:
        raise CallerRefused(str(exc)) from exc
    # Last: a claim refused for another reason does not take its nonce.
    cache.use(jti, exp, moment)
    return Identity(name=f"{name}{HUB_SUFFIX}", role=parsed, kind=str(kind))


def verify_caller(
    public_key: Ed25519PublicKey,
    headers: Mapping[str, str],
    method: str,
    path: str,
    *,
    audience: Collection[str],
    now: float | None = None,
    replays: ReplayCache | None = None,
) -> Identity | None:
    """The forwarded caller of a request, or None when it is missing, forged, stale, meant
    for another service or used before."""
    try:
        return check_caller(
            public_key, headers, method, path, audience=audience, now=now, replays=replays
        )
    except CallerRefused:
        return None


class HubKey:
    """The trusted hub's public key in a data dir, read again only when the file changes."""

    def __init__(self, data_dir: Path, configured: Path | None = None) -> None:
        self.path = hub_public_key_path(data_dir, configured)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._key: Ed25519PublicKey | None = None

    def get(self) -> Ed25519PublicKey | None:
        """The key, or None while there is none (this node trusts no hub)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("cannot read the hub's key %s: %s", self.path, exc)
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                # `pyedge join` may write it while the service runs: judged by its stamp.
                self._stamp = stamp
                try:
                    self._key = load_public_key(self.path.read_bytes())
                except (OSError, ValueError) as exc:
                    logger.error("the hub's key %s is unusable: %s", self.path, exc)
                    self._key = None
            return self._key
