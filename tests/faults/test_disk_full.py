"""The data directory on a small tmpfs that fills up for real, then gets its space back."""

from __future__ import annotations

import contextlib
import errno
import logging
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_server import create_app
from pyedge.accounts import AccountStore
from pyedge.security import Role
from tests.conftest import Broker, authorized_client
from tests.device.conftest import write_sensors
from tests.device.persistent_subscriber import PersistentSubscriber
from tests.faults.common import INTERVAL, SENSORS, WINDOW, wait_for_all, wait_until
from tests.faults.report import count, integrity, record, stored_seqs

FULL_S = 10


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MB filesystem (tmpfs) for the data dir; unmounted whatever happens."""
    mount = tmp_path / "data"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem refuses (ENOSPC); returns it."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        # The last few bytes too: SQLite must find no page's worth left.
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 512)
    return filler


def test_a_full_data_disk_degrades_and_recovers(
    broker: Broker, small_disk: Path, tmp_path: Path, node_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    subscriber = PersistentSubscriber(
        broker.host,
        broker.port,
        f"disk-{uuid.uuid4().hex[:6]}",
        f"pyedge/{node_id}/device-service/sensors/+",
        **broker.login("subscriber"),
    )
    app = create_app({
        **broker.app_login(), "EDGE_MQTT_PORT": broker.port, "EDGE_NODE_ID": node_id,
        "EDGE_DATA_DIR": str(small_disk), "EDGE_SERVICES": "device-service",
        "EDGE_DEVICE_SERVICE_SENSORS": str(write_sensors(tmp_path / "s.toml", INTERVAL)),
    })  # fmt: skip
    client = authorized_client(app)
    try:
        wait_until(lambda: len(subscriber.received("temp")) >= 25, 20, "the first readings")
        # A server that has answered before: its accounts reader holds the WAL index open
        # (one opened on an already full disk cannot create it: see docs/PERFORMANCE.md).
        assert client.get("/api/health").status_code == 200
        filler = fill(small_disk)
        wait_until(lambda: client.get("/api/health").status_code == 503, 10, "degraded")
        detail = client.get("/api/health").json["services"]["device-service"]["detail"]
        assert "outbox cannot store readings" in detail and "full" in detail, detail
        before = stored_seqs(small_disk)
        time.sleep(FULL_S)
        # Still serving, the policy in force shown; no seq used up while the disk refused.
        outbox = client.get("/api/device-service/outbox")
        assert outbox.status_code == 200 and outbox.json["policy"] == "drop_oldest", outbox.json
        # The readings the full disk refused are lost, and said so: counted, not hidden.
        assert outbox.json["unstored"] > 0, outbox.json
        assert "pyedge_readings_unstored_total" in client.get("/metrics").text
        refused = stored_seqs(small_disk)
        filler.unlink()
        healed = time.monotonic()
        wait_until(lambda: client.get("/api/health").status_code == 200, 15, "healthy again")
        wait_until(lambda: stored_seqs(small_disk)["temp"] > refused["temp"] + 25, 15, "sampling")
        recovery = time.monotonic() - healed
        client.post("/api/device-service/ops/acquire/stop")
        client.post("/api/device-service/ops/acquire/wait?timeout=5")
        last = stored_seqs(small_disk)
        wait_for_all(subscriber, last, 30)
        check = integrity(small_disk)
        report = record(
            count(
                f"data disk full {FULL_S} s (tmpfs 16 MB)",
                {s: subscriber.received(s) for s in SENSORS},
                last,
                recovery,
                stored_while_full=sum(refused.values()) - sum(before.values()),
                unstored=outbox.json["unstored"],
                error_lines=sum(1 for r in caplog.records if r.levelno >= logging.ERROR),
                integrity=check,
            )
        )
        assert check == "ok"
        # Said once when it starts, not per refused tick or forwarder pass (25 a second).
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) <= 6, [r.getMessage() for r in errors]
        assert any("again" in r.getMessage() for r in caplog.records)
        assert report.lost == 0 and report.out_of_order == 0, report
        assert report.duplicates <= WINDOW, report
    finally:
        app.extensions["pyedge"].close()
        subscriber.close()


def test_a_token_still_opens_the_api_when_its_last_use_cannot_be_noted(small_disk: Path) -> None:
    store = AccountStore(small_disk / "accounts.db")
    used = store.create_token("used", Role.ADMIN)
    fresh = store.create_token("fresh", Role.VIEWER)
    assert store.verify_token(used) is not None  # a server that has answered before
    fill(small_disk)
    # Its first use writes its last-use time, which the full disk refuses.
    identity = store.verify_token(fresh)
    assert identity is not None and identity.name == "fresh"
    store.close()
