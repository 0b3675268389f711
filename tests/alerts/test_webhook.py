"""Webhook actions: retried with back-off on 5xx, in the background, secrets never logged."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask

from alerts.actions import redact
from tests.alerts.conftest import Sensors
from tests.conftest import authorized_client

TOKEN = "s3cret-token-value"
PASSWORD = "hunter2pass"
QUERY_KEY = "qkey-42-secret"


class Hook:
    """A local HTTP endpoint answering 500 twice, then 200; it keeps what it got."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, dict[str, str], dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.requests.append((time.monotonic(), dict(self.headers), body))
                self.send_response(500 if len(hook.requests) <= 2 else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = (
            f"http://user:{PASSWORD}@127.0.0.1:{self.server.server_port}/hook?key={QUERY_KEY}"
        )


@pytest.fixture
def hook() -> Iterator[Hook]:
    endpoint = Hook()
    yield endpoint
    endpoint.server.shutdown()


def test_a_webhook_is_retried_until_it_answers_and_no_secret_is_logged(
    make_app: Callable[..., Flask],
    hook: Hook,
    sensors: Sensors,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Everything the service logs; urllib3's own DEBUG lines (off in production) show the
    # request line, query string included, and are not the service's to change.
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="alerts")
    app = make_app(EDGE_ALERTS_WEBHOOK_TOKEN=TOKEN)
    client = authorized_client(app)
    rule = {"name": "hot", "sensor": "probe", "kind": "above", "threshold": 30,
            "actions": [{"webhook": hook.url, "on": "fire"}]}  # fmt: skip
    assert client.post("/api/alerts/rules", json=rule).status_code == 201
    # The rule as the API shows it is the operator's own: its URL is not hidden there.
    time.sleep(0.2)
    sensors.publish("probe", 35)

    deadline = time.monotonic() + 5
    while len(hook.requests) < 3:
        assert time.monotonic() < deadline, hook.requests
        time.sleep(0.05)
    time.sleep(0.2)  # no fourth attempt after the 200
    assert len(hook.requests) == 3
    (first, _h, event), (second, _h2, _e2), (third, headers, _e3) = hook.requests
    # Exponential back-off: 0.05 s, then 0.1 s.
    assert second - first >= 0.05 and third - second >= 0.1
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert (event["rule"], event["state"], event["value"]) == ("hot", "firing", 35.0)

    logged = caplog.text
    assert "attempt 1/4: HTTP 500" in logged
    for secret in (TOKEN, PASSWORD, QUERY_KEY):
        assert secret not in logged
    assert f"http://127.0.0.1:{hook.server.server_port}/hook" in logged


def test_redact_drops_userinfo_and_query() -> None:
    assert redact("https://u:p@example.org:8443/a/b?token=x#f") == "https://example.org:8443/a/b"
    assert redact("http://example.org/") == "http://example.org/"
