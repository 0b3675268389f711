"""`pyedge mqtt`: the broker's accounts, read from the data dir, for setting up consumers.

Only the user who runs pyedge can read the accounts file (0600): that is the admin on
the device.
"""

from __future__ import annotations

import json
import shlex
import socket
from pathlib import Path
from typing import Any

import click

from edge_server.broker.accounts import Account, BrokerAccounts, load_accounts
from edge_server.broker.embedded import LOOPBACK
from edge_server.config import load_settings
from edge_server.security.tls import CERT_FILE, TLS_DIR
from pyedge import PyEdgeError

EXIT_CONFIG = 2
WILDCARD_BINDS = ("0.0.0.0", "::")


@click.group()
def mqtt() -> None:
    """The broker: its accounts, for mosquitto_sub, Home Assistant, Node-RED, Telegraf."""


@mqtt.command()
@click.argument("account", required=False)
@click.option("--data-dir", help="data directory (EDGE_DATA_DIR, default ./data)")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='print {"username", "password"}: a file for EDGE_MQTT_CREDENTIALS',
)
@click.pass_context
def credentials(
    ctx: click.Context, account: str | None, data_dir: str | None, as_json: bool
) -> None:
    """List the accounts and what each may do, or print ACCOUNT's login."""
    # The root group's --config (the key it keeps it under, read without importing it).
    overrides: dict[str, Any] = {"EDGE_CONFIG": (ctx.obj or {}).get("config_file")}
    if data_dir is not None:
        overrides["EDGE_DATA_DIR"] = data_dir
    try:
        settings = load_settings({k: v for k, v in overrides.items() if v is not None})
    except PyEdgeError as exc:
        click.echo(f"pyedge: configuration error: {exc}", err=True)
        ctx.exit(EXIT_CONFIG)
    try:
        accounts = load_accounts(settings["EDGE_DATA_DIR"] / "mosquitto")
        chosen = accounts.get(account) if account is not None else None
    except PyEdgeError as exc:
        click.echo(f"pyedge: {exc}", err=True)
        ctx.exit(1)
    if chosen is None:
        _list(accounts)
    elif as_json:
        click.echo(json.dumps({"username": chosen.username, "password": chosen.password}))
    else:
        _show(chosen, accounts, settings)


def _list(accounts: BrokerAccounts) -> None:
    width = max(len(name) for name in accounts.accounts)
    for name, account in accounts.accounts.items():
        spec = account.spec
        click.echo(f"{name:<{width}}  {spec.description}")
        click.echo(f"{'':<{width}}  read:  {', '.join(spec.read) or 'nothing'}")
        click.echo(f"{'':<{width}}  write: {', '.join(spec.write) or 'nothing'}")
    click.echo("\n`pyedge mqtt credentials ACCOUNT` prints an account's login.")


def _show(account: Account, accounts: BrokerAccounts, settings: dict[str, Any]) -> None:
    spec = account.spec
    bind = settings["EDGE_MQTT_BIND"]
    host = socket.gethostname() if bind in WILDCARD_BINDS else bind
    login = f"-u {shlex.quote(account.username)} -P {shlex.quote(account.password)}"
    topic = shlex.quote(f"{accounts.root}/#")
    click.echo(f"account:  {spec.name} ({spec.description})")
    click.echo(f"read:     {', '.join(spec.read) or 'nothing'}")
    click.echo(f"write:    {', '.join(spec.write) or 'nothing'}")
    click.echo(f"username: {account.username}")
    click.echo(f"password: {account.password}")
    click.echo(f"host:     {host}")
    click.echo(f"port:     {settings['EDGE_MQTT_PORT']}")
    lines = [f"mosquitto_sub -h {host} -p {settings['EDGE_MQTT_PORT']} {login} -t {topic} -v"]
    if bind in LOOPBACK:
        lines[0] += "   # on this machine"
    if settings["EDGE_MQTT_TLS"]:
        tls_bind = settings["EDGE_MQTT_TLS_BIND"]
        tls_host = socket.gethostname() if tls_bind in WILDCARD_BINDS else tls_bind
        given: Path | None = settings["EDGE_MQTT_CA"] or settings["EDGE_TLS_CERT"]
        # Absolute: the line must work from any directory (and the file be copied from it).
        ca = (given or settings["EDGE_DATA_DIR"] / TLS_DIR / CERT_FILE).resolve()
        click.echo(f"tls_port: {settings['EDGE_MQTT_TLS_PORT']}")
        click.echo(f"cafile:   {ca}")
        lines.append(
            f"mosquitto_sub -h {tls_host} -p {settings['EDGE_MQTT_TLS_PORT']} "
            f"--cafile {shlex.quote(str(ca))} {login} -t {topic} -v"
        )
    click.echo()
    for line in lines:
        click.echo(line)
