"""The `pyedge` command line: solo mode, the configuration, the services' commands, a shell.

The services contribute their commands through the entry-point group `pyedge.commands`
(each entry names a click command, or a list of them), so the edge-server imports no
service's internals. Their commands talk to the HTTP API at `--url`, which the root group
keeps in `ctx.obj["url"]`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shlex
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click

from edge_server.broker import standalone as standalone_broker
from edge_server.cli import auth as cli_auth
from edge_server.cli import mqtt as cli_mqtt
from edge_server.cli import network as cli_network
from edge_server.cli import new as cli_new
from edge_server.config import EDGE_SECTION
from edge_server.registry import configure
from edge_server.serving import runner
from edge_server.serving import serve as serve_module
from edge_server.serving.arbiter import LOG_FORMAT
from pyedge import ConfigError, PyEdgeError, __version__
from pyedge.config import LoadedConfig

EXIT_CONFIG = 2
COMMANDS_GROUP = "pyedge.commands"
DEFAULT_URL = "http://127.0.0.1:8000"
PROMPT = "pyedge> "
# ctx.obj keys: the API's address, --config, and whether the command runs in `pyedge shell`.
URL = "url"
CONFIG_FILE = "config_file"
TOKEN = "token"
IN_SHELL = "in_shell"


class RootGroup(click.Group):
    """The `pyedge` group: its own commands, then those the installed services contribute."""

    @functools.cached_property
    def contributed(self) -> dict[str, click.Command]:
        """The commands of the `pyedge.commands` entry points, loaded on first use."""
        found: dict[str, click.Command] = {}
        for entry in entry_points(group=COMMANDS_GROUP):
            try:
                loaded = entry.load()
            except Exception as exc:
                # One broken plugin must not take `pyedge run` or the other commands down.
                click.echo(f"pyedge: cannot load the commands of {entry.name}: {exc}", err=True)
                continue
            for command in loaded if isinstance(loaded, list | tuple) else [loaded]:
                if isinstance(command, click.Command) and command.name:
                    found.setdefault(command.name, command)
        return found

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """A built-in command wins over a contributed one of the same name."""
        return super().get_command(ctx, cmd_name) or self.contributed.get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command name, sorted."""
        return sorted({*super().list_commands(ctx), *self.contributed})


@click.group(cls=RootGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pyedge", message="%(prog)s %(version)s")
@click.option(
    "--config", "config_file", metavar="FILE", help="TOML settings file (else EDGE_CONFIG)"
)
@click.option(
    "--url",
    envvar="PYEDGE_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="the edge-server the service commands talk to (else PYEDGE_URL)",
)
@click.option(
    "--token",
    envvar="PYEDGE_TOKEN",
    default=None,
    help="the API token the service commands send (else PYEDGE_TOKEN)",
)
@click.pass_context
def root(ctx: click.Context, config_file: str | None, url: str, token: str | None) -> None:
    """PyEdge: IoT services on edge devices."""
    obj = ctx.ensure_object(dict)
    obj[URL] = url.rstrip("/")
    obj[CONFIG_FILE] = config_file
    obj[TOKEN] = token


def _settings(ctx: click.Context, overrides: dict[str, Any]) -> LoadedConfig:
    """The validated settings, or exit 2 with the key named; sets up logging."""
    try:
        settings, _services = configure(overrides)
    except PyEdgeError as exc:
        click.echo(f"pyedge: configuration error: {exc}", err=True)
        ctx.exit(EXIT_CONFIG)
    logging.basicConfig(level=settings["EDGE_LOG_LEVEL"], format=LOG_FORMAT)
    return settings


def _overrides(config_file: str | None, **values: Any) -> dict[str, Any]:
    """The settings given on the command line, by their flat keys (unset ones left out)."""
    prefix = EDGE_SECTION.prefix
    keyed = {"EDGE_CONFIG": config_file, **{f"{prefix}{k.upper()}": v for k, v in values.items()}}
    return {key: value for key, value in keyed.items() if value is not None}


@root.command(short_help="Solo mode: Mosquitto and the edge-server with every service.")
@click.option("--host", help="HTTP address (EDGE_HTTP_HOST, default 0.0.0.0)")
@click.option("--port", type=int, help="HTTP port (EDGE_HTTP_PORT, default 8000)")
@click.option("--mqtt-port", type=int, help="broker port (EDGE_MQTT_PORT, default 1883)")
@click.option("--data-dir", help="data directory (EDGE_DATA_DIR, default ./data)")
@click.option(
    "--no-broker",
    is_flag=True,
    help="use the broker at EDGE_MQTT_HOST instead of starting Mosquitto",
)
@click.option(
    "--tls",
    is_flag=True,
    help="serve HTTPS (EDGE_TLS): EDGE_TLS_CERT/KEY, else a self-signed certificate",
)
@click.pass_context
def run(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    mqtt_port: int | None,
    data_dir: str | None,
    no_broker: bool,
    tls: bool,
) -> None:
    """Solo mode: start Mosquitto and the edge-server with every service."""
    overrides = _overrides(
        ctx.obj[CONFIG_FILE],
        http_host=host,
        http_port=port,
        mqtt_port=mqtt_port,
        data_dir=data_dir,
        mqtt_embedded=False if no_broker else None,
        tls=True if tls else None,
    )
    settings = _settings(ctx, overrides)
    try:
        runner.run(settings, overrides)
    except ConfigError as exc:  # a setting only checked at start-up, such as EDGE_TLS_KEY
        click.echo(f"pyedge: configuration error: {exc}", err=True)
        ctx.exit(EXIT_CONFIG)
    except PyEdgeError as exc:
        click.echo(f"pyedge: {exc}", err=True)
        ctx.exit(1)


@root.command(short_help="Network mode: serve one service in a process of its own.")
@click.argument("slug")
@click.option("--host", help="HTTP address (EDGE_HTTP_HOST, default 0.0.0.0)")
@click.option("--port", type=int, help="HTTP port (EDGE_HTTP_PORT, default 8000)")
@click.option("--data-dir", help="data directory (EDGE_DATA_DIR, default ./data)")
@click.option(
    "--advertise-url",
    help="base URL other nodes reach it at (EDGE_ADVERTISE_URL, default http://<hostname>:<port>)",
)
@click.option("--tls", is_flag=True, help="serve HTTPS (EDGE_TLS), as `pyedge run --tls`")
@click.pass_context
def serve(
    ctx: click.Context,
    slug: str,
    host: str | None,
    port: int | None,
    data_dir: str | None,
    advertise_url: str | None,
    tls: bool,
) -> None:
    """Serve the service SLUG on its own: its API on its own port, announced on the broker.

    It logs in to the broker with EDGE_MQTT_USERNAME/PASSWORD or EDGE_MQTT_CREDENTIALS,
    else with what `pyedge join` saved, else with the service's account made by
    `pyedge run` in the same data dir.
    """
    overrides = _overrides(
        ctx.obj[CONFIG_FILE],
        http_host=host,
        http_port=port,
        data_dir=data_dir,
        advertise_url=advertise_url,
        tls=True if tls else None,
        services=slug,
    )
    settings = _settings(ctx, overrides)
    try:
        serve_module.serve(settings, overrides, slug)
    except ConfigError as exc:
        click.echo(f"pyedge: configuration error: {exc}", err=True)
        ctx.exit(EXIT_CONFIG)
    except PyEdgeError as exc:
        click.echo(f"pyedge: {exc}", err=True)
        ctx.exit(1)


@root.command(short_help="Mosquitto on its own (the compose bundle's mqtt container).")
@click.option("--data-dir", help="data directory (EDGE_DATA_DIR, default ./data)")
@click.option(
    "--credentials",
    type=click.Path(file_okay=False, path_type=Path),
    help="hand each NAME directory in it NAME's broker login (NAME/credentials.json)",
)
@click.pass_context
def broker(ctx: click.Context, data_dir: str | None, credentials: Path | None) -> None:
    """Make the broker's accounts, hand out the services' logins, then become Mosquitto.

    It listens on EDGE_MQTT_BIND:EDGE_MQTT_PORT, with EDGE_MQTT_TLS also on
    EDGE_MQTT_TLS_PORT, as `pyedge run`'s embedded broker does.
    """
    overrides = _overrides(ctx.obj[CONFIG_FILE], data_dir=data_dir)
    settings = _settings(ctx, overrides)
    try:
        standalone_broker.exec_broker(settings, credentials)
    except ConfigError as exc:
        click.echo(f"pyedge: configuration error: {exc}", err=True)
        ctx.exit(EXIT_CONFIG)
    except (PyEdgeError, OSError) as exc:
        click.echo(f"pyedge: {exc}", err=True)
        ctx.exit(1)


@root.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the effective settings and where each came from."""
    settings = _settings(ctx, _overrides(ctx.obj[CONFIG_FILE]))
    for key in sorted(settings):
        if key in settings.sources:
            value = settings[key]
            if key in settings.secrets and value is not None:
                value = "(set; not shown)"
            click.echo(f"{key}={value}  # {settings.sources[key]}")


def _lines() -> Iterator[str]:
    """The shell's input lines until EOF; Ctrl-C only drops the line being typed."""
    while True:
        try:
            line = input(PROMPT)
        except EOFError:
            click.echo()
            return
        except KeyboardInterrupt:
            click.echo()
            continue
        yield line


@root.command()
@click.pass_context
def shell(ctx: click.Context) -> None:
    """An interactive prompt taking the same commands (help, exit)."""
    if ctx.obj.get(IN_SHELL):
        raise click.UsageError("already in the pyedge shell")
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    outer = ["--url", ctx.obj[URL]]
    if ctx.obj[TOKEN]:
        outer += ["--token", ctx.obj[TOKEN]]
    if ctx.obj[CONFIG_FILE]:
        outer += ["--config", ctx.obj[CONFIG_FILE]]
    click.echo(f"pyedge {__version__} at {ctx.obj[URL]}: 'help' lists the commands, 'exit' ends")
    for line in _lines():
        try:
            words = shlex.split(line)
        except ValueError as exc:
            click.echo(f"error: {exc}", err=True)
            continue
        if not words:
            continue
        if words[0] in ("exit", "quit"):
            return
        if words[0] == "help":
            words = [*words[1:], "--help"]
        invoke([*outer, *words], obj={IN_SHELL: True})


root.add_command(cli_auth.user)
root.add_command(cli_auth.token)
root.add_command(cli_mqtt.mqtt)
root.add_command(cli_network.join)
root.add_command(cli_network.leave)
root.add_command(cli_new.new)


def invoke(args: list[str] | None, obj: dict[str, Any] | None = None) -> int:
    """Run the root group on `args` in-process; its exit code, click's errors shown."""
    try:
        result = root.main(args=args, prog_name="pyedge", standalone_mode=False, obj=obj)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    except Exception as exc:
        if not obj or not obj.get(IN_SHELL):
            raise
        # In the shell, a command's failure must not end the session.
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        return 1
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pyedge` console script; returns the exit code (argv: sys.argv)."""
    return invoke(argv)


if __name__ == "__main__":
    sys.exit(main())
