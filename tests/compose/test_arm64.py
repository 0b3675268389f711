"""The Raspberry Pi image (machine type rpi) built for linux/arm64 and run under qemu
emulation: its `pyedge --version`, then the broker and one service started from it."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compose.bundle import image_tag
from tests.compose.conftest import FIGURES, build_image, docker_cli, image_size_mb
from tests.compose.images import build_base
from tests.docker_engine import DockerEngine

pytestmark = pytest.mark.timeout(1500)

BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
# Everything is slower under emulation: a check every 2 s, a start-up of up to 5 minutes.
EMULATED_START_S = 300


def run(docker: list[str], *args: str, timeout: float = 300) -> str:
    """A docker command's stdout; AssertionError with its stderr when it fails."""
    result = subprocess.run(
        [*docker, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr[-3000:]}"
    return result.stdout


def wait_healthy(docker: list[str], container: str, timeout: float) -> float:
    """Seconds until `container` is healthy; AssertionError with its log if not."""
    started = time.monotonic()
    status = ""
    while time.monotonic() - started < timeout:
        status = run(docker, "inspect", "--format", "{{.State.Health.Status}}", container).strip()
        if status == "healthy":
            return time.monotonic() - started
        time.sleep(1)
    log = subprocess.run(
        [*docker, "logs", "--tail", "40", container], capture_output=True, text=True
    )
    raise AssertionError(
        f"{container} is {status} after {timeout:.0f} s:\n{log.stdout}{log.stderr}"
    )


@pytest.fixture(scope="module")
def rpi_image(compose_engine: DockerEngine) -> str:
    """pyedge:<version>-rpi for linux/arm64, built under emulation from an arm64 base."""
    if "enabled" not in (BINFMT.read_text() if BINFMT.exists() else ""):
        pytest.fail(
            f"{BINFMT} is not enabled: arm64 programs cannot run here (apt-get install "
            "qemu-user-static binfmt-support; make test sets it up through tools/setup.sh)"
        )
    docker = docker_cli(compose_engine)
    build_base(docker, "arm64")
    seconds = build_image(compose_engine, "rpi", "linux/arm64")
    FIGURES.setdefault("build_s", {})["rpi (arm64, emulated)"] = round(seconds, 1)
    sizes = FIGURES.setdefault("image_mb", {})
    sizes["rpi (arm64)"] = image_size_mb(compose_engine, image_tag("rpi"))
    sizes["added to the base (arm64)"] = round(
        sizes["rpi (arm64)"] - image_size_mb(compose_engine, "python:3.11-slim-bookworm"), 1
    )
    return image_tag("rpi")


@pytest.fixture
def network(compose_engine: DockerEngine) -> Iterator[str]:
    """A user network of its own, removed with whatever ran on it."""
    docker = docker_cli(compose_engine)
    name = f"pyedge-arm64-{uuid.uuid4().hex[:8]}"
    run(docker, "network", "create", name)
    yield name
    containers = run(docker, "ps", "-aq", "--filter", f"network={name}").split()
    if containers:
        subprocess.run([*docker, "rm", "-f", "-v", *containers], capture_output=True)
    subprocess.run([*docker, "network", "rm", name], capture_output=True)
    subprocess.run([*docker, "volume", "rm", f"{name}-login"], capture_output=True)


def test_the_rpi_image_is_arm64_and_runs_under_emulation(
    compose_engine: DockerEngine, rpi_image: str
) -> None:
    docker = docker_cli(compose_engine)
    image = json.loads(run(docker, "image", "inspect", rpi_image))[0]
    assert image["Architecture"] == "arm64"
    assert "EDGE_MACHINE_TYPE=rpi" in image["Config"]["Env"]
    assert run(
        docker, "run", "--rm", "--platform", "linux/arm64", rpi_image, "--version"
    ).split() == [
        "pyedge",
        "0.1.0",
    ]
    machine = run(
        docker, "run", "--rm", "--platform", "linux/arm64", "--entrypoint", "uname", rpi_image, "-m"
    )
    assert machine.strip() == "aarch64"


def test_the_broker_and_a_service_start_under_emulation(
    compose_engine: DockerEngine, rpi_image: str, network: str
) -> None:
    docker = docker_cli(compose_engine)
    login = f"{network}-login"
    common = ["--platform", "linux/arm64", "--network", network, "--health-interval", "2s"]
    started = time.monotonic()
    run(
        docker, "run", "-d", "--name", f"{network}-mqtt", *common, "--user", "root",
        "--health-cmd", "python -m edge_server.healthcheck mqtt", "-e", "EDGE_MQTT_BIND=0.0.0.0",
        "-v", f"{login}:/run/pyedge/credentials/custom-service",
        rpi_image, "broker", "--credentials", "/run/pyedge/credentials",
    )  # fmt: skip
    broker_s = wait_healthy(docker, f"{network}-mqtt", EMULATED_START_S)
    run(
        docker, "run", "-d", "--name", f"{network}-custom", *common,
        "-e", f"EDGE_MQTT_HOST={network}-mqtt", "-e", "EDGE_NODE_ID=pi-emulated",
        "-e", "EDGE_MQTT_CREDENTIALS=/run/pyedge/mqtt/credentials.json",
        "-v", f"{login}:/run/pyedge/mqtt:ro",
        rpi_image, "serve", "custom-service",
    )  # fmt: skip
    service_s = wait_healthy(docker, f"{network}-custom", EMULATED_START_S)
    health = json.loads(
        run(docker, "exec", f"{network}-custom", "python", "-c",
            "import urllib.request; print(urllib.request.urlopen("
            "'http://127.0.0.1:8000/api/health').read().decode())")
    )  # fmt: skip
    assert health["mqtt"]["status"] == "connected"
    assert health["services"]["custom-service"]["status"] == "ok"
    assert health["node"] == "pi-emulated"
    FIGURES["arm64_emulated_start_s"] = {
        "broker_healthy": round(broker_s, 1),
        "custom_service_healthy": round(service_s, 1),
        "total": round(time.monotonic() - started, 1),
    }
