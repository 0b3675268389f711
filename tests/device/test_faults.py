"""The promise under faults: broker away, service killed. Every seq arrives, in order."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_server import create_app
from edge_server.broker.embedded import Mosquitto
from edge_server.config import REPO_MQTT_CONFIG
from tests.conftest import (
    Broker,
    app_login,
    authorized_client,
    broker_accounts,
    free_port,
    start_broker,
)
from tests.device.conftest import write_sensors
from tests.device.persistent_subscriber import PersistentSubscriber, account

logger = logging.getLogger(__name__)

# Two sensors every 40 ms: 50 readings a second.
INTERVAL = 0.04
SENSORS = ("temp", "level")
# Readings a second at most while a backlog drains (the live stream is 50 a second).
DRAIN_RATE = 150


def wait_until(condition: Any, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.05)


def check_every_seq(subscriber: PersistentSubscriber, last: dict[str, int]) -> dict[str, Any]:
    """Wait for every seq of every sensor; return the accounts (lost must be 0)."""
    for sensor in SENSORS:
        wait_until(
            lambda s=sensor: set(range(1, last[s] + 1)) <= set(subscriber.received(s)),
            30,
            f"all {last[sensor]} readings of {sensor}",
        )
    accounts = {sensor: account(subscriber.received(sensor), last[sensor]) for sensor in SENSORS}
    logger.warning("fault test accounts: %s", accounts)  # shown in the test log for the note
    for sensor, counts in accounts.items():
        assert counts["lost"] == 0, (sensor, counts)
        assert counts["out_of_order"] == 0, (sensor, counts)
    return accounts


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of this test's own, to stop and start again on the same port and data."""
    broker = start_broker(tmp_path / "broker")
    yield broker
    broker.stop()


def test_broker_away_for_seconds_loses_nothing(
    own_broker: Mosquitto, tmp_path: Path, node_id: str
) -> None:
    subscriber = PersistentSubscriber(
        "127.0.0.1",
        own_broker.port,
        f"sub-{node_id}",
        f"pyedge/{node_id}/device-service/sensors/+",
        **own_broker.accounts.login("subscriber"),
    )
    app = create_app(
        {
            **app_login(own_broker.accounts),
            "EDGE_MQTT_PORT": own_broker.port,
            "EDGE_NODE_ID": node_id,
            "EDGE_DATA_DIR": str(tmp_path / "data"),
            "EDGE_SERVICES": "device-service",
            "EDGE_DEVICE_SERVICE_SENSORS": str(write_sensors(tmp_path / "s.toml", INTERVAL)),
            "EDGE_DEVICE_SERVICE_DRAIN_RATE": DRAIN_RATE,
        }
    )
    client = authorized_client(app)
    try:
        time.sleep(1.0)
        own_broker.stop()  # SIGTERM: the broker saves the subscriber's session and queue
        time.sleep(4.0)
        outbox = client.get("/api/device-service/outbox").json
        assert outbox["depth"] >= 100, outbox  # sampling went on into the outbox
        backlog = outbox["depth"]
        own_broker.start()
        started = time.monotonic()
        wait_until(
            lambda: client.get("/api/device-service/outbox").json["depth"] == 0,
            30,
            "the outbox to drain",
        )
        # Oldest first at a bounded rate, new readings queueing behind: not one burst.
        assert time.monotonic() - started >= 0.8 * backlog / DRAIN_RATE
        client.post("/api/device-service/ops/acquire/stop")
        client.post("/api/device-service/ops/acquire/wait?timeout=5")
        wait_until(
            lambda: client.get("/api/device-service/outbox").json["depth"] == 0,
            10,
            "the last readings to leave",
        )
        last = {s["name"]: s["last"]["seq"] for s in client.get("/api/device-service/sensors").json}
        assert min(last.values()) >= 200  # about 6 s at 25 readings/s each
        check_every_seq(subscriber, last)
    finally:
        app.extensions["pyedge"].close()
        subscriber.close()


def service_env(
    tmp_path: Path, node_id: str, login: dict[str, str], port: int, host: str = "127.0.0.1"
) -> dict[str, str]:
    """The environment of a device-service process of its own on the broker at host:port."""
    # Its broker account in a file, as a service started on its own is given it.
    credentials = tmp_path / "mqtt-credentials.json"
    credentials.write_text(json.dumps(login))
    credentials.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    env.update(
        EDGE_NODE_ID=node_id,
        EDGE_MQTT_HOST=host,
        EDGE_MQTT_PORT=str(port),
        EDGE_MQTT_CREDENTIALS=str(credentials),
        EDGE_SERVICES="device-service",
        EDGE_DATA_DIR=str(tmp_path / "data"),
        EDGE_HTTP_HOST="127.0.0.1",
        EDGE_HTTP_PORT=str(free_port()),
        EDGE_DEVICE_SERVICE_SENSORS=str(write_sensors(tmp_path / "s.toml", INTERVAL)),
    )
    return env


def start_service(tmp_path: Path, node_id: str, broker: Broker) -> subprocess.Popen[bytes]:
    """The device-service in a process of its own, as `pyedge run` serves it."""
    env = service_env(tmp_path, node_id, broker.login(), broker.port, broker.host)
    # Its output goes to a log file that a failing test shows.
    with (tmp_path / "service.log").open("ab") as log:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "pyedge"), "run", "--no-broker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_a_killed_service_goes_on_from_where_it_was(
    broker: Broker, tmp_path: Path, node_id: str
) -> None:
    topic = f"pyedge/{node_id}/device-service/sensors/+"
    subscriber = PersistentSubscriber(
        broker.host,
        broker.port,
        f"kill-{uuid.uuid4().hex[:6]}",
        topic,
        **broker.login("subscriber"),
    )
    first = start_service(tmp_path, node_id, broker)
    try:
        wait_until(
            lambda: len(subscriber.received("temp")) >= 50,
            40,
            "the first readings",
            tmp_path / "service.log",
        )
        os.killpg(first.pid, signal.SIGKILL)  # no goodbye: whatever was in flight is cut
        first.wait(10)
        killed_at = max(subscriber.received("temp"))
        second = start_service(tmp_path, node_id, broker)
        try:
            wait_until(
                lambda: max(subscriber.received("temp")) >= killed_at + 50,
                40,
                "readings after the restart",
                tmp_path / "service.log",
            )
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(20)
        # The second run's last seqs: the highest each sensor reached.
        last = {s: max(subscriber.received(s)) for s in SENSORS}
        check_every_seq(subscriber, last)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        subscriber.close()


def test_readings_the_broker_refuses_are_kept_and_sent_once_allowed(
    tmp_path: Path, node_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from device_service import forwarder
    from tests.mqtt_recorder import MqttRecorder

    monkeypatch.setattr(forwarder, "RETRY_S", 0.5)
    accounts = broker_accounts(tmp_path / "broker")
    acl = accounts.acl
    # Everything but the readings themselves: their PUBACKs say 0x87 Not authorized.
    acl.write_text(
        "user subscriber\ntopic read #\n"
        "user edge-server\ntopic read #\ntopic write pyedge/+/+/status\n"
        "topic write pyedge/+/+/ops/#\n"
        "topic write pyedge/+/device-service/sensors/+/availability\ntopic write homeassistant/#\n"
    )
    broker = Mosquitto(REPO_MQTT_CONFIG, tmp_path / "broker", "127.0.0.1", free_port(), accounts)
    broker.start()
    recorder = MqttRecorder(
        "127.0.0.1", broker.port, f"acl-{node_id}", **accounts.login("subscriber")
    )
    topic = f"pyedge/{node_id}/device-service/sensors/temp"
    recorder.subscribe(topic)
    app = create_app({
        **app_login(accounts), "EDGE_MQTT_PORT": broker.port, "EDGE_NODE_ID": node_id,
        "EDGE_DATA_DIR": str(tmp_path / "data"), "EDGE_SERVICES": "device-service",
        "EDGE_DEVICE_SERVICE_SENSORS": str(write_sensors(tmp_path / "s.toml", 0.1)),
    })  # fmt: skip
    client = authorized_client(app)
    try:
        wait_until(lambda: client.get("/api/health").status_code == 503, 10, "degraded")
        detail = client.get("/api/health").json["services"]["device-service"]["detail"]
        assert "refused" in detail and "Not authorized" in detail
        assert client.get("/api/device-service/outbox").json["drained"] == 0  # none lost
        acl.write_text("user subscriber\ntopic read #\nuser edge-server\ntopic readwrite #\n")
        assert broker.process is not None
        broker.process.send_signal(signal.SIGHUP)  # Mosquitto reloads its ACL
        wait_until(lambda: client.get("/api/health").status_code == 200, 15, "recovery")
        wait_until(lambda: len(recorder.on(topic)) >= 10, 10, "the kept readings")
        seqs = [m.json()["seq"] for m in recorder.on(topic)]
        assert seqs[:10] == list(range(1, 11))  # from the first, in order
    finally:
        app.extensions["pyedge"].close()
        recorder.close()
        broker.stop()
