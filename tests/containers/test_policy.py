"""The security policy: every dangerous field denied by default, with its reason; grants work."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_server import create_app
from tests.conftest import authorized_client
from tests.containers.conftest import API, run_spec

DENIED = [
    ("privileged", {"privileged": True}, "privileged", "root on the host"),
    ("host network", {"network_mode": "host"}, "network_mode", "network namespace"),
    ("host pid", {"pid": "host"}, "pid", "pid namespace"),
    ("host ipc", {"ipc": "host"}, "ipc", "ipc namespace"),
    ("host uts", {"uts": "host"}, "uts", "uts namespace"),
    ("host userns", {"userns_mode": "host"}, "userns_mode", "user namespace"),
    ("joined network", {"network_mode": "container:core"}, "network_mode", "another container"),
    ("joined pid", {"pid": "container:core"}, "pid", "another container's pid namespace"),
    ("joined ipc", {"ipc": "container:core"}, "ipc", "another container's ipc namespace"),
    ("bind mount", {"volumes": ["/srv/data:/data"]}, "volumes", "only named volumes"),
    ("root", {"volumes": ["/:/host"]}, "volumes", "the host's root directory"),
    ("etc", {"volumes": ["/etc:/etc"]}, "volumes", "/etc is a system directory"),
    ("proc", {"volumes": ["/proc/1:/p"]}, "volumes", "/proc is a system directory"),
    ("sys", {"volumes": ["/sys:/sys"]}, "volumes", "/sys is a system directory"),
    ("dev", {"volumes": ["/dev:/dev"]}, "volumes", "/dev is a system directory"),
    ("boot", {"volumes": ["/boot:/boot:ro"]}, "volumes", "/boot is a system directory"),
    ("run", {"volumes": ["/run/user:/r"]}, "volumes", "/run is a system directory"),
    ("usr", {"volumes": ["/usr/bin:/b"]}, "volumes", "/usr is a system directory"),
    ("engine data", {"volumes": ["/var/lib/docker:/d"]}, "volumes", "/var/lib/docker is a"),
    ("dotdot", {"volumes": ["/srv/../etc:/e"]}, "volumes", "/etc is a system directory"),
    ("docker socket", {"volumes": ["/var/run/docker.sock:/s"]}, "volumes", "system directory"),
    ("any docker.sock", {"volumes": ["/srv/docker.sock:/s"]}, "volumes", "Docker socket"),
    ("device", {"devices": ["/dev/i2c-1"]}, "devices", "not granted on this node"),
    ("cap_add", {"cap_add": ["SYS_ADMIN"]}, "cap_add", "SYS_ADMIN is not in the allow-list"),
    ("cap_add prefix", {"cap_add": ["CAP_NET_ADMIN"]}, "cap_add", "NET_ADMIN"),
    ("cap_add all", {"cap_add": ["ALL"]}, "cap_add", "ALL is not in the allow-list"),
    ("seccomp", {"security_opt": ["seccomp=unconfined"]}, "security_opt", "seccomp"),
    ("seccomp colon", {"security_opt": ["seccomp:unconfined"]}, "security_opt", "seccomp"),
    ("seccomp profile", {"security_opt": ['seccomp={"defaultAction":"SCMP_ACT_ALLOW"}']},
     "security_opt", "seccomp"),
    ("apparmor", {"security_opt": ["apparmor:unconfined"]}, "security_opt", "AppArmor"),
    ("apparmor profile", {"security_opt": ["apparmor=other"]}, "security_opt", "AppArmor"),
    ("label disable", {"security_opt": ["disable"]}, "security_opt", "SELinux"),
    ("label type", {"security_opt": ["label=type:spc_t"]}, "security_opt", "SELinux"),
    ("system label", {"labels": {"pyedge.system": "true"}}, "labels", "PyEdge's own"),
    ("app label", {"labels": {"pyedge.app": "shop"}}, "labels", "PyEdge's own"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [case[1:] for case in DENIED],
    ids=[case[0] for case in DENIED],
)
def test_denied_by_default_with_its_reason(
    cm_client: FlaskClient,
    docker_client: docker.DockerClient,
    fields: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    response = cm_client.post(f"{API}/containers", json=run_spec(command=["true"], **fields))
    assert response.status_code == 403, response.json
    body = response.json
    assert body["status"] == "Forbidden"
    [violation] = body["errors"]["violations"]
    assert violation["field"] == field
    assert reason in violation["reason"]
    assert reason in body["message"]
    assert not docker_client.containers.list(all=True), "nothing may reach the engine"


def test_every_violation_is_listed_at_once(cm_client: FlaskClient) -> None:
    spec = run_spec(
        privileged=True,
        network_mode="host",
        volumes=["/etc:/etc", "ok:/ok"],
        devices=["/dev/mem"],
        cap_add=["SYS_ADMIN", "CHOWN"],
    )
    violations = cm_client.post(f"{API}/containers", json=spec).json["errors"]["violations"]
    assert [v["field"] for v in violations] == [
        "privileged",
        "network_mode",
        "volumes",
        "devices",
        "cap_add",
    ]
    assert violations[2]["value"] == "/etc:/etc"


@pytest.fixture
def granted_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "shared"
    directory.mkdir()
    (directory / "hello.txt").write_text("from the host\n")
    return directory


@pytest.fixture
def granting_app(cm_config: dict[str, Any], granted_dir: Path) -> Iterator[Flask]:
    """The container-manager with a host directory, a device and a capability granted."""
    app = create_app(
        {
            **cm_config,
            "EDGE_CONTAINER_MANAGER_BIND_DIRS": str(granted_dir),
            "EDGE_CONTAINER_MANAGER_DEVICES": "/dev/null",
            "EDGE_CONTAINER_MANAGER_CAP_ADD": "CHOWN,NET_ADMIN",
        }
    )
    yield app
    app.extensions["pyedge"].close()


def test_grants_let_through_what_they_name(
    granting_app: Flask, granted_dir: Path, docker_client: docker.DockerClient
) -> None:
    client = authorized_client(granting_app)
    spec = run_spec(
        name="granted",
        command=["sleep", "3600"],
        volumes=[f"{granted_dir}:/shared:ro"],
        devices=["/dev/null:/dev/sensor"],
        cap_add=["NET_ADMIN"],
    )
    response = client.post(f"{API}/containers", json=spec)
    assert response.status_code == 201, response.json
    output = docker_client.containers.get("granted").exec_run(["cat", "/shared/hello.txt"])
    assert output.output == b"from the host\n"
    assert "NET_ADMIN" in docker_client.containers.get("granted").attrs["HostConfig"]["CapAdd"]

    # A grant is exact: a sibling of the granted directory, another device, another cap.
    sibling = granted_dir.parent / "other"
    sibling.mkdir()
    denied = client.post(
        f"{API}/containers",
        json=run_spec(
            volumes=[f"{sibling}:/x", f"{granted_dir}/../other:/y"],
            devices=["/dev/zero"],
            cap_add=["SYS_ADMIN"],
        ),
    )
    assert denied.status_code == 403
    assert len(denied.json["errors"]["violations"]) == 4


def test_only_the_granted_directories_themselves(granting_app: Flask, granted_dir: Path) -> None:
    # A container that can write the granted directory could swap a subdirectory for a
    # symlink between the check and the engine's next mount: subdirectories are refused.
    (granted_dir / "sub").mkdir()
    (granted_dir / "escape").symlink_to("/etc")
    client = authorized_client(granting_app)
    for source, reason in [
        (f"{granted_dir}/sub", "inside a granted directory"),
        (f"{granted_dir}/escape", "inside a granted directory"),
        (f"{granted_dir}/sub/..", None),  # normalised: the granted directory itself
    ]:
        response = client.post(
            f"{API}/containers", json=run_spec(command=["true"], volumes=[f"{source}:/x"])
        )
        if reason is None:
            assert response.status_code == 201, response.json
        else:
            assert response.status_code == 403, source
            assert reason in response.json["message"]


def test_a_granted_directory_must_exist_and_be_no_symlink(
    cm_config: dict[str, Any], tmp_path: Path
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    missing = tmp_path / "missing"
    app = create_app({**cm_config, "EDGE_CONTAINER_MANAGER_BIND_DIRS": f"{link},{missing}"})
    try:
        client = authorized_client(app)
        for source, reason in [(link, "goes through a symlink"), (missing, "does not exist")]:
            response = client.post(f"{API}/containers", json=run_spec(volumes=[f"{source}:/x"]))
            assert response.status_code == 403
            assert reason in response.json["message"]
    finally:
        app.extensions["pyedge"].close()


@pytest.mark.parametrize(
    "volume", ["/srv/x :/x", "/srv/\tx:/x", "/srv/x\u0000:/x", "data :/x", "/srv/x:/x y"]
)
def test_sources_with_spaces_or_control_characters_are_422(
    cm_client: FlaskClient, volume: str
) -> None:
    # The engine takes a source as it is: "/srv/x " is another path than "/srv/x".
    response = cm_client.post(f"{API}/containers", json=run_spec(volumes=[volume]))
    assert response.status_code == 422
    assert "no spaces or control characters" in str(response.json["errors"])


def test_a_directory_holding_the_engine_socket_is_refused(
    cm_config: dict[str, Any], docker_engine: Any
) -> None:
    # The test engine's socket lives in its own directory, not at /var/run/docker.sock.
    socket_dir = str(docker_engine.root)
    app = create_app({**cm_config, "EDGE_CONTAINER_MANAGER_BIND_DIRS": socket_dir})
    try:
        response = authorized_client(app).post(
            f"{API}/containers", json=run_spec(volumes=[f"{socket_dir}:/x"])
        )
        assert response.status_code == 403
        assert "holds the Docker socket" in response.json["message"]
    finally:
        app.extensions["pyedge"].close()


def test_namespace_values_docker_does_not_know_are_422(cm_client: FlaskClient) -> None:
    for field in ("uts", "userns_mode"):
        response = cm_client.post(f"{API}/containers", json=run_spec(**{field: "private"}))
        assert response.status_code == 422, field


def test_no_new_privileges_is_allowed(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    response = cm_client.post(
        f"{API}/containers",
        json=run_spec(name="nnp", command=["true"], security_opt=["no-new-privileges:true"]),
    )
    assert response.status_code == 201, response.json
    assert docker_client.containers.get("nnp").attrs["HostConfig"]["SecurityOpt"] == [
        "no-new-privileges:true"
    ]
