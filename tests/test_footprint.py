"""Solo mode's footprint: a lean gunicorn arbiter, and a worker that loads only what it uses.

The sizes themselves are a benchmark's (`python -m bench memory`); these tests check the
causes, which do not move with the machine: what each process of `pyedge run` maps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docker_engine import DockerEngine
from tests.test_run import Node, gunicorn_worker, start_node, stop_node, wait_ready

# What only the command line needs (settings of every service, the broker's accounts, TLS
# certificates) or only a hub does (its signing key): none of it may stay in the arbiter,
# nor, in solo mode without TLS, be loaded by the worker.
APP_PACKAGES = ("flask", "werkzeug", "pyedge", "paho", "docker", "cryptography", "sqlite3")
# Loaded only when used: a gpio or bme280 sensor, TLS or a hub's key, the browser tests.
NOT_IN_A_SOLO_WORKER = ("cryptography", "gpiozero", "smbus2", "playwright")
# A worker's imports and requests, in a fresh interpreter: the app with every installed
# service, its document and health served once.
WORKER = """
import json, sys
from edge_server.app import create_app
from pyedge.security import Role
app = create_app(json.loads(sys.argv[1]))
token = app.extensions["pyedge.auth"].accounts.create_token("footprint", Role.VIEWER)
client = app.test_client()
client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + token
assert client.get("/api/openapi.json").status_code == 200
client.get("/api/health")
app.extensions["pyedge"].close()
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


def mapped(pid: int) -> set[str]:
    """The files `pid` maps (its executable, libraries, extension modules)."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split(maxsplit=5)[5] for line in lines if len(line.split(maxsplit=5)) == 6}


def maps_package(files: set[str], package: str) -> bool:
    """Whether one of `files` is an extension module of `package` (site-packages or stdlib)."""
    return any(f"/site-packages/{package}/" in f or f"/_{package}." in f for f in files)


@pytest.fixture
def node(tmp_path: Path, docker_engine: DockerEngine) -> Iterator[Node]:
    node = start_node(tmp_path, DOCKER_HOST=docker_engine.url)
    yield node
    stop_node(node)


def test_the_arbiter_module_imports_gunicorn_and_the_standard_library_only() -> None:
    code = (
        "import sys, edge_server.serving.arbiter; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "gunicorn" in loaded
    assert not set(APP_PACKAGES) & set(loaded)


def test_pyedge_run_becomes_a_lean_arbiter_whose_worker_loads_no_cryptography(
    node: Node,
) -> None:
    wait_ready(node)
    arbiter = node.process.pid
    command = Path(f"/proc/{arbiter}/cmdline").read_bytes().split(b"\0")
    # The same pid, now the arbiter module, its command line still the user's.
    assert b"edge_server.serving" in command
    assert b"run" in command
    arbiter_files, worker_files = mapped(arbiter), mapped(gunicorn_worker(node))
    # The command line loaded SQLite (the accounts) and cryptography (TLS, the broker's
    # accounts): the exec left them behind.
    assert not maps_package(arbiter_files, "sqlite3")
    assert not maps_package(arbiter_files, "cryptography")
    assert maps_package(worker_files, "sqlite3")  # the worker's accounts: the check sees it
    assert not maps_package(worker_files, "cryptography")
    worker_env = Path(f"/proc/{gunicorn_worker(node)}/environ").read_bytes().split(b"\0")
    assert b"MALLOC_ARENA_MAX=2" in worker_env
    # It serves as before: the token check, a service's route, the document.
    assert node.call("/api/custom-service/hello")[0] == 200
    assert node.call("/api/openapi.json")[0] == 200


def test_a_solo_worker_loads_no_optional_library_it_does_not_use(
    app_config: dict[str, Any],
) -> None:
    config = {**app_config, "EDGE_SERVICES": None}  # every installed service
    worker = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert worker.returncode == 0, worker.stderr
    loaded = worker.stdout.split()
    assert {"flask", "docker", "paho"} <= set(loaded)  # the app and its services did load
    assert not set(NOT_IN_A_SOLO_WORKER) & set(loaded)
