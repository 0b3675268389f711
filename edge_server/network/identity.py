"""The hub's Ed25519 key, and the caller it signs into every request it proxies.

`<data>/network/hub.key` (PKCS8 PEM, owner-only) is made on the first start of a hub (or
node) edge-server, with `<data>/network/hub.pub` beside it: services on the same device
read that, and `pyedge join` copies it to other devices. pyedge.identity verifies.

Every claim is for one request (method, path) to one service (`aud`: `<node>/<slug>`) and
carries a nonce of its own (`jti`): no two are alike, so none is kept to be signed again.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from edge_server.files import write_atomic
from edge_server.network.join import JOIN_FILE
from pyedge.accounts import Identity
from pyedge.identity import (
    CALLER_HEADER,
    CALLER_TTL_S,
    NETWORK_DIR,
    SIGNATURE_HEADER,
    b64url_encode,
    encode_claims,
    hub_public_key_path,
)

# cryptography is loaded on first use of the key: a solo edge-server has none.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

logger = logging.getLogger(__name__)

HUB_KEY = "hub.key"
# Random bytes in a claim's nonce (base64url: 22 characters).
JTI_BYTES = 16


def _public_pem(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def _write_new(path: Path, data: bytes, mode: int) -> bool:
    """Write `path` whole with `mode` unless it exists; False when another writer won."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    # Created with its mode by open() itself: a chmod afterwards would leave a window.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        # link() refuses to replace: of two processes starting at once, one key wins.
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def hub_key(data_dir: Path, public: Path | None = None) -> Ed25519PrivateKey:
    """The hub's private key in `data_dir`, made (with hub.pub) on first use.

    `public` is EDGE_HUB_PUBLIC_KEY, where hub.pub goes when it is not in the data dir.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory = Path(data_dir) / NETWORK_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / HUB_KEY
    if not path.exists():
        fresh = Ed25519PrivateKey.generate()
        pem = fresh.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if _write_new(path, pem, 0o600):
            logger.info("made the hub key %s", path)
    if path.stat().st_mode & 0o077:
        logger.warning("%s was readable by others: made owner-only", path)
        path.chmod(0o600)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    # The configured file (EDGE_HUB_PUBLIC_KEY) is this edge-server's to write unless the
    # node joined a hub (`pyedge join` leaves join.json): an old key there is replaced.
    own = public is not None and not (directory / JOIN_FILE).exists()
    _ensure_public(hub_public_key_path(data_dir, public), key, own)
    return key


def _ensure_public(public: Path, key: Ed25519PrivateKey, own: bool) -> None:
    """Write hub.pub for the services on this device; another key there is kept (a joined
    hub's) unless the file is `own`, this edge-server's alone to write."""
    pem = _public_pem(key)
    try:
        current = public.read_text()
    except FileNotFoundError:
        public.parent.mkdir(parents=True, exist_ok=True)
        _write_new(public, pem.encode("ascii"), 0o644)
        return
    if current.strip() != pem.strip() and own:
        # An old key of this edge-server's (its data made anew, the compose bundle's
        # hub-key volume kept): the services must trust the new one.
        logger.warning("%s held an old key of this edge-server's: replaced", public)
        write_atomic(public, pem, 0o644)
    elif current.strip() != pem.strip():
        # A node that joined a hub keeps that hub's key: its services trust that hub, not
        # this edge-server (whose forwarded callers they will then refuse).
        logger.warning(
            "%s is another hub's key (this node joined one): the services here trust that "
            "hub, not this edge-server",
            public,
        )


def hub_public_pem(data_dir: Path, public: Path | None = None) -> str:
    """The hub's public key as PEM (SubjectPublicKeyInfo), what `pyedge join` fetches."""
    return _public_pem(hub_key(data_dir, public))


def sign_caller(
    key: Ed25519PrivateKey,
    identity: Identity,
    method: str,
    path: str,
    now: float | None = None,
    ttl: int = CALLER_TTL_S,
    *,
    audience: str | None = None,
) -> dict[str, str]:
    """The headers that vouch for `identity` on one request (`method`, `path`) to the
    service `audience` (`<node>/<slug>`), good for one use."""
    moment = time.time() if now is None else now
    claims: dict[str, str | int] = {
        "name": identity.name,
        "kind": identity.kind,
        "role": identity.role.label,
        "method": method.upper(),
        "path": path,
    }
    if audience is not None:
        claims["aud"] = audience
    claims["jti"] = b64url_encode(secrets.token_bytes(JTI_BYTES))
    claims["iat"] = int(moment)
    claims["exp"] = int(moment) + ttl
    value = encode_claims(claims)
    signature = b64url_encode(key.sign(value.encode("ascii")))
    return {CALLER_HEADER: value, SIGNATURE_HEADER: signature}
