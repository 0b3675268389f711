"""A JSON GET through the edge-server vs the same route in a bare Flask app (in-process)."""

from __future__ import annotations

import tempfile
import time
from typing import Any

from flask import Flask, request

from bench.broker import running_broker
from pyedge.security import Role

REQUESTS = 5000
TARGET = 0.7


def bare_app() -> Flask:
    """The baseline: one Flask route doing what /hello does, without smorest or PyEdge."""
    app = Flask("bare")

    @app.get("/api/custom-service/hello")
    def hello() -> dict[str, str]:
        return {"message": f"Hello, {request.args.get('name', 'world')}!", "node": "bench"}

    return app


def requests_per_second(app: Flask, count: int) -> float:
    """Requests per second of GET /hello through the app's test client."""
    client = app.test_client()
    if "pyedge.auth" in app.extensions:
        # As a client of the API is: with a token (its check is part of the cost).
        token = app.extensions["pyedge.auth"].accounts.create_token("bench", Role.VIEWER)
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    url = "/api/custom-service/hello?name=bench"
    assert client.get(url).status_code == 200
    started = time.perf_counter()
    for _ in range(count):
        client.get(url)
    return count / (time.perf_counter() - started)


def run(scale: float) -> dict[str, Any]:
    """Compare the edge-server's /hello with the bare app's."""
    from edge_server import create_app

    count = max(200, int(REQUESTS * scale))
    with running_broker() as port, tempfile.TemporaryDirectory() as data:
        app = create_app(
            {
                "EDGE_MQTT_PORT": port,
                "EDGE_NODE_ID": "bench",
                "EDGE_DATA_DIR": data,
                "EDGE_CUSTOM_SERVICE_HEARTBEAT_AUTOSTART": False,
            }
        )
        try:
            baseline = requests_per_second(bare_app(), count)
            pyedge = requests_per_second(app, count)
        finally:
            app.extensions["pyedge"].close()
    return {
        "name": "api: GET /hello",
        "unit": "req/s",
        "pyedge": pyedge,
        "baseline": baseline,
        "ratio": pyedge / baseline,
        "target": TARGET,
        "what": f"{count} requests, Flask test client; baseline a bare Flask route",
    }
