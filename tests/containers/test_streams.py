"""Server-Sent Events over real HTTP: logs (heartbeats, resume, client gone) and events."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import docker
import requests
from flask.testing import FlaskClient

from tests.containers.conftest import LiveServer, run_spec, wait_for
from tests.docker_engine import TEST_IMAGE

# stdout: line1, line2, ...; stderr: e3, e6, ... (so the two streams interleave)
COUNTER = (
    "i=0; while true; do i=$((i+1)); echo line$i; [ $((i % 3)) = 0 ] && echo e$i >&2; "
    "sleep 0.05; done"
)


@dataclass
class Event:
    """One SSE event as a client sees it."""

    id: str | None = None
    event: str | None = None
    data: Any = None
    comments: list[str] = field(default_factory=list)


def events(response: requests.Response) -> Iterator[Event]:
    """Parse an SSE response into events; comment-only blocks come as events with no data."""
    current = Event()
    for raw in response.iter_lines(decode_unicode=True):
        if raw == "":
            yield current
            current = Event()
        elif raw.startswith(":"):
            current.comments.append(raw[1:].strip())
        else:
            key, _, value = raw.partition(": ")
            if key == "data":
                current.data = json.loads(value)
            elif key == "id":
                current.id = value
            elif key == "event":
                current.event = value


@contextmanager
def stream(server: LiveServer, url: str, **headers: str) -> Iterator[requests.Response]:
    with requests.get(url, stream=True, timeout=30, headers={**server.auth, **headers}) as response:
        yield response


def sse_readers() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "sse-reader")


def start_counter(cm_client: FlaskClient, name: str = "counter") -> None:
    response = cm_client.post(
        "/api/container-manager/containers",
        json=run_spec(name=name, command=["sh", "-c", COUNTER]),
    )
    assert response.status_code == 201, response.json


def test_logs_stream_follows_both_streams_until_the_container_ends(
    cm_server: LiveServer, cm_client: FlaskClient
) -> None:
    script = "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.2; done"
    cm_client.post(
        "/api/container-manager/containers",
        json=run_spec(name="brief", command=["sh", "-c", script]),
    )
    with stream(cm_server, cm_server.api("/containers/brief/logs/stream?tail=100")) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        received = list(events(response))
    lines = [e.data for e in received if e.data and "text" in e.data]
    assert sorted(line["text"] for line in lines) == sorted(
        [f"out{i}" for i in (1, 2, 3)] + [f"err{i}" for i in (1, 2, 3)]
    )
    assert {line["stream"] for line in lines} == {"stdout", "stderr"}
    assert received[-1].event == "end"
    assert all(e.id for e in received if e.data and "text" in e.data)


def test_heartbeats_while_the_container_is_silent(
    cm_server: LiveServer, cm_client: FlaskClient
) -> None:
    cm_client.post(
        "/api/container-manager/containers",
        json=run_spec(name="quiet", command=["sleep", "3600"]),
    )
    with stream(cm_server, cm_server.api("/containers/quiet/logs/stream")) as response:
        received = events(response)
        comments = [next(received).comments for _ in range(3)]
    assert comments[0] == ["stream open"]
    assert comments[1:] == [["keepalive"], ["keepalive"]]


def test_resume_with_last_event_id_loses_and_repeats_nothing(
    cm_server: LiveServer, cm_client: FlaskClient
) -> None:
    start_counter(cm_client)
    url = cm_server.api("/containers/counter/logs/stream?tail=10000")
    first: list[dict[str, Any]] = []
    with stream(cm_server, url) as response:
        for event in events(response):
            if event.data and "text" in event.data:
                first.append(event.data)
                last_id = event.id
            if len(first) >= 30:
                break
    assert last_id and "|" in last_id  # one position per stream
    second: list[dict[str, Any]] = []
    with stream(cm_server, url, **{"Last-Event-ID": last_id}) as response:
        for event in events(response):
            if event.data and "text" in event.data:
                second.append(event.data)
            if len([d for d in second if d["stream"] == "stdout"]) >= 20:
                break
    stdout = [int(d["text"][4:]) for d in first + second if d["stream"] == "stdout"]
    assert stdout == list(range(1, len(stdout) + 1)), "a gap or a repeat across the resume"
    stderr = [int(d["text"][1:]) for d in first + second if d["stream"] == "stderr"]
    assert stderr == list(range(3, 3 * len(stderr) + 1, 3))


def test_the_docker_stream_closes_when_the_client_goes(
    cm_server: LiveServer, cm_client: FlaskClient
) -> None:
    start_counter(cm_client)
    before = sse_readers()
    with stream(cm_server, cm_server.api("/containers/counter/logs/stream")) as response:
        received = events(response)
        wait_for(lambda: (e := next(received)).data and "text" in e.data, what="a line")
        assert sse_readers() == before + 2  # stdout and stderr
    # The next write (a line, or a heartbeat at the latest) finds the client gone.
    wait_for(lambda: sse_readers() == before, timeout=10, what="the reader threads to end")


def test_unknown_container_stream_is_404(cm_server: LiveServer) -> None:
    response = cm_server.session.get(cm_server.api("/containers/ghost/logs/stream"), timeout=10)
    assert response.status_code == 404
    assert response.json()["message"]


def test_events_stream_shows_managed_objects_only(
    cm_server: LiveServer, cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    with stream(cm_server, cm_server.api("/events/stream")) as response:
        received = events(response)
        assert next(received).comments == ["stream open"]
        docker_client.containers.run(TEST_IMAGE, ["true"], name="outsider", detach=True)
        start_counter(cm_client, "insider")
        seen = []
        while not any(e["action"] == "start" for e in seen):
            event = next(received)
            if event.data:
                seen.append(event.data)
    assert {e["name"] for e in seen} == {"insider"}
    assert [e["action"] for e in seen][:2] == ["create", "start"]
    assert all(e["type"] == "container" for e in seen)


def test_too_many_streams_are_refused(cm_server: LiveServer, cm_client: FlaskClient) -> None:
    opened = []
    try:
        for _ in range(8):  # the default max_streams
            response = cm_server.session.get(
                cm_server.api("/events/stream"), stream=True, timeout=10
            )
            assert response.status_code == 200
            opened.append(response)
        refused = cm_server.session.get(cm_server.api("/events/stream"), timeout=10)
        assert refused.status_code == 503
        assert "too many streams" in refused.json()["message"]
    finally:
        for response in opened:
            response.close()

    def slot_free() -> bool:
        with stream(cm_server, cm_server.api("/events/stream")) as response:
            return response.status_code == 200

    wait_for(slot_free, what="a slot to free up")


def test_head_requests_free_their_stream_slot(cm_server: LiveServer) -> None:
    # A HEAD's body never runs: the Docker stream and the slot are freed all the same.
    before = sse_readers()
    for _ in range(10):  # more than max_streams
        response = cm_server.session.head(cm_server.api("/events/stream"), timeout=10)
        assert response.status_code == 200
    with stream(cm_server, cm_server.api("/events/stream")) as response:
        assert response.status_code == 200
    wait_for(lambda: sse_readers() == before, what="no reader threads left")


def test_a_bad_last_event_id_starts_afresh(cm_server: LiveServer, cm_client: FlaskClient) -> None:
    start_counter(cm_client)
    for bad in ("1.x", "2026-01-01T00:00:00Z|x.y", "garbage|", "|"):
        with stream(
            cm_server,
            cm_server.api("/containers/counter/logs/stream?tail=1"),
            **{"Last-Event-ID": bad},
        ) as response:
            assert response.status_code == 200, bad
            received = events(response)
            first = next(e for e in received if e.data)
            assert first.data["text"].startswith(("line", "e"))
    with stream(cm_server, cm_server.api("/events/stream"), **{"Last-Event-ID": "1.x"}) as response:
        assert response.status_code == 200


def test_resume_does_not_replay_a_silent_stream(
    cm_server: LiveServer, cm_client: FlaskClient
) -> None:
    # stderr spoke before the client came and not since: resuming must not replay it.
    script = (
        "echo old-err >&2; sleep 1; i=0; while true; do i=$((i+1)); echo out$i; sleep 0.05; done"
    )
    cm_client.post(
        "/api/container-manager/containers",
        json=run_spec(name="mixed", command=["sh", "-c", script]),
    )
    wait_for(
        lambda: any(
            line["text"] == "out2"
            for line in cm_client.get("/api/container-manager/containers/mixed/logs").json["lines"]
        ),
        what="stdout to start",
    )
    url = cm_server.api("/containers/mixed/logs/stream?tail=0")
    with stream(cm_server, url) as response:
        first = next(e for e in events(response) if e.data and "text" in e.data)
    with stream(cm_server, url, **{"Last-Event-ID": first.id}) as response:
        texts = []
        for event in events(response):
            if event.data and "text" in event.data:
                texts.append(event.data["text"])
            if len(texts) >= 5:
                break
    assert "old-err" not in texts
    assert all(text.startswith("out") for text in texts)
