"""A node's cable cut for 60 s: it samples on, and everything arrives once it is back."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_server.broker.embedded import Mosquitto
from edge_server.config import REPO_MQTT_CONFIG
from tests.conftest import broker_accounts, free_port
from tests.device.persistent_subscriber import PersistentSubscriber
from tests.device.test_faults import service_env
from tests.faults.common import SENSORS, WINDOW, wait_for_all, wait_until
from tests.faults.report import count, record, stored_seqs
from tests.network.netns import Site

CUT_S = 60
# Short, so that both ends notice the dead link during the cut, as they would in a minute.
KEEPALIVE_S = 5


@pytest.fixture
def site() -> Iterator[Site]:
    """A bridge (the hub's side) and namespaces for nodes, removed whatever happens."""
    site = Site()
    yield site
    site.close()


@pytest.mark.timeout(300)  # the fault lasts most of it
def test_a_node_cut_off_for_60_s_samples_on_and_delivers_everything(
    site: Site, tmp_path: Path
) -> None:
    node_id = f"cut-{uuid.uuid4().hex[:6]}"
    accounts = broker_accounts(tmp_path / "broker")
    hub = Mosquitto(REPO_MQTT_CONFIG, tmp_path / "broker", site.hub_address, free_port(), accounts)
    hub.start()
    subscriber = PersistentSubscriber(
        site.hub_address,
        hub.port,
        f"hub-{node_id}",
        f"pyedge/{node_id}/device-service/sensors/+",
        **accounts.login("subscriber"),
    )
    node = site.add_host()
    env = service_env(tmp_path, node_id, accounts.login(), hub.port, site.hub_address)
    env["EDGE_MQTT_KEEPALIVE"] = str(KEEPALIVE_S)
    log = tmp_path / "node.log"
    pyedge = str(Path(sys.executable).parent / "pyedge")
    try:
        node.popen([pyedge, "run", "--no-broker"], env, log)
        wait_until(lambda: len(subscriber.received("temp")) >= 25, 40, "the first readings", log)
        node.cable(False)
        at_cut = stored_seqs(tmp_path / "data")
        time.sleep(CUT_S)
        sampled = stored_seqs(tmp_path / "data")
        # It sampled on while cut off: about 25 readings a second of each sensor.
        assert all(sampled[s] - at_cut[s] >= 10 * CUT_S for s in SENSORS), (at_cut, sampled)
        node.cable(True)
        at_heal = stored_seqs(tmp_path / "data")
        recovery = wait_for_all(subscriber, at_heal, 120, log)
        node.stop()  # SIGTERM: a clean stop, which forwards for up to 2 s more
        last = stored_seqs(tmp_path / "data")
        wait_for_all(subscriber, last, 30, log)
        report = record(
            count(
                f"node cable cut {CUT_S} s (netns)",
                {s: subscriber.received(s) for s in SENSORS},
                last,
                recovery,
                sampled_while_cut=sum(sampled.values()) - sum(at_cut.values()),
            )
        )
        assert report.lost == 0 and report.out_of_order == 0, report
        assert report.duplicates <= WINDOW, report
    finally:
        node.kill()
        subscriber.close()
        hub.stop()
