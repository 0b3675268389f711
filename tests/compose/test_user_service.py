"""A user's own service beside the bundle's, as the README says: made by `pyedge new service
my-service` beside the framework's checkout (pyedge/), run with its own compose file under
docker-compose 1.29, Debian's package."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compose.bundle import ROOT, SERVICES, Bundle, services, wait_for
from tests.compose.conftest import FIGURES, bundle_settings
from tests.docker_engine import DockerEngine

pytestmark = pytest.mark.timeout(600)

PYEDGE = str(Path(sys.executable).parent / "pyedge")


@pytest.fixture(scope="module")
def project(
    compose_engine: DockerEngine, pc_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bundle]:
    """CustomProject/ up with the README's command, every container healthy."""
    custom_project = tmp_path_factory.mktemp("CustomProject")
    (custom_project / "pyedge").symlink_to(ROOT)
    subprocess.run(
        [PYEDGE, "new", "service", "my-service", "--dir", str(custom_project)],
        check=True,
        capture_output=True,
    )
    bundle = Bundle(
        docker_host=compose_engine.url,
        socket=compose_engine.socket,
        workdir=custom_project,
        project=f"pyedge-user-{os.getpid()}",
        settings=bundle_settings(compose_engine),
        files=(
            custom_project / "pyedge/docker-compose.yml",
            custom_project / "my-service/docker-compose.yml",
        ),
        project_directory=custom_project / "pyedge",
        services=(*SERVICES, "my-service"),
        v1=True,
    )
    bundle.write_env()
    started = time.monotonic()
    try:
        bundle.compose("up", "-d", "--build", timeout=600)
        bundle.wait_healthy()
        FIGURES["docker_compose_1_29_with_my_service_up_s"] = round(time.monotonic() - started, 1)
        yield bundle
    finally:
        bundle.compose("down", "--volumes", "--timeout", "20", check=False)


def test_a_users_own_service_joins_the_bundle(project: Bundle) -> None:
    token = project.exec("edge-server", "pyedge", "token", "create", "ci", "--role", "operator")
    token = token.strip().splitlines()[-1]
    tree = wait_for(
        "my-service announced", lambda: "my-service" in (t := services(project, token)) and t
    )
    assert tree["my-service"]["mode"] == "remote"
    assert tree["my-service"]["health"]["status"] == "ok"
    hello = project.api("GET", "/api/my-service/hello", token)
    assert hello.status_code == 200, hello.text
    assert hello.json() == {"message": "Hello, world!", "node": "ci-pi"}
    started = project.api("POST", "/api/my-service/ops/count/start", token, json={"to": 3})
    assert started.status_code == 202, started.text
    done = project.api("POST", "/api/my-service/ops/count/wait?timeout=30", token).json()
    assert done["state"] == "done" and done["messages"][-1]["text"] == "counted to 3", done
    # Its broker login was handed to it alone: the other services' volumes do not have it.
    logins = project.exec("mqtt", "ls", "/run/pyedge/credentials").split()
    assert sorted(logins) == sorted([*SERVICES[1:], "my-service"])
    assert "credentials.json" in project.exec("my-service", "ls", "/run/pyedge/mqtt")
