"""The engine stopped and started again under a running service: 503 fast, then recovery."""

from __future__ import annotations

import contextlib
import os
import threading
import time

import docker
import requests
from flask.testing import FlaskClient

from tests.containers.conftest import API, LiveServer, run_spec, wait_for
from tests.docker_engine import DockerEngine


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


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
    threads, fds = threading.active_count(), open_fds()
    before = set(fd_targets())

    with requests.get(
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
    assert open_fds() <= fds, "\n".join(sorted(set(fd_targets()) - before))
