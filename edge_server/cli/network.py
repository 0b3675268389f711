"""`pyedge join` and `pyedge leave`: this device's services on a hub's broker (network mode).

Both need an admin token of the hub (the root group's --token, or PYEDGE_TOKEN) and work
on this device's data dir, where `pyedge serve` then finds the accounts (edge_server.network.join).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import click

from edge_server.config import load_settings
from edge_server.network.join import JoinError, join_hub, leave_hub, network_dir
from edge_server.registry import installed_services
from pyedge import PyEdgeError

EXIT_CONFIG = 2
data_dir_option = click.option("--data-dir", help="data directory (EDGE_DATA_DIR, default ./data)")
insecure_http_option = click.option(
    "--insecure-http",
    is_flag=True,
    help="allow a plain http:// hub beyond loopback: the token, the broker passwords and the "
    "hub's key then cross the network in clear",
)


def _settings(ctx: click.Context, data_dir: str | None) -> Any:
    root = ctx.find_root().obj or {}
    overrides = {"EDGE_DATA_DIR": data_dir, "EDGE_CONFIG": root.get("config_file")}
    try:
        return load_settings({k: v for k, v in overrides.items() if v is not None})
    except PyEdgeError as exc:
        click.echo(f"pyedge: configuration error: {exc}", err=True)
        ctx.exit(EXIT_CONFIG)


def _token(ctx: click.Context) -> str | None:
    token: str | None = (ctx.find_root().obj or {}).get("token")
    return token


@click.command(short_help="Join a hub: accounts on its broker for this device's services.")
@click.argument("hub_url")
@click.option("--node", help="this device's node id on the hub (default EDGE_NODE_ID)")
@click.option("--services", help="comma-separated service slugs (default: every installed service)")
@data_dir_option
@click.option(
    "--ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="the hub's HTTPS certificate when it is self-signed (its data/tls/server.crt)",
)
@insecure_http_option
@click.pass_context
def join(
    ctx: click.Context,
    hub_url: str,
    node: str | None,
    services: str | None,
    data_dir: str | None,
    ca: Path | None,
    insecure_http: bool,
) -> None:
    """Join the hub at HUB_URL (https://...); run the services with `pyedge serve SLUG` afterwards.

    Joining again adds services and gives the same passwords. A plain http:// HUB_URL is
    refused, but on loopback, unless --insecure-http is given.
    """
    token = _token(ctx)
    if not token:
        raise click.UsageError("joining needs an admin token of the hub: --token or PYEDGE_TOKEN")
    settings = _settings(ctx, data_dir)
    try:
        slugs = (
            [s.strip() for s in services.split(",") if s.strip()]
            if services is not None
            else sorted(installed_services())
        )
        saved = join_hub(
            settings["EDGE_DATA_DIR"],
            hub_url,
            token,
            node or settings["EDGE_NODE_ID"],
            slugs,
            platform.machine(),
            ca,
            insecure_http=insecure_http,
            hub_public_key=settings.get("EDGE_HUB_PUBLIC_KEY"),
        )
    except PyEdgeError as exc:
        click.echo(f"pyedge: {exc}", err=True)
        ctx.exit(1)
    broker = saved["broker"]
    click.echo(f"joined {saved['hub_url']} as node {saved['node']}")
    click.echo(f"broker:   {broker['host']}:{broker['port']}{' (TLS)' if broker['tls'] else ''}")
    click.echo(f"services: {', '.join(sorted(saved['accounts']))}")
    click.echo(f"saved in: {network_dir(settings['EDGE_DATA_DIR'])}")
    click.echo("start each service with `pyedge serve SLUG`")


@click.command(short_help="Leave the hub this device joined: its broker accounts revoked.")
@data_dir_option
@click.option(
    "--force", is_flag=True, help="remove the files even if the hub cannot be told (unreachable)"
)
@insecure_http_option
@click.pass_context
def leave(ctx: click.Context, data_dir: str | None, force: bool, insecure_http: bool) -> None:
    """Leave the hub: it revokes this node's broker accounts; the join files are removed."""
    settings = _settings(ctx, data_dir)
    try:
        info = leave_hub(
            settings["EDGE_DATA_DIR"],
            _token(ctx),
            force,
            insecure_http,
            hub_public_key=settings.get("EDGE_HUB_PUBLIC_KEY"),
        )
    except JoinError as exc:
        click.echo(f"pyedge: {exc}", err=True)
        if not force:
            click.echo("the join files are kept; `pyedge leave --force` removes them", err=True)
        ctx.exit(1)
    click.echo(f"node {info['node']} left {info['hub_url']}")
