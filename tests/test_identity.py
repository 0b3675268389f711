"""Identity forwarding: the hub signs the caller, a service holding hub.pub trusts it."""

from __future__ import annotations

import json
import logging
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
from edge_server.network.identity import hub_key, hub_public_pem, sign_caller
from pyedge.accounts import Identity
from pyedge.auth import EXTENSION as AUTH_EXTENSION
from pyedge.identity import (
    CALLER_HEADER,
    SIGNATURE_HEADER,
    CallerRefused,
    ReplayCache,
    audiences,
    b64url_decode,
    b64url_encode,
    check_caller,
    encode_claims,
    hub_public_key_path,
    load_public_key,
    verify_caller,
)
from pyedge.security import Role
from tests.conftest import Broker

ALICE = Identity(name="alice", role=Role.OPERATOR, kind="user")
PATH = "/api/custom-service/ops/sleep/start"
AUD = "n1/custom-service"
HERE = frozenset({AUD})


def sign(key: Ed25519PrivateKey, method: str, path: str, **kwargs: Any) -> dict[str, str]:
    """ALICE signed for `method` `path` on custom-service of node n1 (unless told otherwise)."""
    kwargs.setdefault("audience", AUD)
    return sign_caller(key, ALICE, method, path, **kwargs)


def verify(
    key: Ed25519PrivateKey, headers: dict[str, str], method: str, path: str, **kw: Any
) -> Identity | None:
    """verify_caller on custom-service of node n1, with a replay cache of this call's own
    (unless told otherwise): the unit tests check one thing at a time."""
    kw.setdefault("audience", HERE)
    kw.setdefault("replays", ReplayCache())
    return verify_caller(key.public_key(), headers, method, path, **kw)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_a_signed_caller_verifies(key: Ed25519PrivateKey) -> None:
    headers = sign(key, "post", PATH)
    identity = verify(key, headers, "POST", PATH)
    assert identity == Identity(name="alice@hub", role=Role.OPERATOR, kind="user")
    assert identity.actor == "user:alice@hub"
    claims = json.loads(b64url_decode(headers[CALLER_HEADER]))
    assert list(claims) == ["name", "kind", "role", "method", "path", "aud", "jti", "iat", "exp"]
    assert claims["method"] == "POST" and claims["path"] == PATH and claims["aud"] == AUD
    assert time.time() < claims["exp"] <= time.time() + 60
    # Every claim has a nonce of its own.
    again = json.loads(b64url_decode(sign(key, "post", PATH)[CALLER_HEADER]))
    assert len(claims["jti"]) >= 16 and again["jti"] != claims["jti"]


def test_a_forged_caller_is_refused(key: Ed25519PrivateKey) -> None:
    headers = sign(key, "POST", PATH)
    claims = json.loads(b64url_decode(headers[CALLER_HEADER]))
    # The same signature over a caller made admin, or sent to another service.
    forged = {**headers, CALLER_HEADER: encode_claims({**claims, "role": "admin"})}
    assert verify(key, forged, "POST", PATH) is None
    moved = {**headers, CALLER_HEADER: encode_claims({**claims, "aud": "n2/custom-service"})}
    assert verify(key, moved, "POST", PATH, audience={"n2/custom-service"}) is None
    unsigned = {CALLER_HEADER: headers[CALLER_HEADER]}
    assert verify(key, unsigned, "POST", PATH) is None
    garbage = {**headers, SIGNATURE_HEADER: "not*base64"}
    assert verify(key, garbage, "POST", PATH) is None


def test_an_expired_or_far_off_caller_is_refused(key: Ed25519PrivateKey) -> None:
    old = sign(key, "POST", PATH, now=time.time() - 120)
    assert verify(key, old, "POST", PATH) is None
    far = sign(key, "POST", PATH, ttl=3600)
    assert verify(key, far, "POST", PATH) is None
    soon = sign(key, "POST", PATH, ttl=5)
    assert verify(key, soon, "POST", PATH) is not None
    assert verify(key, soon, "POST", PATH, now=time.time() + 6) is None


def test_a_caller_is_bound_to_its_method_and_path(key: Ed25519PrivateKey) -> None:
    headers = sign(key, "GET", "/api/custom-service/ops")
    assert verify(key, headers, "GET", "/api/custom-service/ops")
    assert verify(key, headers, "POST", "/api/custom-service/ops") is None
    assert verify(key, headers, "GET", "/api/custom-service/hello") is None


def test_a_caller_is_bound_to_its_node_and_service(key: Ed25519PrivateKey) -> None:
    ops = "/api/custom-service/ops"
    here = audiences(ops, "n1", ["custom-service", "other-service"])
    assert here == {"n1/custom-service"}
    assert verify(key, sign(key, "GET", ops), "GET", ops, audience=here)
    # Made for the same slug on another node, for another service, or for no service.
    for audience in ("n2/custom-service", "n1/other-service", "n1", ""):
        headers = sign(key, "GET", ops, audience=audience)
        assert verify(key, headers, "GET", ops, audience=here) is None, audience
    assert verify(key, sign(key, "GET", ops, audience=None), "GET", ops, audience=here) is None
    # A path of no service served here (the process's accounts, another slug) has none.
    assert audiences("/api/auth/tokens", "n1", ["custom-service"]) == frozenset()
    assert audiences("/api/custom-servicex/ops", "n1", ["custom-service"]) == frozenset()
    assert audiences("/api/custom-service", "n1", ["custom-service"]) == {"n1/custom-service"}
    tokens = sign(key, "GET", "/api/auth/tokens")
    assert verify(key, tokens, "GET", "/api/auth/tokens", audience=frozenset()) is None
    # The process's own document belongs to every service it serves.
    doc = "/api/openapi.json"
    assert audiences(doc, "n1", ["custom-service"]) == {"n1/custom-service"}
    assert verify(key, sign(key, "GET", doc), "GET", doc, audience={"n1/custom-service"})
    assert verify(key, sign(key, "GET", doc), "GET", doc, audience=frozenset()) is None


def test_a_caller_is_good_for_one_request(key: Ed25519PrivateKey) -> None:
    replays = ReplayCache()
    headers = sign(key, "POST", PATH)
    assert verify(key, headers, "POST", PATH, replays=replays) is not None
    assert verify(key, headers, "POST", PATH, replays=replays) is None
    # A claim refused for another reason does not spend its nonce.
    other = sign(key, "POST", PATH)
    assert verify(key, other, "GET", PATH, replays=replays) is None
    assert verify(key, other, "POST", PATH, replays=replays) is not None
    # Nonces are forgotten once their claims expired: the cache stays small.
    later = sign(key, "POST", PATH, now=time.time() + 40)
    assert verify(key, later, "POST", PATH, replays=replays, now=time.time() + 40)
    assert len(replays) == 1
    # Without a nonce, nothing is trusted.
    claims = json.loads(b64url_decode(headers[CALLER_HEADER]))
    del claims["jti"]
    value = encode_claims(claims)
    bare = {CALLER_HEADER: value, SIGNATURE_HEADER: b64url_encode(key.sign(value.encode()))}
    assert verify(key, bare, "POST", PATH) is None


def test_another_key_is_refused(key: Ed25519PrivateKey) -> None:
    headers = sign(Ed25519PrivateKey.generate(), "POST", PATH)
    assert verify(key, headers, "POST", PATH) is None


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
        "aud": AUD,
        "jti": "n" * 22,
        "iat": int(time.time()),
        "exp": int(time.time()) + 30,
    }
    assert verify(key, signed(good), "GET", "/x") is not None
    for bad in (
        {"role": "public"},
        {"role": "root"},
        {"kind": "robot"},
        {"name": "no spaces"},
        {"exp": "soon"},
        {"exp": True},
        {"aud": ["n1/custom-service"]},
        {"jti": 12345678901234567890},
        {"jti": "short"},
        {"iat": None},
        {"iat": "now"},
    ):
        assert verify(key, signed({**good, **bad}), "GET", "/x") is None, bad


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


def served_config(app_config: dict[str, Any], broker: Broker) -> dict[str, Any]:
    """custom-service served on its own, logged in with its own account (`pyedge serve`)."""
    login = broker.login("custom-service")
    return {
        **app_config,
        "EDGE_MQTT_USERNAME": login["username"],
        "EDGE_MQTT_PASSWORD": login["password"],
        "EDGE_ADVERTISE_URL": "http://127.0.0.1:9",
    }


@pytest.fixture
def trusting_app(
    app_config: dict[str, Any], broker: Broker, hub_private: Ed25519PrivateKey
) -> Iterator[Flask]:
    app = create_app(served_config(app_config, broker))
    assert app.extensions["pyedge"].serves_alone
    yield app
    app.extensions["pyedge"].close()


def forwarded(
    key: Ed25519PrivateKey, role: Role, method: str, path: str, audience: str
) -> dict[str, str]:
    identity = Identity(name="alice", role=role, kind="user")
    return sign_caller(key, identity, method, path, audience=audience)


def test_a_service_trusts_the_hubs_caller_and_enforces_its_role(
    trusting_app: Flask, hub_private: Ed25519PrivateKey, node_id: str
) -> None:
    client = trusting_app.test_client()
    aud = f"{node_id}/custom-service"
    ops = "/api/custom-service/ops"
    response = client.get(ops, headers=forwarded(hub_private, Role.VIEWER, "GET", ops, aud))
    assert response.status_code == 200, response.json
    as_viewer = forwarded(hub_private, Role.VIEWER, "POST", PATH, aud)
    response = client.post(PATH, json={"seconds": 0.1}, headers=as_viewer)
    assert response.status_code == 403
    assert "alice@hub is viewer" in response.json["message"]
    # An operator: no CSRF token asked for, though it is a user (the hub checked it).
    as_operator = forwarded(hub_private, Role.OPERATOR, "POST", PATH, aud)
    response = client.post(PATH, json={"seconds": 0.1}, headers=as_operator)
    assert response.status_code == 202, response.json
    auth = trusting_app.extensions[AUTH_EXTENSION]
    entries = auth.accounts.audit_log(10)
    assert any(e["actor"] == "user:alice@hub" and e["status"] == 202 for e in entries), entries


def test_a_service_refuses_forged_or_misplaced_callers(
    trusting_app: Flask, hub_private: Ed25519PrivateKey, node_id: str
) -> None:
    client = trusting_app.test_client()
    aud = f"{node_id}/custom-service"
    ops = "/api/custom-service/ops"
    forger = forwarded(Ed25519PrivateKey.generate(), Role.ADMIN, "GET", ops, aud)
    assert client.get(ops, headers=forger).status_code == 401
    elsewhere = forwarded(hub_private, Role.ADMIN, "GET", "/api/custom-service/hello", aud)
    assert client.get(ops, headers=elsewhere).status_code == 401
    unsigned = {CALLER_HEADER: forwarded(hub_private, Role.ADMIN, "GET", ops, aud)[CALLER_HEADER]}
    assert client.get(ops, headers=unsigned).status_code == 401


def test_a_caller_for_another_node_or_path_or_a_second_time_is_refused(
    trusting_app: Flask, hub_private: Ed25519PrivateKey, node_id: str
) -> None:
    client = trusting_app.test_client()
    aud = f"{node_id}/custom-service"
    ops = "/api/custom-service/ops"
    # What the hub signed for the same service on another node (which may replay it here).
    other_node = forwarded(hub_private, Role.ADMIN, "GET", ops, "other-node/custom-service")
    assert client.get(ops, headers=other_node).status_code == 401
    # A path of the process that is no service's: its accounts.
    tokens = "/api/auth/tokens"
    assert (
        client.get(
            tokens, headers=forwarded(hub_private, Role.ADMIN, "GET", tokens, aud)
        ).status_code
        == 401
    )
    # Once, not twice: a captured caller cannot be sent again with another body.
    once = forwarded(hub_private, Role.OPERATOR, "POST", PATH, aud)
    assert client.post(PATH, json={"seconds": 0.1}, headers=once).status_code == 202
    again = client.post(PATH, json={"seconds": 30}, headers=once)
    assert again.status_code == 401, again.json
    # The process's document belongs to the service it serves; a caller for no service
    # (no aud) is refused there as anywhere.
    doc = "/api/openapi.json"
    as_viewer = forwarded(hub_private, Role.VIEWER, "GET", doc, aud)
    assert client.get(doc, headers=as_viewer).status_code == 200
    unnamed = sign_caller(hub_private, Identity("alice", Role.VIEWER, "user"), "GET", doc)
    assert client.get(doc, headers=unnamed).status_code == 401


def test_an_edge_server_takes_no_forwarded_caller(
    app_config: dict[str, Any], hub_private: Ed25519PrivateKey, node_id: str
) -> None:
    # The hub's own in-process service, or a node's: its data dir holds hub.pub, but it is
    # the proxy that signs, never a service that is proxied to.
    app = create_app(app_config)
    try:
        assert not app.extensions["pyedge"].serves_alone
        client = app.test_client()
        aud = f"{node_id}/custom-service"
        ops = "/api/custom-service/ops"
        response = client.get(ops, headers=forwarded(hub_private, Role.ADMIN, "GET", ops, aud))
        assert response.status_code == 401
        response = client.post(
            PATH,
            json={"seconds": 0.1},
            headers=forwarded(hub_private, Role.OPERATOR, "POST", PATH, aud),
        )
        assert response.status_code == 401
    finally:
        app.extensions["pyedge"].close()


def test_refused_callers_are_logged_once_a_minute(
    trusting_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    # Anyone can send the header: a flood of them must not flood the log.
    client = trusting_app.test_client()
    ops = "/api/custom-service/ops"
    with caplog.at_level(logging.DEBUG, logger="pyedge.auth"):
        for _ in range(20):
            response = client.get(ops, headers={CALLER_HEADER: "bogus", SIGNATURE_HEADER: "x"})
            assert response.status_code == 401
    refused = [r for r in caplog.records if CALLER_HEADER in r.getMessage()]
    assert [r.levelno for r in refused].count(logging.WARNING) == 1
    assert len(refused) == 20
    # A minute on, one more warning, which counts what it did not say.
    auth = trusting_app.extensions[AUTH_EXTENSION]
    auth.refusals._last -= 61
    caplog.clear()
    client.get(ops, headers={CALLER_HEADER: "bogus", SIGNATURE_HEADER: "x"})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "19 more refused" in warnings[0], warnings


def test_no_hub_key_no_trust_until_it_comes(
    app_config: dict[str, Any], broker: Broker, key: Ed25519PrivateKey, node_id: str
) -> None:
    app = create_app(served_config(app_config, broker))
    try:
        client = app.test_client()
        aud = f"{node_id}/custom-service"
        ops = "/api/custom-service/ops"
        headers = forwarded(key, Role.VIEWER, "GET", ops, aud)
        assert client.get(ops, headers=headers).status_code == 401
        # `pyedge join` writes hub.pub while the service runs.
        public = hub_public_key_path(Path(app_config["EDGE_DATA_DIR"]))
        public.parent.mkdir(parents=True, exist_ok=True)
        public.write_bytes(
            key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        )
        headers = forwarded(key, Role.VIEWER, "GET", ops, aud)
        assert client.get(ops, headers=headers).status_code == 200
    finally:
        app.extensions["pyedge"].close()


def test_a_caller_issued_before_the_process_started_is_refused(key: Ed25519PrivateKey) -> None:
    # The nonces are kept in memory: after a restart, one used before would pass again.
    replays = ReplayCache()
    before = sign(key, "POST", PATH, now=replays.started - 5, ttl=50)
    with pytest.raises(CallerRefused, match="issued before this process started"):
        check_caller(key.public_key(), before, "POST", PATH, audience=HERE, replays=replays)
    assert verify(key, sign(key, "POST", PATH), "POST", PATH, replays=replays) is not None
