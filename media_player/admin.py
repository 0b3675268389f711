"""media-player's admin panels: the player (editable) and the media list (read-only)."""

from media_player.schemas import PlayerPatch
from media_player.service import service
from pyedge import AdminPanel
from pyedge.security import Role

service.admin_panel(
    AdminPanel(
        title="Player",
        description="What mpv plays now. Edit changes the volume, pauses or resumes, or "
        "seeks (only while something plays); start a play from the operations section.",
        source="player",
        columns=("state", "file", "position", "duration", "volume", "loop", "playlist_index"),
        edit="player",
        form=PlayerPatch,
        method="PATCH",
        role=Role.OPERATOR,
    )
)
service.admin_panel(
    AdminPanel(
        title="Media",
        description="The files in the media directory; upload with POST /media.",
        source="media",
        columns=("name", "type", "duration", "size", "broken", "error"),
        key="name",
    )
)
