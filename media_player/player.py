"""One mpv process, controlled over its JSON IPC socket, and the pidfile that reaps orphans.

Why mpv over its IPC socket rather than libmpv bindings: mpv is one apt package on every
Debian/Raspberry Pi OS, runs headless (`--vo=null`, `--ao=null`, or DRM/ALSA on a Pi), and
its `--input-ipc-server` speaks JSON lines over a unix socket, which a small client in the
stdlib drives: commands carry a `request_id`, `observe_property` pushes `property-change`
events, and `end-file` says why a file ended (with mpv's error when it could not play).
A separate process also means a crashing decoder never takes the service down; the pidfile
(pid, start time, socket) lets the next start reap an mpv a SIGKILLed service left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

OBSERVED = ("pause", "volume", "time-pos", "duration", "path", "playlist-pos")
CONNECT_TIMEOUT_S = 5.0
REPLY_TIMEOUT_S = 3.0
PR_SET_PDEATHSIG = 1


class PlayerError(Exception):
    """mpv refused a command or could not be reached."""


# Looked up here, in the parent: between fork and exec the child must not dlopen (another
# thread may have held the loader's lock at the fork).
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)


def _die_with_parent() -> None:
    """In the child: SIGKILL it when the spawning thread dies (belt and braces to the pidfile)."""
    if _prctl is not None:
        with contextlib.suppress(Exception):
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Player:
    """An mpv playing `files`, its observed properties in `props`, its end in `end_error`."""

    def __init__(
        self,
        files: list[Path],
        *,
        socket_path: Path,
        pidfile: Path,
        audio_output: str,
        video_output: str,
        volume: int,
        loop: bool,
        start: float,
    ) -> None:
        self.socket_path = socket_path
        self.pidfile = pidfile
        self.props: dict[str, Any] = {"volume": volume, "pause": False}
        self.end_error: str | None = None
        self.changed = threading.Event()
        self.restarted = threading.Event()
        self._replies: dict[int, dict[str, Any]] = {}
        self._reply_cond = threading.Condition()
        self._next_id = 0
        self._send_lock = threading.Lock()
        self._sock: socket.socket | None = None
        socket_path.unlink(missing_ok=True)
        cmd = [
            "mpv", "--no-config", "--idle=no", "--no-terminal", "--load-scripts=no",
            "--force-window=no", "--input-default-bindings=no",
            f"--input-ipc-server={socket_path}", f"--ao={audio_output}", f"--vo={video_output}",
            f"--volume={volume}", f"--start={start}",
        ]  # fmt: skip
        if loop:
            cmd.append("--loop-playlist=inf")
        cmd += ["--", *map(str, files)]
        # The spawning thread is the play session's, which outlives mpv: the death signal
        # fires only if the whole service dies.
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        write_pidfile(pidfile, self.proc.pid, socket_path)
        self._stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True, name="mpv-stderr").start()
        self._connect()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").strip()
            if line:
                self._stderr = [*self._stderr[-19:], line]

    def _connect(self) -> None:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.socket_path))
            except OSError:
                sock.close()
                time.sleep(0.02)
                continue
            self._sock = sock
            threading.Thread(target=self._read, daemon=True, name="mpv-ipc").start()
            for number, name in enumerate(OBSERVED, start=1):
                self._send({"command": ["observe_property", number, name]})
            return
        # mpv exited before its socket appeared (e.g. a file it cannot open): keep its reason.

    @property
    def running(self) -> bool:
        """Whether mpv is still running."""
        return self.proc.poll() is None

    def last_error(self) -> str:
        """Why mpv stopped, as well as it said."""
        if self.end_error:
            return self.end_error
        useful = [line for line in self._stderr if not line.startswith("Exiting")]
        return useful[-1] if useful else f"mpv exited with status {self.proc.returncode}"

    def _send(self, message: dict[str, Any]) -> int:
        if self._sock is None:
            raise PlayerError("mpv is not reachable")
        with self._send_lock:
            self._next_id += 1
            request_id = self._next_id
            data = json.dumps({**message, "request_id": request_id}).encode() + b"\n"
            try:
                self._sock.sendall(data)
            except OSError as exc:
                raise PlayerError(f"mpv is not reachable: {exc}") from exc
        return request_id

    def command(self, *args: Any) -> Any:
        """Run an mpv command and return its data; raises PlayerError on its error."""
        request_id = self._send({"command": list(args)})
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        with self._reply_cond:
            while request_id not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or not self.running:
                    raise PlayerError(f"mpv did not answer {args[0]}")
                self._reply_cond.wait(min(left, 0.1))
            reply = self._replies.pop(request_id)
        if reply.get("error") != "success":
            raise PlayerError(f"mpv: {args[0]}: {reply.get('error')}")
        return reply.get("data")

    def set(self, name: str, value: Any) -> None:
        """Set an mpv property."""
        self.command("set_property", name, value)

    def seek(self, position: float, timeout: float = 1.0) -> None:
        """Seek to `position` seconds and wait for mpv to play (or pause) there."""
        self.restarted.clear()
        self.command("seek", position, "absolute")
        # time-pos moves only once the seek is done, which mpv reports as playback-restart.
        self.restarted.wait(timeout)

    def _read(self) -> None:
        assert self._sock is not None
        buffer = b""
        while True:
            try:
                chunk = self._sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                with contextlib.suppress(ValueError):
                    self._handle(json.loads(line))
        self.changed.set()

    def _handle(self, message: dict[str, Any]) -> None:
        if "request_id" in message and "event" not in message:
            with self._reply_cond:
                self._replies[message["request_id"]] = message
                self._reply_cond.notify_all()
            return
        event = message.get("event")
        if event == "property-change":
            self.props[message["name"]] = message.get("data")
            self.changed.set()
        elif event == "playback-restart":
            self.restarted.set()
        elif event == "end-file" and message.get("reason") == "error":
            self.end_error = f"mpv could not play it: {message.get('file_error', 'error')}"
            self.changed.set()

    def close(self, timeout: float = 2.0) -> None:
        """Quit mpv (terminate, then kill) and forget its pidfile."""
        if self.running:
            with contextlib.suppress(PlayerError):
                self._send({"command": ["quit"]})
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self.pidfile.unlink(missing_ok=True)
        self.socket_path.unlink(missing_ok=True)


def start_time(pid: int) -> str | None:
    """The start time of process `pid` (field 22 of /proc/<pid>/stat), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def write_pidfile(pidfile: Path, pid: int, socket_path: Path) -> None:
    """Record the mpv we started: pid, start time, socket."""
    record = {"pid": pid, "start_time": start_time(pid), "socket": str(socket_path)}
    tmp = pidfile.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, pidfile)


def reap(pidfile: Path) -> int | None:
    """Kill the mpv a previous run left behind, if the pidfile still matches it; its pid."""
    try:
        record = json.loads(pidfile.read_text())
        pid, started, sock = int(record["pid"]), record["start_time"], record["socket"]
    except (OSError, ValueError, KeyError, TypeError):
        pidfile.unlink(missing_ok=True)
        return None
    reaped = None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        cmdline = []
    # Same pid, same start time and our socket on its command line: it is ours, not a reuse.
    if started and start_time(pid) == started and f"--input-ipc-server={sock}".encode() in cmdline:
        logger.warning("reaping mpv %d left behind by a previous run", pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and start_time(pid) == started:
                if _zombie(pid):
                    break
                time.sleep(0.05)
            if start_time(pid) != started or _zombie(pid):
                break
        reaped = pid
    pidfile.unlink(missing_ok=True)
    Path(sock).unlink(missing_ok=True)
    return reaped


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
