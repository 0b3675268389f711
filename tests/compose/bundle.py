"""The compose bundle run as a user runs it: the repository's docker-compose.yml, unchanged,
with an env file of the test's ports, against the tests' own dockerd."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
RPI_FILE = ROOT / "docker-compose.rpi.yml"
SERVICES = (
    "mqtt",
    "edge-server",
    "device-service",
    "container-manager",
    "custom-service",
    "media-player",
    "alerts",
)
# The Dockerfile's stage with mpv, and the service whose image it is.
MEDIA_PLAYER = "media-player"
VERSION = "0.1.0"


def image_tag(machine_type: str, target: str = "pyedge") -> str:
    """The image the compose file names for a machine type and Dockerfile stage."""
    name = "pyedge" if target == "pyedge" else f"pyedge-{target}"
    return f"{name}:{VERSION}-{machine_type}"


def compose_v1() -> str | None:
    """docker-compose 1.29 (Debian's package), if installed."""
    return shutil.which("docker-compose")


@dataclass
class Bundle:
    """One compose project of the bundle on the tests' engine."""

    docker_host: str
    socket: Path
    workdir: Path
    project: str
    settings: dict[str, str] = field(default_factory=dict)
    # The README's layout for a user's own service runs with more files, and more services.
    files: tuple[Path, ...] = (COMPOSE_FILE,)
    project_directory: Path = ROOT
    services: tuple[str, ...] = SERVICES
    # docker-compose 1.29 (Debian's package) rather than docker compose v2.
    v1: bool = False

    @property
    def env_file(self) -> Path:
        return self.workdir / "bundle.env"

    def environ(self) -> dict[str, str]:
        """The environment of every docker and compose command: the tests' engine only."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "COMPOSE_"))}
        env["DOCKER_HOST"] = self.docker_host
        return env

    def write_env(self) -> None:
        """The .env a user writes, here with the test's ports and engine socket."""
        lines = [f"{key}={value}" for key, value in self.settings.items()]
        self.env_file.write_text("\n".join(lines) + "\n")

    def compose(
        self,
        *args: str,
        v1: bool | None = None,
        files: tuple[Path, ...] | None = None,
        timeout: float = 300,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run `docker compose ARGS` (or docker-compose 1.29 with v1) on this project."""
        old = self.v1 if v1 is None else v1
        program = [compose_v1() or "docker-compose"] if old else ["docker", "compose"]
        command = [*program, "--project-name", self.project, "--env-file", str(self.env_file)]
        command += ["--project-directory", str(self.project_directory)]
        for path in files or self.files:
            command += ["-f", str(path)]
        result = subprocess.run(
            [*command, *args], env=self.environ(), capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command[-2:] + list(args))} exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def docker(self, *args: str, timeout: float = 120) -> str:
        """Run a docker command on the tests' engine; its stdout."""
        result = subprocess.run(
            ["docker", *args], env=self.environ(), capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {result.stderr[-2000:]}")
        return result.stdout

    def container(self, service: str) -> str:
        """The id of the service's container."""
        ids = self.compose("ps", "-q", "--all", service).stdout.split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        return ids[0]

    def health(self) -> dict[str, str]:
        """Each service's container health (starting, healthy, unhealthy, or its state)."""
        states = {}
        for service in self.services:
            ids = self.compose("ps", "-q", "--all", service).stdout.split()
            if not ids:
                states[service] = "missing"
                continue
            state = json.loads(self.docker("inspect", "--format", "{{json .State}}", ids[0]))
            states[service] = (state.get("Health") or {}).get("Status") or state["Status"]
        return states

    def wait_healthy(self, timeout: float = 240) -> float:
        """Seconds until every container is healthy; AssertionError with logs if not."""
        started = time.monotonic()
        states: dict[str, str] = {}
        while time.monotonic() - started < timeout:
            states = self.health()
            if all(state == "healthy" for state in states.values()):
                return time.monotonic() - started
            time.sleep(0.5)
        logs = self.compose("logs", "--no-color", "--tail", "30", check=False).stdout
        raise AssertionError(f"not all healthy after {timeout:.0f} s: {states}\n{logs[-6000:]}")

    def exec(self, service: str, *args: str, user: str | None = None) -> str:
        """Run a command in the service's container (no TTY), as `user`; its stdout."""
        as_user = ["--user", user] if user else []
        return self.compose("exec", "-T", *as_user, service, *args).stdout

    def logs(self, service: str) -> str:
        """The service's log."""
        return self.compose("logs", "--no-color", service).stdout

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings['HTTP_PORT']}"

    def api(self, method: str, path: str, token: str, **kwargs: Any) -> requests.Response:
        """A request to the edge-server's published port with a bearer token."""
        headers = {"Authorization": f"Bearer {token}"}
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kwargs)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.5) -> Any:
    """Poll `check()` until it returns something truthy; AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # the service may be restarting
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def services(bundle: Bundle, token: str) -> dict[str, dict[str, Any]]:
    """The edge-server's services tree, by slug."""
    answer = bundle.api("GET", "/api/services", token)
    answer.raise_for_status()
    return {entry["slug"]: entry for entry in answer.json()}
