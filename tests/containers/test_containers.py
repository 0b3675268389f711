"""Containers, images, volumes, networks and the system through the API, on a real engine."""

from __future__ import annotations

import io
from typing import Any

import docker
from flask.testing import FlaskClient

from container_manager.schemas import ContainerSchema, PortSchema
from tests.containers.conftest import API, run_spec, wait_for
from tests.docker_engine import TEST_IMAGE

SLEEPER = ["sleep", "3600"]


def create(client: FlaskClient, **fields: Any) -> dict[str, Any]:
    """POST /containers; asserts 201 and returns the container."""
    response = client.post(f"{API}/containers", json=run_spec(**fields))
    assert response.status_code == 201, response.json
    body: dict[str, Any] = response.json
    return body


def test_system_reports_the_engine(cm_client: FlaskClient) -> None:
    body = cm_client.get(f"{API}/system").json
    assert body["engine_version"]
    assert body["api_version"] >= "1.41"
    assert body["client_api_version"]
    assert body["os_type"] == "linux"
    assert body["architecture"]
    assert body["disk_free_bytes"] > 0
    assert body["images"] >= 1


def test_container_lifecycle(cm_client: FlaskClient, docker_client: docker.DockerClient) -> None:
    created = create(cm_client, name="life", command=SLEEPER, labels={"team": "a"})
    assert created["state"] == "running"
    assert created["managed"] is True
    assert created["labels"]["team"] == "a"
    real = docker_client.containers.get("life")
    assert real.status == "running"

    listed = cm_client.get(f"{API}/containers").json
    assert [c["name"] for c in listed] == ["life"]
    assert listed[0]["state"] == "running"

    stopped = cm_client.post(f"{API}/containers/life/stop?timeout=0").json
    assert stopped["state"] == "exited"
    assert cm_client.get(f"{API}/containers").json == []  # running ones only by default
    assert [c["name"] for c in cm_client.get(f"{API}/containers?all=true").json] == ["life"]

    started = cm_client.post(f"{API}/containers/life/start").json
    assert started["state"] == "running"
    restarted = cm_client.post(f"{API}/containers/life/restart?timeout=0").json
    assert restarted["state"] == "running"
    assert restarted["started_at"] > started["started_at"]
    killed = cm_client.post(f"{API}/containers/life/kill").json
    assert killed["state"] == "exited"
    assert killed["exit_code"] == 137

    assert cm_client.delete(f"{API}/containers/life").status_code == 204
    assert cm_client.get(f"{API}/containers/life").status_code == 404
    assert not docker_client.containers.list(all=True)


def test_the_listing_is_exactly_what_its_schema_documents(cm_client: FlaskClient) -> None:
    # The listing is sent as summary() builds it, not dumped: nothing more, nothing less.
    create(cm_client, name="shaped", command=SLEEPER, ports=["127.0.0.1::8080"], labels={"a": "b"})
    listed = cm_client.get(f"{API}/containers?all=true").json
    assert listed and listed[0]["ports"], listed
    assert ContainerSchema(many=True).dump(listed) == listed
    fields = set(ContainerSchema().fields)
    port_fields = set(PortSchema().fields)
    for item in listed:
        assert set(item) == fields
        assert all(set(port) <= port_fields for port in item["ports"])


def test_listing_filters_by_label(cm_client: FlaskClient) -> None:
    create(cm_client, name="red", command=SLEEPER, labels={"colour": "red"})
    create(cm_client, name="blue", command=SLEEPER, labels={"colour": "blue"})
    names = {c["name"] for c in cm_client.get(f"{API}/containers?label=colour=red").json}
    assert names == {"red"}
    both = cm_client.get(f"{API}/containers?label=colour").json
    assert {c["name"] for c in both} == {"red", "blue"}


def test_create_translates_the_compose_fields(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    cm_client.post(f"{API}/volumes", json={"name": "cfg"})
    create(
        cm_client,
        name="full",
        command="sleep 3600",
        environment=["MODE=test", "LEVEL=3"],
        ports=["127.0.0.1::8080", "9000:9000/udp"],
        volumes=["cfg:/cfg:ro"],
        restart="on-failure:3",
        working_dir="/tmp",
        mem_limit="64m",
        cpus=0.5,
        pids_limit=50,
        cap_drop=["NET_RAW"],
        cap_add=["CHOWN"],
        healthcheck={"test": ["CMD", "true"], "interval": 1, "retries": 2},
    )
    attrs = docker_client.containers.get("full").attrs
    host = attrs["HostConfig"]
    assert attrs["Config"]["Cmd"] == ["sleep", "3600"]  # docker-py splits a string command
    assert "MODE=test" in attrs["Config"]["Env"]
    assert host["PortBindings"]["8080/tcp"][0]["HostIp"] == "127.0.0.1"
    assert host["PortBindings"]["9000/udp"][0]["HostPort"] == "9000"
    assert host["Binds"] == ["cfg:/cfg:ro"]
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 50
    assert host["CapDrop"] == ["NET_RAW"]
    assert attrs["Config"]["Healthcheck"]["Test"] == ["CMD", "true"]
    assert attrs["Config"]["WorkingDir"] == "/tmp"
    assert wait_for(
        lambda: cm_client.get(f"{API}/containers/full").json["health"] == "healthy",
        timeout=15,
        what="the health check to pass",
    )


def test_inspect_redacts_environment_values(cm_client: FlaskClient) -> None:
    create(cm_client, name="secret", command=SLEEPER, environment={"API_KEY": "hunter2"})
    response = cm_client.get(f"{API}/containers/secret")
    assert response.status_code == 200
    assert "hunter2" not in response.get_data(as_text=True)
    assert "API_KEY=<redacted>" in response.json["attrs"]["Config"]["Env"]


def test_bad_specs_are_422_and_create_nothing(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    bad = [
        {},
        run_spec(ports=["http"]),
        run_spec(ports=["70000:80"]),
        run_spec(volumes=["relative/path:/x"]),
        run_spec(volumes=["data:relative"]),
        run_spec(restart="sometimes"),
        run_spec(environment=["NOEQUALS"]),
        run_spec(command=[]),
        run_spec(mem_limit="lots"),
        run_spec(devices=["i2c"]),
        run_spec(name="bad name!"),
        run_spec(unknown_field=1),
    ]
    for body in bad:
        response = cm_client.post(f"{API}/containers", json=body)
        assert response.status_code == 422, (body, response.json)
        assert response.json["status"] == "Unprocessable Entity"
        assert response.json["errors"]
    assert not docker_client.containers.list(all=True)


def test_engine_refusals_keep_their_status(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    missing = cm_client.post(f"{API}/containers", json={"image": "nope/nothing:1"})
    assert missing.status_code == 404
    assert "nope/nothing" in missing.json["message"]

    create(cm_client, name="taken", command=SLEEPER)
    again = cm_client.post(f"{API}/containers", json=run_spec(name="taken", command=SLEEPER))
    assert again.status_code == 409
    assert "taken" in again.json["message"]

    running = cm_client.delete(f"{API}/containers/taken")
    assert running.status_code == 409
    assert cm_client.delete(f"{API}/containers/taken?force=true").status_code == 204

    for path in ("/containers/ghost", "/containers/ghost/stats", "/containers/ghost/logs"):
        response = cm_client.get(f"{API}{path}")
        assert response.status_code == 404, path
        assert response.json["message"]
    assert cm_client.post(f"{API}/containers/ghost/start").status_code == 404


def test_a_container_that_cannot_start_is_not_left_behind(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    create(cm_client, name="first", command=SLEEPER, ports=["127.0.0.1:18931:80"])
    clash = cm_client.post(
        f"{API}/containers",
        json=run_spec(name="second", command=SLEEPER, ports=["127.0.0.1:18931:80"]),
    )
    assert clash.status_code == 409
    assert "already allocated" in clash.json["message"]
    assert [c.name for c in docker_client.containers.list(all=True)] == ["first"]


def test_system_containers_cannot_be_changed(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    docker_client.containers.run(
        TEST_IMAGE, SLEEPER, name="pyedge-core", labels={"pyedge.system": "true"}, detach=True
    )
    listed = cm_client.get(f"{API}/containers").json
    assert listed[0]["system"] is True
    for verb in ("stop", "restart", "kill"):
        response = cm_client.post(f"{API}/containers/pyedge-core/{verb}")
        assert response.status_code == 403, verb
        assert "system container" in response.json["message"]
    assert cm_client.delete(f"{API}/containers/pyedge-core?force=true").status_code == 403
    assert docker_client.containers.get("pyedge-core").status == "running"


def test_stats_compute_cpu_from_deltas(cm_client: FlaskClient) -> None:
    create(cm_client, name="busy", command=["sh", "-c", "yes > /dev/null"])
    stats = cm_client.get(f"{API}/containers/busy/stats").json
    assert stats["cpu_percent"] is not None
    assert stats["cpu_percent"] > 10  # `yes` keeps a core busy
    assert stats["memory_bytes"] > 0
    assert stats["memory_limit_bytes"] > stats["memory_bytes"]
    assert stats["pids"] >= 1


def test_logs_tail_and_time_window(cm_client: FlaskClient) -> None:
    script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done; sleep 3600"
    create(cm_client, name="talker", command=["sh", "-c", script])
    lines = wait_for(
        lambda: (
            len(got := cm_client.get(f"{API}/containers/talker/logs").json["lines"]) == 10 and got
        ),
        what="ten lines",
    )
    assert {line["stream"] for line in lines} == {"stdout", "stderr"}
    assert [line["text"] for line in lines if line["stream"] == "stdout"] == [
        f"out{i}" for i in range(1, 6)
    ]
    assert "ts" not in lines[0]

    tail = cm_client.get(f"{API}/containers/talker/logs?tail=3&timestamps=true").json["lines"]
    assert len(tail) == 3
    assert all(line["ts"] for line in tail)
    assert [line["text"] for line in tail][-1] in ("out5", "err5")

    future = cm_client.get(f"{API}/containers/talker/logs?since=2100-01-01T00:00:00Z").json
    assert future["lines"] == []
    bad = cm_client.get(f"{API}/containers/talker/logs?tail=0")
    assert bad.status_code == 422


def test_images(cm_client: FlaskClient, docker_client: docker.DockerClient) -> None:
    images = cm_client.get(f"{API}/images").json
    busybox = next(image for image in images if TEST_IMAGE in image["tags"])
    assert busybox["size"] > 0
    assert busybox["containers"] == 0

    detail = cm_client.get(f"{API}/images/{TEST_IMAGE}").json
    assert detail["id"] == busybox["id"]
    assert detail["architecture"]

    # An image of its own: removing one of several tags would only untag it.
    docker_client.images.build(
        fileobj=_dockerfile(f"FROM {TEST_IMAGE}\nRUN echo own > /data/own\n"),
        tag="pyedge-test/copy:1",
    )
    create(cm_client, name="user", image="pyedge-test/copy:1", command=SLEEPER)
    in_use = cm_client.delete(f"{API}/images/pyedge-test/copy:1")
    assert in_use.status_code == 409
    assert in_use.json["message"]
    assert cm_client.get(f"{API}/images/pyedge-test/copy:1").json["containers"] == 1
    cm_client.delete(f"{API}/containers/user?force=true")
    assert cm_client.delete(f"{API}/images/pyedge-test/copy:1").status_code == 204
    assert cm_client.get(f"{API}/images/pyedge-test/copy:1").status_code == 404
    assert cm_client.get(f"{API}/images/{TEST_IMAGE}").status_code == 200


def test_image_prune_removes_dangling_images(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    docker_client.images.get(TEST_IMAGE).tag("pyedge-test/old", "1")
    build = docker_client.images.build(
        fileobj=_dockerfile(f"FROM {TEST_IMAGE}\nRUN echo one > /data/x\n"), tag="pyedge-test/old:1"
    )
    first = build[0].id
    docker_client.images.build(
        fileobj=_dockerfile(f"FROM {TEST_IMAGE}\nRUN echo two > /data/x\n"), tag="pyedge-test/old:1"
    )
    result = cm_client.post(f"{API}/images/prune").json
    assert first in result["deleted"]
    assert cm_client.get(f"{API}/images/{first}").status_code == 404
    assert cm_client.get(f"{API}/images/pyedge-test/old:1").status_code == 200


def _dockerfile(text: str) -> io.BytesIO:
    return io.BytesIO(text.encode())


def test_volumes(cm_client: FlaskClient, docker_client: docker.DockerClient) -> None:
    created = cm_client.post(f"{API}/volumes", json={"name": "store", "labels": {"x": "1"}})
    assert created.status_code == 201
    assert created.json["labels"] == {"x": "1", "pyedge.managed": "true"}
    assert "store" in [v["name"] for v in cm_client.get(f"{API}/volumes").json]
    create(cm_client, name="holder", command=SLEEPER, volumes=["store:/data"])
    assert cm_client.delete(f"{API}/volumes/store").status_code == 409
    cm_client.delete(f"{API}/containers/holder?force=true")
    assert cm_client.delete(f"{API}/volumes/store").status_code == 204
    assert cm_client.delete(f"{API}/volumes/store").status_code == 404
    assert cm_client.post(f"{API}/volumes", json={"name": "../x"}).status_code == 422
    forged = cm_client.post(f"{API}/volumes", json={"name": "v", "labels": {"pyedge.app": "a"}})
    assert forged.status_code == 422
    assert "reserved for PyEdge" in str(forged.json["errors"])
    docker_client.volumes.create("shop_data", labels={"pyedge.app": "shop"})
    owned = cm_client.delete(f"{API}/volumes/shop_data")
    assert owned.status_code == 409
    assert "belongs to app shop" in owned.json["message"]


def test_networks(cm_client: FlaskClient, docker_client: docker.DockerClient) -> None:
    created = cm_client.post(f"{API}/networks", json={"name": "plant", "internal": True})
    assert created.status_code == 201
    assert created.json["internal"] is True
    assert created.json["driver"] == "bridge"
    names = {n["name"] for n in cm_client.get(f"{API}/networks").json}
    assert {"bridge", "plant"} <= names
    assert cm_client.post(f"{API}/networks", json={"name": "plant"}).status_code == 409
    create(cm_client, name="member", command=SLEEPER, network_mode="plant")
    in_use = cm_client.delete(f"{API}/networks/plant")
    assert in_use.status_code == 409
    assert "active endpoints" in in_use.json["message"]
    cm_client.delete(f"{API}/containers/member?force=true")
    assert cm_client.delete(f"{API}/networks/plant").status_code == 204
    assert cm_client.delete(f"{API}/networks/bridge").status_code == 403
    forged = cm_client.post(f"{API}/networks", json={"name": "n", "labels": {"pyedge.x": "1"}})
    assert forged.status_code == 422
    docker_client.networks.create("pyedge-shop", labels={"pyedge.app": "shop"})
    assert cm_client.delete(f"{API}/networks/pyedge-shop").status_code == 409
