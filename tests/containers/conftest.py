"""Fixtures of the container-manager tests: a real dockerd for the session, the app on it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from edge_server import create_app
from tests.conftest import authorize, authorized_client, free_port
from tests.docker_engine import TEST_IMAGE, DockerEngine

API = "/api/container-manager"
# Networks every engine has; the cleanup leaves them.
DEFAULT_NETWORKS = {"bridge", "host", "none"}


@pytest.fixture
def docker_client(docker_engine: DockerEngine) -> Iterator[docker.DockerClient]:
    """A docker-py client of the test engine; removes what the test left behind."""
    if not docker_engine.answers():  # a test stopped it and failed before restarting it
        docker_engine.start()
    client = docker_engine.client()
    yield client
    for container in client.containers.list(all=True):
        container.remove(force=True)
    for network in client.networks.list():
        if network.name not in DEFAULT_NETWORKS:
            network.remove()
    for volume in client.volumes.list():
        volume.remove(force=True)
    for image in client.images.list():
        if TEST_IMAGE not in image.tags:
            client.images.remove(image.id, force=True)
    client.close()


@pytest.fixture
def cm_config(
    app_config: dict[str, Any], docker_engine: DockerEngine, docker_client: docker.DockerClient
) -> dict[str, Any]:
    """The test app's settings: the container-manager alone, on the test engine."""
    return {
        **app_config,
        "EDGE_SERVICES": "container-manager",
        "EDGE_CONTAINER_MANAGER_DOCKER_HOST": docker_engine.url,
        "EDGE_CONTAINER_MANAGER_RECONCILE_INTERVAL": 0.3,
        "EDGE_CONTAINER_MANAGER_STREAM_HEARTBEAT": 0.5,
    }


@pytest.fixture
def cm_app(cm_config: dict[str, Any]) -> Iterator[Flask]:
    """The edge-server with the container-manager."""
    app = create_app(cm_config)
    yield app
    app.extensions["pyedge"].close()


@pytest.fixture
def cm_client(cm_app: Flask) -> FlaskClient:
    """A test client of the container-manager's app."""
    return authorized_client(cm_app)


def run_spec(**fields: Any) -> dict[str, Any]:
    """A container spec running the busybox test image."""
    return {"image": TEST_IMAGE, **fields}


@dataclass
class LiveServer:
    """The container-manager's app served over real HTTP (for streams), and an admin token."""

    url: str
    token: str

    def api(self, path: str) -> str:
        return f"{self.url}{API}{path}"

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header of the token."""
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def session(self) -> requests.Session:
        """A requests Session sending the token."""
        session = requests.Session()
        session.headers.update(self.auth)
        return session


@pytest.fixture
def cm_server(cm_app: Flask) -> Iterator[LiveServer]:
    """The app on a threaded werkzeug server on a free loopback port."""
    server = make_server("127.0.0.1", 0, cm_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    yield LiveServer(f"http://127.0.0.1:{server.server_port}", authorize(cm_app))
    server.shutdown()
    thread.join(5)
    server.server_close()


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


REGISTRY_CANDIDATES = ("/usr/bin/docker-registry", "/usr/sbin/docker-registry")


def http_status(url: str) -> int | None:
    """The HTTP status of GET `url`, or None while nothing answers."""
    # No proxy from the environment: the registry is on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@dataclass(frozen=True)
class Registry:
    """A docker-registry listening on loopback."""

    host: str


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    """Debian's docker-registry on a free loopback port: filesystem storage, no auth."""
    program = next((p for p in REGISTRY_CANDIDATES if Path(p).exists()), None)
    program = program or shutil.which("docker-registry")
    if program is None:
        raise RuntimeError("docker-registry not found: apt-get install docker-registry")
    root = Path(tempfile.mkdtemp(prefix="pyedge-registry-"))
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = (root / "registry.log").open("wb")
    process = subprocess.Popen(
        [program, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    try:
        wait_for(
            lambda: process.poll() is not None or http_status(f"http://127.0.0.1:{port}/v2/"),
            20,
            "the registry to answer",
        )
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {(root / 'registry.log').read_text()}")
        yield Registry(f"127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        shutil.rmtree(root, ignore_errors=True)
