"""A SIGKILLed media-player leaves no mpv behind: `pyedge run`'s worker killed mid-play."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from tests.media.conftest import API
from tests.media.test_player import alive
from tests.test_run import gunicorn_worker, start_node, stop_node, wait_ready


def test_a_killed_service_takes_its_mpv_along_and_comes_back_idle(
    tmp_path: Path, tone: Path
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "tone.wav").write_bytes(tone.read_bytes())
    node = start_node(
        tmp_path,
        EDGE_SERVICES="media-player",
        EDGE_MEDIA_PLAYER_MEDIA_DIR=str(media),
        EDGE_MEDIA_PLAYER_AUDIO_OUTPUT="null",
        EDGE_MEDIA_PLAYER_VIDEO_OUTPUT="null",
    )
    try:
        wait_ready(node)
        status, _ = node.call(f"{API}/ops/play/start", "POST", {"file": "tone.wav", "loop": True})
        assert status == 202
        pidfile = node.data_dir / "media-player" / "mpv.pid"
        deadline = time.monotonic() + 10
        while not pidfile.exists():
            assert time.monotonic() < deadline, "mpv never started"
            time.sleep(0.05)
        mpv = json.loads(pidfile.read_text())["pid"]
        assert alive(mpv)

        os.kill(gunicorn_worker(node), signal.SIGKILL)  # no stop hook, no finally runs
        deadline = time.monotonic() + 5
        while alive(mpv):
            assert time.monotonic() < deadline, f"mpv {mpv} outlived its killed service"
            time.sleep(0.05)
        # The arbiter starts a new worker, whose start reaps what is left (the pidfile).
        wait_ready(node, timeout=30)
        assert node.call(f"{API}/player")[1]["state"] == "idle"
        assert not pidfile.exists()
    finally:
        stop_node(node)
