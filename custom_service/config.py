"""custom-service settings: [custom-service] in the TOML file, EDGE_CUSTOM_SERVICE_* in the env."""

from pyedge import config as cfg

SETTINGS = (
    cfg.Setting("greeting", cfg.text, "Hello", "the word /hello greets with"),
    cfg.Setting(
        "heartbeat_autostart",
        cfg.boolean,
        True,
        "start the heartbeat Process when the service starts",
    ),
    cfg.Setting(
        "heartbeat_interval",
        cfg.number(low=0.1),
        5.0,
        "seconds between heartbeats when autostarted",
    ),
)
