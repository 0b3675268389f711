"""media-player: plays the device's audio and video files through mpv, one at a time."""

# Importing them registers the REST resources and the admin page's panels.
from media_player import admin, views  # noqa: F401
from media_player.service import service

__all__ = ["service"]
