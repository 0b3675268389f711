"""The hub's reverse proxy to remote services, and the merged OpenAPI document.

A "remote" service is a second app serving a test service on its own (logged in with the
service's own account, as `pyedge serve`) on a real HTTP server, trusting the hub's key;
the hub is a third app (EDGE_ROLE=hub), also on a real server, whose registry the tests
fill themselves (the MQTT listener is not under test here).
"""

from __future__ import annotations

import gzip
import http.client
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, Response, g, request
from openapi_spec_validator import validate
from werkzeug.serving import BaseWSGIServer, make_server

from edge_server import create_app
from edge_server.broker.accounts import ANY_NODE, ensure_accounts, plan_accounts
from edge_server.broker.embedded import Mosquitto
from edge_server.config import REPO_MQTT_CONFIG
from edge_server.network.identity import hub_key, sign_caller
from edge_server.network.proxy import relocated
from edge_server.network.remote import EXTENSION as REMOTE_EXTENSION
from edge_server.network.remote import OFFLINE, RemoteRegistry, RemoteService
from edge_server.registry import installed_services
from pyedge import EdgeService, Session
from pyedge.accounts import Identity
from pyedge.auth import EXTENSION as AUTH_EXTENSION
from pyedge.identity import CALLER_HEADER, SIGNATURE_HEADER, hub_public_key_path
from pyedge.security import Role, requires
from pyedge.service import topic_root
from tests.conftest import Broker, authorize, free_port

SLUG = "proxy-probe"
EVENT_PAUSE_S = 0.6

probe = EdgeService(SLUG, title="Proxy probe", version="0.1.0", import_name=__name__)
blp = probe.blueprint
# Set by the event stream when its client (the hub) went away.
stream_closed = threading.Event()


def work(session: Session, params: dict[str, Any]) -> str:
    """Do nothing, as an operator may."""
    return "done"


probe.task("work", work)


@blp.route("/echo", methods=["GET", "POST"])
@requires(Role.VIEWER)
def echo() -> Response:
    """What the request looked like here."""
    body = {
        "headers": dict(request.headers),
        "actor": g.identity.actor,
        "path": request.path,
        "query": request.query_string.decode(),
        "json": request.get_json(silent=True),
    }
    response = Response(json.dumps(body), mimetype="application/json")
    response.set_cookie("remote", "session")
    response.headers["X-Echo"] = "yes"
    return response


@blp.route("/upload", methods=["POST"])
@requires(Role.VIEWER)
def upload() -> dict[str, int]:
    """Count the body's bytes."""
    return {"bytes": len(request.get_data())}


@blp.route("/events")
def events() -> Response:
    """Three events, with pauses between them; or endless ones with ?endless=1."""
    endless = request.args.get("endless") == "1"

    def stream() -> Iterator[str]:
        try:
            seq = 0
            while endless or seq < 3:
                if seq:
                    time.sleep(EVENT_PAUSE_S if not endless else 0.1)
                seq += 1
                yield f"id: {seq}\ndata: {json.dumps({'seq': seq})}\n\n"
        finally:
            stream_closed.set()

    return Response(stream(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})


@blp.route("/gzip")
def gzipped() -> Response:
    """A body already gzipped, as a service that compresses sends it."""
    body = gzip.compress(b'{"hello": "world"}' * 50)
    return Response(body, mimetype="application/json", headers={"Content-Encoding": "gzip"})


@blp.route("/slow")
def slow() -> dict[str, str]:
    """Answer after a while."""
    time.sleep(3)
    return {"late": "yes"}


@blp.route("/moved")
def moved() -> Response:
    """Send the client to the echo, or where ?to= says."""
    return Response(status=302, headers={"Location": request.args.get("to", f"/api/{SLUG}/echo")})


@blp.route("/page")
@requires(Role.VIEWER)
def page() -> Response:
    """A page with a script, the policies that would let it out, and the server's headers."""
    return Response(
        "<script>fetch('/api/auth/tokens', {method: 'POST'})</script>",
        mimetype="text/html",
        headers={
            "Content-Security-Policy": "default-src *",
            "Content-Security-Policy-Report-Only": "default-src *",
            "X-Content-Type-Options": "sniff-away",
            "X-Frame-Options": "ALLOWALL",
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Credentials": "true",
            "Refresh": "0;url=https://evil.example/",
            "Link": "<https://evil.example/x.js>; rel=preload; as=script",
            "X-Echo": "yes",
        },
    )


# --- servers ---------------------------------------------------------------------------------


@dataclass
class Served:
    app: Flask
    url: str
    server: BaseWSGIServer


def serve(app: Flask) -> Served:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return Served(app, f"http://127.0.0.1:{server.server_port}", server)


def stop(served: Served) -> None:
    served.server.shutdown()
    served.server.server_close()
    served.app.extensions["pyedge"].close()


@pytest.fixture
def hub_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "hub"
    hub_key(directory)
    return directory


@pytest.fixture(scope="module")
def probe_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker that also has the probe's own account, as a hub makes one for a node."""
    directory = tmp_path_factory.mktemp("probe-mosquitto")
    root = topic_root()
    specs = plan_accounts(root=root, node=ANY_NODE, services=[*installed_services(), SLUG])
    accounts = ensure_accounts(directory, specs, root)
    mosquitto = Mosquitto(REPO_MQTT_CONFIG, directory, "127.0.0.1", free_port(), accounts)
    mosquitto.start()
    yield Broker("127.0.0.1", mosquitto.port, accounts)
    mosquitto.stop()


RemoteFactory = Callable[[str], Served]


@pytest.fixture
def make_remote(
    app_config: dict[str, Any], probe_broker: Broker, hub_dir: Path, tmp_path: Path
) -> Iterator[RemoteFactory]:
    """The remote service's own processes, each on a node of the test's choice, trusting the
    hub: served on its own (its own account), the only kind that takes forwarded callers."""
    remotes: list[Served] = []

    def make(node: str) -> Served:
        data = tmp_path / f"remote-{node}"
        hub_public_key_path(data).parent.mkdir(parents=True)
        shutil.copy(hub_public_key_path(hub_dir), hub_public_key_path(data))
        login = probe_broker.login(SLUG)
        app = create_app(
            {
                **app_config,
                "EDGE_MQTT_HOST": probe_broker.host,
                "EDGE_MQTT_PORT": probe_broker.port,
                "EDGE_MQTT_USERNAME": login["username"],
                "EDGE_MQTT_PASSWORD": login["password"],
                "EDGE_NODE_ID": node,
                "EDGE_DATA_DIR": str(data),
            },
            services=[probe],
        )
        assert app.extensions["pyedge"].serves_alone
        app.config["openapi_fetches"] = 0

        @app.before_request
        def count_fetches() -> None:
            if request.path == "/api/openapi.json":
                app.config["openapi_fetches"] += 1

        remotes.append(serve(app))
        return remotes[-1]

    yield make
    for served in remotes:
        stop(served)


@pytest.fixture
def remote(make_remote: RemoteFactory, node_id: str) -> Served:
    """The remote service on node `<node_id>-r`."""
    return make_remote(f"{node_id}-r")


HubFactory = Callable[..., Served]


@pytest.fixture
def make_hub(app_config: dict[str, Any], hub_dir: Path) -> Iterator[HubFactory]:
    """Hubs with settings of the test's choice, served; stopped at the end."""
    hubs: list[Served] = []

    def make(**settings: Any) -> Served:
        app = create_app(
            {
                **app_config,
                "EDGE_ROLE": "hub",
                "EDGE_DATA_DIR": str(hub_dir),
                # The tests say what is online: no health checks, and no statuses or
                # announcements from the bus (a site of its own, which no one writes).
                "EDGE_REMOTE_HEALTH_INTERVAL": 3600,
                "EDGE_SITE": "proxy-tests",
                **settings,
            }
        )
        hubs.append(serve(app))
        return hubs[-1]

    yield make
    for hub in hubs:
        stop(hub)


def announce(
    hub: Served, remote_url: str, node: str, slug: str = SLUG, **changes: Any
) -> RemoteService:
    service = RemoteService(
        node=node,
        slug=slug,
        title="Proxy probe",
        version="0.1.0",
        description="",
        machine="x86_64",
        url=remote_url,
        openapi_url=f"{remote_url}/api/openapi.json",
        ops=(),
        announced_at="2026-11-23T12:00:00Z",
    )
    service = replace(service, **changes)
    registry(hub).put(service)
    return service


def registry(hub: Served) -> RemoteRegistry:
    found: RemoteRegistry = hub.app.extensions[REMOTE_EXTENSION]
    return found


def client(hub: Served, role: Role = Role.ADMIN) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {authorize(hub.app, role)}"
    return session


@pytest.fixture
def hub(make_hub: HubFactory, remote: Served, node_id: str) -> Served:
    """A hub that knows the remote service."""
    served = make_hub()
    announce(served, remote.url, f"{node_id}-r")
    return served


# --- forwarding ------------------------------------------------------------------------------


def test_json_through_the_proxy_with_the_callers_role_enforced_remotely(hub: Served) -> None:
    viewer, operator = client(hub, Role.VIEWER), client(hub, Role.OPERATOR)
    assert requests.get(f"{hub.url}/api/{SLUG}/ops").status_code == 401
    ops = viewer.get(f"{hub.url}/api/{SLUG}/ops")
    assert ops.status_code == 200, ops.text
    assert [op["name"] for op in ops.json()] == ["work"]
    start = f"{hub.url}/api/{SLUG}/ops/work/start"
    refused = viewer.post(start, json={})
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == 403
    assert "@hub is viewer" in refused.json()["message"]
    started = operator.post(start, json={})
    assert started.status_code == 202, started.text
    assert started.json()["op"] == "work"
    # The hub audits what it forwarded, with the client's address.
    audit = hub.app.extensions[AUTH_EXTENSION].accounts.audit_log(10)
    assert [(e["action"], e["status"]) for e in audit if e["target"].endswith("/start")] == [
        ("POST", 202),
        ("POST", 403),
    ]
    posted = viewer.post(f"{hub.url}/api/{SLUG}/echo?a=1&b=%20x", json={"value": [1, 2]})
    assert posted.status_code == 200
    assert posted.json()["json"] == {"value": [1, 2]}
    assert posted.json()["query"] == "a=1&b=%20x"


def test_credentials_and_hop_by_hop_headers_are_stripped(hub: Served) -> None:
    session = client(hub, Role.VIEWER)
    response = session.get(
        f"{hub.url}/api/{SLUG}/echo",
        headers={
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "gone",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Cookie": "session=stolen",
            "X-CSRF-Token": "secret",
            CALLER_HEADER: "spoofed",
            "X-PyEdge-Anything": "spoofed",
            "X-Forwarded-For": "10.9.9.9",
            "X-Custom": "kept",
        },
    )
    assert response.status_code == 200, response.text
    seen = {name.lower(): value for name, value in response.json()["headers"].items()}
    for name in ("x-hop", "keep-alive", "te", "cookie", "x-csrf-token", "authorization"):
        assert name not in seen, name
    assert "x-pyedge-anything" not in seen
    assert seen[CALLER_HEADER.lower()] != "spoofed"
    assert seen["x-custom"] == "kept"
    assert seen["x-forwarded-for"] == "10.9.9.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == hub.url.removeprefix("http://")
    assert response.json()["actor"].endswith("@hub")
    # The service's cookie is its own; its other headers come through.
    assert "Set-Cookie" not in response.headers
    assert response.headers["X-Echo"] == "yes"
    head = session.head(f"{hub.url}/api/{SLUG}/echo")
    assert head.status_code == 200 and head.content == b""


def test_events_arrive_one_by_one_and_a_client_leaving_closes_the_stream(hub: Served) -> None:
    session = client(hub, Role.VIEWER)
    began = time.monotonic()
    arrivals: list[float] = []
    with session.get(f"{hub.url}/api/{SLUG}/events", stream=True) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        buffer = b""
        for chunk in response.iter_content(chunk_size=None):
            buffer += chunk
            while b"\n\n" in buffer:
                _event, buffer = buffer.split(b"\n\n", 1)
                arrivals.append(time.monotonic() - began)
    assert len(arrivals) == 3
    # The first event came long before the stream ended: nothing buffered it.
    assert arrivals[2] - arrivals[0] >= 1.5 * EVENT_PAUSE_S, arrivals

    stream_closed.clear()
    response = session.get(f"{hub.url}/api/{SLUG}/events?endless=1", stream=True)
    first = next(response.iter_content(chunk_size=None))
    assert first.startswith(b"id: 1")
    response.close()
    assert stream_closed.wait(10), "the remote stream outlived its client"


def test_gzip_passes_as_it_is(hub: Served) -> None:
    response = client(hub, Role.VIEWER).get(
        f"{hub.url}/api/{SLUG}/gzip", headers={"Accept-Encoding": "gzip"}, stream=True
    )
    raw = response.raw.read(decode_content=False)
    assert response.headers["Content-Encoding"] == "gzip"
    assert int(response.headers["Content-Length"]) == len(raw)
    assert gzip.decompress(raw) == b'{"hello": "world"}' * 50


def test_a_body_over_the_limit_is_413(make_hub: HubFactory, remote: Served, node_id: str) -> None:
    hub = make_hub(EDGE_PROXY_MAX_BODY=1000)
    announce(hub, remote.url, f"{node_id}-r")
    session = client(hub, Role.VIEWER)
    url = f"{hub.url}/api/{SLUG}/upload"
    assert session.post(url, data=b"x" * 1000).json() == {"bytes": 1000}
    too_big = session.post(url, data=b"x" * 1001)
    assert too_big.status_code == 413
    assert too_big.json()["code"] == 413 and "1001" in too_big.json()["message"]

    def chunks(count: int) -> Iterator[bytes]:
        for _ in range(count):
            yield b"y" * 100

    assert session.post(url, data=chunks(9)).json() == {"bytes": 900}
    streamed = session.post(url, data=chunks(20))
    assert streamed.status_code == 413
    assert streamed.json()["code"] == 413


def test_an_offline_service_is_503_with_why(hub: Served, node_id: str) -> None:
    registry(hub).mark(f"{node_id}-r", SLUG, OFFLINE, "its last will: connection lost")
    response = client(hub, Role.VIEWER).get(f"{hub.url}/api/{SLUG}/echo")
    assert response.status_code == 503
    assert "its last will: connection lost" in response.json()["message"]
    assert int(response.headers["Retry-After"]) >= 1


def test_a_slug_on_two_nodes_is_409_and_reached_by_node(
    hub: Served, remote: Served, node_id: str
) -> None:
    announce(hub, remote.url, "elsewhere")
    session = client(hub, Role.VIEWER)
    ambiguous = session.get(f"{hub.url}/api/{SLUG}/echo")
    assert ambiguous.status_code == 409
    message = ambiguous.json()["message"]
    assert f"{node_id}-r" in message and "elsewhere" in message
    assert f"/api/nodes/elsewhere/{SLUG}/echo" in message
    direct = session.get(f"{hub.url}/api/nodes/{node_id}-r/{SLUG}/echo?x=1")
    assert direct.status_code == 200
    assert direct.json()["path"] == f"/api/{SLUG}/echo"
    assert direct.json()["query"] == "x=1"
    # The service's redirect stays on the node-qualified path.
    moved = session.get(f"{hub.url}/api/nodes/{node_id}-r/{SLUG}/moved", allow_redirects=False)
    assert moved.status_code == 302
    assert moved.headers["Location"] == f"/api/nodes/{node_id}-r/{SLUG}/echo"
    missing = session.get(f"{hub.url}/api/nodes/nowhere/{SLUG}/echo")
    assert missing.status_code == 404


def test_unknown_and_local_paths(hub: Served, node_id: str) -> None:
    session = client(hub, Role.VIEWER)
    unknown = session.get(f"{hub.url}/api/no-such-service/x")
    assert unknown.status_code == 404 and unknown.json()["code"] == 404
    # A slug served in this process: its routes, or what Flask would have answered.
    local = session.get(f"{hub.url}/api/custom-service/nowhere")
    assert (local.status_code, local.json()) == (404, {"code": 404, "status": "Not Found"})
    wrong = client(hub).delete(f"{hub.url}/api/custom-service/hello")
    assert wrong.status_code == 405 and "GET" in wrong.headers["Allow"]
    here = session.get(
        f"{hub.url}/api/nodes/{node_id}/custom-service/hello?name=Ada", allow_redirects=False
    )
    assert here.status_code == 307
    assert here.headers["Location"].endswith("/api/custom-service/hello?name=Ada")


def test_upstream_down_is_502(make_hub: HubFactory) -> None:
    hub = make_hub()
    announce(hub, f"http://127.0.0.1:{free_port()}", "dead-node")
    response = client(hub, Role.VIEWER).get(f"{hub.url}/api/{SLUG}/echo")
    assert response.status_code == 502
    assert "cannot be reached" in response.json()["message"]


def test_a_slow_upstream_is_504(make_hub: HubFactory, remote: Served, node_id: str) -> None:
    hub = make_hub(EDGE_PROXY_TIMEOUT=1)
    announce(hub, remote.url, f"{node_id}-r")
    began = time.monotonic()
    response = client(hub, Role.VIEWER).get(f"{hub.url}/api/{SLUG}/slow")
    assert response.status_code == 504
    assert response.json()["code"] == 504
    assert time.monotonic() - began < 2.5


# --- what a service (or a node) must not be able to do through the hub ----------------------


def signed_headers(seen: dict[str, str]) -> dict[str, str]:
    """The forwarded caller among the headers a service received."""
    return {
        k: v
        for k, v in seen.items()
        if k.lower() in (CALLER_HEADER.lower(), SIGNATURE_HEADER.lower())
    }


def test_a_forwarded_caller_is_good_for_one_request_to_one_service(
    make_hub: HubFactory, make_remote: RemoteFactory, node_id: str
) -> None:
    hub = make_hub()
    remote = make_remote(f"{node_id}-r")
    other = make_remote("other-node")
    announce(hub, remote.url, f"{node_id}-r")
    announce(hub, other.url, "other-node")
    operator = client(hub, Role.OPERATOR)
    # What a node sees of a proxied request (the echo shows it).
    answer = operator.post(f"{hub.url}/api/nodes/other-node/{SLUG}/echo", json={"harmless": 1})
    assert answer.status_code == 200, answer.text
    stolen = signed_headers(answer.json()["headers"])
    assert len(stolen) == 2
    # Sent again to the same service, to the same slug on another node, or to the hub's
    # own in-process service (an edge-server, which takes no forwarded caller at all).
    again = requests.post(f"{other.url}/api/{SLUG}/echo", headers=stolen, json={"evil": 1})
    assert again.status_code == 401, again.text
    elsewhere = requests.post(f"{remote.url}/api/{SLUG}/echo", headers=stolen, json={"evil": 1})
    assert elsewhere.status_code == 401, elsewhere.text
    start = operator.post(f"{hub.url}/api/nodes/other-node/{SLUG}/ops/work/start", json={})
    assert start.status_code == 202, start.text
    seen = other.app.extensions[AUTH_EXTENSION].accounts.audit_log(1)[0]
    assert seen["actor"].endswith("@hub") and seen["status"] == 202
    # What node other-node captured when the hub proxied its custom-service, and the same
    # for this very node: the hub's in-process custom-service takes neither.
    own = "/api/custom-service/hello"
    for audience in ("other-node/custom-service", f"{node_id}/custom-service"):
        captured = sign_for(hub, "GET", own, audience)
        assert requests.get(f"{hub.url}{own}", headers=captured).status_code == 401


def sign_for(hub: Served, method: str, path: str, audience: str) -> dict[str, str]:
    """What the hub would sign for an operator's request to `audience`."""
    key = hub.app.extensions["pyedge.proxy"].key
    caller = Identity(name="alice", role=Role.OPERATOR, kind="user")
    return sign_caller(key, caller, method, path, audience=audience)


def test_a_services_answer_cannot_script_the_hubs_origin(hub: Served, node_id: str) -> None:
    session = client(hub, Role.VIEWER)
    for url in (f"{hub.url}/api/{SLUG}/page", f"{hub.url}/api/nodes/{node_id}-r/{SLUG}/page"):
        page = session.get(url)
        assert page.status_code == 200 and page.text.startswith("<script>")
        headers = page.headers
        # The hub's policy, not the service's: a sandbox of its own, nothing loaded.
        assert headers["Content-Security-Policy"] == (
            "sandbox; default-src 'none'; frame-ancestors 'none'"
        )
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert "Content-Security-Policy-Report-Only" not in headers
        assert not [name for name in headers if name.lower().startswith("access-control-")]
        assert "Refresh" not in headers and "Link" not in headers
        assert headers["X-Echo"] == "yes"
        # Once each: the hub's server says them, not the service's too.
        raw = page.raw.headers
        assert len(raw.getlist("Date")) == 1 and len(raw.getlist("Server")) == 1
        assert "," not in headers["Server"]
    # JSON and events keep working under that policy (the dashboard reads them by fetch).
    ops = session.get(f"{hub.url}/api/{SLUG}/ops")
    assert ops.status_code == 200 and ops.json()[0]["name"] == "work"
    assert ops.headers["X-Content-Type-Options"] == "nosniff"
    with session.get(f"{hub.url}/api/{SLUG}/events", stream=True) as events:
        assert events.headers["Content-Type"].startswith("text/event-stream")
        assert events.headers["Content-Security-Policy"].startswith("sandbox;")
        assert next(events.iter_content(chunk_size=None)).startswith(b"id: 1")


def test_a_services_redirect_never_leaves_the_hub(hub: Served, node_id: str) -> None:
    session = client(hub, Role.VIEWER)
    remote_url = registry(hub).get(f"{node_id}-r", SLUG).url

    def location(to: str, qualified: bool = False) -> str | None:
        base = f"/api/nodes/{node_id}-r/{SLUG}" if qualified else f"/api/{SLUG}"
        moved = session.get(f"{hub.url}{base}/moved", params={"to": to}, allow_redirects=False)
        assert moved.status_code == 302
        return moved.headers.get("Location")

    for away in (
        "http://evil.example/x",
        "HTTPS://evil.example",
        "//evil.example/x",
        " //evil.example",
        "javascript:alert(1)",
    ):
        assert location(away) is None, away
    # Relative ones stay; the service's own URL becomes the path the client uses.
    assert location("/api/x?y=1") == "/api/x?y=1"
    assert location("echo") == "echo"
    assert location(f"{remote_url}/api/{SLUG}/echo") == f"/api/{SLUG}/echo"
    qualified = location(f"{remote_url}/api/{SLUG}/echo", qualified=True)
    assert qualified == f"/api/nodes/{node_id}-r/{SLUG}/echo"


def test_a_request_from_a_proxy_is_not_proxied_again(make_hub: HubFactory) -> None:
    hub = make_hub()
    hops: list[str] = []
    hub.app.before_request_funcs.setdefault(None, []).insert(0, lambda: hops.append(request.path))
    # A hub announced as a service: its own URL (or another proxy pointing back at it).
    announce(hub, hub.url, "looping", slug="custom-thing")
    looped = client(hub, Role.VIEWER).get(f"{hub.url}/api/nodes/looping/custom-thing/x")
    assert looped.status_code == 508, looped.text
    assert looped.json()["code"] == 508 and "proxy" in looped.json()["message"]
    assert [hop for hop in hops if "custom-thing" in hop] == [
        "/api/nodes/looping/custom-thing/x",
        "/api/custom-thing/x",
    ]


def test_a_location_a_browser_would_read_as_off_site_is_dropped() -> None:
    service = RemoteService(
        node="n1",
        slug=SLUG,
        title="",
        version="",
        description="",
        machine="",
        url="http://10.0.0.12:8101",
        openapi_url="http://10.0.0.12:8101/api/openapi.json",
        ops=(),
        announced_at="2026-11-23T12:00:00Z",
    )
    # Browsers strip leading controls and spaces, ignore tabs and newlines, and read a
    # backslash as a slash: each of these leads to evil.example.
    for away in (
        "http://evil.example/x",
        "//evil.example",
        "/\\evil.example/x",
        "\\\\evil.example",
        "\x01 //evil.example",
        "/\t/evil.example",
        "/\r\n/evil.example",
        "data:text/html,<script>",
        "http://10.0.0.12:8101.evil.example/",
    ):
        assert relocated(away, service, qualified=False) is None, away
    assert relocated("/api/x", service, qualified=False) == "/api/x"
    assert relocated("x?y=/a//b", service, qualified=False) == "x?y=/a//b"
    assert relocated("http://10.0.0.12:8101/api/x", service, qualified=False) == "/api/x"
    moved = relocated(f"http://10.0.0.12:8101/api/{SLUG}/e", service, qualified=True)
    assert moved == f"/api/nodes/n1/{SLUG}/e"


def raw_get(hub: Served, path: str, token: str) -> tuple[int, Any]:
    """GET `path` exactly as written (requests would resolve its dot segments itself)."""
    connection = http.client.HTTPConnection(hub.url.removeprefix("http://"), timeout=10)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def test_dot_segments_are_not_forwarded(hub: Served, remote: Served, node_id: str) -> None:
    token = authorize(hub.app, Role.ADMIN)
    seen: list[str] = []
    remote.app.before_request_funcs.setdefault(None, []).insert(
        0, lambda: seen.append(request.path)
    )
    for path in (
        f"/api/{SLUG}/../auth/tokens",
        f"/api/{SLUG}/./echo",
        f"/api/{SLUG}/echo/..",
        f"/api/{SLUG}/%2e%2e/auth/tokens",
        f"/api/{SLUG}/%2E/echo",
        f"/api/{SLUG}/..%2Fauth%2Ftokens",
        f"/api/{SLUG}/..%5Cauth/tokens",
        f"/api/{SLUG}/%252e%252e/auth/tokens",
        f"/api/nodes/{node_id}-r/{SLUG}/../../auth/tokens",
        f"/api/nodes/{node_id}-r/{SLUG}/%2e%2e/%2e%2e/auth/tokens",
    ):
        status, body = raw_get(hub, path, token)
        assert (status, body["code"]) == (404, 404), (path, status, body)
    assert seen == []
    # Dots inside a segment are a name like any other.
    status, _body = raw_get(hub, f"/api/{SLUG}/echo..x", token)
    assert status == 404 and seen == [f"/api/{SLUG}/echo..x"]
    status, body = raw_get(hub, f"/api/{SLUG}/echo?x=..", token)
    assert status == 200 and body["query"] == "x=.."


# --- the merged OpenAPI document ----------------------------------------------------------


def test_the_merged_document_holds_the_remote_service(
    hub: Served, remote: Served, node_id: str
) -> None:
    session = client(hub, Role.VIEWER)
    spec = session.get(f"{hub.url}/api/openapi.json").json()
    validate(spec)
    assert "/api/custom-service/hello" in spec["paths"]
    echo = spec["paths"][f"/api/{SLUG}/echo"]["get"]
    assert echo["x-pyedge-node"] == f"{node_id}-r"
    assert echo["x-pyedge-mode"] == "remote"
    start = spec["paths"][f"/api/{SLUG}/ops/work/start"]["post"]
    assert start["x-pyedge-role"] == "operator"
    schemas = spec["components"]["schemas"]
    remote_schemas = [name for name in schemas if name.startswith(f"{SLUG}.")]
    assert remote_schemas
    refs = json.dumps(spec["paths"][f"/api/{SLUG}/ops"])
    assert f"#/components/schemas/{SLUG}." in refs or f"#/components/responses/{SLUG}." in refs
    # The served process's own paths (health, auth) are not the service's.
    assert not any(path.startswith("/api/nodes/") and SLUG in path for path in spec["paths"])
    assert f"/api/{SLUG}/health" not in spec["paths"]
    assert SLUG in {tag["name"] for tag in spec["tags"]}
    assert "custom-service" in {tag["name"] for tag in spec["tags"]}
    # Fetched once per announcement.
    session.get(f"{hub.url}/api/openapi.json")
    assert remote.app.config["openapi_fetches"] == 1
    announce(hub, remote.url, f"{node_id}-r", announced_at="2026-11-23T13:00:00Z")
    session.get(f"{hub.url}/api/openapi.json")
    assert remote.app.config["openapi_fetches"] == 2


def test_the_merged_document_lists_a_slug_of_several_nodes_by_node(
    hub: Served, make_remote: RemoteFactory, node_id: str
) -> None:
    # Another process: a caller signed for one node is refused on any other.
    announce(hub, make_remote("elsewhere").url, "elsewhere")
    # And one that cannot be reached: left out, the rest still merged.
    announce(hub, f"http://127.0.0.1:{free_port()}", "dead-node", slug="ghost-service")
    spec = client(hub, Role.VIEWER).get(f"{hub.url}/api/openapi.json").json()
    validate(spec)
    for node in (f"{node_id}-r", "elsewhere"):
        item = spec["paths"][f"/api/nodes/{node}/{SLUG}/echo"]
        assert item["get"]["x-pyedge-node"] == node
        assert any(name.startswith(f"{node}.{SLUG}.") for name in spec["components"]["schemas"])
    assert f"/api/{SLUG}/echo" not in spec["paths"]
    assert not any("ghost-service" in path for path in spec["paths"])


def test_swagger_ui_reads_the_merged_document(hub: Served) -> None:
    session = client(hub, Role.VIEWER)
    page = session.get(f"{hub.url}/api/docs")
    assert page.status_code == 200
    assert "/api/openapi.json" in page.text
    assert hub.app.view_functions["api-docs.openapi_json"].__func__.__qualname__ == (
        "MergedApi._openapi_json"
    )
