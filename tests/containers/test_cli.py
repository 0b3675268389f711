"""`pyedge image|container|app|shell` against the container-manager on real HTTP and dockerd."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest
from click.testing import CliRunner, Result

from edge_server import cli
from tests.conftest import free_port
from tests.containers.conftest import LiveServer
from tests.docker_engine import TEST_IMAGE

PYEDGE = str(Path(sys.executable).parent / "pyedge")
APP_YAML = f"""\
services:
  web:
    image: {TEST_IMAGE}
    command: ["sleep", "300"]
"""
PRIVILEGED_YAML = f"""\
name: rooted
services:
  web:
    image: {TEST_IMAGE}
    privileged: true
"""


@pytest.fixture
def url(cm_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where the container-manager's app is served over HTTP; its token in PYEDGE_TOKEN."""
    monkeypatch.setenv("PYEDGE_TOKEN", cm_server.token)
    return cm_server.url


def pyedge(url: str, *args: str, input: str | None = None) -> Result:
    """Run `pyedge --url URL ARGS...` in-process, as a user would type it."""
    return CliRunner().invoke(cli.root, ["--url", url, *args], input=input)


def ok(result: Result) -> str:
    """The output of a command that must have succeeded."""
    assert result.exit_code == 0, result.output
    return result.output


def row(output: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is `first`."""
    for line in output.splitlines():
        cells = line.split()
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{output}")


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "it") -> Any:
    """Poll `predicate` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


def test_image_ls_shows_the_test_image(url: str) -> None:
    output = ok(pyedge(url, "image", "ls"))
    assert output.splitlines()[0].split() == ["TAGS", "ID", "SIZE", "(MB)", "CREATED", "CONTAINERS"]
    cells = row(output, TEST_IMAGE)
    assert re.fullmatch(r"[0-9a-f]{12}", cells[1])
    assert cells[-1] == "0"


def test_image_rm_removes_a_tag_and_says_when_there_is_none(
    url: str, docker_client: docker.DockerClient
) -> None:
    docker_client.images.get(TEST_IMAGE).tag("pyedge-test/extra", "1")
    assert (
        ok(pyedge(url, "image", "rm", "pyedge-test/extra:1"))
        == "removed image pyedge-test/extra:1\n"
    )
    assert not docker_client.images.list(name="pyedge-test/extra")

    again = pyedge(url, "image", "rm", "pyedge-test/extra:1")
    assert again.exit_code == 1
    assert again.output.startswith("error: ")
    assert "pyedge-test/extra:1" in again.output


def test_container_ls_start_and_stop(url: str, docker_client: docker.DockerClient) -> None:
    created = docker_client.containers.create(TEST_IMAGE, ["sleep", "300"], name="cli-sleeper")
    assert "cli-sleeper" not in ok(pyedge(url, "container", "ls"))
    cells = row(ok(pyedge(url, "container", "ls", "--all")), "cli-sleeper")
    assert cells[1:3] == [TEST_IMAGE, "created"]
    assert cells[-1] == created.id[:12]

    assert ok(pyedge(url, "container", "start", "cli-sleeper")) == "cli-sleeper: running\n"
    created.reload()
    assert created.status == "running"
    assert row(ok(pyedge(url, "container", "ls")), "cli-sleeper")[2] == "running"

    # sleep as PID 1 ignores SIGTERM: the timeout is what ends it.
    assert ok(pyedge(url, "container", "stop", "-t", "1", "cli-sleeper")) == "cli-sleeper: exited\n"
    created.reload()
    assert created.status == "exited"


def test_an_unknown_container_is_an_api_error(url: str) -> None:
    result = pyedge(url, "container", "start", "no-such-container")
    assert result.exit_code == 1
    assert result.output.startswith("error: ")
    assert "no-such-container" in result.output


def test_container_logs_prints_its_output(url: str, docker_client: docker.DockerClient) -> None:
    talker = docker_client.containers.run(
        TEST_IMAGE,
        ["sh", "-c", "echo hello; sleep 0.2; echo oops >&2"],
        name="cli-talker",
        detach=True,
    )
    talker.wait(timeout=30)
    assert ok(pyedge(url, "container", "logs", "cli-talker")).splitlines() == ["hello", "oops"]
    last = ok(pyedge(url, "container", "logs", "--tail", "1", "--timestamps", "cli-talker"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z oops\n", last), last


def counter(docker_client: docker.DockerClient, name: str, lines: int) -> None:
    """A container printing `line 1` .. `line N`, one every 0.3 s, then exiting."""
    script = f"i=1; while [ $i -le {lines} ]; do echo line $i; i=$((i+1)); sleep 0.3; done"
    docker_client.containers.run(TEST_IMAGE, ["sh", "-c", script], name=name, detach=True)


def test_container_logs_follow_prints_lines_until_the_container_ends(
    url: str, docker_client: docker.DockerClient
) -> None:
    counter(docker_client, "cli-counter", 4)
    started = time.monotonic()
    output = ok(pyedge(url, "container", "logs", "-f", "cli-counter"))
    assert output.splitlines() == ["line 1", "line 2", "line 3", "line 4"]
    assert time.monotonic() - started < 20


class CuttingProxy:
    """A TCP proxy that cuts its first connection once the server has sent `marker`."""

    def __init__(self, upstream_port: int, marker: bytes) -> None:
        self.upstream_port = upstream_port
        self.marker = marker
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, name="proxy", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            first = self.cuts == 0
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, first), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, cut: bool) -> None:
        seen = b""
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
                seen = (seen + chunk)[-4096:]
                if cut and self.marker in seen:
                    self.cuts += 1
                    break
        except OSError:
            pass
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()


def test_container_logs_follow_resumes_a_cut_connection_without_loss_or_repeats(
    url: str, docker_client: docker.DockerClient
) -> None:
    proxy = CuttingProxy(int(url.rpartition(":")[2]), b"line 2")
    try:
        counter(docker_client, "cli-resumed", 6)
        result = pyedge(f"http://127.0.0.1:{proxy.port}", "container", "logs", "-f", "cli-resumed")
    finally:
        proxy.close()
    assert result.exit_code == 0, result.output
    assert proxy.cuts == 1
    lines = result.output.splitlines()
    assert [line for line in lines if line.startswith("(connection lost")], lines
    assert [line for line in lines if line.startswith("line")] == [f"line {i}" for i in range(1, 7)]


def test_app_plan_apply_ls_and_rm(
    url: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    spec = tmp_path / "cli-demo.yaml"  # no name: in the file, so the stem names the app
    spec.write_text(APP_YAML)
    planned = ok(pyedge(url, "app", "plan", str(spec)))
    assert planned.splitlines()[0] == "plan for app cli-demo:"
    assert row(planned, "create")[1:] == ["web", "no", "container"]
    assert ok(pyedge(url, "app", "plan", "--name", "other", str(spec))).startswith(
        "plan for app other:"
    )

    applied = ok(pyedge(url, "app", "apply", str(spec)))
    assert applied.startswith("app cli-demo: ")
    assert row(applied, "SERVICE")[:3] == ["SERVICE", "STATE", "STATUS"]
    row(applied, "web")
    wait_for(
        lambda: docker_client.containers.list(filters={"name": "cli-demo-web"}),
        what="the app's container running",
    )
    assert row(ok(pyedge(url, "app", "ls")), "cli-demo")[2] == "1"

    assert ok(pyedge(url, "app", "rm", "cli-demo")) == "removed app cli-demo\n"
    assert "cli-demo" not in ok(pyedge(url, "app", "ls"))
    assert not docker_client.containers.list(all=True, filters={"name": "cli-demo-web"})


def test_a_policy_violation_is_shown_with_its_reason(url: str, tmp_path: Path) -> None:
    spec = tmp_path / "app.yaml"
    spec.write_text(PRIVILEGED_YAML)
    violation = "services.web.privileged = True: privileged containers are root on the host"

    planned = pyedge(url, "app", "plan", str(spec))
    assert planned.exit_code == 1
    assert planned.output.startswith("plan for app rooted:")
    assert f"denied by the security policy:\n  {violation}\n" in planned.output

    applied = pyedge(url, "app", "apply", str(spec))
    assert applied.exit_code == 1
    assert applied.output.startswith("error: denied by the security policy")
    assert f"\n  {violation}\n" in applied.output


def test_a_validation_error_lists_each_field(url: str, tmp_path: Path) -> None:
    spec = tmp_path / "app.json"
    spec.write_text('{"services": {"web": {"command": "true", "restart": "sometimes"}}}')
    result = pyedge(url, "app", "apply", str(spec))
    assert result.exit_code == 1
    assert result.output.startswith("error: ")
    assert "\n  services.web.image: " in result.output
    assert "\n  services.web.restart: " in result.output


def test_an_unreachable_edge_server_is_a_clear_error() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    result = pyedge(dead, "image", "ls")
    assert result.exit_code == 1
    assert result.output == f"error: cannot reach the edge-server at {dead}: Connection refused\n"

    script = subprocess.run(
        [PYEDGE, "container", "ls"],
        env={**os.environ, "PYEDGE_URL": dead},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert script.returncode == 1
    assert script.stdout == ""
    assert script.stderr.startswith(f"error: cannot reach the edge-server at {dead}")


def test_the_console_script_talks_to_the_url_of_pyedge_url(url: str) -> None:
    result = subprocess.run(
        [PYEDGE, "image", "ls"],
        env={**os.environ, "PYEDGE_URL": url},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode, result.stderr) == (0, "")
    row(result.stdout, TEST_IMAGE)


def test_the_shell_runs_commands_and_survives_a_bad_one(
    url: str, docker_client: docker.DockerClient
) -> None:
    docker_client.containers.create(TEST_IMAGE, ["true"], name="cli-shell-seen")
    result = pyedge(url, "shell", input="image ls\ncontainer ls -a\nbogus\nexit\n")
    output = ok(result)
    assert output.count(cli.PROMPT) == 4
    row(output, TEST_IMAGE)
    assert row(output, "cli-shell-seen")[2] == "created"
    assert "No such command 'bogus'" in output


def test_a_failed_pull_exits_1_naming_the_ref(url: str) -> None:
    result = pyedge(url, "image", "pull", "127.0.0.1:1/nope:1")
    assert result.exit_code == 1, result.output
    # The last line is the operation's own result, not the progress bar's label.
    assert "127.0.0.1:1/nope:1" in result.output.splitlines()[-1]
