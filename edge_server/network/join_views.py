"""The hub's side of joining (EDGE_ROLE=hub): nodes' broker accounts over its API.

`POST /api/nodes/<node>/join` gives the node an account `<slug>@<node>` on the hub's
embedded Mosquitto for each service it serves (confined to `<root>/<node>/<slug>/#`), with
the broker's address, its CA and the hub's public key; `DELETE /api/nodes/<node>` revokes
them. The joined nodes are kept in `<data>/mosquitto/nodes.json`, so that `pyedge run`
plans their accounts at every start. After a change, `passwd` and `acl` are rewritten and
the running Mosquitto reloads them (SIGHUP, found by its pid file); the answer waits until
logins show the change is live: every account of a joining node accepted, every revoked
one refused. Mosquitto 2.0 re-checks the connected clients at the reload: a revoked
account's connections are closed then, and its reconnects refused.

The node's side (`pyedge join`, `pyedge leave`) is edge_server.network.join.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any, NoReturn

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import current_app, request
from flask.views import MethodView
from flask_smorest import abort
from marshmallow import Schema, fields, validate
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_server.broker.accounts import (
    AccountError,
    check_joined,
    ensure_accounts,
    hub_accounts,
    joined_account_name,
    load_accounts,
    load_nodes,
    save_nodes,
)
from edge_server.broker.embedded import (
    LOOPBACK,
    BrokerError,
    broker_dir,
    broker_listeners,
    broker_pid,
    reload_broker,
)
from edge_server.network.identity import hub_public_pem
from edge_server.network.join import NO_JOINED_NODE, utc_now
from edge_server.network.remote import EXTENSION as REMOTE_EXTENSION
from edge_server.registry import installed_services
from pyedge.auth import deny
from pyedge.config import NODE_ID_RE, SLUG_RE
from pyedge.security import Blueprint, Role, requires
from pyedge.service import topic_root

logger = logging.getLogger(__name__)

LOCK_FILE = "nodes.lock"
# How long a short-lived client waits for the broker's CONNACK or PUBACKs.
SESSION_WAIT_S = 2.0
# How long a join or leave waits for Mosquitto to show that it reloaded the accounts.
RELOAD_TIMEOUT_S = 5.0
WILDCARD_BINDS = ("0.0.0.0", "::")

blp = Blueprint(
    "join",
    __name__,
    url_prefix="/api",
    description="Nodes joining this hub: their broker accounts (EDGE_ROLE=hub).",
)


class JoinRequestSchema(Schema):
    services = fields.List(
        fields.String(validate=validate.Regexp(SLUG_RE, error="not a service slug")),
        required=True,
        validate=validate.Length(min=1, max=64),
        metadata={"description": "the slugs the node serves (a join adds to those it had)"},
    )
    machine = fields.String(
        load_default="",
        validate=validate.Length(max=64),
        metadata={"description": "the node's platform.machine(), e.g. aarch64"},
    )


class JoinBrokerSchema(Schema):
    host = fields.String(metadata={"description": "the host name the node reached the hub by"})
    port = fields.Integer()
    tls = fields.Boolean()


class JoinLoginSchema(Schema):
    username = fields.String()
    password = fields.String()


class JoinAnswerSchema(Schema):
    node = fields.String()
    site = fields.String()
    broker = fields.Nested(JoinBrokerSchema)
    accounts = fields.Dict(keys=fields.String(), values=fields.Nested(JoinLoginSchema))
    ca = fields.String(
        allow_none=True,
        metadata={"description": "PEM the node verifies the broker with; null: no TLS, or a "
                  "certificate from a CA the system trusts"},
    )  # fmt: skip
    hub_key = fields.String(metadata={"description": "the hub's Ed25519 public key (PEM)"})
    hub_url = fields.String()


def _conflict(message: str) -> NoReturn:
    deny(HTTPStatus.CONFLICT, message)


def _is_loopback(bind: str) -> bool:
    if bind in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def _listener(settings: Any, directory: Path) -> tuple[int, bool, Path | None]:
    """Port, TLS and certificate of the listener other machines reach the broker at.

    409 when there is none: no embedded broker, or only loopback listeners; 503 when the
    broker is not running. Read from what the broker was started with (LISTENERS_FILE):
    the app's own settings keep EDGE_MQTT_TLS off, its bus being on the plain listener.
    """
    if not settings["EDGE_MQTT_EMBEDDED"]:
        _conflict(
            "this hub runs no embedded broker (EDGE_MQTT_EMBEDDED=0): the accounts of joined "
            "nodes live on the broker `pyedge run` starts; set EDGE_MQTT_EMBEDDED=1"
        )
    try:
        if broker_pid(directory) is None:
            raise BrokerError("no live pid file")
        listeners = broker_listeners(directory)
    except BrokerError:
        deny(
            HTTPStatus.SERVICE_UNAVAILABLE,
            "the embedded Mosquitto is not running; restart `pyedge run`",
        )
    tls, plain = listeners.get("tls"), listeners["plain"]
    if tls is not None:
        if _is_loopback(tls["bind"]):
            _conflict(
                f"the broker's TLS listener binds {tls['bind']} only: other machines cannot "
                "reach it; set EDGE_MQTT_TLS_BIND=0.0.0.0"
            )
        return tls["port"], True, Path(tls["cert"])
    if _is_loopback(plain["bind"]):
        _conflict(
            f"the broker listens on {plain['bind']} only and EDGE_MQTT_TLS is off: other "
            "machines cannot reach it; set EDGE_MQTT_TLS=1 (passwords then cross the network "
            "encrypted) or EDGE_MQTT_BIND=0.0.0.0"
        )
    return plain["port"], False, None


def _ca_pem(cert: Path) -> str | None:
    """The PEM the node verifies the broker's certificate with: a self-signed one in it."""
    certificates = x509.load_pem_x509_certificates(cert.read_bytes())
    # The leaf when it is its own CA (generated), else a root the chain file carries; a
    # certificate from a public CA gives null: the node's system CAs verify it.
    for certificate in certificates:
        if certificate.issuer == certificate.subject:
            return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return None


def _host() -> str:
    """The host name the caller reached the hub by (without the port)."""
    host = request.host
    if host.startswith("["):  # [::1]:8000
        return host[1 : host.index("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@contextmanager
def _nodes_locked(directory: Path) -> Iterator[None]:
    """One join or leave at a time (threads of the worker, or another process)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (directory / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _plain_endpoint(directory: Path) -> tuple[str, int]:
    """Where this process reaches the embedded broker's plain listener."""
    plain = broker_listeners(directory)["plain"]
    bind = plain["bind"]
    host = "127.0.0.1" if bind in WILDCARD_BINDS or bind == "localhost" else bind
    return host, plain["port"]


@contextmanager
def _short_session(
    host: str, port: int, login: dict[str, str]
) -> Iterator[tuple[mqtt.Client, bool | None]]:
    """A client logging in as `login` for a moment, and whether the broker accepted it.

    None: no answer within SESSION_WAIT_S. Raises OSError when the broker is unreachable.
    """
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv311)
    client.username_pw_set(login["username"], login["password"])
    answers: list[bool] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: answers.append(not reason.is_failure)
    try:
        client.connect(host, port, keepalive=10)
        deadline = time.monotonic() + SESSION_WAIT_S
        while not answers and time.monotonic() < deadline:
            client.loop(0.05)
        yield client, (answers[0] if answers else None)
    finally:
        try:
            client.disconnect()
            client.loop(0.01)  # sends the DISCONNECT and closes the socket
        except OSError:
            pass


def login_accepted(host: str, port: int, username: str, password: str) -> bool | None:
    """Whether the broker accepts the login (CONNACK), None if it did not answer in time."""
    try:
        with _short_session(host, port, {"username": username, "password": password}) as (
            _client,
            accepted,
        ):
            return accepted
    except OSError:
        return None


def clear_retained(host: str, port: int, login: dict[str, str], topics: list[str]) -> bool:
    """Clear retained messages (empty, retained, QoS 1) as `login`; False if not all acked."""
    try:
        with _short_session(host, port, login) as (client, accepted):
            if not accepted:
                return False
            infos = [client.publish(topic, b"", qos=1, retain=True) for topic in topics]
            deadline = time.monotonic() + SESSION_WAIT_S
            while not all(info.is_published() for info in infos) and time.monotonic() < deadline:
                client.loop(0.05)
            return all(info.is_published() for info in infos)
    except OSError:
        return False


def _apply(settings: Any, nodes: dict[str, dict[str, Any]], revoke: Iterable[str] = ()) -> Any:
    """Plan and write the accounts with `nodes` (409 on a clash), then save `nodes`."""
    directory = broker_dir(settings)
    try:
        specs = hub_accounts(settings, installed_services(), nodes)
    except AccountError as exc:
        _conflict(str(exc))
    accounts = ensure_accounts(directory, specs, topic_root(settings["EDGE_SITE"]), revoke)
    save_nodes(directory, nodes)
    return accounts


def _reload_and_wait(settings: Any, logins: Iterable[dict[str, str]], accepted: bool) -> None:
    """SIGHUP the broker; wait until the login of every one of `logins` is `accepted`.

    Every one, not the first: on a join adding a service, the node's other accounts were
    valid before the reload, and only the new one shows that the broker took the change.
    """
    directory = broker_dir(settings)
    try:
        reload_broker(directory)
        host, port = _plain_endpoint(directory)
    except BrokerError as exc:
        logger.warning("%s: the accounts take effect at its next start", exc)
        return
    pending = list(logins)
    deadline = time.monotonic() + RELOAD_TIMEOUT_S
    while True:
        pending = [
            login
            for login in pending
            if login_accepted(host, port, login["username"], login["password"]) is not accepted
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            abort(
                HTTPStatus.SERVICE_UNAVAILABLE,
                message=f"the broker did not take the changed accounts within "
                f"{RELOAD_TIMEOUT_S:.0f} s ({pending[0]['username']} still "
                f"{'refused' if accepted else 'accepted'}); see {directory / 'mosquitto.log'}",
            )
        time.sleep(0.05)


# Joins and leaves one at a time in this worker; _nodes_locked also covers other processes.
_join_lock = threading.Lock()


@blp.route("/nodes/<node>/join")
class Join(MethodView):
    @requires(Role.ADMIN)
    @blp.arguments(JoinRequestSchema)
    @blp.response(200, JoinAnswerSchema)
    @blp.alt_response(409, description="No broker other machines can reach, or a bad node id")
    @blp.alt_response(503, description="The embedded broker is not running")
    def post(self, body: dict[str, Any], node: str) -> dict[str, Any]:
        """Join a node: its broker accounts (the same again for a node that joined before)."""
        settings = current_app.config
        if not NODE_ID_RE.fullmatch(node):
            abort(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                message="bad node id",
                errors={"path": {"node": ["letters, digits, '.', '_' or '-', at most 64"]}},
            )
        if node == settings["EDGE_NODE_ID"]:
            _conflict(f"{node} is this hub's own node id: join with another (--node)")
        directory = broker_dir(settings)
        port, tls, cert = _listener(settings, directory)
        with _join_lock, _nodes_locked(directory):
            nodes = load_nodes(directory)
            entry = dict(nodes.get(node) or {"joined_at": utc_now()})
            entry["services"] = check_joined(node, [*entry.get("services", ()), *body["services"]])
            entry["machine"] = body["machine"] or entry.get("machine", "")
            nodes[node] = entry
            accounts = _apply(settings, nodes)
            logins = {
                slug: accounts.login(joined_account_name(node, slug)) for slug in entry["services"]
            }
            _reload_and_wait(settings, logins.values(), accepted=True)
        logger.info("node %s joined with %s", node, ", ".join(entry["services"]))
        return {
            "node": node,
            "site": settings["EDGE_SITE"],
            "broker": {"host": _host(), "port": port, "tls": tls},
            "accounts": logins,
            "ca": _ca_pem(cert) if cert is not None else None,
            "hub_key": hub_public_pem(
                settings["EDGE_DATA_DIR"], settings.get("EDGE_HUB_PUBLIC_KEY")
            ),
            "hub_url": request.host_url.rstrip("/"),
        }


@blp.route("/nodes/<node>")
class Leave(MethodView):
    @requires(Role.ADMIN)
    @blp.response(204)
    @blp.alt_response(404, description="No such joined node")
    def delete(self, node: str) -> None:
        """A node leaves: its broker accounts are revoked, its services forgotten."""
        settings = current_app.config
        directory = broker_dir(settings)
        with _join_lock, _nodes_locked(directory):
            nodes = load_nodes(directory)
            if node not in nodes:
                abort(HTTPStatus.NOT_FOUND, message=f"{NO_JOINED_NODE} {node!r}")
            entry = nodes.pop(node)
            names = [joined_account_name(node, slug) for slug in entry.get("services", ())]
            # Their passwords, to see the broker refuse them once it has reloaded.
            before = load_accounts(directory)
            logins = [before.login(name) for name in names if name in before.accounts]
            _clear_announcements(settings, directory, node, entry.get("services", ()))
            _apply(settings, nodes, revoke=names)
            if logins:
                _reload_and_wait(settings, logins, accepted=False)
        registry = current_app.extensions.get(REMOTE_EXTENSION)
        if registry is not None:
            registry.forget(node)
        logger.info("node %s left: accounts %s revoked", node, ", ".join(names))


def _clear_announcements(
    settings: Any, directory: Path, node: str, services: Iterable[str]
) -> None:
    """Clear a leaving node's retained announcements, statuses and the sessions of the
    operations they listed, with its own accounts.

    Only its accounts may write there; once revoked, nobody could, and every hub would
    learn its services again from the retained announcements at each start.
    """
    root = topic_root(settings["EDGE_SITE"])
    accounts = load_accounts(directory)
    registry = current_app.extensions.get(REMOTE_EXTENSION)
    try:
        host, port = _plain_endpoint(directory)
    except BrokerError:
        return
    for slug in services:
        name = joined_account_name(node, slug)
        if name not in accounts.accounts:
            continue
        topics = [f"{root}/{node}/{slug}/announce", f"{root}/{node}/{slug}/status"]
        known = registry.get(node, slug) if registry is not None else None
        topics += [f"{root}/{node}/{slug}/ops/{op['name']}" for op in (known.ops if known else ())]
        if not clear_retained(host, port, accounts.login(name), topics):
            logger.warning("could not clear the retained announcement of %s/%s", node, slug)
