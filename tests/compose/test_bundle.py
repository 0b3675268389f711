"""The compose bundle on a real Docker engine: the repository's docker-compose.yml, unchanged,
with images built locally from the Dockerfile (see tests/compose/images.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from prometheus_client.parser import text_string_to_metric_families

from tests.compose.bundle import (
    COMPOSE_FILE,
    RPI_FILE,
    SERVICES,
    Bundle,
    compose_v1,
    services,
    wait_for,
)
from tests.compose.conftest import FIGURES, bundle_settings
from tests.device.persistent_subscriber import PersistentSubscriber, account
from tests.docker_engine import DockerEngine
from tests.media.conftest import make_tone

pytestmark = pytest.mark.timeout(600)

NODE = "ci-pi"
PROTECTED_ACTIONS = ("stop", "restart", "kill")
# A simulated sensor of the pc default set, sampled every few seconds.
SENSOR = "room_temperature"
OUTAGE_S = 12


def subscriber_login(bundle: Bundle) -> dict[str, str]:
    """The read-only broker login, as the README shows a user getting it."""
    login: dict[str, str] = json.loads(
        # As the image's user: the container's root has no capability to read its files.
        bundle.exec("mqtt", "pyedge", "mqtt", "credentials", "subscriber", "--json", user="pyedge")
    )
    return login


@pytest.fixture(scope="module")
def readings(bundle: Bundle) -> Iterator[PersistentSubscriber]:
    """A persistent-session QoS 1 subscriber on the host, for the whole module."""
    login = subscriber_login(bundle)
    subscriber = PersistentSubscriber(
        "127.0.0.1",
        int(bundle.settings["MQTT_PORT"]),
        "ci-host-subscriber",
        f"pyedge/{NODE}/device-service/sensors/#",
        username=login["username"],
        password=login["password"],
    )
    yield subscriber
    subscriber.close()


def test_the_file_is_valid_for_compose_v2_and_docker_compose_1_29(
    compose_engine: DockerEngine, tmp_path: Any
) -> None:
    bundle = Bundle(
        compose_engine.url, compose_engine.socket, tmp_path, "pyedge-config",
        bundle_settings(compose_engine),
    )  # fmt: skip
    bundle.write_env()
    assert compose_v1(), "docker-compose 1.29 is not installed (make test installs it)"
    for v1 in (False, True):
        for files in ((COMPOSE_FILE,), (COMPOSE_FILE, RPI_FILE)):
            result = bundle.compose("config", v1=v1, files=files)
            assert "pyedge.system" in result.stdout
            assert "privileged" not in result.stdout
    # The Pi's override adds the devices and groups, to the device-service only.
    merged = bundle.compose("config", files=(COMPOSE_FILE, RPI_FILE)).stdout
    for device in ("/dev/i2c-1", "/dev/gpiomem", "/dev/gpiochip0"):
        assert device in merged


def test_the_image_runs_as_a_user_with_a_health_check_and_no_compiler(
    compose_engine: DockerEngine, pc_image: str
) -> None:
    docker = ["docker", "--host", compose_engine.url]
    inspect = [*docker, "image", "inspect", "--format", "{{json .Config}}", pc_image]
    config = json.loads(subprocess.run(inspect, capture_output=True, text=True, check=True).stdout)
    assert config["User"] == "pyedge"
    assert config["Healthcheck"]["Test"][-4:] == ["python", "-I", "-m", "edge_server.healthcheck"]
    assert "EDGE_MACHINE_TYPE=pc_linux" in config["Env"]
    assert config["Entrypoint"] == ["pyedge"]
    found = subprocess.run(
        [*docker, "run", "--rm", "--entrypoint", "sh", pc_image, "-c",
         "id -u; command -v gcc cc || echo no-compiler; pyedge --version"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    assert found == ["1000", "no-compiler", "pyedge", "0.1.0"]


def test_every_container_is_healthy_restarts_itself_and_rotates_its_log(bundle: Bundle) -> None:
    assert set(bundle.health().values()) == {"healthy"}
    for service in SERVICES:
        host = json.loads(
            bundle.docker("inspect", "--format", "{{json .HostConfig}}", bundle.container(service))
        )
        assert host["RestartPolicy"]["Name"] == "unless-stopped"
        assert host["LogConfig"] == {
            "Type": "json-file",
            "Config": {"max-file": "3", "max-size": "10m"},
        }
        assert not host["Privileged"]
        # Only the container-manager gets the Docker socket.
        mounts = json.loads(
            bundle.docker("inspect", "--format", "{{json .Mounts}}", bundle.container(service))
        )
        has_socket = any(mount["Destination"] == "/var/run/docker.sock" for mount in mounts)
        assert has_socket == (service == "container-manager"), service
    # Idle memory per container, once the start-up work is over.
    time.sleep(10)
    stats = bundle.docker("stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}")
    memory = {}
    for line in stats.splitlines():
        name, usage = line.split("\t")
        for service in SERVICES:
            if name.startswith(f"{bundle.project}-{service}-"):
                memory[service] = usage.split(" / ")[0]
    assert set(memory) == set(SERVICES)
    FIGURES["idle_memory"] = memory


def test_the_setup_code_is_in_the_edge_servers_log_alone(bundle: Bundle) -> None:
    assert "one-time setup code" in bundle.logs("edge-server")
    # The services take their callers from the edge-server: no code of their own to confuse.
    for service in ("device-service", "container-manager", "custom-service"):
        assert "setup code" not in bundle.logs(service), service


def test_every_service_is_online_and_remote(bundle: Bundle, admin_token: str) -> None:
    tree = wait_for(
        "every service announced",
        lambda: (t := services(bundle, admin_token)) and len(t) == len(SERVICES) - 2 and t,
    )
    # Every service but the broker and the edge-server itself.
    assert set(tree) == set(SERVICES) - {"mqtt", "edge-server"}
    for slug, entry in tree.items():
        assert entry["mode"] == "remote", slug
        assert entry["node"] == NODE, slug
        assert entry["health"]["status"] == "ok", (slug, entry["health"])
        assert entry["url"] == f"/api/{slug}", slug
    health = bundle.api("GET", "/api/health", admin_token).json()
    assert health["status"] == "ok"
    assert health["mqtt"]["status"] == "connected"


def test_a_reading_reaches_a_subscriber_on_the_host(
    bundle: Bundle, readings: PersistentSubscriber
) -> None:
    wait_for("a reading on the host", lambda: readings.received(SENSOR), timeout=30)
    # The subscriber account may only read.
    login = subscriber_login(bundle)
    refused: list[Any] = []
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="ci-writer", protocol=MQTTProtocolVersion.MQTTv5
    )
    client.username_pw_set(login["username"], login["password"])
    client.on_publish = lambda *args: refused.append(args[3])
    client.connect("127.0.0.1", int(bundle.settings["MQTT_PORT"]))
    client.loop_start()
    try:
        client.publish(
            f"pyedge/{NODE}/device-service/sensors/{SENSOR}", "{}", qos=1
        ).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()
    assert refused and refused[0].is_failure, refused  # MQTT 5: "not authorized"


def test_the_edge_servers_metrics_include_the_device_services_readings(
    bundle: Bundle, admin_token: str
) -> None:
    def published() -> bool:
        answer = bundle.api("GET", "/metrics", admin_token)
        assert answer.status_code == 200, answer.text
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(answer.text):
            for sample in family.samples:
                if (sample.labels.get("node"), sample.labels.get("process")) == (
                    NODE,
                    "device-service",
                ):
                    found[sample.name] = sample.value
        # Scraped from the device-service's container, through the signed-caller path.
        return (
            found.get("pyedge_scrape_up") == 1
            and found.get("pyedge_readings_published_total", 0) > 0
        )

    wait_for("the device-service's readings in the edge-server's /metrics", published)


def test_the_dashboard_and_its_live_channel_work_in_the_bundle(
    bundle: Bundle, admin_token: str
) -> None:
    # A reading of the device-service's container reaches a browser's stream at the
    # edge-server's container: one subscription there, fed by the bundle's broker.
    headers = {"Authorization": f"Bearer {admin_token}"}
    topic = f"pyedge/{NODE}/device-service/sensors/{SENSOR}"
    with requests.get(
        f"{bundle.url}/api/events",
        params={"topic": topic},
        headers=headers,
        stream=True,
        timeout=30,
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        # The first event is the last reading (the snapshot); then one sampled after the
        # stream opened (readings are retained: both say so; their seq tells them apart).
        seqs = []
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("data:"):
                event = json.loads(line.removeprefix("data:"))
                assert event["topic"] == topic
                assert event["retained"] is True
                seqs.append(event["payload"]["seq"])
                if seqs[-1] > seqs[0]:
                    break
    # The pages list the services of the other containers, reached through the proxy.
    page = requests.get(f"{bundle.url}/sensors", headers=headers, timeout=30)
    assert page.status_code == 200
    assert '"slug": "device-service"' in page.text or '"slug":"device-service"' in page.text
    script = requests.get(f"{bundle.url}/static/js/sensors.js", headers=headers, timeout=30)
    assert script.status_code == 200


def test_an_operation_started_through_the_edge_server_runs_in_its_container(
    bundle: Bundle, admin_token: str
) -> None:
    start = bundle.api(
        "POST", "/api/custom-service/ops/sleep/start", admin_token, json={"seconds": 0.5}
    )
    assert start.status_code == 202, start.text
    done = bundle.api("POST", "/api/custom-service/ops/sleep/wait?timeout=30", admin_token).json()
    assert done["state"] == "done" and done["success"] is True, done
    assert "sleep: slept 0.5 s" in bundle.logs("custom-service")
    assert "sleep: slept" not in bundle.logs("edge-server")


def test_an_alert_rule_fires_on_the_device_services_readings_across_containers(
    bundle: Bundle, admin_token: str
) -> None:
    # Made through the edge-server, kept by the alerts container, fed by the device-service's
    # readings on the bundle's broker.
    rule = {"name": "always-warm", "sensor": SENSOR, "kind": "above", "threshold": -1000}
    created = bundle.api("POST", "/api/alerts/rules", admin_token, json=rule)
    assert created.status_code == 201, created.text

    def fired() -> list[dict[str, Any]]:
        answer = bundle.api("GET", "/api/alerts/history?rule=always-warm", admin_token)
        return [event for event in answer.json() if event["state"] == "firing"]

    event = wait_for("the rule fired", fired, timeout=30)[0]
    assert event["sensor"] == SENSOR and event["node"] == NODE
    shown = bundle.api("GET", "/api/alerts/rules/always-warm", admin_token).json()
    assert shown["state"] == "firing"


def test_the_media_player_plays_an_upload_in_its_own_image(
    bundle: Bundle, admin_token: str, tmp_path: Path
) -> None:
    # Uploaded through the edge-server's proxy (multipart), checked and played by the mpv of
    # the media-player's image, which the other images do without.
    tone = make_tone(tmp_path / "tone.wav", seconds=2)
    with tone.open("rb") as data:
        uploaded = bundle.api(
            "POST", "/api/media-player/media", admin_token, files={"file": ("tone.wav", data)}
        )
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["type"] == "audio"
    play = {"file": "tone.wav", "loop": True}
    started = bundle.api("POST", "/api/media-player/ops/play/start", admin_token, json=play)
    assert started.status_code == 202, started.text

    def playing() -> dict[str, Any] | None:
        state = bundle.api("GET", "/api/media-player/player", admin_token).json()
        return state if state["state"] == "playing" else None

    assert wait_for("the tone playing", playing, timeout=30)["file"] == "tone.wav"
    stopped = bundle.api("POST", "/api/media-player/ops/play/stop", admin_token)
    assert stopped.status_code == 200, stopped.text
    assert "mpv" in bundle.exec("media-player", "mpv", "--version")
    assert "no-mpv" in bundle.exec("edge-server", "sh", "-c", "command -v mpv || echo no-mpv")


def test_the_container_manager_lists_the_bundle_and_refuses_to_stop_it(
    bundle: Bundle, admin_token: str
) -> None:
    answer = bundle.api("GET", "/api/container-manager/containers?all=true", admin_token)
    assert answer.status_code == 200, answer.text
    ours = {
        entry["labels"]["com.docker.compose.service"]: entry
        for entry in answer.json()
        if entry["labels"].get("com.docker.compose.project") == bundle.project
    }
    assert set(ours) == set(SERVICES)
    assert all(entry["system"] for entry in ours.values())
    for service in ("mqtt", "edge-server", "container-manager"):
        ident = ours[service]["id"]
        for action in PROTECTED_ACTIONS:
            refused = bundle.api(
                "POST", f"/api/container-manager/containers/{ident}/{action}", admin_token
            )
            assert refused.status_code == 403, (service, action, refused.text)
            assert "system container" in refused.json()["message"]
        removed = bundle.api("DELETE", f"/api/container-manager/containers/{ident}", admin_token)
        assert removed.status_code == 403, removed.text
    assert set(bundle.health().values()) == {"healthy"}


def device_service_status(bundle: Bundle, token: str) -> str:
    """The device-service's status in the edge-server's services tree."""
    status: str = services(bundle, token)["device-service"]["health"]["status"]
    return status


def wait_device_service(bundle: Bundle, token: str, status: str, since: float) -> float:
    """Seconds from `since` until the edge-server shows the device-service `status`."""
    wait_for(
        f"device-service {status}",
        lambda: device_service_status(bundle, token) == status,
        timeout=30 if status == "offline" else 120,
        every=0.1,
    )
    return time.monotonic() - since


def device_service_state(bundle: Bundle, field: str) -> str:
    """A field of the device-service container's inspect (a Go template, e.g. .State.Pid)."""
    return bundle.docker(
        "inspect", "--format", f"{{{{{field}}}}}", bundle.container("device-service")
    )


def test_a_crashed_service_goes_offline_and_comes_back_by_itself(
    bundle: Bundle, admin_token: str
) -> None:
    # SIGKILL to the service's process from the host, as the kernel's OOM killer or a
    # crash ends it: Docker's restart policy (unless-stopped) brings it back.
    os.kill(int(device_service_state(bundle, ".State.Pid")), signal.SIGKILL)
    killed = time.monotonic()
    offline = wait_device_service(bundle, admin_token, "offline", killed)
    back = wait_device_service(bundle, admin_token, "ok", killed)
    FIGURES["crash_device_service"] = {
        "offline_after_s": round(offline, 2),
        "back_after_s": round(back, 1),
    }
    assert int(device_service_state(bundle, ".RestartCount")) == 1
    bundle.wait_healthy()


def test_a_service_killed_with_compose_goes_offline_and_up_brings_it_back(
    bundle: Bundle, admin_token: str
) -> None:
    # Docker counts `docker compose kill` as the user's own stop: no restart policy brings
    # a killed container back (engine 20.10 and later), `docker compose up -d` does.
    bundle.compose("kill", "device-service")
    killed = time.monotonic()
    offline = wait_device_service(bundle, admin_token, "offline", killed)
    FIGURES["compose_kill_device_service"] = {"offline_after_s": round(offline, 2)}
    bundle.compose("up", "-d")
    wait_device_service(bundle, admin_token, "ok", killed)
    bundle.wait_healthy()


def test_down_and_up_keep_users_tokens_history_and_the_outbox(
    bundle: Bundle, admin_token: str, readings: PersistentSubscriber
) -> None:
    user = bundle.api(
        "POST", "/api/auth/users", admin_token,
        json={"name": "alice", "password": "correct horse battery", "role": "viewer"},
    )  # fmt: skip
    assert user.status_code in (200, 201), user.text
    history_before = bundle.api(
        "GET", f"/api/device-service/sensors/{SENSOR}/history", admin_token
    ).json()["points"]
    assert history_before
    # The broker away: readings wait in the device-service's outbox (its volume). The
    # edge-server shows every service offline meanwhile (their statuses went offline with
    # the broker), so the outage is timed: the simulated sensor reads every 5 s.
    before = wait_for("a reading", lambda: max(readings.received(SENSOR), default=0), 30)
    bundle.compose("stop", "mqtt")
    time.sleep(OUTAGE_S)
    bundle.compose("down", "--timeout", "20")
    assert bundle.compose("ps", "-q", "--all").stdout.strip() == ""
    started = time.monotonic()
    bundle.compose("up", "-d")
    bundle.wait_healthy()
    FIGURES["down_up_to_all_healthy_s"] = round(time.monotonic() - started, 1)

    # Users and tokens: the same token still works, alice is still there.
    users = bundle.api("GET", "/api/auth/users", admin_token)
    assert users.status_code == 200, users.text
    assert "alice" in {entry["name"] for entry in users.json()}
    # History: the readings from before are still there.
    history_after = bundle.api(
        "GET", f"/api/device-service/sensors/{SENSOR}/history", admin_token
    ).json()["points"]
    assert history_after[0]["ts"] == history_before[0]["ts"]
    # The outbox: drained once the broker was back, and nothing was lost on the way to the
    # host's persistent session (kept in the broker's volume across down and up).
    wait_for(
        "the outbox drained",
        lambda: bundle.api("GET", "/api/device-service/outbox", admin_token).json()["depth"] == 0,
    )
    last = bundle.api("GET", f"/api/device-service/sensors/{SENSOR}", admin_token).json()
    last_seq = last["last"]["seq"]
    wait_for("every reading on the host", lambda: max(readings.received(SENSOR)) >= last_seq)
    received = readings.received(SENSOR)
    # Counted from the first reading the host's session saw (it began after the bundle).
    first = min(received)
    tally = account([seq - first + 1 for seq in received], last_seq - first + 1)
    assert tally["lost"] == 0, tally
    # Readings were taken while the broker was away and while the bundle was down.
    assert last_seq >= before + OUTAGE_S // 5, (before, last_seq)
    FIGURES["outage"] = {"readings_before": before, "host_subscriber": tally}
