"""Identity forwarding: the hub signs the caller, a service holding hub.pub trusts it."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flask import Flask

from edge_server import create_app
from edge_server.identity import hub_key, hub_public_pem, sign_caller
from pyedge.accounts import Identity
from pyedge.auth import EXTENSION as AUTH_EXTENSION
from pyedge.identity import (
    CALLER_HEADER,
    SIGNATURE_HEADER,
    b64url_decode,
    b64url_encode,
    encode_claims,
    hub_public_key_path,
    load_public_key,
    verify_caller,
)
from pyedge.security import Role

ALICE = Identity(name="alice", role=Role.OPERATOR, kind="user")
PATH = "/api/custom-service/ops/sleep/start"


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_a_signed_caller_verifies(key: Ed25519PrivateKey) -> None:
    headers = sign_caller(key, ALICE, "post", PATH)
    identity = verify_caller(key.public_key(), headers, "POST", PATH)
    assert identity == Identity(name="alice@hub", role=Role.OPERATOR, kind="user")
    assert identity.actor == "user:alice@hub"
    claims = json.loads(b64url_decode(headers[CALLER_HEADER]))
    assert claims["method"] == "POST" and claims["path"] == PATH
    assert time.time() < claims["exp"] <= time.time() + 60


def test_a_forged_caller_is_refused(key: Ed25519PrivateKey) -> None:
    headers = sign_caller(key, ALICE, "POST", PATH)
    claims = json.loads(b64url_decode(headers[CALLER_HEADER]))
    # The same signature over a caller made admin.
    forged = {**headers, CALLER_HEADER: encode_claims({**claims, "role": "admin"})}
    assert verify_caller(key.public_key(), forged, "POST", PATH) is None
    unsigned = {CALLER_HEADER: headers[CALLER_HEADER]}
    assert verify_caller(key.public_key(), unsigned, "POST", PATH) is None
    garbage = {**headers, SIGNATURE_HEADER: "not*base64"}
    assert verify_caller(key.public_key(), garbage, "POST", PATH) is None


def test_an_expired_or_far_off_caller_is_refused(key: Ed25519PrivateKey) -> None:
    old = sign_caller(key, ALICE, "POST", PATH, now=time.time() - 120)
    assert verify_caller(key.public_key(), old, "POST", PATH) is None
    far = sign_caller(key, ALICE, "POST", PATH, ttl=3600)
    assert verify_caller(key.public_key(), far, "POST", PATH) is None
    soon = sign_caller(key, ALICE, "POST", PATH, ttl=5)
    assert verify_caller(key.public_key(), soon, "POST", PATH) is not None
    assert verify_caller(key.public_key(), soon, "POST", PATH, now=time.time() + 6) is None


def test_a_caller_is_bound_to_its_method_and_path(key: Ed25519PrivateKey) -> None:
    headers = sign_caller(key, ALICE, "GET", "/api/custom-service/ops")
    assert verify_caller(key.public_key(), headers, "GET", "/api/custom-service/ops")
    assert verify_caller(key.public_key(), headers, "POST", "/api/custom-service/ops") is None
    assert verify_caller(key.public_key(), headers, "GET", "/api/custom-service/hello") is None


def test_another_key_is_refused(key: Ed25519PrivateKey) -> None:
    headers = sign_caller(Ed25519PrivateKey.generate(), ALICE, "POST", PATH)
    assert verify_caller(key.public_key(), headers, "POST", PATH) is None


def test_bad_claims_are_refused(key: Ed25519PrivateKey) -> None:
    def signed(claims: dict[str, Any]) -> dict[str, str]:
        value = encode_claims(claims)
        return {CALLER_HEADER: value, SIGNATURE_HEADER: b64url_encode(key.sign(value.encode()))}

    good = {
        "name": "bob",
        "kind": "token",
        "role": "viewer",
        "method": "GET",
        "path": "/x",
        "exp": int(time.time()) + 30,
    }
    assert verify_caller(key.public_key(), signed(good), "GET", "/x") is not None
    for bad in (
        {"role": "public"},
        {"role": "root"},
        {"kind": "robot"},
        {"name": "no spaces"},
        {"exp": "soon"},
        {"exp": True},
    ):
        assert verify_caller(key.public_key(), signed({**good, **bad}), "GET", "/x") is None, bad


def test_the_hub_key_is_made_once_owner_only(tmp_path: Path) -> None:
    key = hub_key(tmp_path)
    private = tmp_path / "network" / "hub.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    again = hub_key(tmp_path)
    assert again.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()
    pem = hub_public_pem(tmp_path)
    assert hub_public_key_path(tmp_path).read_text() == pem
    public = load_public_key(pem.encode())
    assert public.public_bytes_raw() == key.public_key().public_bytes_raw()


def test_a_joined_hubs_key_is_kept(tmp_path: Path) -> None:
    other = hub_key(tmp_path / "other-hub")
    joined = hub_public_key_path(tmp_path)
    joined.parent.mkdir(parents=True)
    joined.write_text(hub_public_pem(tmp_path / "other-hub"))
    hub_key(tmp_path)
    kept = load_public_key(joined.read_bytes())
    assert kept.public_bytes_raw() == other.public_key().public_bytes_raw()


# --- a service that trusts the hub ---------------------------------------------------------


@pytest.fixture
def hub_private(tmp_path: Path) -> Ed25519PrivateKey:
    """The hub's key, its hub.pub put where the service's data dir keeps it."""
    key = hub_key(tmp_path / "hub-data")
    public = hub_public_key_path(tmp_path / "data")
    public.parent.mkdir(parents=True)
    public.write_text(hub_public_pem(tmp_path / "hub-data"))
    return key


@pytest.fixture
def trusting_app(app_config: dict[str, Any], hub_private: Ed25519PrivateKey) -> Iterator[Flask]:
    app = create_app(app_config)
    yield app
    app.extensions["pyedge"].close()


def forwarded(key: Ed25519PrivateKey, role: Role, method: str, path: str) -> dict[str, str]:
    return sign_caller(key, Identity(name="alice", role=role, kind="user"), method, path)


def test_a_service_trusts_the_hubs_caller_and_enforces_its_role(
    trusting_app: Flask, hub_private: Ed25519PrivateKey
) -> None:
    client = trusting_app.test_client()
    ops = "/api/custom-service/ops"
    response = client.get(ops, headers=forwarded(hub_private, Role.VIEWER, "GET", ops))
    assert response.status_code == 200, response.json
    as_viewer = forwarded(hub_private, Role.VIEWER, "POST", PATH)
    response = client.post(PATH, json={"seconds": 0.1}, headers=as_viewer)
    assert response.status_code == 403
    assert "alice@hub is viewer" in response.json["message"]
    # An operator: no CSRF token asked for, though it is a user (the hub checked it).
    as_operator = forwarded(hub_private, Role.OPERATOR, "POST", PATH)
    response = client.post(PATH, json={"seconds": 0.1}, headers=as_operator)
    assert response.status_code == 202, response.json
    auth = trusting_app.extensions[AUTH_EXTENSION]
    entries = auth.accounts.audit_log(10)
    assert any(e["actor"] == "user:alice@hub" and e["status"] == 202 for e in entries), entries


def test_a_service_refuses_forged_or_misplaced_callers(
    trusting_app: Flask, hub_private: Ed25519PrivateKey
) -> None:
    client = trusting_app.test_client()
    ops = "/api/custom-service/ops"
    forger = forwarded(Ed25519PrivateKey.generate(), Role.ADMIN, "GET", ops)
    assert client.get(ops, headers=forger).status_code == 401
    elsewhere = forwarded(hub_private, Role.ADMIN, "GET", "/api/custom-service/hello")
    assert client.get(ops, headers=elsewhere).status_code == 401
    unsigned = {CALLER_HEADER: forwarded(hub_private, Role.ADMIN, "GET", ops)[CALLER_HEADER]}
    assert client.get(ops, headers=unsigned).status_code == 401


def test_no_hub_key_no_trust_until_it_comes(
    app_config: dict[str, Any], tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    app = create_app(app_config)
    try:
        client = app.test_client()
        ops = "/api/custom-service/ops"
        assert client.get(ops, headers=forwarded(key, Role.VIEWER, "GET", ops)).status_code == 401
        # `pyedge join` writes hub.pub while the service runs.
        public = hub_public_key_path(Path(app_config["EDGE_DATA_DIR"]))
        public.parent.mkdir(parents=True, exist_ok=True)
        public.write_bytes(
            key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        )
        assert client.get(ops, headers=forwarded(key, Role.VIEWER, "GET", ops)).status_code == 200
    finally:
        app.extensions["pyedge"].close()
