"""Fixtures of the compose tests: the image built locally, the bundle up on a real engine.

Figures (time to healthy, idle memory per container, image sizes) are printed at the end
of the run and written to FIGURES_FILE, for the docs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.compose.bundle import MEDIA_PLAYER, ROOT, Bundle, image_tag
from tests.compose.images import build_base
from tests.conftest import free_port
from tests.docker_engine import DockerEngine

FIGURES: dict[str, Any] = {}
FIGURES_FILE = Path(os.environ.get("PYEDGE_COMPOSE_FIGURES", "/tmp/pyedge-compose-figures.json"))
BUILD_TIMEOUT_S = 1200


def docker_cli(engine: DockerEngine) -> list[str]:
    """The docker command line for the tests' engine."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.fail("the docker CLI is missing (apt-get install docker.io; make test installs it)")
    return [docker, "--host", engine.url]


def build_image(
    engine: DockerEngine,
    machine_type: str,
    platform: str = "linux/amd64",
    target: str = "pyedge",
) -> float:
    """`docker build` a stage of the repository's Dockerfile for a machine type; seconds taken."""
    started = time.monotonic()
    tag = image_tag(machine_type, target)
    result = subprocess.run(
        [
            *docker_cli(engine), "build", "--platform", platform, "--target", target,
            "--build-arg", f"MACHINE_TYPE={machine_type}", "-t", tag, str(ROOT),
        ],
        # The classic builder: BuildKit on engine 20.10 wants to ask a registry about the base.
        env={**os.environ, "DOCKER_BUILDKIT": "0"}, capture_output=True, text=True,
        timeout=BUILD_TIMEOUT_S, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(
            f"docker build {machine_type}: {result.stdout[-4000:]}\n{result.stderr[-2000:]}"
        )
    return time.monotonic() - started


def image_size_mb(engine: DockerEngine, tag: str) -> float:
    """The image's size in MB, as `docker images` shows it."""
    size = subprocess.run(
        [*docker_cli(engine), "image", "inspect", "--format", "{{.Size}}", tag],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return round(int(size) / 1e6, 1)


@pytest.fixture(scope="session")
def compose_engine() -> Iterator[DockerEngine]:
    """A dockerd of the compose tests' own (the bundle binds ports and restarts itself)."""
    engine = DockerEngine()
    try:
        engine.start()
        yield engine
    finally:
        engine.remove()


@pytest.fixture(scope="session")
def pc_image(compose_engine: DockerEngine) -> str:
    """The pc_linux image (amd64), and beside it pc_win and mac, which share its layers."""
    build_base(docker_cli(compose_engine), "amd64")
    FIGURES.setdefault("build_s", {})["pc_linux"] = round(
        build_image(compose_engine, "pc_linux"), 1
    )
    # The media-player's image: the Dockerfile's last stage, the same with mpv.
    FIGURES["build_s"]["media-player (pc_linux)"] = round(
        build_image(compose_engine, "pc_linux", target=MEDIA_PLAYER), 1
    )
    sizes = FIGURES.setdefault("image_mb", {})
    sizes["media-player (amd64)"] = image_size_mb(
        compose_engine, image_tag("pc_linux", MEDIA_PLAYER)
    )
    for machine_type in ("pc_linux", "pc_win", "mac"):
        if machine_type != "pc_linux":
            FIGURES["build_s"][machine_type] = round(build_image(compose_engine, machine_type), 1)
        sizes[f"{machine_type} (amd64)"] = image_size_mb(compose_engine, image_tag(machine_type))
    base = image_size_mb(compose_engine, "python:3.11-slim-bookworm")
    sizes["base python:3.11-slim-bookworm stand-in (amd64)"] = base
    # What PyEdge adds, whatever the base: the stand-in is larger than the official image.
    sizes["added to the base (amd64)"] = round(sizes["pc_linux (amd64)"] - base, 1)
    return image_tag("pc_linux")


def bundle_settings(engine: DockerEngine) -> dict[str, str]:
    """The .env of the tests: .env.example's defaults, the test's ports and engine."""
    return {
        "EDGE_NODE_ID": "ci-pi",
        "EDGE_MACHINE_TYPE": "pc_linux",
        "HTTP_BIND": "127.0.0.1",
        "HTTP_PORT": str(free_port()),
        "MQTT_PORT": str(free_port()),
        "MQTT_TLS_PORT": str(free_port()),
        "DOCKER_SOCKET": str(engine.socket),
        "DOCKER_GID": str(engine.socket.stat().st_gid),
        # No sound card here, as on a server: mpv plays into nothing.
        "MEDIA_AUDIO_OUTPUT": "null",
    }


@pytest.fixture(scope="module")
def bundle(
    compose_engine: DockerEngine, pc_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bundle]:
    """`docker compose up -d` of the repository's file, every container healthy."""
    bundle = Bundle(
        docker_host=compose_engine.url,
        socket=compose_engine.socket,
        workdir=tmp_path_factory.mktemp("bundle"),
        project=f"pyedge-test-{os.getpid()}",
        settings=bundle_settings(compose_engine),
    )
    bundle.write_env()
    started = time.monotonic()
    try:
        bundle.compose("up", "-d")
        bundle.wait_healthy()
        FIGURES["up_to_all_healthy_s"] = round(time.monotonic() - started, 1)
        yield bundle
    finally:
        bundle.compose("down", "--volumes", "--timeout", "20", check=False)


@pytest.fixture(scope="module")
def admin_token(bundle: Bundle) -> str:
    """An admin token made on the device, as the README says (pyedge token create)."""
    token = bundle.exec("edge-server", "pyedge", "token", "create", "ci", "--role", "admin")
    return token.strip().splitlines()[-1]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures and write them to FIGURES_FILE."""
    if not FIGURES:
        return
    FIGURES_FILE.write_text(json.dumps(FIGURES, indent=2) + "\n")
    terminalreporter.section("compose bundle figures")
    for line in json.dumps(FIGURES, indent=2).splitlines():
        terminalreporter.write_line(line)
