"""What the edge-server takes from remote services: documents, health reports, announcements.

A joined node controls what its announcement says and what answers at its URL. These tests
play such a node: a small HTTP server of the test's own, and announcements fed to the
listener as the bus would.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask
from openapi_spec_validator import validate

from edge_server import create_app
from edge_server.network.openapi_merge import merge_service
from edge_server.network.remote import EXTENSION as REMOTE_EXTENSION
from edge_server.network.remote import RemoteRegistry, RemoteService
from edge_server.network.remote_http import FetchError, fetch_json
from edge_server.network.remote_listener import RemoteListener, announced_url
from pyedge.identity import CALLER_HEADER
from pyedge.metrics import Metrics
from pyedge.security import Role
from tests.conftest import authorized_client
from tests.test_openapi import LOCAL_BEARER, local_document, remote_document

SLUG = "widget"
ATTACKER = "http://attacker.example"

# --- a remote node of the test's own ------------------------------------------------------


class Remote:
    """An HTTP server whose GET answers what `reply` (the handler) does; it notes each request."""

    def __init__(self, reply: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        remote = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                remote.requests.append((self.path, dict(self.headers.items())))
                with contextlib.suppress(OSError):
                    reply(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send_json(handler: BaseHTTPRequestHandler, body: Any, status: int = 200) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def drip(handler: BaseHTTPRequestHandler) -> None:
    """A body that never ends, a byte now and then."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.end_headers()
    while True:
        handler.wfile.write(b" ")
        handler.wfile.flush()
        time.sleep(0.3)


def endless(handler: BaseHTTPRequestHandler) -> None:
    """A body that never ends, as fast as it goes."""
    handler.send_response(200)
    handler.end_headers()
    chunk = b"[" * 65536
    while True:
        handler.wfile.write(chunk)


@pytest.fixture
def remotes() -> Iterator[Callable[[Callable[[BaseHTTPRequestHandler], None]], Remote]]:
    made: list[Remote] = []

    def make(reply: Callable[[BaseHTTPRequestHandler], None]) -> Remote:
        made.append(Remote(reply))
        return made[-1]

    yield make
    for remote in made:
        remote.close()


def service(url: str, node: str = "evil", **changes: Any) -> RemoteService:
    fields: dict[str, Any] = {
        "node": node,
        "slug": SLUG,
        "title": "Widget",
        "version": "1",
        "description": "",
        "machine": "aarch64",
        "url": url,
        "ops": ({"name": "read", "kind": "task", "role": "operator", "description": ""},),
        "announced_at": "2026-11-23T12:00:00Z",
        **changes,
    }
    return RemoteService(**fields)


@pytest.fixture
def hub(app_config: dict[str, Any]) -> Iterator[Flask]:
    app = create_app(
        {
            **app_config,
            "EDGE_ROLE": "hub",
            "EDGE_REMOTE_HEALTH_INTERVAL": 3600,
            "EDGE_SITE": "merge-tests",  # no one writes here: the tests fill the registry
        }
    )
    yield app
    app.extensions["pyedge"].close()


def registry_of(app: Flask) -> RemoteRegistry:
    found: RemoteRegistry = app.extensions[REMOTE_EXTENSION]
    return found


def claims(headers: dict[str, str]) -> dict[str, Any]:
    value = {k.lower(): v for k, v in headers.items()}[CALLER_HEADER.lower()]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    return decoded


def wait_until(condition: Callable[[], Any], timeout: float = 5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


# --- 1. the document is fetched as the edge-server, from <url>/api/openapi.json -------------


def test_the_document_is_fetched_as_a_viewer_from_the_base_url(hub: Flask, remotes: Any) -> None:
    remote = remotes(lambda handler: send_json(handler, remote_document()))
    # An announcement naming another path (a joined node's choice) is not followed.
    registry_of(hub).put(
        service(remote.url, openapi_url=f"{remote.url}/api/auth/tokens", node="n1")
    )
    admin = authorized_client(hub, Role.ADMIN)
    spec = wait_until(
        lambda: (
            (doc := admin.get("/api/openapi.json").json)
            and "/api/widget/items/{id}" in doc["paths"]
            and doc
        )
    )
    validate(spec)
    assert [path for path, _headers in remote.requests] == ["/api/openapi.json"]
    signed = claims(remote.requests[0][1])
    assert (signed["name"], signed["role"]) == ("edge-server", "viewer")
    assert (signed["method"], signed["path"]) == ("GET", "/api/openapi.json")


def test_an_announcement_naming_another_openapi_url_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listener, registry = bare_listener()
    body = announcement("http://10.0.0.7:8101", openapi="http://10.0.0.7:8101/api/auth/tokens")
    with caplog.at_level(logging.WARNING, logger="edge_server.network.remote_listener"):
        listener._on_announce(message("pyedge/n1/widget/announce", body))
    assert registry.services() == []
    assert any("malformed" in r.message and "openapi" in r.message for r in caplog.records)
    listener._on_announce(
        message("pyedge/n1/widget/announce", announcement("http://10.0.0.7:8101"))
    )
    [known] = registry.services()
    assert known.openapi_url == "http://10.0.0.7:8101/api/openapi.json"


# --- 2. deadlines, caps, redirects, proxies; background fetches ------------------------------


def test_a_dripping_health_check_ends_at_its_deadline(remotes: Any) -> None:
    remote = remotes(drip)
    listener, _registry = bare_listener(interval=1)
    began = time.monotonic()
    problem = listener._probe(service(remote.url))
    assert time.monotonic() - began < 2.5
    assert problem is not None and problem.startswith(f"no answer from {remote.url}/api/health")


def test_fetch_json_caps_the_body_and_follows_no_redirect_nor_proxy(
    remotes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = remotes(endless)
    with pytest.raises(FetchError, match="more than 65536 bytes"):
        fetch_json(big.url, headers={}, deadline_s=5, max_bytes=65536)

    elsewhere = remotes(lambda handler: send_json(handler, {"stolen": True}))

    def moved(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", f"{elsewhere.url}/x")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    redirecting = remotes(moved)
    with pytest.raises(FetchError, match="answered HTTP 302"):
        fetch_json(redirecting.url, headers={}, deadline_s=5, max_bytes=1024)
    assert elsewhere.requests == []

    # An environment proxy is never used: the request goes straight to the URL.
    proxy = remotes(lambda handler: send_json(handler, {"via": "proxy"}))
    direct = remotes(lambda handler: send_json(handler, {"via": "direct"}))
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert fetch_json(direct.url, headers={}, deadline_s=5, max_bytes=1024) == {"via": "direct"}
    assert proxy.requests == []


def test_views_never_wait_on_a_slow_document_and_fetch_it_once(hub: Flask, remotes: Any) -> None:
    remote = remotes(drip)
    registry_of(hub).put(service(remote.url, node="n1"))
    client = authorized_client(hub, Role.VIEWER)
    time.sleep(1.1)  # past the short grace a just-announced service gets
    for _ in range(5):
        began = time.monotonic()
        response = client.get("/api/openapi.json")
        assert response.status_code == 200
        assert time.monotonic() - began < 0.5
        assert not any(path.startswith("/api/widget") for path in response.json["paths"])
    assert len(remote.requests) == 1  # one fetch in flight for the service, not one per view


# --- 3. nothing in a remote document sends the browser elsewhere -----------------------------


def hostile_document() -> dict[str, Any]:
    document = remote_document()
    document["servers"] = [{"url": ATTACKER}]
    item = document["paths"]["/api/widget/items/{id}"]
    item["servers"] = [{"url": ATTACKER}]
    get = item["get"]
    get["servers"] = [{"url": ATTACKER}]
    get["security"] = [{"evilOAuth": []}, {"bearerAuth": []}]
    get["callbacks"] = {
        "done": {
            "{$request.body#/cb}": {
                "servers": [{"url": ATTACKER}],
                "post": {"responses": {"200": {"description": "ok"}}},
            }
        }
    }
    get["responses"]["200"]["links"] = {
        "next": {"operationId": "getItem", "server": {"url": ATTACKER}}
    }
    schemas = document["components"]["schemas"]
    schemas["Part"]["properties"]["remote"] = {"$ref": f"{ATTACKER}/schema.json#/Evil"}
    schemas["Part"]["properties"]["servers"] = {"type": "string"}  # a property: kept
    document["components"]["securitySchemes"] = {
        "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "attacker"},
        "evilOAuth": {
            "type": "oauth2",
            "flows": {"implicit": {"authorizationUrl": f"{ATTACKER}/auth", "scopes": {}}},
        },
    }
    return document


def test_servers_security_schemes_and_external_refs_are_left_out() -> None:
    merged = local_document()
    merge_service(
        merged,
        service("http://10.0.0.2:8101", node="n1"),
        hostile_document(),
        "widget.",
        True,
        False,
    )
    validate(merged)
    text = json.dumps(merged)
    assert ATTACKER not in text
    assert "servers" not in merged
    item = merged["paths"]["/api/widget/items/{id}"]
    assert "servers" not in item and "servers" not in item["get"]
    assert merged["components"]["securitySchemes"] == {"bearerAuth": LOCAL_BEARER}
    assert item["get"]["security"] == [{"bearerAuth": []}]
    part = merged["components"]["schemas"]["widget.Part"]["properties"]
    assert part["remote"] == {} and part["servers"] == {"type": "string"}


@pytest.mark.parametrize(
    "path",
    [
        "/api/widget/../auth/users/{name}",
        "/api/widget/%2e%2e/auth/users/{name}",
        "/api/widget/%252e%252e/audit",
        "/api/widget/./x",
        "/api/widget/a\\..\\b",
        "/api/widget/x?y=1",
        "/api/widget/x#y",
    ],
)
def test_paths_a_browser_would_resolve_elsewhere_are_left_out(path: str) -> None:
    # Swagger UI on the hub calls a documented path with the user's session and CSRF
    # token: a browser resolves dot segments first, so this would be the hub's own API.
    document = remote_document()
    document["paths"][path] = {
        "delete": {
            "summary": "Reset the sensor (safe)",
            "responses": {"200": {"description": "ok"}},
        }
    }
    merged = local_document()
    merge_service(
        merged, service("http://10.0.0.2:8101", node="n1"), document, "widget.", True, False
    )
    assert path not in merged["paths"]
    assert "/api/widget/items/{id}" in merged["paths"]
    validate(merged)


# --- 4. announced URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://10.0.0.7:21",
        "http://user:pw@10.0.0.7:8101",
        "http://10.0.0.7:8101/api/auth/tokens",
        "http://10.0.0.7:8101/?x=1",
        "http://10.0.0.7:8101/#frag",
        "http://:8101",
        "http://127.0.0.1:8101",
        "http://127.1:8101",
        "http://2130706433:8101",
        "http://localhost:8101",
        "http://api.localhost:8101",
        "http://[::1]:8101",
        "http://[::ffff:127.0.0.1]:8101",
        "http://0.0.0.0:8101",
        "http://[::]:8101",
        "http://bad host:8101",
    ],
)
def test_an_announced_url_that_is_no_plain_remote_base_url_is_refused(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    listener, registry = bare_listener()
    with caplog.at_level(logging.WARNING, logger="edge_server.network.remote_listener"):
        listener._on_announce(message("pyedge/n1/widget/announce", announcement(url)))
    assert registry.services() == []
    assert any("malformed" in r.message for r in caplog.records)


def test_loopback_is_for_the_own_node_only() -> None:
    listener, registry = bare_listener()
    listener._on_announce(
        message("pyedge/hub/widget/announce", announcement("http://127.0.0.1:8101/", node="hub"))
    )
    assert [(s.node, s.url) for s in registry.services()] == [("hub", "http://127.0.0.1:8101")]
    assert announced_url("https://edge-2.local:8443", loopback_ok=False) == (
        "https://edge-2.local:8443"
    )


# --- 5. what the listener keeps ---------------------------------------------------------------


def test_only_announced_operations_are_kept_and_a_forgotten_service_leaves_nothing() -> None:
    listener, registry = bare_listener()
    state = json.dumps({"state": "idle", "success": None})
    # Before any announcement: nothing kept but a bounded few statuses.
    for n in range(1000):
        listener._on_op(message(f"pyedge/n1/widget/ops/op{n}", state))
        listener._on_status(message(f"pyedge/n1/slug{n}/status", "offline"))
    assert listener._ops == {}
    assert len(listener._statuses) + len(listener._pending) <= 256

    listener._on_announce(message("pyedge/n1/widget/announce", announcement("http://10.0.0.7:1")))
    for n in range(100):
        listener._on_op(message(f"pyedge/n1/widget/ops/op{n}", state))
    listener._on_op(message("pyedge/n1/widget/ops/read", state))
    assert dict(listener.op_states("n1", "widget")) == {"read": {"state": "idle", "success": None}}

    registry.forget("n1", "widget")
    key = ("n1", "widget")
    assert key not in listener._ops and key not in listener._statuses
    assert key not in listener._pending and key not in listener._reported


def test_failed_documents_are_kept_once_per_service(hub: Flask) -> None:
    docs = hub.view_functions["api-docs.openapi_json"].__self__.remote_docs
    registry = registry_of(hub)
    closed = "http://127.0.0.1:9"  # discard: nothing listens
    for n in range(20):
        registry.put(service(closed, node="n1", announced_at=f"2026-11-23T12:00:{n:02}Z"))
        wait_until(lambda: not docs._inflight)
    assert list(docs._failed) == [("n1", SLUG)]
    registry.forget("n1")
    assert docs._failed == {}


# --- 6. /api/health ---------------------------------------------------------------------------


def test_health_lists_remote_services_to_authenticated_callers_only(hub: Flask) -> None:
    registry_of(hub).put(service("http://10.0.0.7:8101", node="n1"))
    anonymous = hub.test_client().get("/api/health")
    assert anonymous.status_code in (200, 503)  # whether the bus is up yet or not
    assert "remote" not in anonymous.json
    assert "10.0.0.7" not in anonymous.get_data(as_text=True)
    viewer = authorized_client(hub, Role.VIEWER).get("/api/health")
    assert [(r["node"], r["slug"]) for r in viewer.json["remote"]] == [("n1", SLUG)]


# --- helpers for the listener -------------------------------------------------------------------


def bare_listener(interval: float = 10) -> tuple[RemoteListener, RemoteRegistry]:
    """A listener on a host of node `hub` serving nothing, not subscribed to any bus."""
    registry = RemoteRegistry()
    host = SimpleNamespace(node="hub", runtimes={}, bus=None, metrics=Metrics())
    listener = RemoteListener(
        registry,
        host,  # type: ignore[arg-type]
        root="pyedge",
        nodes="+",
        interval=interval,
        grace=300,
    )
    return listener, registry


def message(topic: str, payload: str | bytes, retain: bool = False) -> Any:
    data = payload.encode() if isinstance(payload, str) else payload
    return SimpleNamespace(topic=topic, payload=data, retain=retain)


def announcement(url: str, node: str = "n1", openapi: str | None = None) -> str:
    base = url.rstrip("/")
    return json.dumps(
        {
            "slug": SLUG,
            "title": "Widget",
            "version": "1",
            "node": node,
            "url": url,
            "openapi": openapi if openapi is not None else f"{base}/api/openapi.json",
            "ops": [{"name": "read", "kind": "task"}],
            "announced_at": "2026-11-23T12:00:00Z",
        }
    )
