"""`pyedge new service`: a user's project, generated, installed, tested, linted, run and served.

The project is installed with pip into a folder of its own (`--target`), put on
PYTHONPATH only for the commands here, so that no other test sees its entry point.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.test_run import PYEDGE, Node, request, start_node, stop_node, wait_ready

SLUG = "weather-station"
PACKAGE = "weather_station"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.timeout(300)


@dataclass(frozen=True)
class Project:
    """The generated project, and the folder it is installed in."""

    path: Path
    site: Path

    def env(self) -> dict[str, str]:
        """The environment that sees the installed project (and no machine EDGE_*)."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
        environ["PYTHONPATH"] = str(self.site)
        return environ

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A command in the project's folder; fails the test, with its output, if it fails."""
        done = subprocess.run(
            args, cwd=self.path, env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """`pyedge new service weather-station`, pip-installed into a folder of its own."""
    parent = tmp_path_factory.mktemp("projects")
    created = subprocess.run(
        [PYEDGE, "new", "service", SLUG, "--dir", str(parent)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"created {parent / SLUG}/" in created.stdout
    project = Project(parent / SLUG, parent / "site")
    project.run(
        str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--target", str(project.site), ".",
    )  # fmt: skip
    return project


def test_the_project_has_the_service_shape_and_bad_names_are_refused(
    project: Project, tmp_path: Path
) -> None:
    files = {p.relative_to(project.path).as_posix() for p in project.path.rglob("*") if p.is_file()}
    package = {f"{PACKAGE}/{name}.py" for name in ("service", "schemas", "views", "config")}
    assert package <= files
    assert {"pyproject.toml", "Dockerfile", "docker-compose.yml", "tests/conftest.py"} <= files
    assert f'{SLUG} = "{PACKAGE}:service"' in (project.path / "pyproject.toml").read_text()
    for name, problem in [
        ("Weather", "lowercase"),
        ("custom-service", "installed here already"),
        (SLUG, "exists already"),
    ]:
        refused = subprocess.run(
            [PYEDGE, "new", "service", name, "--dir", str(project.path.parent)],
            capture_output=True,
            text=True,
        )
        assert refused.returncode != 0 and problem in refused.stderr, refused.stderr


def test_the_project_passes_its_own_tests_and_lint(project: Project) -> None:
    tests = project.run(str(BIN / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider")
    assert "3 passed" in tests.stdout
    project.run(str(BIN / "ruff"), "check", "--no-cache", ".")
    project.run(str(BIN / "ruff"), "format", "--check", "--no-cache", ".")
    project.run(str(BIN / "mypy"), "--cache-dir", os.devnull, PACKAGE)


@pytest.fixture
def solo(project: Project, tmp_path: Path) -> Iterator[Node]:
    """`pyedge run` with the project's service, as the README's `make run` does."""
    node = start_node(tmp_path, EDGE_SERVICES=SLUG, **project_env(project))
    yield node
    stop_node(node)


def project_env(project: Project) -> dict[str, str]:
    """The settings that let a `pyedge` subprocess find the installed project."""
    return {"PYTHONPATH": str(project.site), "EDGE_WEATHER_STATION_TICKER_INTERVAL": "0.2"}


def test_pyedge_run_serves_the_new_service(solo: Node) -> None:
    wait_ready(solo)
    assert solo.call(f"/api/{SLUG}/hello?name=Ada") == (
        200,
        {"message": "Hello, Ada!", "node": solo.node_id},
    )
    status, started = solo.call(f"/api/{SLUG}/ops/count/start", "POST", {"to": 2})
    assert status == 202, started
    status, done = solo.call(f"/api/{SLUG}/ops/count/wait?timeout=10", "POST")
    assert done["success"] is True and done["data"]["number"] == 2
    status, health = solo.call("/api/health")
    assert health["services"][SLUG]["status"] == "ok"


def test_pyedge_serve_serves_it_on_its_own_and_the_node_lists_it(
    project: Project, tmp_path: Path
) -> None:
    # The node's edge-server (role node: it lists and proxies this node's served services)
    # and broker alone; the service in a process of its own, with the broker account that
    # `pyedge run` made for it (it is installed, so it has one).
    node = start_node(tmp_path, EDGE_SERVICES="none", EDGE_ROLE="node", **project_env(project))
    served: subprocess.Popen[bytes] | None = None
    log = tmp_path / "serve.log"
    try:
        wait_ready(node)
        port = free_port()
        environ = project.env()
        environ.update(
            EDGE_NODE_ID=node.node_id,
            EDGE_MQTT_HOST="127.0.0.1",
            EDGE_MQTT_PORT=str(node.mqtt_port),
            EDGE_HTTP_HOST="127.0.0.1",
        )
        args = ["serve", SLUG, "--port", str(port), "--data-dir", str(node.data_dir)]
        args += ["--advertise-url", f"http://127.0.0.1:{port}"]
        with log.open("wb") as out:
            served = subprocess.Popen(
                [PYEDGE, *args], env=environ, stdout=out, stderr=subprocess.STDOUT
            )
        url = f"http://127.0.0.1:{port}/api/{SLUG}/hello"
        answer = eventually(lambda: request(url, token=node.token), served, log)
        assert answer == (200, {"message": "Hello, world!", "node": node.node_id})
        listed = eventually(lambda: _listed(node), served, log)
        assert listed["mode"] == "remote", listed
        # ... and proxies its API, with the caller's token.
        assert node.call(f"/api/{SLUG}/hello?name=hub")[1]["message"] == "Hello, hub!"
    finally:
        if served is not None:
            served.terminate()
            served.wait(20)
        stop_node(node)


def _listed(node: Node) -> dict[str, object] | None:
    """The node's services tree entry for the served service, once it is there."""
    status, tree = node.call("/api/services")
    assert status == 200, tree
    return next((entry for entry in tree if entry["slug"] == SLUG), None)


def eventually(check, process: subprocess.Popen[bytes], log: Path, timeout: float = 30):  # type: ignore[no-untyped-def]
    """The first truthy result of `check` within `timeout`, while `process` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"pyedge serve exited:\n{log.read_text()[-3000:]}"
        try:
            result = check()
        except (urllib.error.URLError, ConnectionError):
            result = None
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"no answer in time; pyedge serve's log:\n{log.read_text()[-3000:]}")
