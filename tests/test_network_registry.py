"""Network mode's services tree: `pyedge serve` announces, hubs list, health-check and forget."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from flask import Flask
from flask.testing import FlaskClient
from paho.mqtt.enums import CallbackAPIVersion

from edge_server import create_app
from edge_server.broker.accounts import EDGE_SERVER
from edge_server.network.remote_listener import LIVE_OFFLINE, RETAINED_OFFLINE
from tests.conftest import OBSERVER, Broker, authorized_client, free_port
from tests.mqtt_recorder import MqttRecorder
from tests.test_run import PYEDGE, request

SLUG = "custom-service"
KEEPALIVE = 5


def lan_address() -> str:
    """This machine's address on its network: an edge-server refuses another node's loopback."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("198.51.100.1", 9))  # no packet is sent: only the route is looked up
        address = str(probe.getsockname()[0])
    except OSError:
        address = ""
    finally:
        probe.close()
    if not address or address.startswith("127.") or address == "0.0.0.0":
        pytest.skip("no non-loopback IPv4 address to serve on")
    return address


@dataclass
class Served:
    """A running `pyedge serve custom-service`."""

    process: subprocess.Popen[bytes]
    port: int
    node_id: str
    data_dir: Path
    log: Path
    host: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def worker(self) -> int:
        """The pid of its one gunicorn worker."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])


def serve_process(
    data_dir: Path,
    node_id: str,
    port: int,
    broker: Broker,
    log: IO[bytes],
    host: str = "127.0.0.1",
    tls: bool = False,
) -> subprocess.Popen[bytes]:
    """`pyedge serve custom-service` on the session broker, in a process group of its own."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    environ.update(
        EDGE_NODE_ID=node_id,
        EDGE_MQTT_HOST=broker.host,
        EDGE_MQTT_PORT=str(broker.port),
        EDGE_MQTT_KEEPALIVE=str(KEEPALIVE),
        EDGE_HTTP_HOST=host,
        EDGE_CUSTOM_SERVICE_HEARTBEAT_AUTOSTART="0",
    )
    args = ["serve", SLUG, "--port", str(port), "--data-dir", str(data_dir)]
    args += ["--advertise-url", f"{'https' if tls else 'http'}://{host}:{port}"]
    args += ["--tls"] if tls else []
    return subprocess.Popen(
        [PYEDGE, *args], env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def start_served(broker: Broker, tmp_path: Path, node_id: str | None = None) -> Served:
    """Serve custom-service with its account from the broker's accounts, as `pyedge run`'s."""
    data_dir = tmp_path / f"serve-data-{uuid.uuid4().hex[:6]}"
    (data_dir / "mosquitto").mkdir(parents=True)
    shutil.copy(broker.accounts.directory / "accounts.json", data_dir / "mosquitto")
    node_id = node_id or f"served-{uuid.uuid4().hex[:8]}"
    log = data_dir / "serve.log"
    port = free_port()
    host = lan_address()
    with log.open("ab") as out:
        process = serve_process(data_dir, node_id, port, broker, out, host)
    return Served(process, port, node_id, data_dir, log, host)


def restart(served: Served, broker: Broker) -> None:
    """Start the same service again: same node id, port and data dir."""
    with served.log.open("ab") as out:
        served.process = serve_process(
            served.data_dir, served.node_id, served.port, broker, out, served.host
        )


def wait_ready(served: Served, timeout: float = 15) -> None:
    """Wait until its /api/health answers 200."""
    wait_until(
        lambda: served.process.poll() is None and _healthy(served),
        timeout,
        lambda: f"pyedge serve did not become healthy:\n{served.output()}",
    )


def _healthy(served: Served) -> bool:
    try:
        return request(f"{served.url}/api/health")[0] == 200
    except OSError:
        return False


def stop(served: Served) -> None:
    """SIGTERM its process group; SIGKILL if that hangs."""
    if served.process.poll() is None:
        os.killpg(served.process.pid, signal.SIGTERM)
        try:
            served.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(served.process.pid, signal.SIGKILL)
            served.process.wait()


def wait_until(
    condition: Callable[[], Any], timeout: float = 10, message: Callable[[], str] = lambda: ""
) -> Any:
    """Poll `condition` until it returns something true; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(message() or "condition not met in time")


def clear_retained(broker: Broker, *topics: str) -> None:
    """Remove retained messages, so that later tests' hubs do not list these services."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"clear-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(**broker.login(EDGE_SERVER))
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for topic in topics:
            client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def publish(broker: Broker, topic: str, payload: bytes | str, retain: bool = True) -> None:
    """Publish one message as the edge-server account (which writes every node's topics)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(**broker.login(EDGE_SERVER))
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def make_hub(
    broker: Broker,
    tmp_path: Path,
    *,
    role: str = "hub",
    node_id: str | None = None,
    grace: float = 30,
    services: list[Any] | None = None,
    **extra: Any,
) -> Flask:
    """An edge-server app in the hub (or node) role on the session broker."""
    config = {
        "EDGE_MQTT_HOST": broker.host,
        "EDGE_MQTT_PORT": broker.port,
        **broker.app_login(),
        "EDGE_NODE_ID": node_id or f"hub-{uuid.uuid4().hex[:8]}",
        "EDGE_DATA_DIR": str(tmp_path / f"hub-data-{uuid.uuid4().hex[:6]}"),
        "EDGE_MQTT_KEEPALIVE": KEEPALIVE,
        "EDGE_ROLE": role,
        "EDGE_REMOTE_HEALTH_INTERVAL": 1,
        "EDGE_REMOTE_GRACE": grace,
        "EDGE_CUSTOM_SERVICE_HEARTBEAT_AUTOSTART": False,
        **extra,
    }
    app = create_app(config, services=[] if services is None else services)
    assert app.extensions["pyedge"].bus.wait_connected(5)
    return app


def remote_entry(client: FlaskClient, node: str, slug: str = SLUG) -> dict[str, Any] | None:
    """The services tree's entry of node/slug, if listed."""
    for entry in client.get("/api/services").json:
        if (entry["node"], entry["slug"]) == (node, slug):
            return dict(entry)
    return None


def wait_status(client: FlaskClient, node: str, status: str, timeout: float = 10) -> dict[str, Any]:
    """Wait until node's custom-service shows `status` (ok, offline) in the services tree."""

    def check() -> dict[str, Any] | None:
        entry = remote_entry(client, node)
        return entry if entry and entry["health"]["status"] == status else None

    result: dict[str, Any] = wait_until(
        check, timeout, lambda: f"{node}: not {status}: {remote_entry(client, node)}"
    )
    return result


@pytest.fixture
def served(broker: Broker, tmp_path: Path) -> Iterator[Served]:
    served = start_served(broker, tmp_path)
    try:
        wait_ready(served)
        yield served
    finally:
        stop(served)
        base = f"pyedge/{served.node_id}/{SLUG}"
        clear_retained(broker, f"{base}/announce", f"{base}/status")


@pytest.fixture
def hub(broker: Broker, tmp_path: Path) -> Iterator[Flask]:
    app = make_hub(broker, tmp_path)
    yield app
    app.extensions["pyedge"].close()


def test_a_served_service_announces_itself_and_the_hub_lists_it(
    served: Served, hub: Flask, broker: Broker
) -> None:
    recorder = MqttRecorder(
        broker.host, broker.port, f"rec-{uuid.uuid4().hex[:8]}", **broker.login(OBSERVER)
    )
    try:
        topic = f"pyedge/{served.node_id}/{SLUG}/announce"
        recorder.subscribe(topic)
        announced = recorder.wait_for(topic)
    finally:
        recorder.close()
    assert announced.retain
    body = announced.json()
    assert body["slug"] == SLUG and body["node"] == served.node_id
    assert body["title"] == "Custom service" and body["version"] == "1.0.0"
    assert body["url"] == served.url
    assert body["openapi"] == f"{served.url}/api/openapi.json"
    assert body["machine"] == os.uname().machine
    assert {(op["name"], op["kind"], op["role"]) for op in body["ops"]} == {
        ("sleep", "task", "operator"),
        ("heartbeat", "process", "operator"),
    }
    assert body["announced_at"].endswith("Z")

    client = authorized_client(hub)
    entry = wait_status(client, served.node_id, "ok")
    assert entry["mode"] == "remote"
    assert entry["title"] == "Custom service"
    assert entry["url"] in ("/api/custom-service", f"/api/nodes/{served.node_id}/{SLUG}")
    # The sessions' states come in their own retained messages, maybe after the status.
    states = wait_until(
        lambda: (
            {
                (op["name"], op["kind"], op["state"])
                for op in remote_entry(client, served.node_id)["ops"]
            }
            if all(op["state"] for op in remote_entry(client, served.node_id)["ops"])
            else None
        ),
        10,
        lambda: f"no session states: {remote_entry(client, served.node_id)}",
    )
    assert states == {("sleep", "task", "idle"), ("heartbeat", "process", "idle")}

    health = client.get("/api/health")
    assert health.status_code == 200  # the hub itself is fine
    assert {"node": served.node_id, "slug": SLUG, "status": "ok", "detail": ""} in health.json[
        "remote"
    ]

    nodes = {n["node"]: n for n in client.get("/api/nodes").json}
    hub_node = hub.extensions["pyedge"].node
    assert nodes[hub_node]["status"] == "online" and nodes[hub_node]["services"] == []
    node = nodes[served.node_id]
    assert node["services"] == [SLUG] and node["status"] == "online"
    assert node["machine"] == os.uname().machine
    assert node["last_seen"].endswith("Z") or node["last_seen"].endswith("+00:00")


def test_the_node_role_lists_its_own_node_only_with_the_plain_url(
    served: Served, broker: Broker, tmp_path: Path
) -> None:
    mine = make_hub(broker, tmp_path, role="node", node_id=served.node_id)
    other = make_hub(broker, tmp_path, role="node")
    try:
        client = authorized_client(mine)
        entry = wait_status(client, served.node_id, "ok")
        assert entry["url"] == "/api/custom-service"
        assert [s["node"] for s in client.get("/api/services").json] == [served.node_id]
        assert authorized_client(other).get("/api/services").json == []
        response = client.get("/api/nodes")
        assert response.status_code == 404
        assert "EDGE_ROLE=hub" in response.json["message"]
    finally:
        mine.extensions["pyedge"].close()
        other.extensions["pyedge"].close()


def test_killed_restarted_and_stopped(served: Served, hub: Flask, broker: Broker) -> None:
    client = authorized_client(hub)
    wait_status(client, served.node_id, "ok")

    os.killpg(served.process.pid, signal.SIGKILL)
    served.process.wait()
    started = time.monotonic()
    entry = wait_status(client, served.node_id, "offline", timeout=5)
    assert time.monotonic() - started < 3  # the socket closed: the broker fires the will
    assert entry["health"]["detail"] == LIVE_OFFLINE

    restart(served, broker)
    wait_ready(served)
    wait_status(client, served.node_id, "ok")

    os.killpg(served.process.pid, signal.SIGTERM)
    assert served.process.wait(20) == 0
    entry = wait_status(client, served.node_id, "offline", timeout=5)
    assert entry["health"]["detail"] == LIVE_OFFLINE
    assert "services stopped: custom-service" in served.output()


def test_a_new_hub_rebuilds_the_tree_and_grace_forgets(
    served: Served, hub: Flask, broker: Broker, tmp_path: Path
) -> None:
    wait_status(authorized_client(hub), served.node_id, "ok")
    forgetful = make_hub(broker, tmp_path, grace=1)
    try:
        client = authorized_client(forgetful)
        wait_status(client, served.node_id, "ok", timeout=5)  # from the retained messages

        # Watched while it stops: its shutdown may outlast the grace (a request in flight,
        # the hub's own document fetch included, keeps gunicorn a while).
        os.killpg(served.process.pid, signal.SIGTERM)
        wait_status(client, served.node_id, "offline", timeout=5)
        wait_until(lambda: remote_entry(client, served.node_id) is None, 5)
        stop(served)
    finally:
        forgetful.extensions["pyedge"].close()
    # The long-grace hub still lists it; a new one rebuilds it offline from the broker.
    assert remote_entry(authorized_client(hub), served.node_id)["health"]["status"] == "offline"
    rebuilt = make_hub(broker, tmp_path)
    try:
        entry = wait_status(authorized_client(rebuilt), served.node_id, "offline", timeout=5)
        assert entry["health"]["detail"] == RETAINED_OFFLINE
    finally:
        rebuilt.extensions["pyedge"].close()


def test_a_failing_health_check_takes_it_offline_until_it_answers(
    served: Served, hub: Flask
) -> None:
    client = authorized_client(hub)
    wait_status(client, served.node_id, "ok")
    worker = served.worker()
    os.kill(worker, signal.SIGSTOP)
    try:
        started = time.monotonic()
        entry = wait_status(client, served.node_id, "offline", timeout=6)
        # Before the broker's will (1.5 x keepalive = 7.5 s): the health check saw it.
        assert time.monotonic() - started < 1.5 * KEEPALIVE
        assert entry["health"]["detail"].startswith("health check failed: no answer from ")
    finally:
        os.kill(worker, signal.SIGCONT)
    wait_status(client, served.node_id, "ok", timeout=10)


def test_local_wins_malformed_is_ignored_and_shared_slugs_get_node_urls(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from custom_service import service as custom

    node, other = f"hub-{uuid.uuid4().hex[:8]}", f"far-{uuid.uuid4().hex[:8]}"
    app = make_hub(broker, tmp_path, node_id=node, services=[custom])
    closed_port = free_port()
    host = lan_address()

    def announcement(at: str, slug: str = SLUG) -> str:
        return json.dumps(
            {
                "slug": slug,
                "title": "Elsewhere",
                "version": "9",
                "description": "",
                "node": at,
                "machine": "riscv64",
                "url": f"http://{host}:{closed_port}",
                "openapi": f"http://{host}:{closed_port}/api/openapi.json",
                "ops": [{"name": "sleep", "kind": "task", "role": "operator", "description": ""}],
                "announced_at": "2026-11-23T12:00:00.000Z",
            }
        )

    topics = [
        f"pyedge/{node}/{SLUG}/announce",
        f"pyedge/{other}/{SLUG}/announce",
        f"pyedge/{other}/device-service/announce",
        f"pyedge/{other}/container-manager/announce",
    ]
    try:
        with caplog.at_level(logging.WARNING, logger="edge_server.network.remote_listener"):
            publish(broker, topics[0], announcement(node))
            publish(broker, topics[1], announcement(other))
            publish(broker, topics[2], b"{not json")
            publish(broker, topics[3], announcement(other, slug="someone-else"))
            client = authorized_client(app)
            far = wait_until(lambda: remote_entry(client, other), 5)
            # Only this test's: the session broker may hold other tests' retained messages.
            wait_until(
                lambda: (
                    len(
                        [
                            r
                            for r in caplog.records
                            if f"malformed announcement on pyedge/{other}/" in r.getMessage()
                        ]
                    )
                    == 2
                ),
                5,
            )
        tree = [(s["node"], s["slug"], s["mode"]) for s in client.get("/api/services").json]
        assert (node, SLUG, "local") in tree
        assert (node, SLUG, "remote") not in tree  # local wins
        assert [t for t in tree if t[0] == other] == [(other, SLUG, "remote")]
        assert any("runs in this one" in r.message for r in caplog.records)
        # custom-service is local here and remote there: the remote one is reached by node.
        assert far["url"] == f"/api/nodes/{other}/{SLUG}"
        assert far["ops"] == [{"name": "sleep", "kind": "task", "state": None, "success": None}]
        # Nothing listens at its URL: the health check takes it offline, saying why.
        entry = wait_status(client, other, "offline", timeout=5)
        assert entry["health"]["detail"].startswith("health check failed: cannot connect to ")
        nodes = {n["node"]: n for n in client.get("/api/nodes").json}
        assert nodes[node]["services"] == [SLUG]
        assert nodes[other]["machine"] == "riscv64"
        assert nodes[other]["status"] == "offline"
        # A cleared announcement forgets the service.
        publish(broker, topics[1], b"")
        wait_until(lambda: remote_entry(client, other) is None, 5)
    finally:
        app.extensions["pyedge"].close()
        clear_retained(broker, *topics)


def test_a_second_serve_of_the_same_service_refuses(served: Served, broker: Broker) -> None:
    with (served.data_dir / "second.log").open("wb") as out:
        second = serve_process(served.data_dir, "another-node", free_port(), broker, out)
    assert second.wait(30) == 1
    output = (served.data_dir / "second.log").read_text()
    assert "EDGE_DATA_DIR" in output and "in use by another pyedge serve custom-service" in output


def test_serve_without_a_broker_login_names_the_setting(tmp_path: Path, broker: Broker) -> None:
    with (tmp_path / "out.log").open("wb") as out:
        process = serve_process(tmp_path / "empty", "lonely", free_port(), broker, out)
    assert process.wait(30) == 2
    output = (tmp_path / "out.log").read_text()
    assert "EDGE_MQTT_CREDENTIALS" in output and "no broker login for custom-service" in output


def test_a_service_serving_https_with_its_own_certificate_is_pinned(
    broker: Broker, hub: Flask, tmp_path: Path
) -> None:
    data_dir = tmp_path / "tls-serve"
    (data_dir / "mosquitto").mkdir(parents=True)
    shutil.copy(broker.accounts.directory / "accounts.json", data_dir / "mosquitto")
    # The hub's public key, as `pyedge join` would fetch it: the service trusts its callers.
    (data_dir / "network").mkdir()
    shutil.copy(Path(hub.config["EDGE_DATA_DIR"]) / "network" / "hub.pub", data_dir / "network")
    node_id, port, host = f"served-{uuid.uuid4().hex[:8]}", free_port(), lan_address()
    with (data_dir / "serve.log").open("ab") as out:
        process = serve_process(data_dir, node_id, port, broker, out, host, tls=True)
    served = Served(process, port, node_id, data_dir, data_dir / "serve.log", host)
    try:
        # A self-signed certificate, which no CA vouches for: the hub checks it by the
        # fingerprint the service announced from its own broker account.
        client = authorized_client(hub)
        entry = wait_status(client, node_id, "ok", timeout=20)
        assert entry["mode"] == "remote"
        remote = hub.extensions["pyedge.remote"].get(node_id, SLUG)
        cert = x509.load_pem_x509_certificate((data_dir / "tls" / "server.crt").read_bytes())
        assert remote.tls_fingerprint == cert.fingerprint(hashes.SHA256()).hex()
        hello = client.get(f"/api/nodes/{node_id}/{SLUG}/hello?name=tls")
        assert hello.status_code == 200, hello.json
        assert hello.json["node"] == node_id
        # Another certificate than the one announced is refused: nothing is sent to it.
        registry = hub.extensions["pyedge.remote"]
        registry.put(dataclasses.replace(remote, tls_fingerprint="0" * 64))
        assert client.get(f"/api/nodes/{node_id}/{SLUG}/hello").status_code == 502
    finally:
        stop(served)
        base = f"pyedge/{node_id}/{SLUG}"
        clear_retained(broker, f"{base}/announce", f"{base}/status")
