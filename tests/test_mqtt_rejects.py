"""Malformed MQTT payloads on operation calls and on what an edge-server learns from the bus.

Published by real clients on the real broker: each bad message is refused with a log line
and counted in `pyedge_mqtt_rejected_total{kind}`, no handler raises (the bus would log
"handler for ... failed"), and the service answers good messages afterwards. The
device-service's own topics (actuators, Home Assistant's birth) are in
tests/device/test_metrics.py.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from pyedge.security import Role
from tests.conftest import Broker, authorized_client, free_port
from tests.device.test_metrics import GARBAGE
from tests.test_metrics import scrape, until, value
from tests.test_network_registry import clear_retained, make_hub, publish
from tests.test_rpc import Caller, Rpc

SLUG = "custom-service"


def rejected(client: FlaskClient, kind: str) -> float:
    return value(scrape(client), "pyedge_mqtt_rejected_total", kind=kind)


def logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    """How many records so far say `text`."""
    return sum(text in r.getMessage() for r in caplog.records)


def no_handler_failed(caplog: pytest.LogCaptureFixture) -> None:
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("handler for")]
    assert not failed, failed


@pytest.fixture
def caller(broker: Broker) -> Iterator[Caller]:
    caller = Caller(broker)
    yield caller
    caller.close()


def test_malformed_operation_calls_are_answered_counted_and_harmless(
    app: Flask, caller: Caller, node_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    rpc = Rpc(caller, node_id)
    client = authorized_client(app, Role.VIEWER)
    call_topic = f"pyedge/{node_id}/{SLUG}/ops/sleep/call"
    with caplog.at_level(logging.WARNING):
        for payload in GARBAGE:
            answer = rpc("sleep", payload)
            assert answer["code"] in (400, 422), (payload[:20], answer)
        # Not answered at all: without a response topic, or one outside the service's.
        caller.send(call_topic, {"action": "status"}, reply_to=None)
        caller.send(call_topic, {"action": "status"}, reply_to=f"pyedge/{node_id}/elsewhere")
        unanswered = 2
        until(lambda: rejected(client, "op_call") == len(GARBAGE) + unanswered)
    logged = [r for r in caplog.records if "malformed op_call" in r.getMessage()]
    assert len(logged) == len(GARBAGE) + unanswered
    no_handler_failed(caplog)
    # The service still answers a good call.
    assert rpc("sleep", {"action": "status"})["code"] == 200


@pytest.fixture
def hub(broker: Broker, tmp_path: Path) -> Iterator[Flask]:
    """A hub on the session broker that learns remote services from the bus."""
    app = make_hub(broker, tmp_path, EDGE_REMOTE_HEALTH_INTERVAL=3600)
    yield app
    app.extensions["pyedge"].close()


def announcement(node: str, url: str) -> dict[str, Any]:
    return {
        "slug": SLUG,
        "title": "Custom service",
        "version": "1.0.0",
        "node": node,
        "url": url,
        "ops": [{"name": "sleep", "kind": "task", "role": "operator", "description": ""}],
        "announced_at": "2026-12-04T12:00:00.000Z",
    }


def remote_ops(client: FlaskClient, node: str) -> dict[str, Any] | None:
    for entry in client.get("/api/services").json:
        if (entry["node"], entry["slug"], entry["mode"]) == (node, SLUG, "remote"):
            return {op["name"]: op["state"] for op in entry["ops"]}
    return None


def test_malformed_announcements_statuses_and_sessions_are_counted_and_harmless(
    hub: Flask, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    client = authorized_client(hub, Role.VIEWER)
    # The hub's own node may announce a loopback URL (nothing listens there: no matter).
    node = hub.config["EDGE_NODE_ID"]
    base = f"pyedge/{node}/{SLUG}"
    stranger = f"pyedge/bad-{uuid.uuid4().hex[:8]}/{SLUG}"
    bad_sessions = [*GARBAGE, b'{"state": "exploded"}', b'{"state": "done", "success": "yes"}']
    try:
        with caplog.at_level(logging.WARNING):
            for payload in GARBAGE:
                publish(broker, f"{stranger}/announce", payload, retain=False)
                publish(broker, f"{stranger}/status", payload, retain=False)
            # Other tests' retained announcements on the shared broker may be refused too:
            # each of ours is told by its topic in the log, and counted at least.
            until(lambda: logged(caplog, f"{stranger}/announce") == len(GARBAGE))
            until(lambda: logged(caplog, f"{stranger}/status") == len(GARBAGE))
            assert rejected(client, "announcement") >= len(GARBAGE)
            assert rejected(client, "status") >= len(GARBAGE)
            # A session is read only for a service announced with that operation.
            url = f"http://127.0.0.1:{free_port()}"
            publish(broker, f"{base}/announce", json.dumps(announcement(node, url)))
            until(lambda: remote_ops(client, node) is not None)
            for payload in bad_sessions:
                publish(broker, f"{base}/ops/sleep", payload, retain=False)
            until(lambda: rejected(client, "op_state") == len(bad_sessions))
        no_handler_failed(caplog)
        assert logged(caplog, f"malformed announcement on {stranger}/announce") == len(GARBAGE)
        # Good messages still count: a session state, and an announcement.
        session = {"op": "sleep", "state": "running", "success": None}
        publish(broker, f"{base}/ops/sleep", json.dumps(session), retain=False)
        until(lambda: remote_ops(client, node) == {"sleep": "running"})
        assert remote_ops(client, stranger.split("/")[1]) is None
    finally:
        clear_retained(broker, f"{base}/announce")
