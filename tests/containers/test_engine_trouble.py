"""The engine stopped and started again under a running service: 503 fast, then recovery."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import docker
from flask.testing import FlaskClient

from edge_server import create_app
from tests.conftest import authorized_client
from tests.containers.conftest import API, LiveServer, run_spec, wait_for
from tests.docker_engine import DockerEngine


def open_sockets() -> int:
    """Sockets this process holds (a thread's kept accounts connection is a file, not one)."""
    return sum(1 for target in fd_targets() if target.startswith("socket:"))


def fd_targets() -> list[str]:
    """What this process's file descriptors point at (sockets show as socket:[inode])."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone already
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sorted(found)


def test_engine_away_and_back(
    cm_client: FlaskClient,
    cm_server: LiveServer,
    docker_engine: DockerEngine,
    docker_client: docker.DockerClient,
) -> None:
    assert cm_client.get(f"{API}/containers").status_code == 200
    assert cm_client.get("/api/health").status_code == 200
    cm_client.post(f"{API}/containers", json=run_spec(name="victim", command=["sleep", "3600"]))
    threads, sockets = threading.active_count(), open_sockets()
    before = set(fd_targets())

    with cm_server.session.get(
        cm_server.api("/containers/victim/logs/stream"), stream=True, timeout=30
    ) as logs:
        docker_engine.stop()
        # A followed stream ends when the engine goes, instead of hanging.
        tail = list(logs.iter_lines(decode_unicode=True))
        assert "event: end" in tail

    for method, path, body in [
        ("get", "/containers", None),
        ("get", "/system", None),
        ("get", "/images", None),
        ("post", "/containers", run_spec(command=["true"])),
        ("post", "/containers/victim/start", None),
    ]:
        started = time.monotonic()
        response = getattr(cm_client, method)(f"{API}{path}", json=body)
        elapsed = time.monotonic() - started
        assert response.status_code == 503, (path, response.json)
        assert response.json["message"].startswith("Docker engine unreachable"), response.json
        assert elapsed < 5, f"{path} took {elapsed:.1f} s"

    health = cm_client.get("/api/health")
    assert health.status_code == 503
    service = health.json["services"]["container-manager"]
    assert service["status"] == "degraded"
    assert "unreachable" in service["detail"]

    docker_engine.start()
    # No restart of the service: the next calls simply work.
    assert cm_client.get(f"{API}/containers?all=true").status_code == 200
    assert cm_client.post(f"{API}/containers/victim/start").json["state"] == "running"
    assert cm_client.get("/api/health").status_code == 200
    wait_for(lambda: threading.active_count() <= threads, what="no extra threads")
    assert open_sockets() <= sockets, "\n".join(sorted(set(fd_targets()) - before))


def test_a_hung_engine_is_answered_within_five_seconds(
    cm_config: dict[str, Any], tmp_path: Path
) -> None:
    # An engine that accepts connections and never answers (stopped with SIGSTOP, say).
    path = tmp_path / "hung.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    app = create_app({**cm_config, "EDGE_CONTAINER_MANAGER_DOCKER_HOST": f"unix://{path}"})
    try:
        client = authorized_client(app)
        results: dict[str, tuple[int, float]] = {}

        def timed_get(name: str, url: str) -> None:
            started = time.monotonic()
            status = client.get(url).status_code
            results[name] = (status, time.monotonic() - started)

        # A stream's first call must not hold the ordinary calls behind it.
        threads = [
            threading.Thread(target=timed_get, args=("stream", f"{API}/events/stream")),
            threading.Thread(target=timed_get, args=("list", f"{API}/containers")),
            threading.Thread(target=timed_get, args=("health", "/api/health")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for name, (status, elapsed) in results.items():
            assert status == 503, name
            assert elapsed < 5, f"{name} took {elapsed:.1f} s"
        assert len(results) == 3
    finally:
        app.extensions["pyedge"].close()
        listener.close()
