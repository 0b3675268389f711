"""Authentication and roles: the matrix from the OpenAPI document, login, CSRF, tokens."""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from edge_server import cli, create_app
from pyedge.auth import EXTENSION, MAX_FAILURES, Auth
from pyedge.security import USER_ROLES, Role
from tests.conftest import authorize

# Routes outside the OpenAPI document: what a stranger gets from each.
UNDOCUMENTED = {
    "/api/openapi.json": 401,
    "/metrics": 401,  # Prometheus' text format, at its default path: not in the document
    "/api/docs": 302,
    "/api/docs/assets/<path:filename>": 302,
    "/": 302,
    "/login": 200,
    "/setup": 200,
    "/logout": 403,  # a POST: without the session's CSRF token
    # The dashboard's pages send a stranger to the login page; of its assets only the
    # stylesheet is public (the login page needs it): x.css is not there.
    "/static/<path:filename>": 302,
    "/static/css/<path:filename>": 404,
    "/sensors": 302,
    "/containers": 302,
    "/operations": 302,
    "/admin": 302,
    "/admin/<slug>": 302,
    "/users": 302,
}
# The only operations a stranger may call.
PUBLIC = {
    ("GET", "/api/health"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/logout"),
    ("POST", "/api/auth/setup"),
}
# Roles the issue names for particular endpoints (the matrix checks that each is enforced
# as documented; this checks the documentation says what the issue asks).
REQUIRED = {
    ("POST", "/api/custom-service/ops/sleep/start"): "operator",
    ("POST", "/api/container-manager/containers/{ident}/stop"): "operator",
    ("PUT", "/api/device-service/actuators/{name}"): "operator",
    ("POST", "/api/container-manager/containers"): "admin",
    ("PUT", "/api/container-manager/apps/{name}"): "admin",
    ("POST", "/api/container-manager/ops/pull/start"): "admin",
    ("DELETE", "/api/container-manager/images/{ref}"): "admin",
    ("PATCH", "/api/device-service/sensors/{name}"): "admin",
    ("POST", "/api/auth/users"): "admin",
    ("POST", "/api/auth/tokens"): "admin",
    ("GET", "/api/audit"): "admin",
    ("GET", "/api/services"): "viewer",
    ("GET", "/api/container-manager/containers"): "viewer",
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


def test_public_operations_and_required_roles(full_app: Flask) -> None:
    found = {(m, p): op.get("x-pyedge-role") for m, p, op in operations(full_app)}
    assert {key for key, role in found.items() if role == "public"} == PUBLIC
    for key, role in REQUIRED.items():
        assert found.get(key) == role, f"{key}: documented {found.get(key)}, required {role}"


def test_no_route_is_missing_from_the_matrix(full_app: Flask) -> None:
    documented = {re.sub(r"\{([^}]+)\}", r"<\1>", path) for _, path, _ in operations(full_app)}
    client = full_app.test_client()
    for rule in full_app.url_map.iter_rules():
        route = re.sub(r"<(?:[a-z]+:)?([^>]+)>", r"<\1>", rule.rule)
        if route in documented:
            continue
        assert rule.rule in UNDOCUMENTED, f"{rule.rule} is neither documented nor known"
        method = "POST" if rule.methods and "GET" not in rule.methods else "GET"
        path = re.sub(r"<[^>]+>", "x.css", rule.rule)
        for verb in (method, "HEAD") if method == "GET" else (method,):
            status = client.open(path, method=verb).status_code
            assert status == UNDOCUMENTED[rule.rule], f"{verb} {rule.rule} as a stranger: {status}"


def test_no_page_may_be_framed(app: Flask) -> None:
    for path in ("/login", "/api/health"):
        response = app.test_client().get(path)
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert "Strict-Transport-Security" not in response.headers  # no TLS here


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


@pytest.fixture
def first_run(
    app_config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> Iterator[tuple[Flask, str]]:
    """A node with no user yet, and the setup code it logged."""
    caplog.set_level("WARNING")
    app = create_app(app_config)
    yield app, setup_code(caplog)
    app.extensions["pyedge"].close()


def test_racing_setups_make_one_admin(first_run: tuple[Flask, str]) -> None:
    app, code = first_run

    def setup(index: int) -> int:
        body = {"code": code, "name": f"adm{index}", "password": PASSWORD}
        return app.test_client().post("/api/auth/setup", json=body).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(setup, range(4)))
    assert sorted(statuses) == [201, 403, 403, 403]
    assert len(accounts(app).accounts.users()) == 1


def test_a_user_made_on_the_device_voids_the_setup_code(first_run: tuple[Flask, str]) -> None:
    app, code = first_run
    store = accounts(app).accounts
    store.add_user("dev", PASSWORD, Role.VIEWER)
    store.delete_user("dev")  # no user again: the logged code must not come back
    body = {"code": code, "name": "late", "password": PASSWORD}
    assert app.test_client().post("/api/auth/setup", json=body).status_code == 403


def test_secrets_are_owner_only(app: Flask, app_config: dict[str, Any]) -> None:
    data_dir = Path(app_config["EDGE_DATA_DIR"])
    for name in ("secret_key", "accounts.db"):
        mode = (data_dir / name).stat().st_mode & 0o777
        assert mode == 0o600, f"{name} is {oct(mode)}"


def test_first_run_setup_code_works_once(first_run: tuple[Flask, str]) -> None:
    app, code = first_run
    client = app.test_client()
    wrong = client.post(
        "/api/auth/setup", json={"code": "AAAA-BBBB-CCCC", "name": "root", "password": PASSWORD}
    )
    assert wrong.status_code == 403
    first = client.post("/api/auth/setup", json={"code": code, "name": "ada", "password": PASSWORD})
    assert first.status_code == 201
    assert first.json["role"] == "admin"
    assert client.get("/api/auth/me").json["name"] == "ada"  # logged in by it
    again = app.test_client().post(
        "/api/auth/setup", json={"code": code, "name": "eve", "password": PASSWORD}
    )
    assert again.status_code == 403
    assert [u["name"] for u in accounts(app).accounts.users()] == ["ada"]
    assert app.test_client().get("/setup").status_code == 302  # no first run any more


def test_setup_page_creates_the_admin(first_run: tuple[Flask, str]) -> None:
    app, code = first_run
    client = app.test_client()
    page = client.get("/setup").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf
    form = {"code": code, "name": "ada", "password": PASSWORD}
    assert client.post("/setup", data=form).status_code == 403  # no CSRF token
    done = client.post("/setup", data={**form, "csrf_token": csrf[1]})
    assert done.status_code == 302
    assert client.get("/").status_code == 200


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
    # The CSRF token is in no cookie a script of another port of this host could read.
    assert [c for c in response.headers.getlist("Set-Cookie") if csrf in c] == []

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


def test_another_accounts_success_buys_no_more_guesses(user_app: Flask) -> None:
    accounts(user_app).accounts.add_user("vic", PASSWORD, Role.VIEWER)
    client = user_app.test_client()
    statuses = []
    for attempt in range(3 * MAX_FAILURES):
        name, password = ("vic", PASSWORD) if attempt % 4 == 3 else ("olga", "wrong-pass")
        statuses.append(
            client.post("/api/auth/login", json={"name": name, "password": password}).status_code
        )
    assert 429 in statuses
    assert statuses.count(401) <= MAX_FAILURES


def test_parallel_guesses_are_counted_at_once(user_app: Flask) -> None:
    def guess(_: int) -> int:
        return (
            user_app.test_client()
            .post("/api/auth/login", json={"name": "olga", "password": "wrong-pass"})
            .status_code
        )

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(guess, range(24)))
    assert statuses.count(401) <= MAX_FAILURES
    assert statuses.count(429) >= 24 - MAX_FAILURES


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


def test_a_token_changed_by_another_process_takes_effect_at_once(app: Flask) -> None:
    # The store remembers the callers it read; a change through any other connection voids
    # that at the next request (the CLI writes the same file from another process).
    store = accounts(app).accounts
    token = store.create_token("remembered", Role.ADMIN)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(3):  # read once, then answered from memory
        assert client.get("/api/auth/me", headers=headers).json["role"] == "admin"
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE tokens SET role = 'viewer' WHERE name = 'remembered'")
    assert client.get("/api/auth/me", headers=headers).json["role"] == "viewer"
    with sqlite3.connect(store.path) as db:
        db.execute("DELETE FROM tokens WHERE name = 'remembered'")
    assert client.get("/api/auth/me", headers=headers).status_code == 401


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


def test_the_last_admin_cannot_be_removed(client: FlaskClient, app: Flask) -> None:
    store = accounts(app).accounts
    store.add_user("only", PASSWORD, Role.ADMIN)
    refused = client.delete("/api/auth/users/only")
    assert refused.status_code == 409
    assert "last admin" in refused.json["message"]
    store.add_user("second", PASSWORD, Role.ADMIN)
    assert client.delete("/api/auth/users/only").status_code == 204


def test_session_changes_need_the_header_and_this_origin(user_app: Flask) -> None:
    client = user_app.test_client()
    csrf = client.post("/api/auth/login", json={"name": "olga", "password": PASSWORD}).json[
        "csrf_token"
    ]
    stop = "/api/custom-service/ops/heartbeat/stop"
    # A form post with the token as a field (what another page could send) is refused.
    assert client.post(stop, data={"csrf_token": csrf}).status_code == 403
    elsewhere = client.post(
        stop, headers={"X-CSRF-Token": csrf, "Origin": "http://raspberrypi.local:1880"}
    )
    assert elsewhere.status_code == 403
    assert "cross-origin" in elsewhere.json["message"]
    here = client.post(stop, headers={"X-CSRF-Token": csrf, "Origin": "http://localhost"})
    assert here.status_code == 409  # past the guard: the heartbeat is not running


def test_token_expiry_is_bounded(client: FlaskClient) -> None:
    body = {"name": "forever", "role": "viewer", "expires_days": 1e7}
    assert client.post("/api/auth/tokens", json=body).status_code == 422


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
