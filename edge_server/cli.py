"""The `pyedge` command line: run solo mode, show the effective configuration."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from edge_server import runner
from edge_server.config import EDGE_SECTION
from edge_server.registry import configure
from pyedge import PyEdgeError, __version__

EXIT_CONFIG = 2
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pyedge` console script."""
    args = _parser().parse_args(argv)
    overrides = {key: value for key, value in _overrides(args).items() if value is not None}
    try:
        settings, _services = configure(overrides)
    except PyEdgeError as exc:
        print(f"pyedge: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(level=settings["EDGE_LOG_LEVEL"], format=LOG_FORMAT)
    if args.command == "config":
        for key in sorted(settings):
            if key in settings.sources:
                print(f"{key}={settings[key]}  # {settings.sources[key]}")
        return 0
    try:
        runner.run(settings, overrides)
    except PyEdgeError as exc:
        print(f"pyedge: {exc}", file=sys.stderr)
        return 1
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    prefix = EDGE_SECTION.prefix
    return {
        "EDGE_CONFIG": args.config,
        f"{prefix}HTTP_HOST": getattr(args, "host", None),
        f"{prefix}HTTP_PORT": getattr(args, "port", None),
        f"{prefix}MQTT_PORT": getattr(args, "mqtt_port", None),
        f"{prefix}DATA_DIR": getattr(args, "data_dir", None),
        f"{prefix}MQTT_EMBEDDED": False if getattr(args, "no_broker", False) else None,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyedge", description="PyEdge: IoT services on edge devices."
    )
    parser.add_argument("--version", action="version", version=f"pyedge {__version__}")
    parser.add_argument("--config", help="TOML settings file (else EDGE_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="solo mode: start Mosquitto and the edge-server with every service"
    )
    run.add_argument("--host", help="HTTP address (EDGE_HTTP_HOST, default 0.0.0.0)")
    run.add_argument("--port", type=int, help="HTTP port (EDGE_HTTP_PORT, default 8000)")
    run.add_argument("--mqtt-port", type=int, help="broker port (EDGE_MQTT_PORT, default 1883)")
    run.add_argument("--data-dir", help="data directory (EDGE_DATA_DIR, default ./data)")
    run.add_argument(
        "--no-broker",
        action="store_true",
        help="use the broker at EDGE_MQTT_HOST instead of starting Mosquitto",
    )
    commands.add_parser("config", help="print the effective settings and where each came from")
    return parser


if __name__ == "__main__":
    sys.exit(main())
