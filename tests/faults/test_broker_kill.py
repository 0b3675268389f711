"""The broker SIGKILLed for 30 s while the device-service samples 50 readings a second."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from edge_server import create_app
from tests.conftest import app_login, authorized_client, start_broker
from tests.device.conftest import write_sensors
from tests.device.persistent_subscriber import PersistentSubscriber
from tests.faults.common import INTERVAL, SENSORS, WINDOW, wait_for_all, wait_until
from tests.faults.report import count, record, stored_seqs

OUTAGE_S = 30


@pytest.mark.timeout(300)  # the fault lasts most of it
def test_broker_sigkilled_for_30_s_loses_nothing(tmp_path: Path, node_id: str) -> None:
    broker = start_broker(tmp_path / "broker")
    subscriber = PersistentSubscriber(
        "127.0.0.1",
        broker.port,
        f"sub-{node_id}",
        f"pyedge/{node_id}/device-service/sensors/+",
        **broker.accounts.login("subscriber"),
    )
    data = tmp_path / "data"
    app = create_app({
        **app_login(broker.accounts), "EDGE_MQTT_PORT": broker.port, "EDGE_NODE_ID": node_id,
        "EDGE_DATA_DIR": str(data), "EDGE_SERVICES": "device-service",
        "EDGE_DEVICE_SERVICE_SENSORS": str(write_sensors(tmp_path / "s.toml", INTERVAL)),
    })  # fmt: skip
    client = authorized_client(app)
    try:
        wait_until(lambda: len(subscriber.received("temp")) >= 25, 20, "the first readings")
        assert broker.process is not None
        # Save the subscriber's session now, as the 30 s autosave would have by then: a
        # SIGKILL loses what the broker had not saved, which the promise leaves out.
        broker.process.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        broker.process.kill()
        broker.process.wait()
        time.sleep(OUTAGE_S)
        outbox = client.get("/api/device-service/outbox").json
        assert outbox["depth"] >= 20 * OUTAGE_S, outbox  # sampling went on into the outbox
        broker.start()
        at_heal = stored_seqs(data)
        recovery = wait_for_all(subscriber, at_heal, 120, broker.data_dir / "mosquitto.log")
        client.post("/api/device-service/ops/acquire/stop")
        client.post("/api/device-service/ops/acquire/wait?timeout=5")
        last = stored_seqs(data)
        wait_for_all(subscriber, last, 30)
        report = record(
            count(
                "broker SIGKILL 30 s",
                {s: subscriber.received(s) for s in SENSORS},
                last,
                recovery,
                backlog=outbox["depth"],
                dropped=client.get("/api/device-service/outbox").json["dropped"],
            )
        )
        assert report.lost == 0 and report.out_of_order == 0, report
        assert report.duplicates <= WINDOW, report  # one reconnect: its window at most
    finally:
        app.extensions["pyedge"].close()
        subscriber.close()
        broker.stop()
