"""`pyedge join` / `pyedge leave` against a real hub (`pyedge run`) and its real Mosquitto."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from flask import Flask
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

import edge_server.network.join as node_side
from edge_server import cli, create_app
from edge_server.broker.accounts import load_accounts, load_nodes
from edge_server.broker.embedded import Mosquitto, TlsListener, reload_broker
from edge_server.config import REPO_MQTT_CONFIG
from edge_server.network import join_views
from edge_server.network.join import JoinError, join_hub, joined_overrides, leave_hub
from edge_server.network.join_views import login_accepted
from edge_server.security.tls import ensure_certificate
from pyedge import Bus
from pyedge.accounts import AccountStore
from pyedge.bus_config import bus_settings
from pyedge.security import Role
from tests.conftest import authorized_client, broker_accounts, free_port
from tests.test_mqtt_security import NOT_AUTHORIZED, Publisher
from tests.test_run import PYEDGE, Node, node_recorder, request, stop_node, wait_ready

SLUG = "custom-service"
OTHER = "device-service"


def start_hub(
    data_dir: Path, node_id: str, token: str, http_port: int, mqtt_port: int, **env: str
) -> Node:
    """`pyedge run` as a hub whose broker other machines could reach (plain, or `env`'s)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    environ.update(
        EDGE_NODE_ID=node_id,
        EDGE_ROLE="hub",
        EDGE_SERVICES=SLUG,
        EDGE_HTTP_HOST="127.0.0.1",
        # Beyond loopback, or joining is refused (409): other machines could not reach it.
        EDGE_MQTT_BIND="0.0.0.0",
        EDGE_MQTT_KEEPALIVE="5",
    )
    environ.update(env)
    process = subprocess.Popen(
        [PYEDGE, "run", "--port", str(http_port), "--mqtt-port", str(mqtt_port),
         "--data-dir", str(data_dir)],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    node = Node(process, http_port, mqtt_port, node_id, data_dir, token)
    wait_ready(node, 30)
    return node


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One hub for the module, with an admin token made in its data dir before it started."""
    data_dir = tmp_path_factory.mktemp("hub") / "data"
    token = AccountStore(data_dir / "accounts.db").create_token("join-admin", Role.ADMIN)
    node = start_hub(data_dir, f"hub-{uuid.uuid4().hex[:8]}", token, free_port(), free_port())
    yield node
    stop_node(node)


def pyedge(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """The `pyedge` command as a user runs it (its own process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "PYEDGE_"))}
    if token is not None:
        env["PYEDGE_TOKEN"] = token
    return subprocess.run([PYEDGE, *args], env=env, capture_output=True, text=True, timeout=60)


def join(hub: Node, data_dir: Path, node: str, services: str, token: str | None = None) -> Any:
    """`pyedge join` of the hub; the join.json it saved."""
    url = f"http://127.0.0.1:{hub.http_port}"
    result = pyedge("join", url, "--node", node, "--services", services,
                    "--data-dir", str(data_dir), token=token or hub.token)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads((data_dir / "network" / "join.json").read_text())


def login_of(saved: Any, slug: str) -> dict[str, str]:
    return dict(saved["accounts"][slug])


class Watcher:
    """Knows when a client's connection is closed by the broker."""

    def __init__(self, port: int, login: dict[str, str]) -> None:
        self.closed = threading.Event()
        connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self.client.username_pw_set(login["username"], login["password"])
        self.client.on_connect = lambda *args: connected.set()
        self.client.on_disconnect = lambda *args: self.closed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert connected.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_joined_node_writes_only_its_own_services_topics(hub: Node, tmp_path: Path) -> None:
    data_dir = tmp_path / "n2"
    saved = join(hub, data_dir, "n2", f"{SLUG},{OTHER}")
    network = data_dir / "network"
    assert stat.S_IMODE((network / "join.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(network.stat().st_mode) == 0o700
    # The key the hub signs forwarded callers with, as the hub's own data dir has it.
    assert (network / "hub.pub").read_text() == (hub.data_dir / "network" / "hub.pub").read_text()
    assert not (network / "ca.pem").exists()  # a plain listener: no CA to verify
    assert saved["broker"] == {"host": "127.0.0.1", "port": hub.mqtt_port, "tls": False}
    assert saved["node"] == "n2" and saved["site"] == ""
    assert sorted(saved["accounts"]) == [SLUG, OTHER]
    assert login_of(saved, SLUG)["username"] == f"{SLUG}@n2"
    # The hub's registry of joined nodes, owner-only like the accounts.
    nodes_file = hub.data_dir / "mosquitto" / "nodes.json"
    assert stat.S_IMODE(nodes_file.stat().st_mode) == 0o600
    assert load_nodes(hub.data_dir / "mosquitto")["n2"]["services"] == [SLUG, OTHER]

    # What `pyedge serve custom-service` on that device gets for its broker login.
    overrides = joined_overrides(data_dir, SLUG)
    assert overrides["EDGE_MQTT_HOST"] == "127.0.0.1"
    assert overrides["EDGE_MQTT_PORT"] == hub.mqtt_port
    assert overrides["EDGE_MQTT_USERNAME"] == f"{SLUG}@n2"
    assert (overrides["EDGE_MQTT_TLS"], overrides["EDGE_MQTT_CA"]) == (False, None)
    assert overrides["EDGE_NODE_ID"] == "n2"
    with pytest.raises(JoinError, match="pyedge join"):
        joined_overrides(data_dir, "container-manager")  # not joined with that service
    assert joined_overrides(tmp_path / "elsewhere", SLUG) == {}

    service = Publisher(hub.mqtt_port, login_of(saved, SLUG), f"n2-{uuid.uuid4().hex[:6]}")
    try:
        assert not service.publish(f"pyedge/n2/{SLUG}/status", b"online").is_failure
        assert not service.publish(f"pyedge/n2/{SLUG}/reply/abc").is_failure
        for topic in (
            f"pyedge/n1/{SLUG}/status",
            f"pyedge/{hub.node_id}/{SLUG}/status",
            f"pyedge/n2/{OTHER}/status",
            "pyedge/n2/edge-server/status",
            "other",
        ):
            assert service.publish(topic).value == NOT_AUTHORIZED, topic  # fmt: skip
    finally:
        service.close()


def test_joining_needs_an_admin_token(hub: Node, tmp_path: Path) -> None:
    store = AccountStore(hub.data_dir / "accounts.db")
    operator = store.create_token(f"op-{uuid.uuid4().hex[:6]}", Role.OPERATOR)
    store.close()
    url = f"http://127.0.0.1:{hub.http_port}"
    data_dir = tmp_path / "n4"
    result = pyedge("join", url, "--node", "n4", "--services", SLUG, "--data-dir",
                    str(data_dir), token=operator)  # fmt: skip
    assert result.returncode == 1
    assert "403" in result.stderr and "admin token" in result.stderr
    assert not (data_dir / "network" / "join.json").exists()
    status, _ = request(hub.url("/api/nodes/n4/join"), "POST", {"services": [SLUG]}, None, operator)
    assert status == 403
    status, _ = request(hub.url("/api/nodes/n4/join"), "POST", {"services": [SLUG]})
    assert status == 401
    no_token = pyedge("join", url, "--node", "n4", "--data-dir", str(data_dir))
    assert no_token.returncode == 2 and "PYEDGE_TOKEN" in no_token.stderr
    assert "n4" not in load_nodes(hub.data_dir / "mosquitto")


def test_joining_again_keeps_the_passwords_and_adds_services(hub: Node, tmp_path: Path) -> None:
    data_dir = tmp_path / "n5"
    first = join(hub, data_dir, "n5", SLUG)
    again = join(hub, data_dir, "n5", SLUG)
    assert again["accounts"] == first["accounts"]
    more = join(hub, data_dir, "n5", OTHER)
    assert sorted(more["accounts"]) == [SLUG, OTHER]
    assert more["accounts"][SLUG] == first["accounts"][SLUG]
    # The account added by the second join works at once (the broker reloaded).
    assert login_accepted("127.0.0.1", hub.mqtt_port, **login_of(more, OTHER))


def test_leave_revokes_the_accounts_and_closes_their_connections(hub: Node, tmp_path: Path) -> None:
    data_dir = tmp_path / "n6"
    saved = join(hub, data_dir, "n6", SLUG)
    login = login_of(saved, SLUG)
    # What `pyedge serve` on n6 would publish: the hub lists the node from it.
    service = Publisher(hub.mqtt_port, login, f"n6-{uuid.uuid4().hex[:6]}")
    # Another node's URL: not loopback, which the hub refuses of other nodes (TEST-NET-1).
    announce = {"slug": SLUG, "title": "Custom", "version": "1", "node": "n6",
                "url": "http://192.0.2.6:8101", "announced_at": "2026-01-01T00:00:00Z",
                "ops": [{"name": "sleep", "kind": "task", "role": "operator"}]}  # fmt: skip
    try:
        for topic, payload in [
            (f"pyedge/n6/{SLUG}/status", b"online"),
            (f"pyedge/n6/{SLUG}/announce", json.dumps(announce).encode()),
            (f"pyedge/n6/{SLUG}/ops/sleep", b'{"op": "sleep", "state": "done"}'),
        ]:
            service.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        service.close()
    deadline = time.monotonic() + 10
    while "n6" not in [n["node"] for n in hub.call("/api/nodes")[1]]:
        assert time.monotonic() < deadline, hub.call("/api/nodes")
        time.sleep(0.1)
    connected = Watcher(hub.mqtt_port, login)
    try:
        result = pyedge("leave", "--data-dir", str(data_dir), token=hub.token)
        assert result.returncode == 0, result.stderr
        assert "left" in result.stdout
        # Observed of Mosquitto 2.0: the reload re-checks connected clients, and closes
        # those whose account is gone; paho's reconnects are then refused.
        assert connected.closed.wait(5), "the revoked client is still connected"
    finally:
        connected.close()
    assert login_accepted("127.0.0.1", hub.mqtt_port, **login) is False
    assert not (data_dir / "network" / "join.json").exists()
    assert not (data_dir / "network" / "hub.pub").exists()
    assert "n6" not in load_nodes(hub.data_dir / "mosquitto")
    # Forgotten by the hub, and its retained announcement cleared (else every hub start
    # would learn its services again).
    assert "n6" not in [n["node"] for n in hub.call("/api/nodes")[1]]
    watcher = node_recorder(hub, f"w-{uuid.uuid4().hex[:6]}")
    try:
        watcher.subscribe(f"pyedge/n6/{SLUG}/#")
        watcher.subscribe(f"pyedge/{hub.node_id}/{SLUG}/status")  # a retained one: a sentinel
        watcher.wait_for(f"pyedge/{hub.node_id}/{SLUG}/status")
        assert watcher.on(f"pyedge/n6/{SLUG}/announce") == []
        assert watcher.on(f"pyedge/n6/{SLUG}/ops/sleep") == []  # its sessions too
    finally:
        watcher.close()
    # Its password is forgotten on the hub: joining again makes a new one.
    assert f"{SLUG}@n6" not in load_accounts(hub.data_dir / "mosquitto").accounts
    assert (
        json.loads((hub.data_dir / "mosquitto" / "accounts.json").read_text())["passwords"].get(
            f"{SLUG}@n6"
        )
        is None
    )
    status, body = hub.call("/api/nodes/n6", "DELETE")
    assert status == 404, body


def test_leave_keeps_the_files_while_the_hub_is_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    network = tmp_path / "network"
    network.mkdir()
    saved = {"hub_url": f"http://127.0.0.1:{free_port()}", "node": "n7", "site": "",
             "broker": {"host": "127.0.0.1", "port": 1883, "tls": False},
             "accounts": {SLUG: {"username": f"{SLUG}@n7", "password": "p"}}}  # fmt: skip
    (network / "join.json").write_text(json.dumps(saved))
    args = ["--token", "t", "leave", "--data-dir", str(tmp_path)]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "cannot reach the hub" in err and "--force" in err
    assert (network / "join.json").exists()
    assert cli.main([*args, "--force"]) == 0
    assert not (network / "join.json").exists()


def test_a_tls_hub_gives_its_ca_and_a_restart_keeps_the_joined_accounts(tmp_path: Path) -> None:
    data_dir = tmp_path / "hub"
    token = AccountStore(data_dir / "accounts.db").create_token("admin", Role.ADMIN)
    node_id, http_port, mqtt_port = f"hub-{uuid.uuid4().hex[:8]}", free_port(), free_port()
    # The plain listener stays on loopback: the TLS one is for the other machines.
    tls_port = free_port()
    tls = {"EDGE_MQTT_TLS": "1", "EDGE_MQTT_TLS_PORT": str(tls_port), "EDGE_MQTT_BIND": "127.0.0.1"}
    hub = start_hub(data_dir, node_id, token, http_port, mqtt_port, **tls)
    try:
        node_dir = tmp_path / "n3"
        saved = join(hub, node_dir, "n3", SLUG)
    finally:
        stop_node(hub)
    assert saved["broker"] == {"host": "127.0.0.1", "port": tls_port, "tls": True}
    ca = node_dir / "network" / "ca.pem"
    assert ca.read_text() == (data_dir / "tls" / "server.crt").read_text()
    overrides = joined_overrides(node_dir, SLUG)
    assert (overrides["EDGE_MQTT_TLS"], overrides["EDGE_MQTT_CA"]) == (True, ca.resolve())

    hub = start_hub(data_dir, node_id, token, http_port, mqtt_port, **tls)
    try:
        # What `pyedge serve` on the node does with those settings: TLS, the CA verified.
        settings = {**overrides, "EDGE_MQTT_KEEPALIVE": 5, "EDGE_MQTT_PROTOCOL": "5"}
        bus = Bus(bus_settings(settings, SLUG))
        bus.start()
        try:
            assert bus.wait_connected(10), bus.last_error
        finally:
            bus.close()
    finally:
        stop_node(hub)


def test_a_hub_refuses_joins_its_broker_cannot_serve(
    app_config: dict[str, Any], tmp_path: Path
) -> None:
    data_dir = tmp_path / "hub"

    def answer(node: str = "n8", **settings: Any) -> tuple[int, str]:
        config = {**app_config, "EDGE_ROLE": "hub", "EDGE_DATA_DIR": str(data_dir), **settings}
        app: Flask = create_app(config)
        try:
            reply = authorized_client(app).post(
                f"/api/nodes/{node}/join", json={"services": [SLUG]}
            )
            return reply.status_code, reply.json["message"]
        finally:
            app.extensions["pyedge"].close()

    # No broker of `pyedge run`'s in the data dir (or not running).
    status, message = answer()
    assert status == 503 and "not running" in message
    status, message = answer(EDGE_MQTT_EMBEDDED=False)
    assert status == 409 and "EDGE_MQTT_EMBEDDED=1" in message
    status, message = answer(node=app_config["EDGE_NODE_ID"])
    assert status == 409 and "own node id" in message
    # Brokers in the hub's data dir with loopback listeners only: other machines could not
    # reach them.
    directory = data_dir / "mosquitto"
    cert = ensure_certificate(tmp_path / "tls")
    for tls, setting in [
        (None, "EDGE_MQTT_BIND"),
        (TlsListener("127.0.0.1", free_port(), cert.cert, cert.key), "EDGE_MQTT_TLS_BIND"),
    ]:
        broker = Mosquitto(
            REPO_MQTT_CONFIG, directory, "127.0.0.1", free_port(), broker_accounts(directory), tls
        )
        broker.start()
        try:
            status, message = answer()
        finally:
            broker.stop()
        assert status == 409 and setting in message, message
        assert tls is not None or "EDGE_MQTT_TLS=1" in message


def test_the_join_routes_exist_on_hubs_only(app: Flask) -> None:
    client = authorized_client(app)
    assert client.post("/api/nodes/n9/join", json={"services": [SLUG]}).status_code in (404, 405)


def test_a_join_answers_once_the_accounts_it_adds_work(
    app_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "hub"
    directory = data_dir / "mosquitto"
    port = free_port()
    broker = Mosquitto(REPO_MQTT_CONFIG, directory, "0.0.0.0", port, broker_accounts(directory))
    broker.start()
    app = create_app({**app_config, "EDGE_ROLE": "hub", "EDGE_DATA_DIR": str(data_dir)})
    late: list[threading.Timer] = []
    try:
        client = authorized_client(app)
        assert client.post("/api/nodes/n10/join", json={"services": [SLUG]}).status_code == 200

        def late_reload(directory: Path) -> None:
            # A broker slow to reload: it gets the SIGHUP half a second late.
            late.append(threading.Timer(0.5, reload_broker, (directory,)))
            late[-1].start()

        monkeypatch.setattr(join_views, "reload_broker", late_reload)
        # Joining again with another service: the node's first account was valid already,
        # only the new one shows that the broker took the change.
        reply = client.post("/api/nodes/n10/join", json={"services": [OTHER]})
        assert reply.status_code == 200, reply.json
        assert late, "the broker was not told to reload"
        assert sorted(reply.json["accounts"]) == [SLUG, OTHER]
        for slug in (SLUG, OTHER):
            assert login_accepted("127.0.0.1", port, **reply.json["accounts"][slug]) is True, slug
    finally:
        for timer in late:
            timer.join()
        app.extensions["pyedge"].close()
        broker.stop()


def saved_join(data_dir: Path, hub_url: str) -> Path:
    """A join.json as `pyedge join` of `hub_url` leaves it; its path."""
    network = data_dir / "network"
    network.mkdir(parents=True, exist_ok=True)
    saved = {"hub_url": hub_url, "node": "n11", "site": "",
             "broker": {"host": "127.0.0.1", "port": 1883, "tls": False},
             "accounts": {SLUG: {"username": f"{SLUG}@n11", "password": "p"}}}  # fmt: skip
    path = network / "join.json"
    path.write_text(json.dumps(saved))
    return path


def test_a_plain_http_hub_beyond_loopback_needs_insecure_http(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []

    def hub_call(url: str, method: str, token: str, body: Any = None, ca: Any = None) -> Any:
        calls.append((method, url))
        return 204, None

    monkeypatch.setattr(node_side, "hub_call", hub_call)
    hub_url = "http://hub.example:8000"
    args = ["--token", "t", "join", hub_url, "--node", "n11", "--services", SLUG,
            "--data-dir", str(tmp_path)]  # fmt: skip
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    said = ["in clear", "admin token", "broker passwords", "hub's key", "`pyedge run --tls`",
            "--ca", "data/tls/server.crt", "--insecure-http"]  # fmt: skip
    assert [words for words in said if words not in err] == [], err
    assert calls == [], "the token went to the hub"
    # Asked for, it goes ahead (this fake hub then answers what no hub would).
    assert cli.main([*args, "--insecure-http"]) == 1
    assert calls == [("POST", f"{hub_url}/api/nodes/n11/join")]
    # Loopback never leaves the machine: no flag needed.
    for url in ("http://localhost:8000", "http://127.0.0.2:8000", "http://[::1]:8000"):
        calls.clear()
        assert cli.main(["--token", "t", "join", url, *args[4:]]) == 1
        assert calls == [("POST", f"{url}/api/nodes/n11/join")], url
    capsys.readouterr()

    # Leaving a hub joined by plain HTTP: the same, the files kept until it is told.
    path = saved_join(tmp_path, hub_url)
    calls.clear()
    leave = ["--token", "t", "leave", "--data-dir", str(tmp_path)]
    assert cli.main(leave) == 1
    err = capsys.readouterr().err
    assert "in clear" in err and "pyedge leave --insecure-http" in err, err
    assert calls == [] and path.exists()
    assert cli.main([*leave, "--insecure-http"]) == 0
    assert calls == [("DELETE", f"{hub_url}/api/nodes/n11")]
    assert not path.exists()


@pytest.fixture
def redirecting() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """An HTTP server on loopback that redirects everything elsewhere; the requests it saw."""
    seen: list[tuple[str, str | None]] = []

    class Redirect(BaseHTTPRequestHandler):
        def answer(self) -> None:
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{server.server_port}/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_DELETE = answer  # noqa: N815 (http.server's names)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_hub_is_called_straight_never_through_an_environment_proxy(
    tmp_path: Path,
    redirecting: tuple[str, list[tuple[str, str | None]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, seen = redirecting
    # A proxy would get the admin token on the way: none is used, even when set.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(JoinError, match="not followed"):
        join_hub(tmp_path, url, "secret", "n13", [SLUG], "x86_64")
    assert seen == [("/api/nodes/n13/join", "Bearer secret")]


def test_a_redirect_from_the_hub_is_never_followed(
    tmp_path: Path, redirecting: tuple[str, list[tuple[str, str | None]]]
) -> None:
    url, seen = redirecting
    with pytest.raises(JoinError, match=r"302.*/elsewhere: not followed") as raised:
        join_hub(tmp_path, url, "secret", "n12", [SLUG], "x86_64")
    assert "cannot reach" not in str(raised.value)
    # Followed, the token would have gone along to the other URL.
    assert seen == [("/api/nodes/n12/join", "Bearer secret")]
    assert not (tmp_path / "network" / "join.json").exists()

    path = saved_join(tmp_path, url)
    with pytest.raises(JoinError, match=r"302.*/elsewhere: not followed"):
        leave_hub(tmp_path, "secret")
    assert seen[1:] == [("/api/nodes/n11", "Bearer secret")]
    assert path.exists()
