"""tools/compose.sh (make up/down/logs), run with a recording stand-in for the docker CLI.

The real engine runs the bundle in tests/compose/; here the script's own logic is checked:
the .env it writes, the group ids and files it hands compose, its exit status.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = (".env.example", "docker-compose.yml", "docker-compose.rpi.yml", "tools/compose.sh")
PI_DEVICES = ("/dev/i2c-1", "/dev/gpiomem", "/dev/gpiochip0")

# Records every call; answers as an engine whose one container is healthy.
FAKE_DOCKER = """#!/bin/sh
printf '%s DOCKER_GID=%s\\n' "$*" "${DOCKER_GID:-}" >> "$CALLS"
case "$*" in
  "compose version"*) exit 0 ;;
  *" ps --all -q") echo c1 ;;
  "inspect "*) echo "/c1 healthy" ;;
  *" logs --no-color edge-server") cat "$EDGE_LOG" 2>/dev/null ;;
esac
exit 0
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The files the script uses, in a directory of their own (it writes .env there)."""
    for name in FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
    return tmp_path


def run(checkout: Path, *args: str, log: str = "") -> tuple[subprocess.CompletedProcess[str], str]:
    """Run tools/compose.sh ARGS; its result and the docker calls it made."""
    (checkout / "edge.log").write_text(log)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DOCKER_GID", "I2C_GID", "GPIO_GID")},
        "PATH": f"{checkout / 'bin'}:{os.environ['PATH']}",
        "CALLS": str(checkout / "calls"),
        "EDGE_LOG": str(checkout / "edge.log"),
    }
    result = subprocess.run(
        ["bash", str(checkout / "tools/compose.sh"), *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    calls = (checkout / "calls").read_text() if (checkout / "calls").exists() else ""
    return result, calls


def up_call(calls: str) -> str:
    """The `docker compose ... up` call."""
    return next(line for line in calls.splitlines() if " up -d --build" in line)


def test_the_first_up_writes_env_and_prints_the_setup_code(checkout: Path) -> None:
    result, calls = run(checkout, "up", log="WARNING first run: ... setup code AB12-CD34-EF56 (or")
    assert result.returncode == 0, result.stderr
    env = (checkout / ".env").read_text()
    hostname = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    assert f"EDGE_NODE_ID={hostname}\n" in env
    assert "EDGE_MACHINE_TYPE=pc_linux\n" in env
    assert up_call(calls).startswith("compose -f docker-compose.yml up -d --build")
    assert "every container is healthy" in result.stdout
    assert "the one-time setup code AB12-CD34-EF56" in result.stdout


def test_an_up_without_a_setup_code_in_the_log_succeeds(checkout: Path) -> None:
    # Once an admin exists the log has no code: that is no failure.
    result, _calls = run(checkout, "up")
    assert result.returncode == 0, result.stderr
    assert "setup code" not in result.stdout


def test_an_existing_env_is_kept(checkout: Path) -> None:
    (checkout / ".env").write_text("EDGE_NODE_ID=mine\nHTTP_PORT=9000\n")
    result, _calls = run(checkout, "up")
    assert result.returncode == 0, result.stderr
    assert (checkout / ".env").read_text() == "EDGE_NODE_ID=mine\nHTTP_PORT=9000\n"
    assert ":9000/" in result.stdout


def test_the_docker_socket_group_is_read_at_every_up(checkout: Path, tmp_path: Path) -> None:
    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        if os.geteuid() == 0:
            os.chown(path, -1, 4321)
        (checkout / ".env").write_text(f"DOCKER_SOCKET={path}\nDOCKER_GID=0\n")
        result, calls = run(checkout, "up")
    assert result.returncode == 0, result.stderr
    assert up_call(calls).endswith(f"DOCKER_GID={path.stat().st_gid}")


def test_a_pi_gets_the_devices_it_has_and_the_users_override(checkout: Path) -> None:
    (checkout / ".env").write_text("EDGE_MACHINE_TYPE=rpi\n")
    (checkout / "docker-compose.override.yml").write_text("services: {}\n")
    result, calls = run(checkout, "up")
    assert result.returncode == 0, result.stderr
    assert up_call(calls).startswith(
        "compose -f docker-compose.yml -f .docker-compose.rpi.local.yml "
        "-f docker-compose.override.yml up -d --build"
    )
    used = (checkout / ".docker-compose.rpi.local.yml").read_text()
    missing = [device for device in PI_DEVICES if not os.path.exists(device)]
    for device in PI_DEVICES:
        assert (f"- {device}:" in used) == (device not in missing), device
    if missing:
        assert f"not on this Pi: {' '.join(missing)}" in result.stdout
    # The tracked file is left as it is.
    assert (checkout / "docker-compose.rpi.yml").read_text() == (
        ROOT / "docker-compose.rpi.yml"
    ).read_text()


def test_down_and_logs_use_the_same_files(checkout: Path) -> None:
    (checkout / ".env").write_text("EDGE_MACHINE_TYPE=rpi\n")
    run(checkout, "up")
    _result, calls = run(checkout, "down")
    assert "compose -f docker-compose.yml -f .docker-compose.rpi.local.yml down" in calls
    _result, calls = run(checkout, "logs")
    assert "-f .docker-compose.rpi.local.yml logs --follow --tail 100" in calls


def test_an_unknown_command_is_refused(checkout: Path) -> None:
    result, _calls = run(checkout, "sideways")
    assert result.returncode == 1
    assert "usage: tools/compose.sh up|down|logs" in result.stderr
