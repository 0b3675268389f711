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
from tests.containers.conftest import API, run_spec

DENIED = [
    ("privileged", {"privileged": True}, "privileged", "root on the host"),
    ("host network", {"network_mode": "host"}, "network_mode", "network namespace"),
    ("host pid", {"pid": "host"}, "pid", "pid namespace"),
    ("host ipc", {"ipc": "host"}, "ipc", "ipc namespace"),
    ("host uts", {"uts": "host"}, "uts", "uts namespace"),
    ("host userns", {"userns_mode": "host"}, "userns_mode", "user namespace"),
    ("bind mount", {"volumes": ["/srv/data:/data"]}, "volumes", "only named volumes"),
    ("root", {"volumes": ["/:/host"]}, "volumes", "/ is a system directory"),
    ("etc", {"volumes": ["/etc:/etc"]}, "volumes", "/etc is a system directory"),
    ("proc", {"volumes": ["/proc/1:/p"]}, "volumes", "/proc is a system directory"),
    ("sys", {"volumes": ["/sys:/sys"]}, "volumes", "/sys is a system directory"),
    ("dev", {"volumes": ["/dev:/dev"]}, "volumes", "/dev is a system directory"),
    ("boot", {"volumes": ["/boot:/boot:ro"]}, "volumes", "/boot is a system directory"),
    ("run", {"volumes": ["/run/user:/r"]}, "volumes", "/run is a system directory"),
    ("docker socket", {"volumes": ["/var/run/docker.sock:/s"]}, "volumes", "Docker socket"),
    ("device", {"devices": ["/dev/i2c-1"]}, "devices", "not granted on this node"),
    ("cap_add", {"cap_add": ["SYS_ADMIN"]}, "cap_add", "SYS_ADMIN is not in the allow-list"),
    ("cap_add prefix", {"cap_add": ["CAP_NET_ADMIN"]}, "cap_add", "NET_ADMIN"),
    ("seccomp", {"security_opt": ["seccomp=unconfined"]}, "security_opt", "seccomp"),
    ("apparmor", {"security_opt": ["apparmor:unconfined"]}, "security_opt", "AppArmor"),
    ("system label", {"labels": {"pyedge.system": "true"}}, "labels", "PyEdge's own"),
]


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
    client = granting_app.test_client()
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


def test_a_symlink_cannot_lead_a_granted_bind_out(granting_app: Flask, granted_dir: Path) -> None:
    (granted_dir / "escape").symlink_to("/etc")
    response = granting_app.test_client().post(
        f"{API}/containers", json=run_spec(volumes=[f"{granted_dir}/escape:/x"])
    )
    assert response.status_code == 403
    assert "/etc is a system directory" in response.json["message"]
