"""A real Docker engine for the tests: dockerd on its own socket, images built locally.

No registry is reachable, so the test image is made from the host's static busybox with
`docker import`. The engine can be stopped and started again under a running service.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import docker

DOCKERD_CANDIDATES = ("/usr/sbin/dockerd", "/usr/bin/dockerd")
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
TEST_IMAGE = "pyedge-test/busybox:latest"
BUSYBOX_APPLETS = ("sh", "echo", "sleep", "cat", "ls", "date", "true", "false", "yes", "env")
START_TIMEOUT_S = 60.0


def find(candidates: tuple[str, ...], name: str, package: str) -> str:
    """The first existing program of `candidates`, or an error saying what to install."""
    for candidate in (shutil.which(name), *candidates):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        f"{name} not found: the container-manager tests need a real Docker engine "
        f"(apt-get install {package}; `make test` installs it through tools/setup.sh)"
    )


class DockerEngine:
    """dockerd with its data, exec root and socket in a short temporary directory."""

    def __init__(self) -> None:
        # A unix socket path may not exceed 108 bytes: pytest's tmp paths can be longer.
        self.root = Path(tempfile.mkdtemp(prefix="pyedge-dockerd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.log_path = self.root / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start dockerd and wait until it answers."""
        dockerd = find(DOCKERD_CANDIDATES, "dockerd", "docker.io")
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                dockerd,
                "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "docker.pid"),
                "-H", self.url,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dockerd exited: {self.log_tail()}")
            if self.answers():
                return
            time.sleep(0.2)
        raise RuntimeError(f"dockerd did not answer within {START_TIMEOUT_S:.0f} s")

    def answers(self) -> bool:
        """True when the engine answers a ping."""
        try:
            client = docker.DockerClient(base_url=self.url, timeout=2)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False

    def stop(self) -> None:
        """Stop dockerd (its containers stop with it) and wait for it to exit."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def client(self) -> docker.DockerClient:
        """A docker-py client of this engine, for the tests' own checks."""
        return docker.DockerClient(base_url=self.url, version="auto", timeout=60)

    def build_busybox(self, tag: str = TEST_IMAGE) -> None:
        """`docker import` a root filesystem of the host's static busybox as `tag`."""
        busybox = find(BUSYBOX_CANDIDATES, "busybox", "busybox-static")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(busybox, arcname="bin/busybox")
            for applet in BUSYBOX_APPLETS:
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type = tarfile.SYMTYPE
                link.linkname = "busybox"
                tar.addfile(link)
            for directory in ("tmp", "data", "etc"):
                info = tarfile.TarInfo(directory)
                info.type = tarfile.DIRTYPE
                info.mode = 0o1777 if directory == "tmp" else 0o755
                tar.addfile(info)
        client = self.client()
        try:
            repository, _, version = tag.rpartition(":")
            client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=version)
        finally:
            client.close()

    def log_tail(self, lines: int = 20) -> str:
        """The end of dockerd's log, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def remove(self) -> None:
        """Stop the engine and remove its directory."""
        self.stop()
        # Overlay mounts of stopped containers are gone with dockerd; what stays is files.
        shutil.rmtree(self.root, ignore_errors=True)
