"""`pyedge run` as a user starts it: Mosquitto + gunicorn, ready fast, stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_server import cli
from edge_server.broker import embedded as broker
from edge_server.broker.accounts import SUBSCRIBER, load_accounts
from edge_server.broker.embedded import port_open
from pyedge.accounts import AccountStore
from pyedge.security import Role
from tests.conftest import free_port
from tests.docker_engine import TEST_IMAGE, DockerEngine
from tests.mqtt_recorder import MqttRecorder

PYEDGE = str(Path(sys.executable).parent / "pyedge")


@dataclass
class Node:
    """A running `pyedge run` and where it listens."""

    process: subprocess.Popen[str]
    http_port: int
    mqtt_port: int
    node_id: str
    data_dir: Path
    # An admin token made in its data dir before it started (the headless path).
    token: str
    # Set for a node started with --tls: its URLs are https and requests verify with it.
    tls: ssl.SSLContext | None = None

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}{path}"

    def call(self, path: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
        """A request to the node with its admin token."""
        return request(self.url(path), method, body, self.tls, self.token)


def request(
    url: str,
    method: str = "GET",
    body: Any = None,
    context: ssl.SSLContext | None = None,
    token: str | None = None,
) -> tuple[int, Any]:
    """An HTTP request; returns status and parsed JSON (errors included)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def start_node(tmp_path: Path, *args: str, **env: str) -> Node:
    """`pyedge run` on free ports with its own node id and data dir; `args` appended."""
    http_port, mqtt_port = free_port(), free_port()
    node_id = f"run-{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path / "data"
    token = AccountStore(data_dir / "accounts.db").create_token("test-run", Role.ADMIN)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    environ.update(
        EDGE_NODE_ID=node_id,
        EDGE_CUSTOM_SERVICE_HEARTBEAT_INTERVAL="0.2",
        EDGE_HTTP_HOST="127.0.0.1",
        EDGE_MQTT_KEEPALIVE="5",
        **env,
    )
    process = subprocess.Popen(
        [
            PYEDGE,
            "run",
            "--port",
            str(http_port),
            "--mqtt-port",
            str(mqtt_port),
            "--data-dir",
            str(data_dir),
            *args,
        ],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return Node(process, http_port, mqtt_port, node_id, data_dir, token)


def wait_ready(node: Node, timeout: float = 15) -> float:
    """Seconds until /api/health answered 200."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        assert node.process.poll() is None, node.process.stdout.read()  # type: ignore[union-attr]
        try:
            if node.call("/api/health")[0] == 200:
                return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise AssertionError("pyedge run did not become healthy")


def node_recorder(node: Node, client_id: str) -> MqttRecorder:
    """A recorder on the node's broker, logged in with the subscriber account it made."""
    login = load_accounts(node.data_dir / "mosquitto").login(SUBSCRIBER)
    return MqttRecorder("127.0.0.1", node.mqtt_port, client_id, **login)


def gunicorn_worker(node: Node) -> int:
    """The pid of the node's one gunicorn worker (its other child is Mosquitto)."""
    pid = node.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    workers = [c for c in children if b"mosquitto" not in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(workers) == 1, children
    return int(workers[0])


@pytest.fixture
def node(tmp_path: Path, docker_engine: DockerEngine) -> Iterator[Node]:
    # DOCKER_HOST, as a machine's environment would give it (docker-py's from_env reads it).
    node = start_node(tmp_path, DOCKER_HOST=docker_engine.url)
    yield node
    stop_node(node)


def stop_node(node: Node) -> None:
    """SIGTERM, which lets it stop its broker; SIGKILL only if that hangs."""
    if node.process.poll() is None:
        node.process.terminate()
        try:
            node.process.wait(20)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()


def test_run_lists_the_engines_containers(node: Node, docker_engine: DockerEngine) -> None:
    wait_ready(node)
    client = docker_engine.client()
    container = client.containers.run(TEST_IMAGE, ["sleep", "60"], name="run-seen", detach=True)
    try:
        status, listed = node.call("/api/container-manager/containers")
        assert status == 200
        assert "run-seen" in [c["name"] for c in listed]
    finally:
        container.remove(force=True)
        client.close()


def test_run_serves_health_ops_and_mqtt_then_stops_on_sigterm(node: Node) -> None:
    ready_after = wait_ready(node)
    assert ready_after < 10

    status, health = node.call("/api/health")
    assert health["node"] == node.node_id
    assert health["services"]["custom-service"]["status"] == "ok"

    recorder = node_recorder(node, "run-recorder")
    try:
        recorder.subscribe(f"pyedge/{node.node_id}/#")
        beat = recorder.wait_for(f"pyedge/{node.node_id}/custom-service/heartbeat")
        assert beat.json()["seq"] >= 1  # autostarted, exactly one heartbeat Process

        status, _ = node.call("/api/custom-service/ops/sleep/start", "POST", {"seconds": 0.2})
        assert status == 202
        status, done = node.call("/api/custom-service/ops/sleep/wait?timeout=5", "POST")
        assert (done["state"], done["success"]) == ("done", True)
        recorder.wait_for(
            f"pyedge/{node.node_id}/custom-service/ops/sleep", lambda m: m.json()["state"] == "done"
        )
    finally:
        recorder.close()

    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(timeout=20) == 0
    output = node.process.stdout.read()  # type: ignore[union-attr]
    stopped = next(line for line in output.splitlines() if "services stopped:" in line)
    assert "custom-service" in stopped
    assert "container-manager" in stopped
    assert not port_open("127.0.0.1", node.mqtt_port), "Mosquitto left running"
    assert not port_open("127.0.0.1", node.http_port)


def test_sigterm_ends_a_long_wait_request_promptly(node: Node) -> None:
    wait_ready(node)
    node.call("/api/custom-service/ops/sleep/start", "POST", {"seconds": 600})
    answers: list[tuple[int, Any]] = []
    wait_path = "/api/custom-service/ops/sleep/wait"
    waiter = threading.Thread(target=lambda: answers.append(node.call(wait_path, "POST")))
    waiter.start()
    time.sleep(0.5)  # the wait request is now held by the server
    started = time.monotonic()
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(timeout=30) == 0
    assert time.monotonic() - started < 8  # not the 60 s wait, nor the graceful timeout
    waiter.join(10)
    status, session = answers[0]
    assert status == 200
    assert (session["state"], session["success"]) == ("done", False)
    assert session["messages"][-1]["text"].startswith("aborted after")


def test_a_killed_worker_fires_the_last_will_and_a_new_one_comes_online(node: Node) -> None:
    wait_ready(node)
    topic = f"pyedge/{node.node_id}/edge-server/status"
    recorder = node_recorder(node, "will-recorder")
    try:
        recorder.subscribe(topic)
        recorder.wait_for(topic, lambda m: m.payload == b"online")
        os.kill(gunicorn_worker(node), signal.SIGKILL)
        recorder.wait_for(topic, lambda m: m.payload == b"offline")
        recorder.wait_for(
            topic, lambda m: m.payload == b"online", after=len(recorder.messages), timeout=20
        )
    finally:
        recorder.close()
    wait_ready(node)


@pytest.mark.parametrize("shared", ["data dir", "node id"])
def test_a_second_run_of_the_same_node_refuses_to_start(
    node: Node, tmp_path: Path, shared: str
) -> None:
    wait_ready(node)
    data_dir = node.data_dir if shared == "data dir" else tmp_path / "other-data"
    node_id = node.node_id if shared == "node id" else "another-node"
    second = subprocess.run(
        [PYEDGE, "run", "--port", str(free_port()), "--mqtt-port", str(free_port()),
         "--data-dir", str(data_dir)],
        env={**os.environ, "EDGE_NODE_ID": node_id},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert second.returncode == 1
    expected = "EDGE_DATA_DIR" if shared == "data dir" else f"EDGE_NODE_ID: {node_id}"
    assert expected in second.stderr
    assert "is in use by another pyedge run" in second.stderr


def test_the_broker_persists_its_state_as_the_same_user(node: Node) -> None:
    wait_ready(node)
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(timeout=20) == 0
    log = (node.data_dir / "mosquitto" / "mosquitto.log").read_text()
    assert "Permission denied" not in log
    assert (node.data_dir / "mosquitto" / "mosquitto.db").stat().st_size > 0


def test_a_bad_setting_stops_start_up_with_the_key_named(tmp_path: Path) -> None:
    result = subprocess.run(
        [PYEDGE, "run"],
        env={**os.environ, "EDGE_HTTP_PORT": "http"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "EDGE_HTTP_PORT (from environment EDGE_HTTP_PORT)" in result.stderr


def test_missing_mosquitto_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(broker, "SEARCH_PATH", str(tmp_path))
    code = cli.main(
        [
            "run",
            "--data-dir",
            str(tmp_path / "d"),
            "--port",
            str(free_port()),
            "--mqtt-port",
            str(free_port()),
        ]
    )
    assert code == 1
    assert "sudo apt-get install mosquitto" in capsys.readouterr().err
