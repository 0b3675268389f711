"""The live channel, GET /api/events: real HTTP, the real broker, real sockets."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from flask import Flask
from paho.mqtt.client import topic_matches_sub

from edge_server.dashboard.events import (
    EXTENSION,
    QUEUE_SIZE,
    EventHub,
    check_filter,
    matches,
)
from pyedge.security import Role
from tests.conftest import authorize


@dataclass
class SseEvent:
    id: str | None
    event: str
    data: dict[str, Any]


class SseReader:
    """A blocking EventSource: `next_event()` parses the stream as a browser would."""

    def __init__(self, url: str, token: str, last_id: str | None = None, **params: Any) -> None:
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        self.response = requests.get(url, headers=headers, params=params, stream=True, timeout=5)
        self.lines = self.response.iter_lines(decode_unicode=True)
        self.comments: list[str] = []
        self.last_id: str | None = None  # as EventSource keeps it (id-only blocks too)

    def next_event(self) -> SseEvent:
        while "data" not in (fields := self.next_block()):
            pass
        return SseEvent(
            fields.get("id"), fields.get("event", "message"), json.loads(fields["data"])
        )

    def next_block(self) -> dict[str, str]:
        """The fields of the next block that has any (comments are kept aside)."""
        fields: dict[str, str] = {}
        for line in self.lines:
            if line == "":
                if fields:
                    return fields
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            fields[name] = value.lstrip(" ")
            if name == "id":
                self.last_id = fields["id"]
        raise EOFError("the stream ended")

    def until(self, topic: str) -> SseEvent:
        """The next event of `topic`, skipping others."""
        while True:
            event = self.next_event()
            if event.data["topic"] == topic:
                return event

    def close(self) -> None:
        self.response.close()


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, "EDGE_SSE_CLIENTS": 4, "EDGE_SSE_HEARTBEAT": 1.0}


def publish(app: Flask, topic: str, payload: dict[str, Any], retain: bool = False) -> None:
    bus = app.extensions["pyedge"].bus
    bus.publish(topic, json.dumps(payload), qos=1, retain=retain)


def test_a_bus_message_arrives_as_an_event(app: Flask, base_url: str, node_id: str) -> None:
    topic = f"pyedge/{node_id}/device-service/sensors/t1"
    reader = SseReader(
        f"{base_url}/api/events", authorize(app, Role.VIEWER), topic=f"pyedge/{node_id}/#"
    )
    try:
        assert reader.response.status_code == 200
        assert reader.response.headers["Content-Type"].startswith("text/event-stream")
        time.sleep(0.2)
        sent = time.monotonic()
        publish(app, topic, {"values": {"temperature": 21.5}})
        event = reader.until(topic)
        assert time.monotonic() - sent < 2
        assert event.event == "message"
        assert event.id and "-" in event.id
        assert event.data == {
            "topic": topic,
            "payload": {"values": {"temperature": 21.5}},
            "retained": False,
        }
    finally:
        reader.close()


def test_heartbeats_keep_an_idle_stream_open(app: Flask, base_url: str, node_id: str) -> None:
    reader = SseReader(f"{base_url}/api/events", authorize(app), topic=f"pyedge/{node_id}/none")
    try:
        deadline = time.monotonic() + 5
        topic = f"pyedge/{node_id}/none"
        threading.Timer(2.5, publish, (app, topic, {"n": 1})).start()
        assert reader.until(topic).data["payload"] == {"n": 1}
        assert "keep-alive" in reader.comments
        assert time.monotonic() < deadline
    finally:
        reader.close()


def test_a_new_stream_starts_with_the_retained_state(
    app: Flask, base_url: str, node_id: str
) -> None:
    topic = f"pyedge/{node_id}/custom-service/state"
    publish(app, topic, {"v": 1}, retain=True)
    hub: EventHub = app.extensions[EXTENSION]
    deadline = time.monotonic() + 5
    while not any(e for e in hub._backlog(None) if e.topic == topic):
        assert time.monotonic() < deadline, "the hub never saw the retained message"
        time.sleep(0.05)
    reader = SseReader(f"{base_url}/api/events", authorize(app), topic=f"pyedge/{node_id}/#")
    try:
        event = reader.until(topic)
        assert event.data == {"topic": topic, "payload": {"v": 1}, "retained": True}
    finally:
        reader.close()


def test_last_event_id_resumes_with_what_was_missed(
    app: Flask, base_url: str, node_id: str
) -> None:
    topic = f"pyedge/{node_id}/custom-service/counter"
    token = authorize(app)
    reader = SseReader(f"{base_url}/api/events", token, topic=topic)
    time.sleep(0.2)
    publish(app, topic, {"n": 1})
    first = reader.until(topic)
    reader.close()
    for n in (2, 3):
        publish(app, topic, {"n": n})
    hub: EventHub = app.extensions[EXTENSION]
    deadline = time.monotonic() + 5
    while sum(1 for e in hub._history if e.topic == topic) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    again = SseReader(f"{base_url}/api/events", token, last_id=first.id, topic=topic)
    try:
        assert [again.until(topic).data["payload"]["n"] for _ in range(2)] == [2, 3]
    finally:
        again.close()


def test_filters_outside_the_site_are_refused(app: Flask, base_url: str) -> None:
    token = authorize(app)
    for bad in ("#", "+/x", "other/#", "$SYS/#", "pyedge/a#", "pyedge/#/x"):
        answer = requests.get(
            f"{base_url}/api/events",
            params={"topic": bad},
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
        assert answer.status_code == 403, bad
        assert answer.json()["message"], bad
    assert requests.get(f"{base_url}/api/events", timeout=5).status_code == 401


def test_check_filter_accepts_the_root_and_below() -> None:
    assert check_filter("pyedge", "pyedge/#") is None
    assert check_filter("pyedge", "pyedge/+/device-service/sensors/+") is None
    assert check_filter("site/pyedge", "site/pyedge/n1/#") is None
    assert check_filter("site/pyedge", "pyedge/#") is not None
    assert check_filter("site/pyedge", "site/+/n1/#") is not None


def test_a_viewer_never_sees_operation_calls(app: Flask, base_url: str, node_id: str) -> None:
    call = f"pyedge/{node_id}/probe/ops/sleep/call"
    after = f"pyedge/{node_id}/probe/after"
    viewer = SseReader(
        f"{base_url}/api/events", authorize(app, Role.VIEWER), topic=f"pyedge/{node_id}/#"
    )
    operator = SseReader(
        f"{base_url}/api/events", authorize(app, Role.OPERATOR), topic=f"pyedge/{node_id}/#"
    )
    try:
        time.sleep(0.2)
        publish(app, call, {"params": {"secret": 1}})
        publish(app, after, {"n": 1})
        assert operator.until(call).data["payload"] == {"params": {"secret": 1}}
        seen = []
        while (event := viewer.next_event()).data["topic"] != after:
            seen.append(event.data["topic"])
        assert call not in seen
    finally:
        viewer.close()
        operator.close()


def test_the_stream_slots_are_bounded(app: Flask, base_url: str, node_id: str) -> None:
    token = authorize(app)
    mine = f"pyedge/{node_id}/#"
    readers = [SseReader(f"{base_url}/api/events", token, topic=mine) for _ in range(4)]
    try:
        answer = requests.get(
            f"{base_url}/api/events", headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == "5"
        assert "4 event streams" in answer.json()["message"]
    finally:
        for reader in readers:
            reader.close()


def test_a_client_that_stops_reading_is_dropped(app: Flask, base_url: str, node_id: str) -> None:
    hub: EventHub = app.extensions[EXTENSION]
    token = authorize(app)
    host, port = base_url.removeprefix("http://").split(":")
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect((host, int(port)))
    stalled.sendall(
        f"GET /api/events?topic=pyedge/{node_id}/%23 HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    topic = f"pyedge/{node_id}/custom-service/bulk"
    last_topic = f"pyedge/{node_id}/custom-service/last"
    reader = SseReader(f"{base_url}/api/events", token, topic=f"pyedge/{node_id}/#")
    received: list[int] = []

    def read() -> None:
        while (event := reader.next_event()).data["topic"] != last_topic:
            if event.data["topic"] == topic:
                received.append(event.data["payload"]["n"])

    consumer = threading.Thread(target=read, daemon=True)
    consumer.start()
    try:
        deadline = time.monotonic() + 5
        while hub.clients < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        dropped = hub.dropped
        blob = "x" * 8000
        sent = 0
        while hub.dropped == dropped and sent < 3000:
            publish(app, topic, {"n": sent, "blob": blob})
            sent += 1
            if sent % 100 == 0:
                time.sleep(0.05)
        deadline = time.monotonic() + 20
        while hub.dropped == dropped:
            assert time.monotonic() < deadline, "the stalled client was never dropped"
            time.sleep(0.05)
        assert hub.dropped == dropped + 1, "the reading client was dropped too"
        publish(app, last_topic, {"done": True})
        consumer.join(20)
        assert not consumer.is_alive()
        # The reading client kept its stream, and got everything, in order.
        assert received == list(range(sent))
        assert hub.clients == 1
    finally:
        reader.close()
        stalled.close()


@pytest.mark.parametrize(
    "sub",
    ["a/b/c", "a/+/c", "a/#", "a/b/#", "#", "+", "+/+", "a/+", "a/b/c/#", "+/b/+", "a//c"],
)
@pytest.mark.parametrize("topic", ["a", "a/b", "a/b/c", "a/b/c/d", "a/x/c", "b/b/c", "a//c"])
def test_the_matcher_agrees_with_paho(sub: str, topic: str) -> None:
    expected = topic_matches_sub(sub, topic)
    assert matches(tuple(sub.split("/")), tuple(topic.split("/"))) is expected


def test_a_large_snapshot_does_not_count_against_the_queue(
    app: Flask, base_url: str, node_id: str
) -> None:
    # A site with more retained topics than a stream's queue holds: the new stream gets
    # them all, and is not dropped by the first live message.
    hub: EventHub = app.extensions[EXTENSION]
    count = QUEUE_SIZE + 44
    for n in range(count):
        publish(app, f"pyedge/{node_id}/probe/state/{n}", {"n": n}, retain=True)
    deadline = time.monotonic() + 10
    while sum(1 for e in hub._backlog(None) if e.topic.startswith(f"pyedge/{node_id}/")) < count:
        assert time.monotonic() < deadline, "the hub did not see every retained message"
        time.sleep(0.05)
    reader = SseReader(f"{base_url}/api/events", authorize(app), topic=f"pyedge/{node_id}/#")
    try:
        live = f"pyedge/{node_id}/probe/live"
        publish(app, live, {"live": True})
        seen = set()
        while (event := reader.next_event()).data["topic"] != live:
            if "/probe/state/" in event.data["topic"]:
                seen.add(event.data["payload"]["n"])
        assert seen == set(range(count))
        assert hub.dropped == 0
    finally:
        reader.close()
        for n in range(count):  # clear them: the session's broker is shared
            app.extensions["pyedge"].bus.publish(
                f"pyedge/{node_id}/probe/state/{n}", b"", qos=1, retain=True
            )


def test_a_stream_never_read_frees_its_slot(app: Flask, base_url: str) -> None:
    hub: EventHub = app.extensions[EXTENSION]
    headers = {"Authorization": f"Bearer {authorize(app)}"}
    for _ in range(6):  # more than the 4 slots: each is given back
        assert requests.head(f"{base_url}/api/events", headers=headers, timeout=5).ok
    deadline = time.monotonic() + 5
    while hub.clients:
        assert time.monotonic() < deadline, f"{hub.clients} streams still held"
        time.sleep(0.05)


def test_resuming_after_the_snapshot_replays_nothing_older(
    app: Flask, base_url: str, node_id: str
) -> None:
    state = f"pyedge/{node_id}/probe/state"
    beat = f"pyedge/{node_id}/probe/beat"
    publish(app, state, {"v": 1}, retain=True)
    for n in range(3):  # before the stream: not for it, even on a reconnect
        publish(app, beat, {"n": n})
    hub: EventHub = app.extensions[EXTENSION]
    deadline = time.monotonic() + 5
    while sum(1 for e in hub._history if e.topic == beat) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    token = authorize(app)
    reader = SseReader(f"{base_url}/api/events", token, topic=f"pyedge/{node_id}/probe/#")
    assert reader.until(state).data["retained"] is True
    # After its snapshot the stream moves the last event id to the present, with no event.
    assert set(reader.next_block()) == {"id"}
    last = reader.last_id
    reader.close()
    again = SseReader(
        f"{base_url}/api/events", token, last_id=last, topic=f"pyedge/{node_id}/probe/#"
    )
    try:
        publish(app, beat, {"n": 99})
        assert again.next_event().data["payload"] == {"n": 99}
    finally:
        again.close()


def test_a_cleared_topic_leaves_the_snapshot_and_nan_is_null(
    app: Flask, base_url: str, node_id: str
) -> None:
    gone = f"pyedge/{node_id}/probe/gone"
    odd = f"pyedge/{node_id}/probe/odd"
    bus = app.extensions["pyedge"].bus
    publish(app, gone, {"v": 1}, retain=True)
    bus.publish(gone, b"", qos=1, retain=True)
    bus.publish(odd, b'{"value": NaN}', qos=1, retain=True)
    hub: EventHub = app.extensions[EXTENSION]
    deadline = time.monotonic() + 5
    while odd not in {e.topic for e in hub._backlog(None)}:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert gone not in {e.topic for e in hub._backlog(None)}
    reader = SseReader(f"{base_url}/api/events", authorize(app), topic=f"pyedge/{node_id}/probe/#")
    try:
        event = reader.next_event()
        assert event.data == {"topic": odd, "payload": {"value": None}, "retained": True}
    finally:
        reader.close()
        bus.publish(odd, b"", qos=1, retain=True)
