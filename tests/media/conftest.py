"""Fixtures of the media-player tests: generated media, the app with mpv silenced."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from edge_server import create_app

if shutil.which("mpv") is None or shutil.which("sox") is None:
    pytest.fail("the media-player tests need mpv and sox (apt-get install mpv sox)")

API = "/api/media-player"


def make_tone(path: Path, seconds: float = 1.0) -> Path:
    """A short mono sine WAV."""
    cmd = ["sox", "-n", "-r", "8000", "-c", "1", "-b", "16", str(path), "synth", str(seconds)]
    subprocess.run([*cmd, "sine", "440"], check=True, capture_output=True)
    return path


@pytest.fixture(scope="session")
def tone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1 s WAV, made once."""
    return make_tone(tmp_path_factory.mktemp("gen") / "tone.wav")


@pytest.fixture
def media_dir(tmp_path: Path, tone: Path) -> Path:
    """The media directory: the tone, and a file that is not media at all."""
    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(tone, media / "tone.wav")
    (media / "broken.mp3").write_bytes(b"this is not an mp3\n" * 10)
    return media


@pytest.fixture
def media_config(app_config: dict[str, Any], media_dir: Path) -> dict[str, Any]:
    """The test app's settings: media-player alone, null outputs, a small upload limit."""
    return {**app_config, "EDGE_SERVICES": "media-player",
            "EDGE_MEDIA_PLAYER_MEDIA_DIR": str(media_dir),
            "EDGE_MEDIA_PLAYER_AUDIO_OUTPUT": "null", "EDGE_MEDIA_PLAYER_VIDEO_OUTPUT": "null",
            "EDGE_MEDIA_PLAYER_MAX_UPLOAD_MB": 0.1, "EDGE_MEDIA_PLAYER_VOLUME": 40}  # fmt: skip


@pytest.fixture
def media_app(media_config: dict[str, Any]) -> Iterator[Flask]:
    app = create_app(media_config)
    assert app.extensions["pyedge"].bus.wait_connected(5)
    yield app
    app.extensions["pyedge"].close()
