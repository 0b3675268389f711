"""alerts settings: [alerts] in the TOML file, EDGE_ALERTS_* in the env."""

from pyedge import config as cfg

SETTINGS = (
    cfg.Setting(
        "rules",
        cfg.path,
        None,
        "TOML file of [rules.<name>] tables (read-only through the API)",
    ),
    cfg.Setting(
        "tick",
        cfg.number(low=0.05),
        0.5,
        "seconds between checks of durations and stale sensors",
    ),
    cfg.Setting(
        "history_max", cfg.integer(10, 10_000_000), 10_000, "history entries kept (oldest pruned)"
    ),
    cfg.Setting(
        "webhook_token",
        cfg.secret,
        None,
        "bearer token sent as Authorization to webhooks (never logged)",
        secret=True,
    ),
    cfg.Setting("webhook_timeout", cfg.number(low=0.1), 5.0, "seconds a webhook call may take"),
    cfg.Setting(
        "webhook_retries",
        cfg.integer(0, 10),
        3,
        "retries of a webhook after a connection error or a 5xx",
    ),
    cfg.Setting(
        "webhook_backoff",
        cfg.number(low=0.01),
        1.0,
        "seconds before the first retry; doubled at each next one",
    ),
)
