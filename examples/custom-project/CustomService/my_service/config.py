"""my-service settings: [my-service] in the TOML file, EDGE_MY_SERVICE_* in the env."""

from pyedge import config as cfg

SETTINGS = (cfg.Setting("greeting", cfg.text, "Hello", "the word /hello greets with"),)
