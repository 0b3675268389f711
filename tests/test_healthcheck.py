"""The containers' health check, against a real served app and the real test broker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from edge_server import create_app
from edge_server.healthcheck import check_http, check_mqtt, listening, main
from edge_server.security.tls import ensure_certificate
from tests.conftest import Broker, free_port, start_broker

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def served(app: Flask, ssl_context: Any = None) -> Iterator[int]:
    """The app on a real HTTP server on a free loopback port; yields the port."""
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ssl_context)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def no_environment_proxy(monkeypatch: pytest.MonkeyPatch, proxy: str) -> None:
    """Send every HTTP(S) request of this process through `proxy` unless told otherwise."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


# --- http --------------------------------------------------------------------------------------


def test_a_healthy_app_is_healthy(
    app: Flask, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with served(app) as port:
        monkeypatch.setenv("EDGE_HTTP_PORT", str(port))
        assert check_http() == (True, f"http://127.0.0.1:{port}/api/health: 200")
        # A proxy in the environment is not for a call to ourselves (this one is dead).
        no_environment_proxy(monkeypatch, f"http://127.0.0.1:{free_port()}")
        assert main([]) == 0
        assert main(["http"]) == 0
    assert (
        capsys.readouterr().out.splitlines()
        == [f"healthy: http://127.0.0.1:{port}/api/health: 200"] * 2
    )


def test_a_degraded_app_is_unhealthy(
    app_config: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Its broker is down: /api/health answers 503.
    app = create_app({**app_config, "EDGE_MQTT_PORT": free_port()})
    try:
        with served(app) as port:
            monkeypatch.setenv("EDGE_HTTP_PORT", str(port))
            healthy, why = check_http()
            assert not healthy
            assert why.startswith(f"http://127.0.0.1:{port}/api/health: 503 ")
            assert json.loads(why.split(" ", 2)[2])["status"] == "degraded"
            assert main(["http"]) == 1
    finally:
        app.extensions["pyedge"].close()
    out = capsys.readouterr().out
    assert out.startswith(f"unhealthy: http://127.0.0.1:{port}/api/health: 503 ")


def test_nothing_listening_is_unhealthy(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    monkeypatch.setenv("EDGE_HTTP_PORT", str(port))
    healthy, why = check_http()
    assert not healthy
    assert why.startswith(f"http://127.0.0.1:{port}/api/health: ") and "refused" in why
    assert main(["http"]) == 1
    assert capsys.readouterr().out.startswith("unhealthy: ")


def test_https_with_the_devices_certificate_is_healthy(
    app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The certificate names the device, not 127.0.0.1: the check to itself does not verify.
    files = ensure_certificate(tmp_path / "tls-data")
    with served(app, ssl_context=(str(files.cert), str(files.key))) as port:
        monkeypatch.setenv("EDGE_HTTP_PORT", str(port))
        monkeypatch.setenv("EDGE_TLS", "true")
        assert check_http() == (True, f"https://127.0.0.1:{port}/api/health: 200")
        # Plain HTTP to a TLS port is not healthy.
        monkeypatch.setenv("EDGE_TLS", "0")
        assert check_http()[0] is False


# --- mqtt --------------------------------------------------------------------------------------


def test_a_listening_broker_is_healthy(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGE_MQTT_PORT", str(broker.port))
    assert check_mqtt() == (True, f"listening on port {broker.port}")
    assert main(["mqtt"]) == 0
    assert capsys.readouterr().out == f"healthy: listening on port {broker.port}\n"


def test_no_broker_listening_is_unhealthy(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("EDGE_MQTT_PORT", str(port))
    assert check_mqtt() == (False, f"nothing listens on port {port}")
    assert main(["mqtt"]) == 1


def test_a_connected_socket_is_not_a_listener(broker: Broker) -> None:
    # A client's socket to the port is in the table too, in state ESTABLISHED.
    with socket.create_connection(("127.0.0.1", broker.port)) as client:
        local_port = client.getsockname()[1]
        assert listening(broker.port)
        assert not listening(local_port)


def test_the_broker_sees_no_connection_from_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Mosquitto logs every connection: a check every few seconds must not make one. A broker
    # of its own: the session's broker sees other tests' clients come and go meanwhile.
    mosquitto = start_broker(tmp_path)
    try:
        monkeypatch.setenv("EDGE_MQTT_PORT", str(mosquitto.port))
        before = sockets_on(mosquitto.port)
        assert check_mqtt()[0]
        # A connection, even closed at once, would leave a row (TIME_WAIT) behind: a new
        # pair of addresses (an old row may change its state meanwhile).
        assert set(sockets_on(mosquitto.port)) <= set(before)
    finally:
        mosquitto.stop()


def sockets_on(port: int) -> list[str]:
    """The address pairs of /proc/net/tcp's rows other than listeners with `port` at either end."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    hexport = f":{port:04X}"
    return sorted(
        " ".join(row.split()[1:3])
        for row in rows
        if row.split()[3] != "0A" and hexport in (row.split()[1][-5:], row.split()[2][-5:])
    )


# --- the command -------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["bogus"], ["http", "mqtt"], ["HTTP"]])
def test_a_usage_error_is_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "usage: python -m edge_server.healthcheck [http|mqtt]\n"


def run_check(*args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """`python -X importtime -m edge_server.healthcheck ARGS`; its result and the modules it
    imported."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "edge_server.healthcheck", *args],
        env={**environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "edge_server" in modules, done.stderr[-2000:]  # the check itself is __main__
    return done, modules


def heavy(modules: set[str]) -> set[str]:
    """The imported modules of Flask, the app and the services."""
    prefixes = ("flask", "werkzeug", "edge_server.app", "pyedge", "custom_service", "requests")
    return {m for m in modules if m.split(".")[0] in prefixes or m.startswith(prefixes)}


def test_the_command_stays_light(app: Flask) -> None:
    with served(app) as port:
        done, modules = run_check("http", EDGE_HTTP_PORT=str(port))
    assert done.returncode == 0, done.stdout
    assert done.stdout == f"healthy: http://127.0.0.1:{port}/api/health: 200\n"
    assert heavy(modules) == set()
    assert not {m for m in modules if m.startswith("paho")}
    # The MQTT check reads a /proc table: nothing of Flask or paho.
    done, modules = run_check("mqtt", EDGE_MQTT_PORT=str(free_port()))
    assert done.returncode == 1
    assert done.stdout.startswith("unhealthy: nothing listens on port ")
    assert heavy(modules) == set()
    assert not {m for m in modules if m.startswith("paho")}
