"""The gateway's rules on Docker's own requests, without an engine: create bodies, the
endpoints relayed or refused, prunes."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from container_manager.gateway.app import GatewayError, protected_prune
from container_manager.gateway.create import check_create
from container_manager.gateway.routes import Refused, match, unversioned
from container_manager.policy import Policy
from pyedge.security import Role

POLICY = Policy(cap_add=("NET_BIND_SERVICE",), bind_dirs=("/srv/media",), devices=("/dev/i2c-1",))
# What the docker CLI 20.10 sends for `docker run -d busybox sleep 1`, trimmed.
PLAIN = {
    "Image": "busybox",
    "Cmd": ["sleep", "1"],
    "Labels": {},
    "HostConfig": {
        "Binds": None, "NetworkMode": "default", "Privileged": False, "CapAdd": None,
        "CgroupParent": "", "Sysctls": None, "MaskedPaths": None, "ReadonlyPaths": None,
        "Devices": [], "DeviceRequests": None, "LogConfig": {"Type": "", "Config": {}},
        "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0}, "Runtime": "",
    },
    "NetworkingConfig": {"EndpointsConfig": {}},
}  # fmt: skip


def fields_of(body: dict) -> dict[str, str]:
    """Each violation's field and reason."""
    return {v["field"]: v["reason"] for v in check_create(body, POLICY)[1]}


def with_host(**host: object) -> dict:
    return {**PLAIN, "HostConfig": {**PLAIN["HostConfig"], **host}}


def test_a_plain_create_passes_as_sent() -> None:
    passed, violations = check_create(PLAIN, POLICY)
    assert violations == []
    assert passed == PLAIN


def test_granted_values_pass(tmp_path: Path) -> None:
    policy = Policy(cap_add=("NET_BIND_SERVICE",), bind_dirs=(str(tmp_path),),
                    devices=("/dev/i2c-1",))  # fmt: skip
    body = with_host(
        Binds=[f"{tmp_path}:/media:ro", "data:/data"],
        CapAdd=["NET_BIND_SERVICE"],
        Devices=[{"PathOnHost": "/dev/i2c-1", "PathInContainer": "/dev/i2c-1",
                  "CgroupPermissions": "rwm"}],
        SecurityOpt=["no-new-privileges"],
        Mounts=[{"Type": "volume", "Source": "cache", "Target": "/cache"},
                {"Type": "tmpfs", "Target": "/tmp"}],
        NetworkMode="pyedge-shop", Memory=64 << 20, PidsLimit=100,
    )  # fmt: skip
    assert check_create(body, policy)[1] == []


def test_every_violation_is_listed_with_docker_names() -> None:
    body = with_host(
        Privileged=True,
        Binds=["/etc:/etc", "/var/run/docker.sock:/s"],
        NetworkMode="container:edge-server",
        IpcMode="host",
        UTSMode="host",
        UsernsMode="host",
        CgroupnsMode="host",
        CapAdd=["SYS_ADMIN"],
        SecurityOpt=["apparmor=unconfined"],
        Sysctls={"kernel.shm_rmid_forced": "1"},
        CgroupParent="/",
        VolumeDriver="flocker",
        VolumesFrom=["edge-server"],
        DeviceRequests=[{"Count": -1, "Capabilities": [["gpu"]]}],
        DeviceCgroupRules=["c 1:1 rwm"],
        MaskedPaths=[],
        Runtime="nvidia",
        LogConfig={"Type": "syslog", "Config": {"syslog-address": "udp://x:514"}},
        OomScoreAdj=-500,
        Mounts=[{"Type": "bind", "Source": "/", "Target": "/host"},
                {"Type": "npipe", "Source": "x", "Target": "y"},
                {"Type": "volume", "Source": "v", "Target": "/v",
                 "VolumeOptions": {"DriverConfig": {"Name": "local",
                                                    "Options": {"type": "none", "o": "bind",
                                                                "device": "/etc"}}}}],
    )  # fmt: skip
    body["Labels"] = {"pyedge.system": "true"}
    found = check_create(body, POLICY)[1]
    named = {v["field"] for v in found}
    assert named == {
        "HostConfig.Privileged", "HostConfig.Binds", "HostConfig.NetworkMode",
        "HostConfig.IpcMode", "HostConfig.UTSMode", "HostConfig.UsernsMode",
        "HostConfig.CgroupnsMode", "HostConfig.CapAdd", "HostConfig.SecurityOpt",
        "HostConfig.Sysctls", "HostConfig.CgroupParent", "HostConfig.VolumeDriver",
        "HostConfig.VolumesFrom", "HostConfig.DeviceRequests", "HostConfig.DeviceCgroupRules",
        "HostConfig.MaskedPaths", "HostConfig.Runtime", "HostConfig.LogConfig",
        "HostConfig.OomScoreAdj", "HostConfig.Mounts", "Labels",
    }  # fmt: skip
    binds = [v["value"] for v in found if v["field"] == "HostConfig.Binds"]
    assert binds == ["/etc:/etc", "/var/run/docker.sock:/s"]
    assert len([v for v in found if v["field"] == "HostConfig.Mounts"]) == 3


def test_unknown_fields_are_refused_when_set_and_never_passed() -> None:
    body = {**with_host(FutureHostThing=True, FutureEmpty=None), "Future": {"x": 1}}
    passed, violations = check_create(body, POLICY)
    assert {v["field"] for v in violations} == {"HostConfig.FutureHostThing", "Future"}
    assert all("does not know" in v["reason"] for v in violations)
    # One left at its zero value is dropped, not passed.
    body = with_host(FutureEmpty=None)
    passed, violations = check_create(body, POLICY)
    assert violations == []
    assert "FutureEmpty" not in passed["HostConfig"]


def test_masked_paths_are_refused_even_empty() -> None:
    # An empty list unmasks /proc/kcore and the rest: only null keeps the defaults.
    assert "HostConfig.ReadonlyPaths" in fields_of(with_host(ReadonlyPaths=[]))
    assert fields_of(with_host(ReadonlyPaths=None)) == {}


def test_a_body_that_is_not_an_object_host_config() -> None:
    assert "HostConfig" in fields_of({**PLAIN, "HostConfig": ["x"]})


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("HEAD", "/_ping", Role.VIEWER),
        ("GET", "/v1.41/containers/json", Role.VIEWER),
        ("POST", "/v1.41/containers/abc/wait", Role.VIEWER),
        ("POST", "/v1.24/containers/abc/stop", Role.OPERATOR),
        ("POST", "/containers/create", Role.ADMIN),
        ("DELETE", "/v1.41/images/registry:5000/team/app:1.0", Role.ADMIN),
        ("GET", "/v1.41/images/registry:5000/team/app:1.0/json", Role.VIEWER),
        ("POST", "/v1.41/volumes/prune", Role.ADMIN),
    ],
)
def test_relayed_endpoints_and_their_roles(method: str, path: str, role: Role) -> None:
    route, _ = match(method, unversioned(path))
    assert route.role is role


@pytest.mark.parametrize(
    ("method", "path", "reason"),
    [
        ("POST", "/containers/abc/exec", "docker exec"),
        ("POST", "/exec/abc/start", "docker exec"),
        ("POST", "/containers/abc/attach", "attaching"),
        ("POST", "/build", "docker build"),
        ("POST", "/session", "docker build"),
        ("POST", "/commit", "docker commit"),
        ("GET", "/containers/abc/export", "copying files"),
        ("PUT", "/containers/abc/archive", "copying files"),
        ("GET", "/images/app/get", "copying files"),
        ("POST", "/images/load", "copying files"),
        ("GET", "/swarm", "swarm"),
        ("GET", "/services", "swarm"),
        ("GET", "/secrets", "swarm"),
        ("GET", "/plugins", "plugins"),
        ("POST", "/auth", "registry logins"),
        ("POST", "/containers/abc/update", "is not allowed through"),
        ("POST", "/networks/x/connect", "is not allowed through"),
        ("DELETE", "/containers/json/x/y", "is not allowed through"),
    ],
)
def test_other_endpoints_are_refused_with_why(method: str, path: str, reason: str) -> None:
    with pytest.raises(Refused) as refused:
        match(method, unversioned("/v1.41" + path))
    assert reason in refused.value.reason


def test_prunes_keep_apps_objects() -> None:
    query = parse_qs(protected_prune(""))
    assert json.loads(query["filters"][0]) == {"label!": ["pyedge.app"]}
    # The client's own filters stay, in the form it wrote them.
    older = protected_prune("filters=" + json.dumps({"until": {"24h": True}}))
    assert json.loads(parse_qs(older)["filters"][0]) == {
        "until": {"24h": True},
        "label!": {"pyedge.app": True},
    }
    with pytest.raises(GatewayError) as refused:
        protected_prune("filters=" + json.dumps({"label!": ["keep"]}))
    assert refused.value.status == 403
