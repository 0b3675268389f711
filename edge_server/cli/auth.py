"""`pyedge user|token`: the node's accounts, edited on the device (the data dir) itself.

This is the headless path for scripts and CI: `pyedge user add NAME --role admin` and
`pyedge token create NAME --role admin` need no running server and no first-run code;
whoever can write the data dir owns the node anyway.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from edge_server.config import load_settings
from pyedge import PyEdgeError
from pyedge.accounts import AccountStore
from pyedge.security import USER_ROLES, Role

ROLE_CHOICE = click.Choice([role.label for role in USER_ROLES])
# Every command here works on one data dir: the node's, or the one named.
data_dir_option = click.option("--data-dir", help="data directory (EDGE_DATA_DIR, default ./data)")


@contextmanager
def accounts(ctx: click.Context, data_dir: str | None) -> Iterator[AccountStore]:
    """The data dir's account store; a failure is `pyedge: <reason>` and exit 1."""
    overrides = {"EDGE_DATA_DIR": data_dir} if data_dir else {}
    config_file = (ctx.find_root().obj or {}).get("config_file")
    if config_file:
        overrides["EDGE_CONFIG"] = config_file
    try:
        settings = load_settings(overrides)
        store = AccountStore(Path(settings["EDGE_DATA_DIR"]) / "accounts.db")
    except PyEdgeError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        yield store
    except PyEdgeError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()


def actor() -> str:
    """How the audit log names a change made here: the local account that ran pyedge."""
    return f"cli:{getpass.getuser()}"


@click.group()
def user() -> None:
    """Users of the dashboard and the API (on this device's data dir)."""


@user.command("add")
@click.argument("name")
@click.option("--role", type=ROLE_CHOICE, required=True, help="viewer, operator or admin")
@click.option("--password-stdin", is_flag=True, help="read the password from stdin (scripts)")
@data_dir_option
@click.pass_context
def user_add(
    ctx: click.Context, name: str, role: str, password_stdin: bool, data_dir: str | None
) -> None:
    """Create a user; asks for the password (twice) unless --password-stdin."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    with accounts(ctx, data_dir) as store:
        store.add_user(name, password, Role.parse(role))
        store.audit(actor(), "user add", name, None, "local", f"role {role}")
    click.echo(f"user {name} ({role}) created")


@user.command("ls")
@data_dir_option
@click.pass_context
def user_ls(ctx: click.Context, data_dir: str | None) -> None:
    """List the users."""
    with accounts(ctx, data_dir) as store:
        for item in store.users():
            click.echo(f"{item['name']}\t{item['role']}\t{item['created_at']}")


@user.command("rm")
@click.argument("name")
@data_dir_option
@click.pass_context
def user_rm(ctx: click.Context, name: str, data_dir: str | None) -> None:
    """Delete a user."""
    with accounts(ctx, data_dir) as store:
        store.delete_user(name)
        store.audit(actor(), "user rm", name, None, "local")
    click.echo(f"user {name} deleted")


@click.group()
def token() -> None:
    """API tokens (on this device's data dir)."""


@token.command("create")
@click.argument("name")
@click.option("--role", type=ROLE_CHOICE, required=True, help="viewer, operator or admin")
@click.option("--expires-days", type=click.FloatRange(min=0.001), help="it stops working then")
@data_dir_option
@click.pass_context
def token_create(
    ctx: click.Context, name: str, role: str, expires_days: float | None, data_dir: str | None
) -> None:
    """Create a token and print it: the only time it can be read."""
    with accounts(ctx, data_dir) as store:
        secret = store.create_token(name, Role.parse(role), expires_days)
        store.audit(actor(), "token create", name, None, "local", f"role {role}")
    # Only the token on stdout, so that a script can take it: TOKEN=$(pyedge token create ...)
    click.echo(secret)


@token.command("ls")
@data_dir_option
@click.pass_context
def token_ls(ctx: click.Context, data_dir: str | None) -> None:
    """List the tokens (never the tokens themselves)."""
    with accounts(ctx, data_dir) as store:
        for item in store.tokens():
            click.echo(
                f"{item['name']}\t{item['role']}\tcreated {item['created_at']}\t"
                f"last used {item['last_used_at'] or 'never'}\t"
                f"expires {item['expires_at'] or 'never'}"
            )


@token.command("revoke")
@click.argument("name")
@data_dir_option
@click.pass_context
def token_revoke(ctx: click.Context, name: str, data_dir: str | None) -> None:
    """Revoke a token: it stops working at once."""
    with accounts(ctx, data_dir) as store:
        store.revoke_token(name)
        store.audit(actor(), "token revoke", name, None, "local")
    click.echo(f"token {name} revoked")
