"""The real docker CLI (Debian's docker.io client) pointed at the Docker API gateway."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Debian's docker.io client first: the one the issue names (another may be on PATH).
DOCKER_CANDIDATES = ("/usr/bin/docker",)
CLI_TIMEOUT_S = 60.0


def docker_cli() -> str:
    """The docker client program, or an error saying what to install."""
    for candidate in (*DOCKER_CANDIDATES, shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("docker not found: apt-get install docker.io (tools/setup.sh does)")


@dataclass
class Docker:
    """`docker` run with its own config directory against one DOCKER_HOST."""

    host: str
    config_dir: Path
    cert_dir: Path | None = None

    @classmethod
    def with_token(cls, host: str, directory: Path, token: str | None) -> Docker:
        """A client whose config.json sends the token in HttpHeaders (None: no header)."""
        directory.mkdir(parents=True, exist_ok=True)
        config = {"HttpHeaders": {"Authorization": f"Bearer {token}"}} if token else {}
        (directory / "config.json").write_text(json.dumps(config))
        return cls(host, directory)

    def env(self) -> dict[str, str]:
        """The environment the client runs with."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.config_dir),
            "DOCKER_HOST": self.host,
            "DOCKER_CONFIG": str(self.config_dir),
        }
        if self.cert_dir is not None:
            env |= {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(self.cert_dir)}
        return env

    def run(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run `docker ARGS`; the completed process (never raises on a failure)."""
        return subprocess.run(
            [docker_cli(), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> str:
        """Run `docker ARGS`, assert it succeeded, and return its stdout."""
        done = self.run(*args, timeout=timeout)
        assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr or done.stdout}"
        return done.stdout

    def refused(self, *args: str) -> str:
        """Run `docker ARGS`, assert it failed, and return its stderr."""
        done = self.run(*args)
        assert done.returncode != 0, f"docker {' '.join(args)} passed: {done.stdout}"
        return done.stderr
