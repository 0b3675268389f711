"""The Docker API gateway with the real docker CLI (Debian's docker.io) and docker-py, on a
real engine: lifecycle, streams, the policy, protection, roles, tokens and client certificates.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from click.testing import CliRunner
from flask import Flask
from werkzeug.serving import make_server

from edge_server import cli, create_app
from edge_server.security.tls import ensure_certificate
from pyedge.auth import EXTENSION as AUTH_EXTENSION
from pyedge.config import ConfigError
from pyedge.security import Role
from tests.conftest import authorize, free_port
from tests.containers.conftest import Registry
from tests.containers.gateway_helpers import Docker
from tests.docker_engine import TEST_IMAGE

LISTEN = "EDGE_CONTAINER_MANAGER_GATEWAY_LISTEN"
API = "/api/container-manager"
# Prints three lines a third of a second apart, then exits: `logs -f` must end with it.
COUNTER = ["sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.3; done"]
SLEEPER = ["sleep", "300"]


@pytest.fixture
def gateway_app(cm_config: dict[str, Any]) -> Iterator[Flask]:
    """The container-manager with its gateway on a free loopback port (plain HTTP)."""
    app = create_app({**cm_config, LISTEN: f"127.0.0.1:{free_port()}"})
    yield app
    app.extensions["pyedge"].close()


def gateway_host(app: Flask) -> str:
    """The DOCKER_HOST of the app's gateway."""
    runtime = app.extensions["pyedge"].runtimes["container-manager"]
    url: str = runtime.extras["gateway"].url
    return url


@pytest.fixture
def docker_as(gateway_app: Flask, tmp_path: Path) -> Callable[[Role | None], Docker]:
    """The docker CLI on the gateway with a new token of a role (None: no credentials)."""

    def make(role: Role | None) -> Docker:
        token = authorize(gateway_app, role) if role is not None else None
        label = role.label if role is not None else "anonymous"
        return Docker.with_token(gateway_host(gateway_app), tmp_path / f"docker-{label}", token)

    return make


def audit_actions(app: Flask) -> list[tuple[str, str, str, int | None, str]]:
    """The audit log, oldest first: actor, action, target, status, detail."""
    entries = app.extensions[AUTH_EXTENSION].accounts.audit_log(200)
    return [(e["actor"], e["action"], e["target"], e["status"], e["detail"]) for e in entries][::-1]


def test_docker_cli_runs_a_container_through_its_whole_life(
    docker_as: Callable[[Role | None], Docker],
    docker_client: docker.DockerClient,
    gateway_app: Flask,
) -> None:
    admin = docker_as(Role.ADMIN)
    since = str(int(time.time()) - 1)
    version = admin.ok("version", "--format", "{{.Server.APIVersion}} {{.Server.Version}}")
    engine_version = docker_client.version()
    assert version.split() == [engine_version["ApiVersion"], engine_version["Version"]]
    assert admin.ok("info", "--format", "{{.Driver}}").strip() == docker_client.info()["Driver"]
    assert TEST_IMAGE.split(":")[0] in admin.ok("images")

    admin.ok("run", "-d", "--name", "counter", TEST_IMAGE, *COUNTER)
    # Follows the engine's multiplexed stream as it comes, and ends when the container does.
    started = time.monotonic()
    logs = admin.ok("logs", "-f", "counter", timeout=30)
    assert logs.split() == ["line1", "line2", "line3"]
    assert time.monotonic() - started < 20
    assert "counter" in admin.ok("ps", "-a", "--format", "{{.Names}} {{.Status}}")

    admin.ok("run", "-d", "--name", "sleeper", TEST_IMAGE, *SLEEPER)
    stats = admin.ok("stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", "sleeper")
    assert stats.startswith("sleeper ")
    assert "sleep 300" in admin.ok("top", "sleeper")
    admin.ok("stop", "-t", "1", "sleeper")
    assert docker_client.api.inspect_container("sleeper")["State"]["Status"] == "exited"
    admin.ok("rm", "sleeper", "counter")
    assert docker_client.containers.list(all=True) == []

    # Unix seconds; a second on: the stream stays open until then, then ends.
    until = str(int(time.time()) + 1)
    events = admin.ok(
        "events", "--since", since, "--until", until,
        "--filter", "container=sleeper", "--filter", "event=stop",
        "--format", "{{.Action}} {{.Actor.Attributes.name}}",
    )  # fmt: skip
    assert events.split("\n")[0] == "stop sleeper"

    # Every change is in the audit log with the token that made it.
    changes = [entry for entry in audit_actions(gateway_app) if "Docker API" in entry[4]]
    actor = changes[0][0]
    assert actor.startswith("token:")
    assert ("POST", 201) in {
        (action, status)
        for _, action, target, status, _ in changes
        if target.endswith("/containers/create")
    }
    assert any(target.endswith("/sleeper/stop") and status == 204
               for _, _, target, status, _ in changes)  # fmt: skip
    assert {entry[0] for entry in changes} == {actor}


def test_docker_cli_manages_volumes_and_networks(
    docker_as: Callable[[Role | None], Docker], docker_client: docker.DockerClient
) -> None:
    admin = docker_as(Role.ADMIN)
    admin.ok("volume", "create", "--label", "site=lab", "scratch")
    assert "scratch" in admin.ok("volume", "ls", "--format", "{{.Name}}").split()
    assert docker_client.volumes.get("scratch").attrs["Labels"] == {"site": "lab"}
    admin.ok("volume", "rm", "scratch")
    assert "scratch" not in [v.name for v in docker_client.volumes.list()]
    assert {"bridge", "host", "none"} <= set(
        admin.ok("network", "ls", "--format", "{{.Name}}").split()
    )
    admin.ok("network", "create", "lan")
    admin.ok("network", "rm", "lan")
    df = admin.ok("system", "df")
    assert "Images" in df and "Local Volumes" in df


def test_docker_py_from_env_sends_the_config_headers(
    docker_as: Callable[[Role | None], Docker], monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer = docker_as(Role.VIEWER)
    monkeypatch.setenv("DOCKER_HOST", viewer.host)
    monkeypatch.setenv("DOCKER_CONFIG", str(viewer.config_dir))
    client = docker.from_env(version="auto")
    try:
        assert any(TEST_IMAGE in image.tags for image in client.images.list())
        with pytest.raises(docker.errors.APIError) as refused:
            client.volumes.create("x")
        assert refused.value.status_code == 403
        assert "needs the admin role" in str(refused.value.explanation)
    finally:
        client.close()


def test_docker_cli_pulls_tags_and_removes_images(
    docker_as: Callable[[Role | None], Docker],
    docker_client: docker.DockerClient,
    registry: Registry,
) -> None:
    repository = f"{registry.host}/gateway/busybox"
    docker_client.images.get(TEST_IMAGE).tag(repository, "1")
    for line in docker_client.api.push(repository, tag="1", stream=True, decode=True):
        assert "error" not in line, line
    docker_client.images.remove(f"{repository}:1")
    admin = docker_as(Role.ADMIN)
    # The engine's progress stream, relayed as it comes (its layer is here already).
    pulled = admin.ok("pull", f"{repository}:1")
    assert "1: Pulling from gateway/busybox" in pulled
    assert f"Downloaded newer image for {repository}:1" in pulled
    admin.ok("tag", f"{repository}:1", "local/copy:2")
    assert "local/copy:2" in admin.ok("images", "--format", "{{.Repository}}:{{.Tag}}")
    assert admin.ok("image", "inspect", "--format", "{{.Id}}", "local/copy:2").startswith("sha256:")
    assert "IMAGE" in admin.ok("image", "history", "local/copy:2")
    admin.ok("rmi", "local/copy:2", f"{repository}:1")
    assert docker_client.images.list(name="local/copy") == []
    assert "Total reclaimed space" in admin.ok("image", "prune", "-f")
    assert "viewer" in docker_as(Role.VIEWER).refused("pull", f"{repository}:1")


def test_docker_cli_lifecycle_verbs(
    docker_as: Callable[[Role | None], Docker], docker_client: docker.DockerClient
) -> None:
    admin = docker_as(Role.ADMIN)
    admin.ok("run", "-d", "--name", "box", TEST_IMAGE, *SLEEPER)
    admin.ok("pause", "box")
    assert docker_client.api.inspect_container("box")["State"]["Status"] == "paused"
    admin.ok("unpause", "box")
    admin.ok("rename", "box", "crate")
    admin.ok("restart", "-t", "1", "crate")
    assert admin.ok("inspect", "--format", "{{.State.Running}}", "crate").strip() == "true"
    admin.ok("kill", "crate")
    assert admin.ok("wait", "crate").strip() == "137"
    assert isinstance(admin.ok("diff", "crate"), str)
    assert admin.ok("network", "inspect", "--format", "{{.Name}}", "bridge").strip() == "bridge"
    admin.ok("volume", "create", "v1")
    assert admin.ok("volume", "inspect", "--format", "{{.Name}}", "v1").strip() == "v1"
    admin.ok("rm", "crate")
    admin.ok("volume", "prune", "-f")
    assert docker_client.volumes.list() == []


DENIED = [
    (["--privileged"], "HostConfig.Privileged", "privileged containers are root on the host"),
    (["-v", "/:/host"], "HostConfig.Binds=/:/host", "the host's root directory"),
    (["--network", "host"], "HostConfig.NetworkMode=host", "network namespace is not granted"),
    (["--pid", "host"], "HostConfig.PidMode=host", "pid namespace is not granted"),
    (["--device", "/dev/mem"], "HostConfig.Devices=/dev/mem", "/dev/mem is not granted"),
    (["--cap-add", "SYS_ADMIN"], "HostConfig.CapAdd=SYS_ADMIN", "not in the allow-list"),
    (["--security-opt", "seccomp=unconfined"], "HostConfig.SecurityOpt", "no-new-privileges"),
    (["--sysctl", "net.ipv4.ip_forward=1"], "HostConfig.Sysctls", "kernel's settings"),
    (["--label", "pyedge.system=true"], "Labels=pyedge.system", "PyEdge's own"),
    (["--mount", "type=bind,source=/etc,target=/x"], "HostConfig.Mounts", "/etc is a system"),
]


def test_policy_denials_are_readable_and_create_nothing(
    docker_as: Callable[[Role | None], Docker], docker_client: docker.DockerClient
) -> None:
    admin = docker_as(Role.ADMIN)
    for flags, field, reason in DENIED:
        error = admin.refused("run", "-d", *flags, TEST_IMAGE, *SLEEPER)
        assert "denied by PyEdge's security policy" in error, flags
        assert field in error and reason in error, error
    # One answer lists every violation of a create.
    error = admin.refused(
        "run", "-d", "--privileged", "-v", "/:/host", "--network", "host", "--pid", "host",
        "--device", "/dev/mem", TEST_IMAGE, *SLEEPER,
    )  # fmt: skip
    for field in ("Privileged", "Binds", "NetworkMode", "PidMode", "Devices"):
        assert f"HostConfig.{field}" in error
    assert docker_client.containers.list(all=True) == []


def test_exec_build_and_attach_are_refused_with_why(
    docker_as: Callable[[Role | None], Docker], docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    admin = docker_as(Role.ADMIN)
    admin.ok("run", "-d", "--name", "sleeper", TEST_IMAGE, *SLEEPER)
    assert "docker exec is not allowed through PyEdge" in admin.refused("exec", "sleeper", "ls")
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {TEST_IMAGE}\nRUN true\n")
    built = admin.run("build", "-t", "local/x", str(context), timeout=60)
    assert built.returncode != 0
    assert "docker build is not allowed through PyEdge" in built.stderr + built.stdout
    assert "attaching to a container is not allowed" in admin.refused("attach", "sleeper")
    assert "docker import is not allowed" in admin.refused("import", str(context / "Dockerfile"))
    assert docker_client.images.list(name="local/x") == []


def test_credentials_and_roles(
    docker_as: Callable[[Role | None], Docker], docker_client: docker.DockerClient, tmp_path: Path,
    gateway_app: Flask,
) -> None:  # fmt: skip
    container = docker_client.containers.run(TEST_IMAGE, SLEEPER, name="sleeper", detach=True)
    anonymous = docker_as(None)
    assert "authentication required by PyEdge" in anonymous.refused("ps")
    wrong = Docker.with_token(gateway_host(gateway_app), tmp_path / "wrong", "pye_not-a-token")
    assert "token is unknown or expired" in wrong.refused("ps")

    viewer = docker_as(Role.VIEWER)
    assert "sleeper" in viewer.ok("ps")
    assert "needs the operator role" in viewer.refused("stop", "sleeper")
    assert "needs the admin role" in viewer.refused("run", "-d", TEST_IMAGE, *SLEEPER)
    operator = docker_as(Role.OPERATOR)
    operator.ok("restart", "-t", "1", "sleeper")
    assert "needs the admin role" in operator.refused("rm", "-f", "sleeper")
    assert "needs the admin role" in operator.refused("volume", "create", "x")
    container.reload()
    assert container.status == "running"
    assert [c.name for c in docker_client.containers.list(all=True)] == ["sleeper"]


def test_pyedge_objects_are_protected(
    docker_as: Callable[[Role | None], Docker], docker_client: docker.DockerClient
) -> None:
    docker_client.containers.run(
        TEST_IMAGE, SLEEPER, name="pyedge-core", labels={"pyedge.system": "true"}, detach=True
    )
    docker_client.containers.run(
        TEST_IMAGE, SLEEPER, name="shop-web", labels={"pyedge.app": "shop"}, detach=True
    )
    docker_client.volumes.create("shop-data", labels={"pyedge.app": "shop"})
    docker_client.volumes.create("loose")
    admin = docker_as(Role.ADMIN)
    for args in (["stop", "pyedge-core"], ["rm", "-f", "pyedge-core"], ["pause", "pyedge-core"],
                 ["rename", "pyedge-core", "x"], ["kill", "pyedge-core"]):  # fmt: skip
        assert "is a PyEdge system container" in admin.refused(*args), args
    assert "belongs to PyEdge app shop" in admin.refused("rm", "-f", "shop-web")
    assert "belongs to PyEdge app shop" in admin.refused("rename", "shop-web", "x")
    assert "belongs to PyEdge app shop" in admin.refused("volume", "rm", "shop-data")
    assert "are PyEdge's own" in admin.refused("volume", "create", "--label", "pyedge.app=x", "v")
    bind = ["volume", "create", "--opt", "type=none", "--opt", "o=bind", "--opt", "device=/etc"]
    assert "mounts a host path" in admin.refused(*bind, "etc")
    # A prune keeps apps' volumes and removes the others.
    admin.ok("volume", "prune", "-f")
    assert [v.name for v in docker_client.volumes.list()] == ["shop-data"]
    assert {c.status for c in docker_client.containers.list(all=True)} == {"running"}


def test_gateway_settings_errors(cm_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as bad:
        create_app({**cm_config, LISTEN: "localhost"})
    assert bad.value.key == LISTEN and "HOST:PORT" in str(bad.value)
    port = free_port()
    app = create_app({**cm_config, LISTEN: f"127.0.0.1:{port}"})
    try:
        with pytest.raises(ConfigError) as taken:
            create_app({**cm_config, LISTEN: f"127.0.0.1:{port}"})
        assert taken.value.key == LISTEN and "in use" in str(taken.value)
    finally:
        app.extensions["pyedge"].close()


# --- TLS: the node's certificate, client certificates that PyEdge issues --------------------


@pytest.fixture
def tls_app(cm_config: dict[str, Any]) -> Iterator[Flask]:
    """The container-manager serving HTTPS, its gateway too, with the node's certificate."""
    ensure_certificate(Path(cm_config["EDGE_DATA_DIR"]))
    app = create_app({**cm_config, "EDGE_TLS": True, LISTEN: f"127.0.0.1:{free_port()}"})
    yield app
    app.extensions["pyedge"].close()


@dataclass
class Issuer:
    """`pyedge gateway issue|revoke` against an app on real HTTP, as an admin."""

    url: str
    token: str
    out: Path

    def pyedge(self, *args: str) -> str:
        result = CliRunner().invoke(cli.root, ["--url", self.url, "--token", self.token, *args])
        assert result.exit_code == 0, result.output
        return result.output

    def issue(self, name: str, role: str) -> Path:
        """A certificate's ca.pem, cert.pem and key.pem, in a directory of their own."""
        out = self.out / f"certs-{name}"
        self.pyedge("gateway", "issue", name, "--role", role, "--out", str(out))
        return out

    def revoke(self, name: str) -> str:
        return self.pyedge("gateway", "revoke", name)


@pytest.fixture
def issuer(tls_app: Flask, tmp_path: Path) -> Iterator[Issuer]:
    """Issues the app's client certificates through its REST API and the CLI."""
    server = make_server("127.0.0.1", 0, tls_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Issuer(f"http://127.0.0.1:{server.server_port}", authorize(tls_app), tmp_path)
    server.shutdown()
    server.server_close()


def test_client_certificates_over_tls(
    tls_app: Flask,
    issuer: Issuer,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    host = gateway_host(tls_app)
    admin_certs = issuer.issue("portainer", "admin")
    assert sorted(p.name for p in admin_certs.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    assert (admin_certs / "key.pem").stat().st_mode & 0o077 == 0
    admin = Docker(host, tmp_path / "cfg-admin", admin_certs)
    admin.config_dir.mkdir()
    assert admin.ok("version", "--format", "{{.Server.Version}}").strip()
    admin.ok("run", "-d", "--name", "sleeper", TEST_IMAGE, *SLEEPER)
    assert "privileged containers" in admin.refused("run", "-d", "--privileged", TEST_IMAGE)

    viewer = Docker(host, tmp_path / "cfg-viewer", issuer.issue("dashboard", "viewer"))
    viewer.config_dir.mkdir()
    assert "sleeper" in viewer.ok("ps")
    assert "needs the operator role" in viewer.refused("stop", "sleeper")

    # Without a certificate or a token: refused, over TLS too.
    bare = Docker.with_token(host, tmp_path / "cfg-bare", None)
    bare.cert_dir = tmp_path / "ca-only"
    bare.cert_dir.mkdir()
    (bare.cert_dir / "ca.pem").write_text((admin_certs / "ca.pem").read_text())
    assert "authentication required by PyEdge" in bare.refused("ps")

    assert "revoked" in issuer.revoke("dashboard")
    assert "dashboard" in issuer.pyedge("gateway", "ls")
    assert "revoked or unknown" in viewer.refused("ps")
    assert "sleeper" in admin.ok("ps")
    audit = audit_actions(tls_app)
    admin_user = tls_app.extensions[AUTH_EXTENSION].accounts.tokens()[0]["name"]
    assert (f"user:{admin_user}", "POST") in {
        (actor, action) for actor, action, *_, detail in audit if "certificate portainer" in detail
    }


def test_docker_py_runs_a_container_through_the_gateway(
    tls_app: Flask,
    issuer: Issuer,
    docker_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # requests lets these win over a session's own CA file (docker-py's ca_cert).
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    certs = issuer.issue("sdk", "admin")
    tls = docker.tls.TLSConfig(
        client_cert=(str(certs / "cert.pem"), str(certs / "key.pem")),
        ca_cert=str(certs / "ca.pem"),
        verify=True,
    )
    client = docker.DockerClient(
        base_url=gateway_host(tls_app).replace("tcp://", "https://"), tls=tls, version="auto"
    )
    try:
        container = client.containers.run(TEST_IMAGE, COUNTER, name="sdk-run", detach=True)
        assert client.containers.get("sdk-run").id == container.id
        assert container.wait(timeout=30)["StatusCode"] == 0
        assert container.logs().split() == [b"line1", b"line2", b"line3"]
        streamed = b"".join(container.logs(stream=True, follow=True))
        assert streamed.split() == [b"line1", b"line2", b"line3"]
        assert any(TEST_IMAGE in image.tags for image in client.images.list())
        container.remove()
        with pytest.raises(docker.errors.APIError) as denied:
            client.containers.run(TEST_IMAGE, SLEEPER, privileged=True, detach=True)
        assert denied.value.status_code == 403
        assert "privileged containers are root" in str(denied.value.explanation)
    finally:
        client.close()
    assert docker_client.containers.list(all=True) == []
