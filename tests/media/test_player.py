"""media-player: play, the retained state, PATCH /player, loop and stop, orphan reaping."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from edge_server import create_app
from pyedge.security import Role
from tests.conftest import authorized_client
from tests.media.conftest import API
from tests.mqtt_recorder import MqttRecorder, Received


def state_is(**expected: Any) -> Any:
    """A recorder match: the state message has these fields."""

    def match(message: Received) -> bool:
        data = message.json()
        return all(data.get(key) == value for key, value in expected.items())

    return match


def wait_state(client: FlaskClient, timeout: float = 5.0, **expected: Any) -> dict[str, Any]:
    """Poll GET /player until it has these fields."""
    deadline = time.monotonic() + timeout
    while True:
        state = client.get(f"{API}/player").get_json()
        if all(state.get(key) == value for key, value in expected.items()):
            return state
        assert time.monotonic() < deadline, f"player state stayed {state}"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_play_patch_and_state(media_app: Flask, recorder: MqttRecorder, node_id: str) -> None:
    """A play publishes its state retained, PATCH pauses/seeks/sets volume, the end is idle."""
    topic = f"pyedge/{node_id}/media-player/state"
    recorder.subscribe(topic)
    operator = authorized_client(media_app, Role.OPERATOR)
    viewer = authorized_client(media_app, Role.VIEWER)
    idle = viewer.get(f"{API}/player")
    assert idle.status_code == 200 and idle.get_json()["state"] == "idle"
    assert operator.patch(f"{API}/player", json={"volume": 5}).status_code == 409

    started = operator.post(f"{API}/ops/play/start", json={"file": "tone.wav", "volume": 30})
    assert started.status_code == 202, started.get_json()
    playing = recorder.wait_for(topic, state_is(state="playing", file="tone.wav"), timeout=5)
    assert playing.json()["volume"] == 30 and playing.json()["loop"] is False
    # Retained: a subscriber arriving now is told what plays.
    seen = len(recorder.messages)
    recorder.subscribe(topic)
    assert recorder.wait_for(topic, lambda m: m.retain, after=seen).json()["state"] == "playing"

    assert viewer.patch(f"{API}/player", json={"paused": True}).status_code == 403
    paused = operator.patch(f"{API}/player", json={"paused": True, "volume": 55, "position": 0.8})
    assert paused.status_code == 200, paused.get_json()
    body = paused.get_json()
    assert body["state"] == "paused" and body["volume"] == 55
    # Forward of where it was (about 0.1 s in); mpv counts the null output's buffer off it.
    assert 0.55 <= body["position"] <= 0.85, body
    recorder.wait_for(topic, state_is(state="paused", volume=55), timeout=3)
    bad = operator.patch(f"{API}/player", json={"volume": 101})
    assert bad.status_code == 422 and bad.get_json()["code"] == 422
    assert operator.patch(f"{API}/player", json={"paused": False}).status_code == 200

    # Unlooped, the Process ends successfully with the file; the state goes back to idle.
    done = operator.post(f"{API}/ops/play/wait", query_string={"timeout": 5}).get_json()
    assert done["state"] == "done" and done["success"], done
    recorder.wait_for(topic, state_is(state="idle"), timeout=3)
    assert viewer.get(f"{API}/player").get_json()["state"] == "idle"


def test_playlist_broken_and_bad_params(media_app: Flask) -> None:
    """A playlist plays in order; a broken file fails with mpv's reason; junk params are 422."""
    client = authorized_client(media_app, Role.OPERATOR)
    missing = client.post(f"{API}/ops/play/start", json={"file": "missing.wav"})
    assert missing.status_code == 404 and missing.get_json()["code"] == 404
    for params in (
        {"file": "../tone.wav"},
        {"file": "/etc/passwd"},
        {"playlist": []},
        {"file": "tone.wav", "volume": 300},
    ):
        answer = client.post(f"{API}/ops/play/start", json=params)
        assert answer.status_code == 422, (params, answer.get_json())
        assert answer.get_json()["status"] == "Unprocessable Entity"
    assert client.get(f"{API}/ops/play").get_json()["state"] == "idle"

    client.post(f"{API}/ops/play/start", json={"file": "broken.mp3"})
    failed = client.post(f"{API}/ops/play/wait", query_string={"timeout": 5}).get_json()
    assert failed["success"] is False, failed
    assert "unrecognized file format" in failed["messages"][-1]["text"]

    started = client.post(
        f"{API}/ops/play/start", json={"file": "tone.wav", "playlist": ["tone.wav"]}
    )
    assert started.status_code == 202
    second = wait_state(client, playlist_index=1, timeout=5)
    assert second["playlist"] == ["tone.wav", "tone.wav"]
    done = client.post(f"{API}/ops/play/wait", query_string={"timeout": 5}).get_json()
    assert done["state"] == "done" and done["success"], done


def test_loop_stop_and_orphan_reaping(media_app: Flask, media_config: dict[str, Any]) -> None:
    """A looped play runs until stopped; an mpv left by a killed service is reaped at start."""
    client = authorized_client(media_app, Role.OPERATOR)
    client.post(f"{API}/ops/play/start", json={"file": "tone.wav", "loop": True})
    wait_state(client, state="playing", loop=True)
    time.sleep(1.3)  # past the 1 s file: the loop keeps it playing
    assert client.get(f"{API}/player").get_json()["state"] == "playing"
    assert client.post(f"{API}/ops/play/stop").status_code == 200
    stopped = client.post(f"{API}/ops/play/wait", query_string={"timeout": 5}).get_json()
    assert stopped["state"] == "done" and stopped["success"], stopped
    pidfile = Path(media_config["EDGE_DATA_DIR"]) / "media-player" / "mpv.pid"
    assert not pidfile.exists()

    # A killed service: its mpv still runs and its pidfile remains; the next start reaps it.
    client.post(f"{API}/ops/play/start", json={"file": "tone.wav", "loop": True})
    wait_state(client, state="playing")
    pid = json.loads(pidfile.read_text())["pid"]
    assert alive(pid)
    runtime = media_app.extensions["pyedge"].runtimes["media-player"]
    runtime.extras["player"] = None  # the old app forgets it, as a dead process would
    successor = create_app(media_config)
    try:
        assert not alive(pid), "the orphaned mpv was not reaped"
        assert not pidfile.exists()
    finally:
        successor.extensions["pyedge"].close()


def test_pidfile_of_a_stranger_is_left_alone(media_app: Flask, tmp_path: Path) -> None:
    """A pidfile whose pid is another process (pid reuse) kills nothing."""
    from media_player.player import reap, write_pidfile

    pidfile = tmp_path / "mpv.pid"
    write_pidfile(pidfile, os.getpid(), tmp_path / "mpv.sock")
    assert reap(pidfile) is None and alive(os.getpid()) and not pidfile.exists()
