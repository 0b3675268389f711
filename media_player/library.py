"""The media directory: names confined to it, listing, probing with mpv, atomic uploads."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

AUDIO_EXT = frozenset({"mp3", "wav", "flac", "ogg", "oga", "opus", "m4a", "aac", "wma"})
VIDEO_EXT = frozenset({"mp4", "mkv", "webm", "mov", "avi", "m4v", "mpg", "mpeg", "ts"})
# One path component: no separators, no leading dot, printable, with an allowed extension.
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9 _.+()\-]{0,199}")
_EXTS = "|".join(sorted(e for ext in AUDIO_EXT | VIDEO_EXT for e in (ext, ext.upper())))
# The same rule as one pattern, for the API document (lower- or upper-case extensions).
NAME_PATTERN = rf"^[A-Za-z0-9_][A-Za-z0-9 _.+()\-]{{0,190}}\.({_EXTS})$"
PROBE_TIMEOUT_S = 15.0
CHUNK = 1 << 16


class MediaError(Exception):
    """A refused media name or file; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def extension(name: str) -> str:
    """The lower-case extension of `name`, without the dot."""
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def check_name(name: str) -> str:
    """`name` if it is one allowed media file name; raises MediaError (422/415) otherwise."""
    if not isinstance(name, str) or "\x00" in name or "/" in name or "\\" in name:
        raise MediaError(422, "a media name is one file name, without / or NUL")
    if not NAME_RE.fullmatch(name):
        raise MediaError(422, f"invalid media name {name!r}")
    if extension(name) not in AUDIO_EXT | VIDEO_EXT:
        raise MediaError(415, f"{name!r}: not an allowed audio or video extension")
    return name


class Library:
    """The files of one media directory, with a probe cache keyed by (size, mtime)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def path(self, name: str, must_exist: bool = True) -> Path:
        """The real path of media `name`, confined to the directory; raises MediaError."""
        check_name(name)
        root = self.root.resolve()
        path = root / name
        # Resolve symlinks: a link whose target lies outside the directory is refused.
        real = path.resolve()
        if real.parent != root and root not in real.parents:
            raise MediaError(403, f"{name!r} points outside the media directory")
        if must_exist and not real.is_file():
            raise MediaError(404, f"no media file {name!r}")
        return real if must_exist else path

    def names(self) -> list[str]:
        """The media names in the directory, sorted."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in sorted(os.listdir(self.root)):
            try:
                self.path(entry)
            except MediaError:
                continue
            found.append(entry)
        return found

    def describe(self, name: str) -> dict[str, Any]:
        """Name, size, type, duration (or broken + error) of media `name`."""
        path = self.path(name)
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        info = {"name": name, "size": stat.st_size, **probe(path)}
        if info["type"] is None:
            info["type"] = "video" if extension(name) in VIDEO_EXT else "audio"
        with self._lock:
            self._cache[name] = (key, info)
        return info

    def listing(self) -> list[dict[str, Any]]:
        """Every media file, described; a file gone meanwhile is left out."""
        described = []
        for name in self.names():
            try:
                described.append(self.describe(name))
            except (MediaError, OSError):
                continue
        return described

    def delete(self, name: str) -> None:
        """Remove media `name` (a symlink itself, never its target)."""
        self.path(name)
        (self.root / name).unlink()

    def store(self, name: str, stream: IO[bytes], limit: int, overwrite: bool) -> dict[str, Any]:
        """Write an upload to a temp file, check it with mpv, rename it into place."""
        check_name(name)
        target = self.root / name
        if target.exists() or target.is_symlink():
            if not overwrite:
                raise MediaError(409, f"{name!r} exists; send overwrite=true to replace it")
            self.path(name)  # an existing symlink pointing outside stays refused
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=".upload-", suffix=f".{extension(name)}", dir=self.root
        )
        tmp = Path(tmp_name)
        try:
            written = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    written += len(chunk)
                    if written > limit:
                        raise MediaError(413, f"upload larger than {limit} bytes")
                    out.write(chunk)
            probed = probe(tmp)
            if probed["broken"]:
                raise MediaError(415, f"not playable audio or video: {probed['error']}")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return self.describe(name)


def probe(path: Path) -> dict[str, Any]:
    """Duration and type of a file, asked of mpv itself; broken with mpv's error otherwise."""
    cmd = [
        "mpv", "--no-config", "--vo=null", "--ao=null", "--end=0.01", "--load-scripts=no",
        "--term-playing-msg=PROBE ${=duration} ${=vid} ${=aid}",
    ]  # fmt: skip
    cmd += ["--", str(path)]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
            stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"type": None, "duration": None, "broken": True, "error": str(exc)}
    out = done.stdout + done.stderr
    for line in out.splitlines():
        if line.startswith("PROBE "):
            parts = line.split()
            if len(parts) < 4:
                break
            duration = _float(parts[1])
            kind = "video" if parts[2] != "no" else "audio" if parts[3] != "no" else None
            if kind is None:
                break
            return {"type": kind, "duration": duration, "broken": False, "error": None}
    lines = [
        line.strip() for line in out.splitlines()
        if line.strip() and not line.startswith(("Exiting", " (+)", "AO:", "VO:"))
    ]  # fmt: skip
    return {
        "type": None, "duration": None, "broken": True,
        "error": lines[0] if lines else "mpv found no audio or video in it",
    }  # fmt: skip


def _float(text: str) -> float | None:
    try:
        return round(float(text), 3)
    except ValueError:
        return None
