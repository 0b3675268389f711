"""GET /metrics of an edge-server fronting services served on their own (network mode).

A real `pyedge serve custom-service` process announces itself on the session broker; the
hub scrapes its /metrics through the signed-caller path and merges them, each sample
labelled with the node and process it came from. A service that is offline, refuses, or
never answers costs its own metrics (`pyedge_scrape_up 0`), never the scrape.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flask import Flask

from edge_server.network.remote import EXTENSION as REMOTE_EXTENSION
from edge_server.network.remote import RemoteRegistry, RemoteService
from pyedge.identity import hub_public_key_path
from pyedge.security import Role
from tests.conftest import Broker, authorized_client, free_port
from tests.test_metrics import scrape, value
from tests.test_network_registry import (
    SLUG,
    clear_retained,
    make_hub,
    start_served,
    stop,
    wait_ready,
    wait_status,
)


@pytest.fixture
def hub(broker: Broker, tmp_path: Path) -> Iterator[Flask]:
    app = make_hub(broker, tmp_path)
    yield app
    app.extensions["pyedge"].close()


def test_a_served_services_metrics_appear_at_the_hubs_with_its_node(
    hub: Flask, broker: Broker, tmp_path: Path
) -> None:
    served = start_served(broker, tmp_path)
    try:
        # It trusts the hub's key (what `pyedge join` copies): the hub's scrape is a viewer.
        trusted = hub_public_key_path(served.data_dir)
        trusted.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(hub_public_key_path(Path(hub.config["EDGE_DATA_DIR"])), trusted)
        wait_ready(served)
        client = authorized_client(hub, Role.VIEWER)
        wait_status(client, served.node_id, "ok")
        node, own = served.node_id, hub.config["EDGE_NODE_ID"]
        hello = client.get(f"/api/nodes/{node}/{SLUG}/hello?name=metrics")
        assert hello.status_code == 200, hello.data

        samples = scrape(client)
        there = {"node": node, "process": SLUG}
        assert value(samples, "pyedge_scrape_up", **there) == 1
        assert value(samples, "pyedge_mqtt_connected", **there) == 1
        assert value(samples, "pyedge_operations", **there, service=SLUG, state="idle") == 2
        # The proxied request, counted where it was served and where it was forwarded.
        route = f"/api/{SLUG}/hello"
        assert value(samples, "pyedge_http_requests_total", **there, route=route) == 1
        forwarded = {"upstream_node": node, "upstream_service": SLUG, "outcome": "answered"}
        assert value(samples, "pyedge_proxy_requests_total", node=own, **forwarded) == 1
        assert value(samples, "pyedge_mqtt_connected", node=own, process="edge-server") == 1
        assert value(samples, "process_resident_memory_bytes", **there) > 0

        # Stopped: its status says offline, and the scrape says so without failing.
        stop(served)
        wait_status(client, node, "offline")
        samples = scrape(client)
        assert value(samples, "pyedge_scrape_up", **there) == 0
        assert value(samples, "pyedge_mqtt_connected", **there) == 0  # none of its own left
        forwarded["outcome"] = "offline"
        assert client.get(f"/api/nodes/{node}/{SLUG}/hello").status_code == 503
        assert value(scrape(client), "pyedge_proxy_requests_total", **forwarded) == 1
    finally:
        stop(served)
        base = f"pyedge/{served.node_id}/{SLUG}"
        clear_retained(broker, f"{base}/announce", f"{base}/status")


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def test_services_that_refuse_or_never_answer_are_up_0_and_the_scrape_answers(
    app_config: dict[str, object], tmp_path: Path, silent_server: int
) -> None:
    from edge_server import create_app

    app = create_app(
        {
            **app_config,
            "EDGE_ROLE": "hub",
            "EDGE_REMOTE_HEALTH_INTERVAL": 3600,
            # No announcement reaches it from the bus: the test says what is there.
            "EDGE_SITE": "metrics-tests",
        }
    )
    try:
        registry: RemoteRegistry = app.extensions[REMOTE_EXTENSION]
        known = RemoteService(
            node="far",
            slug="refusing",
            title="",
            version="1",
            description="",
            machine="",
            url=f"http://127.0.0.1:{free_port()}",
            ops=(),
            announced_at="2026-12-04T12:00:00Z",
        )
        registry.put(known)
        registry.put(replace(known, slug="silent", url=f"http://127.0.0.1:{silent_server}"))
        client = authorized_client(app, Role.VIEWER)
        samples = scrape(client)
        for slug in ("refusing", "silent"):
            assert value(samples, "pyedge_scrape_up", node="far", process=slug) == 0
        assert value(samples, "pyedge_mqtt_connected", process="edge-server") == 1
        # A refused request is counted as unreachable.
        assert client.get("/api/nodes/far/refusing/x").status_code == 502
        refused = {"upstream_node": "far", "upstream_service": "refusing"}
        samples = scrape(client)
        assert value(samples, "pyedge_proxy_requests_total", **refused, outcome="unreachable") == 1
    finally:
        app.extensions["pyedge"].close()
