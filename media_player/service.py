"""media-player: the service declaration and its operations."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from media_player.config import SETTINGS
from media_player.library import Library, MediaError
from media_player.player import Player, PlayerError, reap
from media_player.schemas import PlayParams
from pyedge import Degraded, EdgeService, OperationFailed, ServiceRuntime, Session

logger = logging.getLogger(__name__)

service = EdgeService(
    "media-player",
    title="Media player",
    version="1.0.0",
    description="Plays audio and video files from the device's media directory through mpv.",
    settings=SETTINGS,
    import_name=__name__,
)

PLAY = "play"
# The state is republished this often while playing (the position moves).
STATE_EVERY_S = 1.0
TICK_S = 0.1


def library_of(runtime: ServiceRuntime) -> Library:
    """The runtime's media library (KeyError before the service started)."""
    library: Library = runtime.extras["library"]
    return library


def player_of(runtime: ServiceRuntime) -> Player | None:
    """The mpv playing now, if any."""
    player: Player | None = runtime.extras.get("player")
    return player if player is not None and player.running else None


def pidfile(runtime: ServiceRuntime) -> Path:
    """Where the running mpv is recorded."""
    return runtime.data_dir / "mpv.pid"


IDLE: dict[str, Any] = {
    "state": "idle", "file": None, "position": None, "duration": None,
    "volume": None, "loop": False, "playlist": [], "playlist_index": None,
}  # fmt: skip


def player_state(runtime: ServiceRuntime) -> dict[str, Any]:
    """The now-playing state: idle, or what mpv plays and where."""
    player = player_of(runtime)
    if player is None:
        return {**IDLE, "volume": runtime.settings["volume"]}
    props = player.props
    params = runtime.extras.get("play_params", {})
    path = props.get("path")
    position = props.get("time-pos")
    duration = props.get("duration")
    return {
        "state": "paused" if props.get("pause") else "playing",
        "file": Path(path).name if path else None,
        "position": round(position, 2) if isinstance(position, int | float) else None,
        "duration": round(duration, 3) if isinstance(duration, int | float) else None,
        "volume": props.get("volume"),
        "loop": bool(params.get("loop")),
        "playlist": runtime.extras.get("playlist", []),
        "playlist_index": props.get("playlist-pos"),
    }


def publish_state(runtime: ServiceRuntime, state: dict[str, Any] | None = None) -> None:
    """Publish the state retained on pyedge/<node>/media-player/state."""
    runtime.bus.publish_json(
        runtime.topic("state"), state or player_state(runtime), retain=True, qos=1
    )


def play(session: Session, params: dict[str, Any]) -> str:
    """Play a file or a playlist through mpv until it ends (or forever with loop) or stop."""
    runtime: ServiceRuntime = session.context
    library = library_of(runtime)
    names = [*([params["file"]] if "file" in params else []), *params.get("playlist", [])]
    names = names or library.names()
    if not names:  # not a failure of the player: nothing was there (e.g. over MQTT)
        return "the media directory holds no media to play"
    try:
        files = [library.path(name) for name in names]
    except MediaError as exc:
        raise OperationFailed(str(exc)) from exc
    settings = runtime.settings
    runtime.extras.update(play_params=params, playlist=names)
    player = Player(
        files,
        socket_path=runtime.data_dir / "mpv.sock",
        pidfile=pidfile(runtime),
        audio_output=settings["audio_output"],
        video_output=settings["video_output"],
        volume=params.get("volume", settings["volume"]),
        loop=params["loop"],
        start=params["start"],
    )
    runtime.extras["player"] = player
    try:
        last = ""
        last_sent = 0.0
        while player.running and not session.stop_requested.is_set():
            player.changed.wait(TICK_S)
            player.changed.clear()
            state = player_state(runtime)
            now = time.monotonic()
            snapshot = repr({k: v for k, v in state.items() if k != "position"})
            if snapshot != last or now - last_sent >= STATE_EVERY_S:
                publish_state(runtime, state)
                session.update(file=state["file"], position=state["position"])
                last, last_sent = snapshot, now
        stopped = session.stop_requested.is_set()
        player.close()
        if stopped:
            return f"stopped ({', '.join(names)})"
        if player.end_error or player.proc.returncode not in (0, None):
            raise OperationFailed(player.last_error())
        return f"played {', '.join(names)}"
    finally:
        player.close()
        runtime.extras["player"] = None
        publish_state(runtime, {**IDLE, "volume": settings["volume"]})


def stop_play(session: Session) -> None:
    """Quit mpv now rather than at the next tick."""
    player = player_of(session.context)
    if player is not None:
        player.changed.set()


service.process(PLAY, play, params=PlayParams, stop=stop_play)


@service.on_start
def open_library(runtime: ServiceRuntime) -> None:
    """Reap an mpv a killed predecessor left behind; create the media directory."""
    reap(pidfile(runtime))
    media_dir = runtime.settings["media_dir"] or runtime.data_dir / "media"
    Path(media_dir).mkdir(parents=True, exist_ok=True)
    runtime.extras["library"] = Library(Path(media_dir))
    runtime.extras["player"] = None
    with contextlib.suppress(Exception):  # the bus may be away: it is retained next time
        publish_state(runtime)


@service.on_stop
def close_player(runtime: ServiceRuntime) -> None:
    """Never leave mpv behind: the play session stops with the service; this is the backstop."""
    player = runtime.extras.get("player")
    if player is not None:
        player.close()


@service.health_check
def mpv_available(runtime: ServiceRuntime) -> str:
    """Degraded when mpv is not installed; otherwise what plays."""
    if shutil.which("mpv") is None:
        raise Degraded("mpv is not installed: nothing can play (apt-get install mpv)")
    state = player_state(runtime)
    if state["state"] == "idle":
        return "idle"
    return f"{state['state']} {state['file']}"


def control(runtime: ServiceRuntime, change: dict[str, Any]) -> dict[str, Any]:
    """Apply a PATCH to the playing mpv; raises LookupError when nothing plays."""
    player = player_of(runtime)
    if player is None:
        raise LookupError("nothing is playing")
    try:
        if "volume" in change:
            player.set("volume", change["volume"])
        if "paused" in change:
            player.set("pause", change["paused"])
        if "position" in change:
            player.seek(change["position"])
    except PlayerError as exc:
        raise LookupError(str(exc)) from exc
    # Read back what mpv now says, so the answer shows the change.
    for name in ("volume", "pause", "time-pos"):
        with contextlib.suppress(PlayerError):
            player.props[name] = player.command("get_property", name)
    state = player_state(runtime)
    publish_state(runtime, state)
    return state
