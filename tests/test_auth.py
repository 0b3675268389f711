"""Authentication and roles: the matrix from the OpenAPI document, login, CSRF, tokens."""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from edge_server import cli, create_app
from pyedge.auth import CSRF_COOKIE, EXTENSION, MAX_FAILURES, Auth
from pyedge.security import USER_ROLES, Role
from tests.conftest import authorize

# Routes outside the OpenAPI document, with the role each needs (GET).
UNDOCUMENTED = {
    "/api/openapi.json": Role.VIEWER,
    "/api/docs": Role.VIEWER,
    "/api/docs/assets/<path:filename>": Role.VIEWER,
    "/": Role.VIEWER,
    "/login": Role.PUBLIC,
    "/setup": Role.PUBLIC,
    "/logout": Role.PUBLIC,
    "/static/<path:filename>": Role.PUBLIC,
}
PASSWORD = "correct horse battery"


def accounts(app: Flask) -> Auth:
    auth: Auth = app.extensions[EXTENSION]
    return auth


@pytest.fixture
def full_app(app_config: dict[str, Any], tmp_path: Path) -> Iterator[Flask]:
    """Every installed service; the container-manager with no engine (it answers 503)."""
    app = create_app(
        {
            **app_config,
            "EDGE_SERVICES": None,
            "EDGE_CONTAINER_MANAGER_DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock",
            "EDGE_CONTAINER_MANAGER_RECONCILE_AUTOSTART": False,
            "EDGE_DEVICE_SERVICE_ACQUIRE_AUTOSTART": False,
        }
    )
    yield app
    app.extensions["pyedge"].close()


def operations(app: Flask) -> list[tuple[str, str, dict[str, Any]]]:
    """Every operation of the OpenAPI document: (method, path, its OpenAPI object)."""
    spec = (
        app.test_client()
        .get("/api/openapi.json", headers={"Authorization": f"Bearer {authorize(app)}"})
        .json
    )
    return [
        (method.upper(), path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def concrete(path: str) -> str:
    """A path with its parameters filled in (any value: the answer only must not be 401/403)."""
    return re.sub(r"\{[^}]+\}", "x", path)


def call(client: FlaskClient, method: str, path: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # The body does not matter: a 422 is as good an answer as a 200 here.
    response = client.open(concrete(path), method=method, headers=headers, json={})
    return response.status_code


def test_the_auth_matrix_covers_every_operation(full_app: Flask) -> None:
    client = full_app.test_client()
    tokens = {role: authorize(full_app, role) for role in USER_ROLES}
    found = operations(full_app)
    assert len(found) > 60
    for method, path, op in found:
        label = op.get("x-pyedge-role")
        assert label, f"{method} {path} declares no role"
        role = Role.parse(label) if label != "public" else Role.PUBLIC
        if role is Role.PUBLIC:
            assert op["security"] == [], path
            continue
        assert op["security"] == [{"bearerAuth": []}, {"cookieAuth": []}], path
        assert call(client, method, path, None) == 401, f"{method} {path} without credentials"
        for lower in USER_ROLES:
            if lower < role:
                status = call(client, method, path, tokens[lower])
                assert status == 403, f"{method} {path} as {lower.label}: {status}"
        status = call(client, method, path, tokens[role])
        assert status not in (401, 403), f"{method} {path} as {role.label}: {status}"


def test_no_route_is_missing_from_the_matrix(full_app: Flask) -> None:
    documented = {re.sub(r"\{([^}]+)\}", r"<\1>", path) for _, path, _ in operations(full_app)}
    for rule in full_app.url_map.iter_rules():
        route = re.sub(r"<(?:[a-z]+:)?([^>]+)>", r"<\1>", rule.rule)
        if route in documented:
            continue
        assert rule.rule in UNDOCUMENTED, f"{rule.rule} is neither documented nor known"


def test_pages_send_strangers_to_the_login_page(full_app: Flask) -> None:
    client = full_app.test_client()
    for path in ("/", "/api/docs"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/login?next=")
    assert client.get("/api/openapi.json").status_code == 401
    assert client.get("/api/health").status_code in (200, 503)
    assert client.get("/login").status_code == 200


def test_no_default_credentials(app: Flask) -> None:
    store = accounts(app).accounts
    assert store.users() == []
    assert [t for t in store.tokens() if not t["name"].startswith("test-")] == []
    client = app.test_client()
    for name, password in [("admin", "admin"), ("admin", "password"), ("pi", "raspberry")]:
        response = client.post("/api/auth/login", json={"name": name, "password": password})
        assert response.status_code == 401


def setup_code(caplog: pytest.LogCaptureFixture) -> str:
    found = re.findall(r"setup code ([A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4})", caplog.text)
    assert found, "the server did not print a setup code"
    return found[-1]


def test_first_run_setup_code_works_once(
    app_config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING")
    app = create_app(app_config)
    try:
        code = setup_code(caplog)
        client = app.test_client()
        wrong = client.post(
            "/api/auth/setup", json={"code": "AAAA-BBBB-CCCC", "name": "root", "password": PASSWORD}
        )
        assert wrong.status_code == 403
        first = client.post(
            "/api/auth/setup", json={"code": code, "name": "ada", "password": PASSWORD}
        )
        assert first.status_code == 201
        assert first.json["role"] == "admin"
        assert client.get("/api/auth/me").json["name"] == "ada"  # logged in by it
        again = app.test_client().post(
            "/api/auth/setup", json={"code": code, "name": "eve", "password": PASSWORD}
        )
        assert again.status_code == 403
        assert [u["name"] for u in accounts(app).accounts.users()] == ["ada"]
        assert app.test_client().get("/setup").status_code == 302  # no first run any more
    finally:
        app.extensions["pyedge"].close()


def test_setup_page_creates_the_admin(
    app_config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING")
    app = create_app(app_config)
    try:
        client = app.test_client()
        page = client.get("/setup").get_data(as_text=True)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert csrf
        form = {"code": setup_code(caplog), "name": "ada", "password": PASSWORD}
        assert client.post("/setup", data=form).status_code == 403  # no CSRF token
        done = client.post("/setup", data={**form, "csrf_token": csrf[1]})
        assert done.status_code == 302
        assert client.get("/").status_code == 200
    finally:
        app.extensions["pyedge"].close()


@pytest.fixture
def user_app(app: Flask) -> Flask:
    accounts(app).accounts.add_user("olga", PASSWORD, Role.OPERATOR)
    return app


def test_login_session_and_csrf(user_app: Flask) -> None:
    client = user_app.test_client()
    response = client.post("/api/auth/login", json={"name": "olga", "password": PASSWORD})
    assert response.status_code == 200
    csrf = response.json["csrf_token"]
    assert response.json["role"] == "operator"
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("session="))
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert client.get_cookie(CSRF_COOKIE).value == csrf

    assert client.get("/api/auth/me").json == {"name": "olga", "role": "operator", "kind": "user"}
    start = "/api/custom-service/ops/sleep/start"
    refused = client.post(start, json={"seconds": 0.1})
    assert refused.status_code == 403
    assert "CSRF" in refused.json["message"]
    wrong = client.post(start, json={"seconds": 0.1}, headers={"X-CSRF-Token": "nope"})
    assert wrong.status_code == 403
    assert (
        client.post(start, json={"seconds": 0.1}, headers={"X-CSRF-Token": csrf}).status_code == 202
    )
    # An operator is not an admin.
    assert client.get("/api/audit").status_code == 403

    client.post("/api/auth/logout", headers={"X-CSRF-Token": csrf})
    assert client.get("/api/auth/me").status_code == 401


def test_login_page_form(user_app: Flask) -> None:
    client = user_app.test_client()
    page = client.get("/login?next=/api/docs").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf
    form = {"name": "olga", "password": PASSWORD, "next": "/api/docs"}
    assert client.post("/login", data=form).status_code == 403  # no CSRF token
    bad = client.post("/login", data={**form, "password": "nope", "csrf_token": csrf[1]})
    assert bad.status_code == 401
    done = client.post("/login", data={**form, "csrf_token": csrf[1]})
    assert done.status_code == 302
    assert done.headers["Location"] == "/api/docs"
    # A login starts a new session, with a new CSRF token.
    again = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(True))
    assert again
    assert again[1] != csrf[1]
    evil = client.post(
        "/login", data={**form, "csrf_token": again[1], "next": "https://evil.example/"}
    )
    assert evil.headers["Location"] == "/"  # no open redirect


def test_failed_logins_are_rate_limited(user_app: Flask) -> None:
    client = user_app.test_client()
    for _ in range(MAX_FAILURES):
        wrong = client.post("/api/auth/login", json={"name": "olga", "password": "wrong-pass"})
        assert wrong.status_code == 401
    limited = client.post("/api/auth/login", json={"name": "olga", "password": PASSWORD})
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) > 0
    # Another client is not held back.
    other = user_app.test_client().post(
        "/api/auth/login",
        json={"name": "olga", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "10.0.0.9"},
    )
    assert other.status_code == 200


def test_tokens_created_used_and_revoked(client: FlaskClient, app: Flask) -> None:
    created = client.post("/api/auth/tokens", json={"name": "ci", "role": "viewer"})
    assert created.status_code == 201
    token = created.json["token"]
    assert token.startswith("pye_")
    listed = client.get("/api/auth/tokens").json
    entry = next(t for t in listed if t["name"] == "ci")
    assert "token" not in entry
    assert entry["last_used_at"] is None

    viewer = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    assert viewer.get("/api/services", headers=headers).status_code == 200
    assert viewer.post("/api/auth/tokens", headers=headers, json={}).status_code == 403
    used = next(t for t in client.get("/api/auth/tokens").json if t["name"] == "ci")
    assert used["last_used_at"] is not None

    assert client.post("/api/auth/tokens", json={"name": "ci", "role": "admin"}).status_code == 409
    assert client.delete("/api/auth/tokens/ci").status_code == 204
    assert viewer.get("/api/services", headers=headers).status_code == 401
    assert client.delete("/api/auth/tokens/ci").status_code == 404


def test_an_expired_token_is_refused(app: Flask) -> None:
    store = accounts(app).accounts
    token = store.create_token("short", Role.ADMIN, expires_days=1)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/services", headers=headers).status_code == 200
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE tokens SET expires_at = '2000-01-01T00:00:00+00:00'")
    assert client.get("/api/services", headers=headers).status_code == 401


def test_users_through_the_api_and_role_changes_apply_at_once(
    client: FlaskClient, app: Flask
) -> None:
    made = client.post(
        "/api/auth/users", json={"name": "vic", "password": PASSWORD, "role": "viewer"}
    )
    assert made.status_code == 201
    short = client.post("/api/auth/users", json={"name": "x", "password": "short", "role": "admin"})
    assert short.status_code == 422
    session = app.test_client()
    assert (
        session.post("/api/auth/login", json={"name": "vic", "password": PASSWORD}).status_code
        == 200
    )
    assert session.get("/api/services").status_code == 200
    assert client.delete("/api/auth/users/vic").status_code == 204
    assert session.get("/api/services").status_code == 401  # the session ends with the user


def test_changes_are_audited(client: FlaskClient, app: Flask) -> None:
    client.post("/api/custom-service/ops/sleep/start", json={"seconds": 0.05})
    client.post("/api/custom-service/ops/sleep/wait?timeout=5")  # reads: not a change
    app.test_client().post("/api/auth/login", json={"name": "nobody", "password": "whatever1"})
    entries = client.get("/api/audit?limit=10").json
    actions = [(e["action"], e["target"], e["status"]) for e in entries]
    assert ("POST", "/api/custom-service/ops/sleep/start", 202) in actions
    assert ("login", "/api/auth/login", 401) in actions
    assert not any(target.endswith("/wait") for _, target, _ in actions)
    start = next(e for e in entries if e["target"].endswith("/sleep/start"))
    assert start["actor"].startswith("token:test-")
    assert start["remote"] == "127.0.0.1"
    assert start["ts"]


def test_cli_makes_users_and_tokens_on_the_data_dir(app: Flask, app_config: dict[str, Any]) -> None:
    data_dir = app_config["EDGE_DATA_DIR"]
    runner = CliRunner()
    name = f"ci-{uuid.uuid4().hex[:6]}"
    made = runner.invoke(
        cli.root, ["token", "create", name, "--role", "operator", "--data-dir", data_dir]
    )
    assert made.exit_code == 0, made.output
    token = made.output.strip()
    client = app.test_client()
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json == {"name": name, "role": "operator", "kind": "token"}

    added = runner.invoke(
        cli.root,
        ["user", "add", "cli-admin", "--role", "admin", "--password-stdin", "--data-dir", data_dir],
        input=f"{PASSWORD}\n",
    )
    assert added.exit_code == 0, added.output
    assert (
        client.post("/api/auth/login", json={"name": "cli-admin", "password": PASSWORD}).json[
            "role"
        ]
        == "admin"
    )

    revoked = runner.invoke(cli.root, ["token", "revoke", name, "--data-dir", data_dir])
    assert revoked.exit_code == 0
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 401
    bad = runner.invoke(cli.root, ["token", "revoke", name, "--data-dir", data_dir])
    assert bad.exit_code == 1
    assert "no token" in bad.output
