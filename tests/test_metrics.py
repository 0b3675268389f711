"""GET /metrics in solo mode: Prometheus' text format, read with prometheus_client's parser.

Each test reads the metrics, makes something happen for real (requests, an operation, the
simulated sensors sampling to the broker, a live stream, Docker engine calls), and reads
them again: the series that should move did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from edge_server import create_app
from pyedge.auth import EXTENSION as AUTH_EXTENSION
from pyedge.security import Role
from pyedge.version import __version__
from tests.conftest import authorize, authorized_client
from tests.docker_engine import DockerEngine

HELLO = "/api/custom-service/hello"
# What every sample of this process carries, whatever the metric.
Samples = dict[str, list[tuple[dict[str, str], float]]]


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """The test app's settings, with an idle live stream written to every second: a stream
    whose client left is noticed at its next write."""
    return {**app_config, "EDGE_SSE_HEARTBEAT": 1}


def parse(text: str) -> Samples:
    """Every sample by its name (counters' with `_total`), as Prometheus would read them."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def scrape(client: FlaskClient) -> Samples:
    """The app's metrics, parsed; the answer must be Prometheus' text format."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain; version=0.0.4")
    return parse(response.get_data(as_text=True))


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels` (0 when there is none yet)."""
    found = [v for have, v in samples.get(name, []) if labels.items() <= have.items()]
    assert len(found) <= 1, f"{name}{labels}: {len(found)} samples"
    return found[0] if found else 0.0


def until(condition: Callable[[], Any], timeout: float = 10) -> Any:
    """Poll `condition` until it is true; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_metrics_need_a_viewer_token_or_session(app: Flask) -> None:
    stranger = app.test_client().get("/metrics")
    assert stranger.status_code == 401
    assert stranger.json["code"] == 401  # the API's envelope
    assert "Bearer" in stranger.headers["WWW-Authenticate"]
    assert authorized_client(app, Role.VIEWER).get("/metrics").status_code == 200
    # A dashboard session is a viewer too.
    app.extensions[AUTH_EXTENSION].accounts.add_user("watcher", "a long passphrase 1", Role.VIEWER)
    browser = app.test_client()
    login = browser.post(
        "/api/auth/login", json={"name": "watcher", "password": "a long passphrase 1"}
    )
    assert login.status_code == 200
    assert browser.get("/metrics").status_code == 200


def test_requests_are_counted_by_route_and_status_never_by_raw_path(app: Flask) -> None:
    client = authorized_client(app, Role.VIEWER)
    before = scrape(client)
    node = app.config["EDGE_NODE_ID"]
    for _ in range(3):
        assert client.get(f"{HELLO}?name=x").status_code == 200
    assert client.get("/api/custom-service/ops/no-such-op").status_code == 404
    assert client.get("/api/no-such-thing/at-all").status_code == 404
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    hello = {"route": HELLO, "method": "GET"}
    assert moved("pyedge_http_requests_total", **hello, status="200") == 3
    assert moved("pyedge_http_request_duration_seconds_count", **hello) == 3
    assert moved("pyedge_http_request_duration_seconds_bucket", **hello, le="+Inf") == 3
    assert value(after, "pyedge_http_request_duration_seconds_sum", **hello) > 0
    rule = "/api/custom-service/ops/<op>"
    assert moved("pyedge_http_requests_total", route=rule, status="404") == 1
    assert moved("pyedge_http_requests_total", route="<unmatched>", status="404") == 1
    routes = {labels["route"] for labels, _v in after["pyedge_http_requests_total"]}
    assert not any("no-such" in route for route in routes), routes
    # Every sample names the node and the process it comes from.
    for name, samples in after.items():
        for labels, _v in samples:
            assert (labels["node"], labels["process"]) == (node, "edge-server"), name
    assert [labels["version"] for labels, _v in after["pyedge_build_info"]] == [__version__]
    assert value(after, "process_resident_memory_bytes") > 0


def test_the_bus_and_the_operations_are_read_when_scraped(app: Flask) -> None:
    client = authorized_client(app, Role.OPERATOR)
    samples = scrape(client)
    assert value(samples, "pyedge_mqtt_connected") == 1
    assert value(samples, "pyedge_mqtt_connects_total") == 1
    assert value(samples, "pyedge_mqtt_reconnects_total") == 0
    sleeping = {"service": "custom-service"}
    assert value(samples, "pyedge_operations", **sleeping, state="running") == 0
    start = client.post("/api/custom-service/ops/sleep/start", json={"seconds": 30})
    assert start.status_code == 202
    samples = scrape(client)
    assert value(samples, "pyedge_operations", **sleeping, state="running") == 1
    assert client.post("/api/custom-service/ops/sleep/abort").status_code == 200
    until(lambda: client.get("/api/custom-service/ops/sleep").json["state"] == "done")
    samples = scrape(client)
    assert value(samples, "pyedge_operations", **sleeping, state="running") == 0
    assert value(samples, "pyedge_operations", **sleeping, state="done") == 1


def test_live_channel_streams_are_counted(app: Flask, base_url: str) -> None:
    client = authorized_client(app, Role.VIEWER)
    assert value(scrape(client), "pyedge_sse_clients") == 0
    headers = {"Authorization": f"Bearer {authorize(app, Role.VIEWER)}"}
    with requests.get(f"{base_url}/api/events", headers=headers, stream=True, timeout=10) as stream:
        assert stream.status_code == 200
        # Held: a line iterator collected early would close the connection under it.
        lines = stream.iter_lines()
        assert next(lines).startswith(b"retry:")  # the stream is open
        until(lambda: value(scrape(client), "pyedge_sse_clients") == 1)
    until(lambda: value(scrape(client), "pyedge_sse_clients") == 0)
    assert value(scrape(client), "pyedge_sse_dropped_total") == 0


@pytest.fixture
def engine_app(app_config: dict[str, Any], docker_engine: DockerEngine) -> Iterator[Flask]:
    app = create_app(
        {
            **app_config,
            "EDGE_SERVICES": "container-manager",
            "EDGE_CONTAINER_MANAGER_DOCKER_HOST": docker_engine.url,
            "EDGE_CONTAINER_MANAGER_RECONCILE_AUTOSTART": False,
        }
    )
    yield app
    app.extensions["pyedge"].close()


def test_engine_calls_and_errors_are_counted(engine_app: Flask) -> None:
    client = authorized_client(engine_app, Role.VIEWER)
    before = scrape(client)
    assert client.get("/api/container-manager/containers").status_code == 200
    assert client.get("/api/container-manager/containers/no-such-container").status_code == 404
    after = scrape(client)
    calls = value(after, "pyedge_engine_calls_total", kind="call")
    assert calls - value(before, "pyedge_engine_calls_total", kind="call") >= 2
    missing = {"kind": "call", "error": "NotFound"}
    assert value(after, "pyedge_engine_errors_total", **missing) == (
        value(before, "pyedge_engine_errors_total", **missing) + 1
    )


def test_an_engine_that_is_not_there_is_counted_as_errors(
    app_config: dict[str, Any], tmp_path: Path
) -> None:
    app = create_app(
        {
            **app_config,
            "EDGE_SERVICES": "container-manager",
            "EDGE_CONTAINER_MANAGER_DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
            "EDGE_CONTAINER_MANAGER_RECONCILE_AUTOSTART": False,
        }
    )
    try:
        client = authorized_client(app, Role.VIEWER)
        assert client.get("/api/container-manager/containers").status_code == 503
        samples = scrape(client)
        unavailable = {"kind": "call", "error": "EngineUnavailable"}
        assert value(samples, "pyedge_engine_errors_total", **unavailable) >= 1
        assert value(samples, "pyedge_engine_calls_total", kind="call") >= 1
    finally:
        app.extensions["pyedge"].close()


def test_a_failing_collector_costs_its_own_metrics_not_the_scrape(app: Flask) -> None:
    def broken() -> list[Any]:
        raise docker.errors.DockerException("gone")

    app.extensions["pyedge"].metrics.register(broken)
    assert value(scrape(authorized_client(app, Role.VIEWER)), "pyedge_mqtt_connected") == 1
