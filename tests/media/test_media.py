"""media-player: the media list, uploads, deletes, roles, path confinement."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
from flask import Flask

from pyedge.security import Role
from tests.conftest import authorized_client
from tests.media.conftest import API


def upload(client, filename: str, data: bytes, **form: str):  # type: ignore[no-untyped-def]
    """POST /media with one multipart file."""
    return client.post(
        f"{API}/media", data={"file": (io.BytesIO(data), filename), **form},
        content_type="multipart/form-data",
    )  # fmt: skip


def test_list_upload_delete_roles(media_app: Flask, tone: Path) -> None:
    """The list probes with mpv; uploads are checked, limited, atomic; roles hold."""
    viewer = authorized_client(media_app, Role.VIEWER)
    operator = authorized_client(media_app, Role.OPERATOR)
    listing = {item["name"]: item for item in viewer.get(f"{API}/media").get_json()}
    assert set(listing) == {"tone.wav", "broken.mp3"}
    assert listing["tone.wav"]["type"] == "audio" and not listing["tone.wav"]["broken"]
    assert abs(listing["tone.wav"]["duration"] - 1.0) < 0.05
    assert listing["broken.mp3"]["broken"] and listing["broken.mp3"]["error"]
    assert viewer.get(f"{API}/media/tone.wav").get_json() == listing["tone.wav"]

    data = tone.read_bytes()
    assert upload(viewer, "new.wav", data).status_code == 403
    created = upload(operator, "new.wav", data)
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["type"] == "audio"
    conflict = upload(operator, "new.wav", data)
    assert conflict.status_code == 409 and conflict.get_json()["code"] == 409
    assert upload(operator, "new.wav", data, overwrite="true").status_code == 201
    assert upload(operator, "other.wav", data, name="renamed.wav").status_code == 201

    media = Path(media_app.extensions["pyedge"].runtimes["media-player"].extras["library"].root)
    for name, body, status in (
        ("junk.mp3", b"not audio at all\n" * 50, 415),  # the extension passes, mpv does not
        ("notes.txt", data, 415),
        ("big.wav", data + b"\0" * 120_000, 413),  # refused while written
        ("huge.wav", data + b"\0" * 400_000, 413),  # refused at the door, never spooled
        ("../escape.wav", data, 422),
    ):
        answer = upload(operator, name, body)
        assert answer.status_code == status, (name, answer.get_json())
        assert answer.get_json()["message"]
    assert sorted(p.name for p in media.iterdir()) == [
        "broken.mp3",
        "new.wav",
        "renamed.wav",
        "tone.wav",
    ]  # fmt: skip: nothing refused was kept, no temp file left

    assert viewer.delete(f"{API}/media/new.wav").status_code == 403
    assert operator.delete(f"{API}/media/new.wav").status_code == 204
    gone = operator.delete(f"{API}/media/new.wav")
    assert gone.status_code == 404 and gone.get_json()["code"] == 404


def test_confinement(media_app: Flask, media_dir: Path, tmp_path: Path) -> None:
    """No traversal, no absolute paths, no symlink escape, only allowed extensions."""
    client = authorized_client(media_app, Role.OPERATOR)
    outside = tmp_path / "secret.wav"
    shutil.copy(media_dir / "tone.wav", outside)
    (media_dir / "escape.wav").symlink_to(outside)
    (media_dir / "inside.wav").symlink_to(media_dir / "tone.wav")
    (media_dir / "passwd.txt").write_text("x")
    names = {item["name"] for item in client.get(f"{API}/media").get_json()}
    assert names == {"tone.wav", "broken.mp3", "inside.wav"}
    assert client.get(f"{API}/media/inside.wav").status_code == 200
    assert client.get(f"{API}/media/escape.wav").status_code == 403
    assert client.delete(f"{API}/media/escape.wav").status_code == 403
    assert outside.exists() and (media_dir / "escape.wav").is_symlink()
    for name in ("..%2Fsecret.wav", "%2Fetc%2Fpasswd", "passwd.txt", ".hidden.wav", "a%00.wav"):
        answer = client.get(f"{API}/media/{name}")
        assert answer.status_code in (403, 404, 415, 422), (name, answer.status_code)
    answer = client.post(f"{API}/ops/play/start", json={"file": "escape.wav"})
    assert answer.status_code == 403


def test_video_probe(media_app: Flask, media_dir: Path) -> None:
    """A video file is listed as video with its duration."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc=duration=1:size=64x48:rate=10", "-pix_fmt", "yuv420p",
         str(media_dir / "clip.mp4")], check=True,
    )  # fmt: skip
    client = authorized_client(media_app, Role.VIEWER)
    clip = client.get(f"{API}/media/clip.mp4").get_json()
    assert clip["type"] == "video" and abs(clip["duration"] - 1.0) < 0.1, clip
