"""media-player settings: [media-player] in the TOML file, EDGE_MEDIA_PLAYER_* in the env."""

from pyedge import config as cfg

SETTINGS = (
    cfg.Setting(
        "media_dir", cfg.path, None, "the media directory (unset: <data dir>/media-player/media)"
    ),
    cfg.Setting("audio_output", cfg.text, "auto", "mpv --ao (e.g. auto, alsa, pulse, null)"),
    cfg.Setting("video_output", cfg.text, "auto", "mpv --vo (e.g. auto, drm, gpu, null)"),
    cfg.Setting("max_upload_mb", cfg.number(low=0.001), 200.0, "largest upload in MB"),
    cfg.Setting("volume", cfg.integer(0, 100), 80, "volume a play starts at, 0 to 100"),
)
