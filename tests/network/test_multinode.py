"""Network mode on one machine: a hub and three nodes, each in its own network namespace.

The hub (`pyedge run`, EDGE_ROLE=hub, HTTPS and its broker's TLS listener on the bridge)
runs in the root namespace; every node joins it with `pyedge join https://... --ca` (the
hub's self-signed certificate, which names the bridge's address) and serves its services
with `pyedge serve`, each on its own address. Everything is the real command line, a real
Mosquitto and real HTTP(S) across the namespaces.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from openapi_spec_validator import validate
from playwright.sync_api import Browser, Page, expect

from edge_server.broker.accounts import CONTROLLER, load_accounts
from pyedge.accounts import AccountStore
from pyedge.client import Client, MqttClient
from pyedge.security import Role
from tests.conftest import free_port
from tests.dashboard.conftest import PASSWORD, USERS, log_in
from tests.network.netns import Host, Site

PYEDGE = str(Path(sys.executable).parent / "pyedge")
KEEPALIVE = 5
# The broker fires a silent client's will after 1.5x its keepalive; a health check every
# second notices a dead HTTP side sooner. Some slack for a loaded CI machine.
OFFLINE_WITHIN = KEEPALIVE * 1.5 + 5
SERVE_PORTS = {"custom-service": 8101, "device-service": 8102}
T = TypeVar("T")


def environment(**settings: str) -> dict[str, str]:
    """The machine's environment without EDGE_* (the tests say every setting)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "PYEDGE_"))}
    env.update(PYTHONUNBUFFERED="1", **settings)
    return env


def eventually(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.2)


def hub_context(cert: Path) -> ssl.SSLContext:
    """What a client of the hub verifies its HTTPS with: the hub's self-signed certificate."""
    return ssl.create_default_context(cafile=str(cert))


def call(
    url: str,
    token: str | None,
    method: str = "GET",
    body: Any = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, Any]:
    """An HTTP(S) request with a JSON body; status and parsed JSON (errors included)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=15, context=context) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@dataclass
class Hub:
    """The hub's `pyedge run` in the root namespace, serving HTTPS."""

    process: subprocess.Popen[str]
    url: str
    token: str
    data_dir: Path
    log: Path

    @property
    def cert(self) -> Path:
        """The self-signed certificate the hub generated (HTTPS and its broker's TLS)."""
        return self.data_dir / "tls" / "server.crt"

    @property
    def context(self) -> ssl.SSLContext:
        return hub_context(self.cert)

    def call(
        self, path: str, token: str | None, method: str = "GET", body: Any = None
    ) -> tuple[int, Any]:
        """A request to the hub, its certificate verified."""
        return call(self.url + path, token, method, body, self.context)

    def get(self, path: str) -> tuple[int, Any]:
        """GET with the admin token."""
        return self.call(path, self.token)

    def services(self) -> dict[tuple[str, str], dict[str, Any]]:
        """/api/services by (node, slug)."""
        status, listed = self.get("/api/services")
        assert status == 200, listed
        return {(s["node"], s["slug"]): s for s in listed}


@dataclass
class Node:
    """A node: its namespace, id, data dir, and the services it serves."""

    host: Host
    node_id: str
    data_dir: Path
    log: Path
    slugs: tuple[str, ...]
    tokens: dict[str, str] = field(default_factory=dict)

    def url(self, slug: str) -> str:
        """The base URL of the node's `slug` process."""
        return f"http://{self.host.address}:{SERVE_PORTS[slug]}"

    def serve(self) -> None:
        """Start `pyedge serve` for each of its services inside its namespace."""
        for slug in self.slugs:
            port = SERVE_PORTS[slug]
            self.host.popen(
                [
                    PYEDGE,
                    "serve",
                    slug,
                    "--host",
                    self.host.address,
                    "--port",
                    str(port),
                    "--data-dir",
                    str(self.data_dir),
                    "--advertise-url",
                    self.url(slug),
                ],
                environment(
                    EDGE_NODE_ID=self.node_id,
                    EDGE_MQTT_KEEPALIVE=str(KEEPALIVE),
                    EDGE_CUSTOM_SERVICE_HEARTBEAT_AUTOSTART="0",
                ),
                self.log,
            )


def tail(path: Path, size: int = 3000) -> str:
    """The end of a log, for a failure's message."""
    return path.read_text(errors="replace")[-size:] if path.exists() else "(no log)"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    site = Site()
    try:
        yield site
    finally:
        site.close()


@pytest.fixture(scope="module")
def hub(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    data_dir = tmp_path_factory.mktemp("hub") / "data"
    store = AccountStore(data_dir / "accounts.db")
    token = store.create_token("site-admin", Role.ADMIN)
    store.add_user(USERS[Role.ADMIN], PASSWORD, Role.ADMIN)  # the dashboard's user
    store.close()
    port = free_port()
    log = data_dir.parent / "hub.log"
    env = environment(
        EDGE_ROLE="hub",
        EDGE_NODE_ID="hub",
        EDGE_SERVICES="custom-service",
        EDGE_CUSTOM_SERVICE_HEARTBEAT_AUTOSTART="0",
        EDGE_HTTP_HOST=site.hub_address,
        EDGE_HTTP_PORT=str(port),
        # HTTPS: the token, the broker passwords and the hub's key cross the bridge.
        EDGE_TLS="1",
        EDGE_MQTT_PORT=str(free_port()),
        EDGE_MQTT_TLS="1",
        EDGE_MQTT_TLS_BIND=site.hub_address,
        EDGE_MQTT_TLS_PORT=str(free_port()),
        EDGE_MQTT_KEEPALIVE=str(KEEPALIVE),
        EDGE_REMOTE_HEALTH_INTERVAL="1",
        EDGE_DATA_DIR=str(data_dir),
    )
    with log.open("w") as out:
        process = subprocess.Popen(
            [PYEDGE, "run"], env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    hub = Hub(process, f"https://{site.hub_address}:{port}", token, data_dir, log)

    def healthy() -> bool:
        assert process.poll() is None, tail(log)
        if not hub.cert.exists():  # generated at the hub's first start
            return False
        try:
            return hub.get("/api/health")[0] == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    try:
        eventually(healthy, 20, "the hub answers /api/health")
        yield hub
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def nodes(site: Site, hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    layout = {
        "n1": ("custom-service", "device-service"),
        "n2": ("custom-service",),
        "n3": ("device-service",),
    }
    nodes = []
    for node_id, slugs in layout.items():
        host = site.add_host()
        data_dir = tmp_path_factory.mktemp(node_id) / "data"
        node = Node(host, node_id, data_dir, data_dir.parent / f"{node_id}.log", slugs)
        joined = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                host.name,
                PYEDGE,
                "--token",
                hub.token,
                "join",
                hub.url,
                "--ca",
                str(hub.cert),
                "--node",
                node_id,
                "--services",
                ",".join(slugs),
                "--data-dir",
                str(data_dir),
            ],
            env=environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert joined.returncode == 0, joined.stdout + joined.stderr
        saved = json.loads((data_dir / "network" / "join.json").read_text())
        assert saved["hub_url"] == hub.url and saved["broker"]["tls"] is True
        # A token of the node's own, for calling its services directly (not through the hub).
        store = AccountStore(data_dir / "accounts.db")
        node.tokens["direct"] = store.create_token("direct", Role.ADMIN)
        store.close()
        node.serve()
        nodes.append(node)
    try:
        expected = {(n.node_id, slug) for n in nodes for slug in n.slugs}

        def all_online() -> bool:
            listed = hub.services()
            return all(
                listed.get(key, {}).get("health", {}).get("status") == "ok" for key in expected
            )

        try:
            eventually(all_online, 40, "every node's services online on the hub")
        except AssertionError:
            logs = "\n".join(f"--- {n.node_id}\n{tail(n.log)}" for n in nodes)
            raise AssertionError(f"{hub.services()}\n--- hub\n{tail(hub.log)}\n{logs}") from None
        yield nodes
    finally:
        for node in nodes:
            node.host.stop()


def by_id(nodes: list[Node], node_id: str) -> Node:
    return next(n for n in nodes if n.node_id == node_id)


def test_services_announce_and_appear_with_mode_and_node(hub: Hub, nodes: list[Node]) -> None:
    listed = hub.services()
    assert listed[("hub", "custom-service")]["mode"] == "local"
    remote = listed[("n1", "device-service")]
    assert remote["mode"] == "remote"
    # custom-service runs on the hub and two nodes: those are reached by node.
    assert listed[("n2", "custom-service")]["url"] == "/api/nodes/n2/custom-service"

    # The dashboard shows them too, with their node.
    request = urllib.request.Request(
        hub.url + "/", headers={"Authorization": f"Bearer {hub.token}"}
    )
    with urllib.request.urlopen(request, timeout=15, context=hub.context) as response:
        page = response.read().decode()
    assert '<tr data-slug="device-service" data-node="n3">' in page
    assert '<a href="/admin/device-service?node=n3">Admin</a>' in page
    assert '"url": "/api/nodes/n2/custom-service"' in page or (
        '"url":"/api/nodes/n2/custom-service"' in page
    )

    status, known = hub.get("/api/nodes")
    assert status == 200
    rows = {row["node"]: row for row in known}
    assert set(rows) == {"hub", "n1", "n2", "n3"}
    assert sorted(rows["n1"]["services"]) == ["custom-service", "device-service"]
    assert rows["n3"]["machine"] == os.uname().machine


def test_json_is_proxied_with_the_callers_role(hub: Hub, nodes: list[Node]) -> None:
    n3 = by_id(nodes, "n3")
    # device-service runs on n1 and n3: by node; the hub's answer is the node's own.
    status, through_hub = hub.get("/api/nodes/n3/device-service/sensors")
    assert status == 200
    direct = call(n3.url("device-service") + "/api/device-service/sensors", n3.tokens["direct"])
    assert through_hub == direct[1]

    # An operation through the hub, with the hub's admin token forwarded as a signed caller.
    start = "/api/nodes/n2/custom-service/ops/sleep/start"
    status, session = hub.call(start, hub.token, "POST", {"seconds": 0.2})
    assert status == 202, session
    status, done = hub.call(
        "/api/nodes/n2/custom-service/ops/sleep/wait", hub.token, "POST", {"timeout": 10}
    )
    assert (status, done["state"], done["success"]) == (200, "done", True)

    # A viewer may read through the hub but the node refuses it an operation.
    store = AccountStore(hub.data_dir / "accounts.db")
    viewer = store.create_token(f"viewer-{time.monotonic_ns()}", Role.VIEWER)
    store.close()
    assert hub.call("/api/nodes/n2/custom-service/ops", viewer)[0] == 200
    status, refused = hub.call(start, viewer, "POST", {"seconds": 0.2})
    assert status == 403, refused
    # Without credentials the hub answers itself; a forged caller header gets nothing.
    assert hub.call("/api/nodes/n2/custom-service/ops", None)[0] == 401


def test_server_sent_events_pass_through_unbuffered(hub: Hub, nodes: list[Node]) -> None:
    url = f"{hub.url}/api/nodes/n1/custom-service/ticks?count=3&interval=1"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {hub.token}"})
    arrivals = []
    with urllib.request.urlopen(request, timeout=15, context=hub.context) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for raw in response:
            line = raw.decode().strip()
            if line.startswith('data: {"seq"'):
                arrivals.append((time.monotonic(), json.loads(line[6:])))
    assert [event["seq"] for _at, event in arrivals] == [1, 2, 3]
    assert {event["node"] for _at, event in arrivals} == {"n1"}
    # Buffered, all three would arrive together at the end; they are two seconds apart.
    assert arrivals[-1][0] - arrivals[0][0] > 1.5


def test_openapi_merges_the_remote_services(hub: Hub, nodes: list[Node]) -> None:
    status, spec = hub.get("/api/openapi.json")
    assert status == 200
    validate(spec)
    paths = spec["paths"]
    assert "/api/nodes/n1/device-service/sensors" in paths
    assert "/api/nodes/n2/custom-service/ticks" in paths
    schemas = spec["components"]["schemas"]
    # Every remote schema is named apart from the hub's own.
    assert any(
        name.startswith("n1.device-service.") or "device-service" in name for name in schemas
    )


def test_operations_over_mqtt_rpc(hub: Hub, nodes: list[Node], site: Site) -> None:
    accounts = load_accounts(hub.data_dir / "mosquitto")
    login = accounts.login(CONTROLLER)
    join = json.loads((by_id(nodes, "n2").data_dir / "network" / "join.json").read_text())
    broker = join["broker"]
    ca = by_id(nodes, "n2").data_dir / "network" / "ca.pem"
    with MqttClient(
        broker["host"],
        broker["port"],
        username=login["username"],
        password=login["password"],
        tls=broker["tls"],
        ca=ca,
    ) as client:
        session = (
            client.service("custom-service", node="n2").op("sleep").start(seconds=0.1).wait(10)
        )
    assert (session["state"], session["success"]) == ("done", True)


def test_blocking_client_over_http_through_the_hub(hub: Hub, nodes: list[Node]) -> None:
    # Verified against the hub's own certificate, even where REQUESTS_CA_BUNDLE is set.
    with Client(hub.url, hub.token, verify=str(hub.cert)) as client:
        op = client.service("custom-service", node="n1").op("sleep")
        session = op.start(seconds=0.1).wait(10)
    assert (session["state"], session["success"]) == ("done", True)


def test_a_killed_node_goes_offline_and_comes_back(hub: Hub, nodes: list[Node]) -> None:
    n2 = by_id(nodes, "n2")
    n2.host.kill()
    key = ("n2", "custom-service")
    started = time.monotonic()
    eventually(
        lambda: hub.services()[key]["health"]["status"] != "ok", OFFLINE_WITHIN, "n2 offline"
    )
    assert time.monotonic() - started < OFFLINE_WITHIN
    status, error = hub.get("/api/nodes/n2/custom-service/ops")
    assert status == 503
    assert error["message"]

    n2.serve()
    eventually(lambda: hub.services()[key]["health"]["status"] == "ok", 30, "n2 back online")
    assert hub.get("/api/nodes/n2/custom-service/ops")[0] == 200


def test_a_node_cut_off_the_network_goes_offline_then_back(hub: Hub, nodes: list[Node]) -> None:
    n3 = by_id(nodes, "n3")
    key = ("n3", "device-service")
    n3.host.cable(False)
    try:
        eventually(
            lambda: hub.services()[key]["health"]["status"] != "ok",
            OFFLINE_WITHIN,
            "n3 offline once its cable is cut",
        )
    finally:
        n3.host.cable(True)
    # paho reconnects by itself (backoff up to 30 s) and announces again.
    eventually(lambda: hub.services()[key]["health"]["status"] == "ok", 45, "n3 back online")


def test_a_node_will_not_join_by_plain_http(hub: Hub, nodes: list[Node], tmp_path: Path) -> None:
    # Beyond loopback the token, the broker passwords and the hub's key would cross the
    # network in clear: refused before anything is sent, the flag says otherwise.
    plain = hub.url.replace("https://", "http://", 1)
    refused = subprocess.run(
        ["ip", "netns", "exec", nodes[0].host.name, PYEDGE, "--token", hub.token, "join", plain,
         "--node", "n9", "--services", "custom-service", "--data-dir", str(tmp_path)],
        env=environment(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "in clear" in refused.stderr and "--insecure-http" in refused.stderr
    assert not (tmp_path / "network").exists()
    assert "n9" not in {row["node"] for row in hub.get("/api/nodes")[1]}


@pytest.fixture(scope="module")
def hub_page(hub: Hub, nodes: list[Node], browser: Browser) -> Iterator[Page]:
    """Chromium logged in to the hub's dashboard (its self-signed certificate accepted)."""
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    log_in(page, hub.url, USERS[Role.ADMIN])
    yield page
    context.close()
    assert errors == [], f"a page's script failed: {errors}"


def test_the_dashboard_shows_the_nodes_services_live_through_the_hub(
    hub: Hub, nodes: list[Node], hub_page: Page
) -> None:
    page = hub_page
    page.goto(hub.url + "/")
    for node in nodes:
        for slug in node.slugs:
            row = page.locator(f'tr[data-node="{node.node_id}"][data-slug="{slug}"]')
            expect(row.locator("[data-health]")).to_have_text("ok")
    # An operation of n2's custom-service, started from its form on the hub's page, runs
    # on n2 (through the proxy) and its session comes back live (through the hub's stream).
    page.goto(hub.url + "/operations")
    sleep = page.locator('article.op[data-node="n2"][data-slug="custom-service"][data-op="sleep"]')
    sleep.get_by_label("seconds").fill("0.3")
    sleep.get_by_role("button", name="Start").click()
    expect(sleep.locator("[data-state]")).to_have_text("done", timeout=15_000)
    expect(sleep.locator("[data-success]")).to_have_text("succeeded")
    status, session = call(
        f"{by_id(nodes, 'n2').url('custom-service')}/api/custom-service/ops/sleep",
        by_id(nodes, "n2").tokens["direct"],
    )
    assert status == 200 and session["params"] == {"seconds": 0.3}, session
    # Two nodes' device-services on one sensors page, values arriving live from each.
    page.goto(hub.url + "/sensors")
    for node_id in ("n1", "n3"):
        card = page.locator(
            f'article.sensor[data-node="{node_id}"][data-sensor="room_temperature"]'
        )
        value = card.locator('[data-quantity="value"]')
        expect(value).not_to_have_text("—", timeout=15_000)
        first = value.inner_text()
        expect(value).not_to_have_text(first, timeout=20_000)  # sampled every 5 s
    # A remote service's admin page, its data fetched through the proxy as the hub's admin.
    page.goto(hub.url + "/admin/custom-service?node=n2")
    expect(page.locator("main")).to_contain_text("EDGE_CUSTOM_SERVICE_GREETING")
