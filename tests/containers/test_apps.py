"""Apps against a real engine: apply, self-healing, crash-loop backoff, plan, policy, delete."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import docker
import pytest
from flask import Flask
from flask.testing import FlaskClient

from container_manager.apps import AppStore
from container_manager.reconciler import APPS, RECONCILER, Reconciler
from edge_server import create_app
from tests.conftest import authorized_client
from tests.containers.conftest import API, run_spec, wait_for
from tests.docker_engine import TEST_IMAGE, DockerEngine

# Stops at once on SIGTERM (a bare `sleep` as PID 1 ignores it and waits for the SIGKILL).
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


def shop_spec() -> dict[str, Any]:
    """Two services: web depends on db; db keeps its data in a named volume."""
    return {
        "services": {
            # Listed before its dependency on purpose: the order must come from depends_on.
            "web": run_spec(command=SLEEPER, depends_on=["db"], environment={"DB_HOST": "db"}),
            "db": run_spec(
                command=["sh", "-c", "echo started >> /data/log; " + SLEEPER[2]],
                volumes=["data:/data"],
            ),
        }
    }


def app_view(client: FlaskClient, name: str) -> dict[str, Any]:
    """GET /apps/<name>, which must answer 200."""
    response = client.get(f"{API}/apps/{name}")
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def running(client: FlaskClient, name: str) -> dict[str, Any] | None:
    """The app's view once every service is running, else None."""
    view = app_view(client, name)
    return view if view["status"] == "running" else None


def deploy(client: FlaskClient, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """PUT an app and wait until it runs; its view."""
    response = client.put(f"{API}/apps/{name}", json=spec)
    assert response.status_code in (200, 201), response.get_json()
    view: dict[str, Any] = wait_for(lambda: running(client, name), what=f"app {name} running")
    return view


def extra(app: Flask, key: str) -> Any:
    """One of the container-manager runtime's extras (its reconciler, its app store)."""
    return app.extensions["pyedge"].runtimes["container-manager"].extras[key]


def session_apps(client: FlaskClient) -> dict[str, Any]:
    """What the reconcile session last reported of each app."""
    apps: dict[str, Any] = client.get(f"{API}/ops/reconcile").get_json()["data"].get("apps") or {}
    return apps


def app_containers(docker_client: docker.DockerClient, name: str) -> list[Any]:
    """The engine's containers labelled as the app's."""
    return docker_client.containers.list(all=True, filters={"label": f"pyedge.app={name}"})


def test_apply_two_services(cm_client: FlaskClient, docker_client: docker.DockerClient) -> None:
    spec = shop_spec()
    response = cm_client.put(f"{API}/apps/shop", json=spec)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["name"] == "shop"
    assert body["generation"] == 1
    # As sent, no defaults filled in; environment values redacted (they hold secrets).
    web = {**spec["services"]["web"], "environment": {"DB_HOST": "<redacted>"}}
    assert body["spec"] == {"services": {**spec["services"], "web": web}}

    view = wait_for(lambda: running(cm_client, "shop"), what="shop running")
    assert "DB_HOST=db" in docker_client.containers.get("shop-web").attrs["Config"]["Env"]
    for service in ("web", "db"):
        state = view["services"][service]
        assert state["state"] == "running"
        assert state["status"] == "running"
        assert state["up_to_date"] is True
        assert state["desired_image"] == "pyedge-test/busybox:latest"
        assert state["image"] == "pyedge-test/busybox:latest"
        assert state["restart_count"] == 0
        assert state["container_name"] == f"shop-{service}"

    web = docker_client.containers.get("shop-web")
    db = docker_client.containers.get("shop-db")
    for container, service in ((web, "web"), (db, "db")):
        labels = container.labels
        assert labels["pyedge.managed"] == "true"
        assert labels["pyedge.app"] == "shop"
        assert labels["pyedge.service"] == service
        assert len(labels["pyedge.spec-hash"]) == 16
        # The reconciler restarts, with backoff; the engine must not race it.
        assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] in ("", "no")
        assert container.id == view["services"][service]["container_id"]
    assert db.attrs["Created"] <= web.attrs["Created"], "db (a dependency) comes first"

    network = docker_client.networks.get("pyedge-shop")
    assert network.attrs["Labels"] == {"pyedge.managed": "true", "pyedge.app": "shop"}
    endpoint = web.attrs["NetworkSettings"]["Networks"]["pyedge-shop"]
    assert "web" in endpoint["Aliases"], "services reach each other by name"

    volume = docker_client.volumes.get("shop_data")
    assert volume.attrs["Labels"] == {"pyedge.managed": "true", "pyedge.app": "shop"}
    mounts = {m["Destination"]: m for m in db.attrs["Mounts"]}
    assert mounts["/data"]["Name"] == "shop_data"

    listed = cm_client.get(f"{API}/apps").get_json()
    assert [app["name"] for app in listed] == ["shop"]
    assert listed[0]["status"] == "running"
    assert "spec" not in listed[0]

    # The same spec again changes nothing: no new generation, same containers.
    again = cm_client.put(f"{API}/apps/shop", json=spec)
    assert again.status_code == 200
    assert again.get_json()["generation"] == 1
    assert docker_client.containers.get("shop-web").id == web.id


def test_killed_container_comes_back(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    view = deploy(cm_client, "shop", shop_spec())
    web_id = view["services"]["web"]["container_id"]

    docker_client.containers.get("shop-web").kill()

    def restarted() -> dict[str, Any] | None:
        state = app_view(cm_client, "shop")["services"]["web"]
        return state if state["restart_count"] >= 1 and state["state"] == "running" else None

    state = wait_for(restarted, timeout=15, what="web restarted by the reconciler")
    assert state["container_id"] == web_id, "restarted, not recreated"
    assert docker_client.containers.get("shop-web").status == "running"
    session = cm_client.get(f"{API}/ops/reconcile").get_json()
    assert session["state"] == "running"


def test_crash_loop_backs_off_and_degrades(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    spec = {"services": {"crash": run_spec(command=["sh", "-c", "exit 3"], restart="always")}}
    assert cm_client.put(f"{API}/apps/loop", json=spec).status_code == 201
    seen: list[tuple[int, float]] = []

    def degraded() -> dict[str, Any] | None:
        state = app_view(cm_client, "loop")["services"]["crash"]
        if state["failures"]:
            seen.append((state["failures"], state["backoff"]))
        return state if state["status"] == "degraded" else None

    state = wait_for(degraded, timeout=30, what="the crash-looping service degraded")
    assert state["failures"] >= 3
    assert state["exit_code"] == 3
    # Each crash doubles the wait: 1 s, 2 s, 4 s, ...
    assert all(backoff == 2.0 ** (failures - 1) for failures, backoff in seen), seen
    assert {1, 2, 3} <= {failures for failures, _ in seen}, seen
    assert state["restart_count"] >= 2

    view = app_view(cm_client, "loop")
    assert view["status"] == "degraded"

    health = cm_client.get("/api/health")
    assert health.status_code == 503
    service_health = health.get_json()["services"]["container-manager"]
    assert service_health["status"] == "degraded"
    assert "loop/crash" in service_health["detail"]

    def reported() -> dict[str, Any] | None:
        data = cm_client.get(f"{API}/ops/reconcile").get_json()["data"]
        app = data.get("apps", {}).get("loop")
        return app if app and app["degraded"] == ["crash"] else None

    app = wait_for(reported, what="the session reporting the degraded service")
    assert app["status"] == "degraded"


def test_one_shot_service_is_not_restarted(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    spec = {"services": {"job": run_spec(command=["true"], restart="on-failure")}}
    assert cm_client.put(f"{API}/apps/batch", json=spec).status_code == 201

    def stopped() -> dict[str, Any] | None:
        view = app_view(cm_client, "batch")
        return view if view["status"] == "stopped" else None

    view = wait_for(stopped, what="the one-shot app stopped")
    state = view["services"]["job"]
    assert state["status"] == "exited"
    assert state["exit_code"] == 0
    assert state["restart_count"] == 0


def test_plan_lists_recreate_for_the_changed_service_only(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    fresh = cm_client.post(f"{API}/apps/shop/plan", json=shop_spec())
    assert fresh.status_code == 200, fresh.get_json()
    steps = fresh.get_json()["steps"]
    targets = [s.get("service") or s.get("network") or s.get("volume") for s in steps]
    assert list(zip((s["action"] for s in steps), targets, strict=True)) == [
        ("create_network", "pyedge-shop"),
        ("create_volume", "shop_data"),
        ("create", "db"),
        ("create", "web"),
    ]
    assert app_containers(docker_client, "shop") == [], "a plan changes nothing"

    view = deploy(cm_client, "shop", shop_spec())
    ids = {name: state["container_id"] for name, state in view["services"].items()}

    changed = shop_spec()
    changed["services"]["web"]["environment"] = {"DB_HOST": "db", "MODE": "test"}
    response = cm_client.post(f"{API}/apps/shop/plan", json=changed)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["app"] == "shop"
    assert body["violations"] == []
    assert body["conflicts"] == []
    assert [(s["action"], s["service"]) for s in body["steps"]] == [("recreate", "web")]
    assert body["steps"][0]["reason"] == "the spec changed"

    after = app_view(cm_client, "shop")
    assert after["generation"] == 1
    assert after["spec"]["services"]["web"]["environment"] == {"DB_HOST": "<redacted>"}
    assert {name: s["container_id"] for name, s in after["services"].items()} == ids

    # Applied, it recreates web alone.
    assert cm_client.put(f"{API}/apps/shop", json=changed).status_code == 200

    def recreated() -> dict[str, Any] | None:
        view = running(cm_client, "shop")
        ok = view and view["services"]["web"]["container_id"] != ids["web"]
        return view if ok else None

    view = wait_for(recreated, what="web recreated")
    assert view["generation"] == 2
    assert view["services"]["db"]["container_id"] == ids["db"]
    env = docker_client.containers.get("shop-web").attrs["Config"]["Env"]
    assert "MODE=test" in env


def test_service_dropped_from_the_spec_is_removed(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    view = deploy(cm_client, "shop", shop_spec())
    smaller = shop_spec()
    del smaller["services"]["web"]

    plan = cm_client.post(f"{API}/apps/shop/plan", json=smaller).get_json()
    assert [(s["action"], s["container"]) for s in plan["steps"]] == [("remove", "shop-web")]

    assert cm_client.put(f"{API}/apps/shop", json=smaller).status_code == 200
    wait_for(
        lambda: [c.name for c in app_containers(docker_client, "shop")] == ["shop-db"],
        what="shop-web removed",
    )
    after = wait_for(lambda: running(cm_client, "shop"), what="shop running")
    assert list(after["services"]) == ["db"]
    assert after["services"]["db"]["container_id"] == view["services"]["db"]["container_id"]


def test_denied_spec_is_listed_by_plan_and_refused_by_put(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    spec = {
        "services": {
            "root": run_spec(command=SLEEPER, privileged=True),
            "etc": run_spec(command=SLEEPER, volumes=["/etc:/host-etc:ro"]),
            "fine": run_spec(command=SLEEPER),
        }
    }
    response = cm_client.post(f"{API}/apps/bad/plan", json=spec)
    assert response.status_code == 200
    fields = {v["field"] for v in response.get_json()["violations"]}
    assert fields == {"services.root.privileged", "services.etc.volumes"}

    response = cm_client.put(f"{API}/apps/bad", json=spec)
    assert response.status_code == 403
    body = response.get_json()
    assert {v["field"] for v in body["errors"]["violations"]} == fields
    assert "privileged" in body["message"]

    assert cm_client.get(f"{API}/apps/bad").status_code == 404
    assert cm_client.get(f"{API}/apps").get_json() == []
    assert docker_client.containers.list(all=True) == []
    assert [n.name for n in docker_client.networks.list(names=["pyedge-bad"])] == []


def test_stored_spec_the_policy_now_denies_is_not_run(
    cm_config: dict[str, Any], cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    # Stored by a node whose settings granted privileged containers, on the same data dir.
    granting = create_app(
        {
            **cm_config,
            "EDGE_NODE_ID": f"{cm_config['EDGE_NODE_ID']}-granting",
            "EDGE_CONTAINER_MANAGER_ALLOW_PRIVILEGED": True,
            "EDGE_CONTAINER_MANAGER_RECONCILE_AUTOSTART": False,
        }
    )
    try:
        spec = {"services": {"main": run_spec(command=SLEEPER, privileged=True)}}
        response = authorized_client(granting).put(f"{API}/apps/root", json=spec)
        assert response.status_code == 201, response.get_json()
    finally:
        granting.extensions["pyedge"].close()

    # This node's policy denies it: the reconciler creates nothing and says why.
    def denied() -> dict[str, Any] | None:
        view = app_view(cm_client, "root")
        last_error = view["services"]["main"]["last_error"] or ""
        return view if "denied by the security policy" in last_error else None

    view = wait_for(denied, what="the reconciler refusing the stored spec")
    assert view["status"] == "degraded"
    assert view["services"]["main"]["status"] == "denied"
    assert docker_client.containers.list(all=True) == []

    # The health is the last pass's, which may not have ended yet.
    def unhealthy() -> dict[str, Any] | None:
        health = cm_client.get("/api/health").get_json()["services"]["container-manager"]
        return health if health["status"] == "degraded" else None

    health = wait_for(unhealthy, what="the health degraded by the denied service")
    assert "root/main" in health["detail"]


def test_unmanaged_container_conflicts_unless_forced(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    theirs = docker_client.containers.run(
        "pyedge-test/busybox:latest", SLEEPER, name="solo-main", detach=True
    )
    spec = {"services": {"main": run_spec(command=SLEEPER)}}

    plan = cm_client.post(f"{API}/apps/solo/plan", json=spec).get_json()
    assert [c["container"] for c in plan["conflicts"]] == ["solo-main"]
    assert plan["conflicts"][0]["forceable"] is True
    assert [s["action"] for s in plan["steps"]] == ["create_network"]

    response = cm_client.put(f"{API}/apps/solo", json=spec)
    assert response.status_code == 409
    conflicts = response.get_json()["errors"]["conflicts"]
    assert [(c["container"], c["id"]) for c in conflicts] == [("solo-main", theirs.id)]
    assert cm_client.get(f"{API}/apps/solo").status_code == 404
    theirs.reload()
    assert theirs.status == "running", "a container PyEdge did not create is left alone"

    forced = cm_client.post(f"{API}/apps/solo/plan?force=true", json=spec).get_json()
    assert [(s["action"], s.get("container")) for s in forced["steps"]] == [
        ("create_network", None),
        ("recreate", "solo-main"),
    ]

    response = cm_client.put(f"{API}/apps/solo?force=true", json=spec)
    assert response.status_code == 201, response.get_json()
    view = wait_for(lambda: running(cm_client, "solo"), what="solo running")
    ours = docker_client.containers.get("solo-main")
    assert ours.id != theirs.id
    assert ours.labels["pyedge.app"] == "solo"
    assert view["services"]["main"]["container_id"] == ours.id


def test_container_of_another_app_is_never_forced(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    # a + b-c and a-b + c both name their container a-b-c.
    deploy(cm_client, "a", {"services": {"b-c": run_spec(command=SLEEPER)}})
    response = cm_client.put(
        f"{API}/apps/a-b?force=true", json={"services": {"c": run_spec(command=SLEEPER)}}
    )
    assert response.status_code == 409
    conflict = response.get_json()["errors"]["conflicts"][0]
    assert conflict["forceable"] is False
    assert conflict["reason"] == "it belongs to app 'a'"


def test_delete_keeps_volumes_unless_asked(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    deploy(cm_client, "shop", shop_spec())

    response = cm_client.delete(f"{API}/apps/shop")
    assert response.status_code == 204
    assert app_containers(docker_client, "shop") == []
    assert docker_client.networks.list(names=["pyedge-shop"]) == []
    assert docker_client.volumes.get("shop_data").name == "shop_data"
    assert cm_client.get(f"{API}/apps/shop").status_code == 404
    assert cm_client.get(f"{API}/apps").get_json() == []
    assert cm_client.delete(f"{API}/apps/shop").status_code == 404

    # Deployed again, db finds its data: its log has a line from each run.
    deploy(cm_client, "shop", shop_spec())
    log = docker_client.containers.get("shop-db").exec_run(["cat", "/data/log"]).output
    assert log.decode().split() == ["started", "started"]

    assert cm_client.delete(f"{API}/apps/shop?volumes=true").status_code == 204
    assert [v.name for v in docker_client.volumes.list()] == []
    assert app_containers(docker_client, "shop") == []


def _cycle() -> dict[str, Any]:
    return {
        "services": {
            "a": run_spec(depends_on=["b"]),
            "b": run_spec(depends_on=["c"]),
            "c": run_spec(depends_on=["a"]),
        }
    }


@pytest.mark.parametrize(
    ("name", "spec", "where"),
    [
        ("ok", _cycle(), "dependency cycle: a -> b -> c -> a"),
        ("ok", {"services": {"a": run_spec(depends_on=["a"])}}, "dependency cycle: a -> a"),
        ("ok", {"services": {"a": run_spec(depends_on=["nope"])}}, "'nope' is not a service"),
        ("Bad_Name", {"services": {"a": run_spec()}}, "not an app name"),
        ("ok", {"services": {"Web": run_spec()}}, "lowercase letters"),
        ("ok", {"services": {}}, "at least one service"),
        ("ok", {"services": {"a": run_spec(build=".")}}, "Unknown field"),
        ("ok", {"services": {"a": {"command": "true"}}}, "required"),
    ],
)
def test_invalid_specs_are_422(
    cm_client: FlaskClient,
    docker_client: docker.DockerClient,
    name: str,
    spec: dict[str, Any],
    where: str,
) -> None:
    for response in (
        cm_client.put(f"{API}/apps/{name}", json=spec),
        cm_client.post(f"{API}/apps/{name}/plan", json=spec),
    ):
        assert response.status_code == 422, response.get_json()
        assert where in str(response.get_json()["errors"])
    assert cm_client.get(f"{API}/apps").get_json() == []
    assert docker_client.containers.list(all=True) == []


def test_reconciler_survives_store_changes_and_stops_cleanly(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    one = {"services": {"main": run_spec(command=SLEEPER)}}
    assert cm_client.put(f"{API}/apps/one", json=one).status_code == 201
    changed = copy.deepcopy(one)
    changed["services"]["main"]["environment"] = {"V": "2"}
    # Changed, added and removed while passes run: each lands between two steps.
    assert cm_client.put(f"{API}/apps/one", json=changed).status_code == 200
    assert cm_client.put(f"{API}/apps/two", json=one).status_code == 201
    assert cm_client.delete(f"{API}/apps/one").status_code == 204
    assert cm_client.put(f"{API}/apps/one", json=changed).status_code == 201

    wait_for(lambda: running(cm_client, "one") and running(cm_client, "two"), what="both running")
    assert "V=2" in docker_client.containers.get("one-main").attrs["Config"]["Env"]
    assert len(docker_client.containers.list(all=True)) == 2, "nothing left over"
    session = cm_client.get(f"{API}/ops/reconcile").get_json()
    assert session["state"] == "running"

    def reported() -> dict[str, Any] | None:
        apps: dict[str, Any] | None = (
            cm_client.get(f"{API}/ops/reconcile").get_json()["data"].get("apps")
        )
        return apps if apps and set(apps) == {"one", "two"} else None

    wait_for(reported, what="both apps reported by the session")

    stopped = cm_client.post(f"{API}/ops/reconcile/stop")
    assert stopped.status_code == 200
    done = cm_client.post(f"{API}/ops/reconcile/wait?timeout=20").get_json()
    assert done["state"] == "done"
    assert done["success"] is True
    health = cm_client.get("/api/health").get_json()["services"]["container-manager"]
    assert "reconcile" not in health["detail"]

    # Started again, it restarts what died while it was stopped.
    docker_client.containers.get("two-main").kill()
    assert cm_client.post(f"{API}/ops/reconcile/start", json={}).status_code == 202
    wait_for(lambda: running(cm_client, "two"), what="two restarted after the reconciler's restart")


def test_reconciler_waits_out_the_engine(
    cm_client: FlaskClient, docker_client: docker.DockerClient, docker_engine: DockerEngine
) -> None:
    deploy(cm_client, "shop", shop_spec())
    docker_engine.stop()
    try:

        def failing() -> bool:
            messages = cm_client.get(f"{API}/ops/reconcile").get_json()["messages"]
            return any("pass failed" in m["text"] for m in messages)

        wait_for(failing, what="a pass failing on the missing engine")
        health = cm_client.get("/api/health").get_json()["services"]["container-manager"]
        assert health["status"] == "degraded"
        assert cm_client.get(f"{API}/ops/reconcile").get_json()["state"] == "running"
    finally:
        docker_engine.start()
    # The engine stopped the containers with it; the reconciler starts them again.
    view = wait_for(lambda: running(cm_client, "shop"), timeout=30, what="shop back")
    assert all(s["restart_count"] >= 1 for s in view["services"].values())

    def recovered() -> dict[str, Any] | None:
        session: dict[str, Any] = cm_client.get(f"{API}/ops/reconcile").get_json()
        ok = any("succeed again" in m["text"] for m in session["messages"])
        return session if ok else None

    # The pass that started the containers says so when it ends, maybe after this GET.
    assert wait_for(recovered, what="the session noting the recovery")["state"] == "running"


def test_a_command_docker_py_cannot_split_is_422(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    # docker-py splits a string command with shlex before any request; an unclosed quote
    # would be its ValueError inside a reconcile pass. The schema refuses it up front.
    broken = {"services": {"main": run_spec(command="sh -c 'sleep 3600", restart="always")}}
    response = cm_client.put(f"{API}/apps/a-broken", json=broken)
    assert response.status_code == 422
    assert "No closing quotation" in str(response.get_json()["errors"])
    assert cm_client.get(f"{API}/apps/a-broken").status_code == 404
    assert not docker_client.containers.list(all=True)


def test_a_stored_spec_no_longer_valid_degrades_its_app_alone(
    cm_app: Flask,
    cm_client: FlaskClient,
    docker_client: docker.DockerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="container_manager.reconciler")
    # As after an upgrade whose schema no longer knows a field: stored straight away.
    store: AppStore = extra(cm_app, APPS)
    store.put("a-old", {"services": {"main": run_spec(command=SLEEPER, retired_field=1)}})
    extra(cm_app, RECONCILER).wake.set()
    deploy(cm_client, "b-new", {"services": {"main": run_spec(command=SLEEPER)}})

    def reported() -> dict[str, Any] | None:
        app = session_apps(cm_client).get("a-old")
        return app if app and app["status"] == "degraded" else None

    app = wait_for(reported, what="the session reporting the invalid app")
    assert "the stored spec is no longer valid" in app["error"]
    assert "retired_field" in app["error"]
    view = app_view(cm_client, "a-old")
    assert view["status"] == "degraded"
    assert "retired_field" in view["error"]
    assert app_containers(docker_client, "a-old") == []
    time.sleep(1.0)  # three more passes
    assert cm_client.get(f"{API}/ops/reconcile").get_json()["state"] == "running"
    logged = [r for r in caplog.records if "stored spec is no longer valid" in r.getMessage()]
    assert len(logged) == 1, "logged once, not on each pass"
    assert running(cm_client, "b-new")


def test_unmanaged_network_and_volume_conflict_unless_forced_then_are_adopted(
    cm_app: Flask, cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    theirs_network = docker_client.networks.create("pyedge-keep", driver="bridge")
    docker_client.volumes.create("keep_data")
    docker_client.containers.run(
        TEST_IMAGE,
        ["sh", "-c", "echo precious > /data/file"],
        volumes={"keep_data": {"bind": "/data", "mode": "rw"}},
        remove=True,
    )
    spec = {"services": {"main": run_spec(command=SLEEPER, volumes=["data:/data", "cache:/c"])}}
    expected = [
        {
            "network": "pyedge-keep",
            "reason": "a network PyEdge did not create has this name",
            "forceable": True,
        },
        {
            "volume": "keep_data",
            "reason": "a volume PyEdge did not create has this name",
            "forceable": True,
        },
    ]

    plan = cm_client.post(f"{API}/apps/keep/plan", json=spec).get_json()
    assert plan["conflicts"] == expected
    assert [(s["action"], s.get("volume")) for s in plan["steps"]] == [
        ("create_volume", "keep_cache")
    ], "nothing may use them: the service is not created"
    response = cm_client.put(f"{API}/apps/keep", json=spec)
    assert response.status_code == 409, response.get_json()
    assert response.get_json()["errors"]["conflicts"] == expected
    assert cm_client.get(f"{API}/apps/keep").status_code == 404

    forced = cm_client.post(f"{API}/apps/keep/plan?force=true", json=spec).get_json()
    assert forced["conflicts"] == expected
    assert [s["action"] for s in forced["steps"]] == ["create_volume", "create"]
    response = cm_client.put(f"{API}/apps/keep?force=true", json=spec)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["adopted"] == ["keep_data", "pyedge-keep"]
    wait_for(lambda: running(cm_client, "keep"), what="keep running on what it adopted")
    container = docker_client.containers.get("keep-main")
    networks = container.attrs["NetworkSettings"]["Networks"]
    assert networks["pyedge-keep"]["NetworkID"] == theirs_network.id
    assert container.exec_run(["cat", "/data/file"]).output == b"precious\n"

    # Adopted for good: the same spec again, without force, is fine; so is its plan.
    again = cm_client.put(f"{API}/apps/keep", json=spec)
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["adopted"] == ["keep_data", "pyedge-keep"]
    assert cm_client.post(f"{API}/apps/keep/plan", json=spec).get_json()["conflicts"] == []

    # Removed with its volumes: only those the app created go; adopted data stays.
    assert cm_client.delete(f"{API}/apps/keep?volumes=true").status_code == 204
    assert [v.name for v in docker_client.volumes.list()] == ["keep_data"]
    assert [n.name for n in docker_client.networks.list(names=["pyedge-keep"])] == ["pyedge-keep"]
    log = docker_client.containers.run(
        TEST_IMAGE, ["cat", "/data/file"], volumes={"keep_data": {"bind": "/data"}}, remove=True
    )
    assert log == b"precious\n"

    # A stored spec (no PUT checked it) whose volume is in the way: nothing uses it.
    docker_client.volumes.create("raw_data")
    store: AppStore = extra(cm_app, APPS)
    store.put("raw", {"services": {"main": run_spec(command=SLEEPER, volumes=["data:/d"])}})
    extra(cm_app, RECONCILER).wake.set()

    def blocked() -> dict[str, Any] | None:
        state = session_apps(cm_client).get("raw", {}).get("services", {}).get("main")
        return state if state and state["status"] == "conflict" else None

    wait_for(blocked, what="the stored app's service blocked by the volume")
    state = app_view(cm_client, "raw")["services"]["main"]
    assert state["last_error"] == "volume raw_data: a volume PyEdge did not create has this name"
    assert app_containers(docker_client, "raw") == []
    assert docker_client.containers.list(all=True, filters={"name": "raw-main"}) == []


def test_network_or_volume_of_another_app_or_the_system_is_never_forced(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    # App a's volume b_c and app a_b's volume c are both the engine volume a_b_c.
    deploy(cm_client, "a", {"services": {"main": run_spec(command=SLEEPER, volumes=["b_c:/d"])}})
    response = cm_client.put(
        f"{API}/apps/a_b?force=true",
        json={"services": {"main": run_spec(command=SLEEPER, volumes=["c:/d"])}},
    )
    assert response.status_code == 409, response.get_json()
    assert response.get_json()["errors"]["conflicts"] == [
        {"volume": "a_b_c", "reason": "it belongs to app 'a'", "forceable": False}
    ]

    docker_client.networks.create("pyedge-sys", labels={"pyedge.system": "true"})
    response = cm_client.put(
        f"{API}/apps/sys?force=true", json={"services": {"main": run_spec(command=SLEEPER)}}
    )
    assert response.status_code == 409, response.get_json()
    assert response.get_json()["errors"]["conflicts"] == [
        {"network": "pyedge-sys", "reason": "it is a PyEdge system network", "forceable": False}
    ]
    assert [a["name"] for a in cm_client.get(f"{API}/apps").get_json()] == ["a"]


def test_running_service_the_policy_now_denies_is_stopped_not_removed(
    cm_config: dict[str, Any], docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    spec = {
        "services": {
            "files": run_spec(command=SLEEPER, volumes=[f"{shared}:/shared"]),
            "other": run_spec(command=SLEEPER),
        }
    }
    # Deployed while the node granted the directory...
    granting = create_app({**cm_config, "EDGE_CONTAINER_MANAGER_BIND_DIRS": str(shared)})
    try:
        deployed = deploy(authorized_client(granting), "files", spec)
    finally:
        granting.extensions["pyedge"].close()
    ids = {name: state["container_id"] for name, state in deployed["services"].items()}

    # ... then the service restarted without the grant, on the same data directory.
    plain = create_app(cm_config)
    try:
        client = authorized_client(plain)

        def stopped() -> dict[str, Any] | None:
            view = app_view(client, "files")
            return view if view["services"]["files"]["state"] == "exited" else None

        view = wait_for(stopped, what="the denied service stopped")
        files = view["services"]["files"]
        assert files["status"] == "denied"
        assert files["last_error"] == (
            "denied by the security policy: services.files.volumes: bind mount of "
            f"{shared.resolve()}:"
            " only named volumes and the granted host directories"
        )
        assert files["container_id"] == ids["files"], "stopped, not removed"
        assert view["services"]["other"]["status"] == "running"
        assert view["services"]["other"]["container_id"] == ids["other"]
        assert view["status"] == "degraded"

        # Later passes leave it stopped, although its restart policy says always.
        started = docker_client.containers.get("files-files").attrs["State"]["StartedAt"]
        time.sleep(1.0)
        container = docker_client.containers.get("files-files")
        assert container.status == "exited"
        assert container.attrs["State"]["StartedAt"] == started
        assert app_view(client, "files")["services"]["files"]["restart_count"] == 0
        plan = client.post(f"{API}/apps/files/plan", json=spec).get_json()
        assert plan["steps"] == []
        assert [v["field"] for v in plan["violations"]] == ["services.files.volumes"]
    finally:
        plain.extensions["pyedge"].close()


def test_a_restart_is_checked_against_the_policy_first(
    cm_config: dict[str, Any], docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    app = create_app({**cm_config, "EDGE_CONTAINER_MANAGER_BIND_DIRS": str(shared)})
    try:
        client = authorized_client(app)
        spec = {"services": {"main": run_spec(command=SLEEPER, volumes=[f"{shared}:/x"])}}
        deploy(client, "linked", spec)
        assert client.post(f"{API}/ops/reconcile/stop").status_code == 200
        done = client.post(f"{API}/ops/reconcile/wait?timeout=20").get_json()
        assert done["state"] == "done"

        # While nobody reconciles, it dies and its granted directory becomes a link to
        # /etc: the engine would mount /etc at the restart.
        docker_client.containers.get("linked-main").kill()
        shared.rename(tmp_path / "moved")
        shared.symlink_to("/etc")
        assert client.post(f"{API}/ops/reconcile/start", json={}).status_code == 202

        def denied() -> dict[str, Any] | None:
            state = session_apps(client).get("linked", {}).get("services", {}).get("main")
            return state if state and state["status"] == "denied" else None

        wait_for(denied, what="a pass finding the restart denied")
        time.sleep(1.0)  # three more passes
        container = docker_client.containers.get("linked-main")
        assert container.status == "exited"
        assert container.attrs["State"]["ExitCode"] == 137, "killed, never started again"
        state = app_view(client, "linked")["services"]["main"]
        assert state["restart_count"] == 0
        assert "goes through a symlink (to /etc)" in state["last_error"]
    finally:
        app.extensions["pyedge"].close()


def test_put_again_retries_a_crash_looping_service_at_once(
    cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    # It needs a file that is not there yet: it crash-loops until someone adds it.
    command = ["sh", "-c", "test -e /data/ok || exit 3; " + SLEEPER[2]]
    spec = {"services": {"main": run_spec(command=command, volumes=["data:/data"])}}
    assert cm_client.put(f"{API}/apps/fix", json=spec).status_code == 201

    def backing_off() -> dict[str, Any] | None:
        state = app_view(cm_client, "fix")["services"]["main"]
        return state if state["failures"] >= 3 else None

    state = wait_for(backing_off, what="the service backing off")
    assert state["backoff"] >= 4.0
    # Mended outside the spec; the user applies the same spec again.
    docker_client.containers.run(
        TEST_IMAGE,
        ["sh", "-c", "echo > /data/ok"],
        volumes={"fix_data": {"bind": "/data", "mode": "rw"}},
        remove=True,
    )
    began = time.monotonic()
    response = cm_client.put(f"{API}/apps/fix", json=spec)
    assert response.status_code == 200
    assert response.get_json()["generation"] == 1
    assert response.get_json()["services"]["main"]["failures"] == 0
    assert response.get_json()["services"]["main"]["backoff"] == 0

    view = wait_for(lambda: running(cm_client, "fix"), timeout=2.5, what="fix restarted at once")
    assert time.monotonic() - began < 2.5, "not after the 4 s backoff"
    assert view["services"]["main"]["status"] == "running"
    assert docker_client.containers.get("fix-main").status == "running"


def test_app_locks_do_not_pile_up(
    cm_app: Flask, cm_client: FlaskClient, docker_client: docker.DockerClient
) -> None:
    reconciler: Reconciler = extra(cm_app, RECONCILER)
    deploy(cm_client, "brief", {"services": {"main": run_spec(command=SLEEPER)}})
    assert cm_client.delete(f"{API}/apps/brief").status_code == 204
    # A pass that listed brief before the DELETE may still wait for its lock, briefly.
    wait_for(lambda: reconciler.locked_apps() == 0, timeout=5, what="no app lock kept")
    for index in range(50):
        assert cm_client.delete(f"{API}/apps/nope-{index}").status_code == 404
    assert reconciler.locked_apps() == 0, "no app is stored: no pass holds one"
