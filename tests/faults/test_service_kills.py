"""The device-service process SIGKILLed every few seconds for two minutes."""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.device.persistent_subscriber import PersistentSubscriber
from tests.device.test_faults import start_service
from tests.faults.common import SENSORS, WINDOW, wait_for_all, wait_until
from tests.faults.report import count, record, stored_seqs

DURATION_S = 120


@pytest.mark.timeout(300)  # the fault lasts most of it
def test_a_service_killed_every_few_seconds_loses_nothing(
    broker: Broker, tmp_path: Path, node_id: str
) -> None:
    subscriber = PersistentSubscriber(
        broker.host,
        broker.port,
        f"kills-{uuid.uuid4().hex[:6]}",
        f"pyedge/{node_id}/device-service/sensors/+",
        **broker.login("subscriber"),
    )
    log = tmp_path / "service.log"
    kills = 0
    # Seeded: a failing run can be repeated with the same kill times.
    pace = random.Random(13)
    service = start_service(tmp_path, node_id, broker)
    try:
        wait_until(lambda: len(subscriber.received("temp")) >= 25, 40, "the first readings", log)
        ends = time.monotonic() + DURATION_S
        while time.monotonic() < ends:
            time.sleep(pace.uniform(2.0, 5.0))
            os.killpg(service.pid, signal.SIGKILL)  # no goodbye: whatever was in flight is cut
            service.wait(10)
            kills += 1
            service = start_service(tmp_path, node_id, broker)
        healed = time.monotonic()
        # The last run samples on: every seq the killed runs stored must come through.
        wait_until(lambda: (tmp_path / "data").exists(), 10, "the data dir")
        at_heal = stored_seqs(tmp_path / "data")
        wait_for_all(subscriber, at_heal, 60, log)
        recovery = time.monotonic() - healed
        service.send_signal(signal.SIGTERM)
        service.wait(20)
        last = stored_seqs(tmp_path / "data")
        wait_for_all(subscriber, last, 30, log)
        report = record(
            count(
                f"device-service SIGKILL x{kills} in {DURATION_S} s",
                {s: subscriber.received(s) for s in SENSORS},
                last,
                recovery,
                kills=kills,
            )
        )
        assert report.lost == 0 and report.out_of_order == 0, report
        # Each kill may cut acknowledgements short: its window is sent again, no more.
        assert report.duplicates <= kills * WINDOW, report
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGKILL)
        subscriber.close()
