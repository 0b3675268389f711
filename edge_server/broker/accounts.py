"""The broker's accounts and ACL, generated into the data dir for the embedded Mosquitto.

Each account may write only its own subtree: `edge-server` (solo mode's one process,
which hosts every service) the node's, each service `<root>/<node>/<slug>/#`, the
device-service also its Home Assistant discovery topics; `controller` (and the
edge-server) may call any service's operations (`<root>/+/+/ops/+/call`); `subscriber`
only reads, and `homeassistant` reads and may switch actuators. Every account reads
`<root>/#`.

In `<data_dir>/mosquitto/`: `accounts.json` (0600, the passwords and what each account
may do), and from it Mosquitto's `passwd` (mosquitto_passwd's `$7$` format) and `acl`.
Passwords are made once and kept; every start rewrites `passwd` and `acl` from the
current plan, so a changed node id or site takes effect.

A hub also plans the accounts of the nodes that joined it (`pyedge join`), kept in
`nodes.json` there: `<slug>@<node>` for each service a node serves, confined to
`<root>/<node>/<slug>/#` like the hub's own service accounts. `@` is in no slug and no
node id, so these names can clash with no other account.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_server.files import write_atomic
from edge_server.registry import installed_services
from pyedge import PyEdgeError
from pyedge.config import NODE_ID_RE, SLUG_RE
from pyedge.service import topic_root

logger = logging.getLogger(__name__)

STORE_FILE = "accounts.json"
# The nodes that joined this hub: {node: {"services": [...], "machine", "joined_at"}}.
NODES_FILE = "nodes.json"
PASSWD_FILE = "passwd"
ACL_FILE = "acl"
EDGE_SERVER = "edge-server"
SUBSCRIBER = "subscriber"
HOME_ASSISTANT = "homeassistant"
CONTROLLER = "controller"
DEVICE_SERVICE = "device-service"
# The device-service's setting (device_service/config.py: discovery_prefix), read by key
# so that the edge-server imports nothing of the service.
DISCOVERY_PREFIX_KEY = "EDGE_DEVICE_SERVICE_DISCOVERY_PREFIX"
DEFAULT_DISCOVERY_PREFIX = "homeassistant"
# In place of a node id: the accounts of a broker that nodes with any id share (tests).
ANY_NODE = "+"
# Mosquitto 2's `$7$` is PBKDF2-SHA512; 101 rounds and a 12-byte salt are its defaults.
# The passwords are 192 random bits, which no dictionary holds, so more rounds would only
# cost the broker time at every connect.
PBKDF2_ROUNDS = 101
SALT_BYTES = 12
PASSWORD_BYTES = 24


class AccountError(PyEdgeError):
    """The accounts store is missing or unusable, or names no such account."""


@dataclass(frozen=True)
class AccountSpec:
    """An account's name, what it is for, and the topic filters it may read and write."""

    name: str
    description: str
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()


@dataclass(frozen=True)
class Account:
    """An account with its password."""

    spec: AccountSpec
    password: str = field(repr=False)

    @property
    def username(self) -> str:
        """The broker username: the account's name."""
        return self.spec.name


@dataclass(frozen=True)
class BrokerAccounts:
    """The accounts in a broker's directory, and the files Mosquitto reads."""

    directory: Path
    root: str
    accounts: dict[str, Account]

    @property
    def passwd(self) -> Path:
        """Mosquitto's password_file."""
        return self.directory / PASSWD_FILE

    @property
    def acl(self) -> Path:
        """Mosquitto's acl_file."""
        return self.directory / ACL_FILE

    def get(self, name: str) -> Account:
        """The account `name`; AccountError listing the names if there is none."""
        try:
            return self.accounts[name]
        except KeyError:
            raise AccountError(
                f"no broker account {name!r}; there are: {', '.join(self.accounts)}"
            ) from None

    def login(self, name: str = EDGE_SERVER) -> dict[str, str]:
        """`username` and `password` of `name` (BusSettings' keyword arguments)."""
        account = self.get(name)
        return {"username": account.username, "password": account.password}


def plan_accounts(
    *,
    root: str,
    node: str,
    services: Iterable[str],
    discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX,
) -> list[AccountSpec]:
    """The accounts of a node whose topics start `<root>/<node>/` (node may be ANY_NODE)."""
    slugs = sorted(set(services))
    everything = f"{root}/#"
    mine = f"{root}/{node}"
    # Operation calls over MQTT (pyedge.rpc): a service answers on its own subtree.
    calls = f"{root}/+/+/ops/+/call"
    has_device = DEVICE_SERVICE in slugs
    # Discovery topics are <prefix>/<component>/<node>/<object>/config: the node's own only.
    announce = (f"{discovery_prefix}/+/{node}/#",) if has_device else ()
    birth = (f"{discovery_prefix}/status",) if has_device else ()
    discovery = (f"{discovery_prefix}/#",) if has_device else ()
    specs = [
        AccountSpec(
            EDGE_SERVER,
            "solo mode's process: it hosts every service, so it writes for all of them",
            read=(everything, *birth),
            write=(f"{mine}/#", calls, *announce),
        )
    ]
    for slug in slugs:
        specs.append(
            _service_account(
                slug, f"the {slug} started on its own", root, node, slug, discovery_prefix
            )
        )
    specs.append(
        AccountSpec(
            CONTROLLER,
            "scripts and hubs driving operations over MQTT (pyedge.client.MqttClient)",
            read=(everything,),
            write=(calls,),
        )
    )
    specs.append(
        AccountSpec(
            SUBSCRIBER,
            "read-only: dashboards, Node-RED, Telegraf, mosquitto_sub",
            read=(everything, *discovery),
        )
    )
    if has_device:
        specs.append(
            AccountSpec(
                HOME_ASSISTANT,
                "Home Assistant: reads everything, switches actuators, announces its birth",
                read=(everything, *discovery),
                write=(*birth, f"{mine}/{DEVICE_SERVICE}/actuators/+/set"),
            )
        )
    names = [spec.name for spec in specs]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise AccountError(f"a service slug takes a reserved account name: {', '.join(clashes)}")
    return specs


def _service_account(
    name: str, description: str, root: str, node: str, slug: str, discovery_prefix: str
) -> AccountSpec:
    """A service's account: it writes its own subtree (device-service: also discovery),
    and the topics of its node's other services that it declares (`mqtt_writes`)."""
    declared = tuple(f"{root}/{node}/{topic}" for topic in declared_writes(slug))
    if slug != DEVICE_SERVICE:
        return AccountSpec(
            name, description, read=(f"{root}/#",), write=(f"{root}/{node}/{slug}/#", *declared)
        )
    return AccountSpec(
        name,
        description,
        read=(f"{root}/#", f"{discovery_prefix}/status"),
        write=(f"{root}/{node}/{slug}/#", f"{discovery_prefix}/+/{node}/#"),
    )


def declared_writes(slug: str) -> tuple[str, ...]:
    """What the installed service `slug` declares it publishes beyond its own subtree.

    Looked up by slug, so that a login directory or a joined node names only the slug; a
    service not installed here declares nothing.
    """
    service = installed_services().get(slug)
    return service.mqtt_writes if service is not None else ()


def joined_account_name(node: str, slug: str) -> str:
    """The broker account of service `slug` on a node that joined the hub."""
    return f"{slug}@{node}"


def check_joined(node: str, services: Iterable[str]) -> list[str]:
    """The node id and slugs checked (they go into ACL filters); the slugs sorted, unique."""
    if not NODE_ID_RE.fullmatch(node):
        raise AccountError(
            f"node id {node!r}: letters, digits, '.', '_' or '-' (at most 64, no '/', '+', '#')"
        )
    slugs = sorted(set(services))
    bad = [slug for slug in slugs if not SLUG_RE.fullmatch(slug)]
    if bad:
        raise AccountError(f"not a service slug: {', '.join(map(repr, bad))}")
    return slugs


def joined_accounts(
    *,
    root: str,
    nodes: Mapping[str, Mapping[str, Any]],
    discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX,
) -> list[AccountSpec]:
    """The accounts of the nodes that joined a hub: `<slug>@<node>` per service served."""
    specs = []
    for node in sorted(nodes):
        for slug in check_joined(node, nodes[node].get("services", ())):
            name = joined_account_name(node, slug)
            description = f"{slug} on the joined node {node}"
            specs.append(_service_account(name, description, root, node, slug, discovery_prefix))
    return specs


def hub_accounts(
    settings: Mapping[str, Any], services: Iterable[str], nodes: Mapping[str, Mapping[str, Any]]
) -> list[AccountSpec]:
    """The hub's own accounts (node_accounts) and those of the nodes that joined it."""
    joined = joined_accounts(
        root=topic_root(settings["EDGE_SITE"]),
        nodes=nodes,
        discovery_prefix=settings.get(DISCOVERY_PREFIX_KEY) or DEFAULT_DISCOVERY_PREFIX,
    )
    specs = node_accounts(settings, services) + joined
    names = [spec.name for spec in specs]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise AccountError(f"broker account names used twice: {', '.join(clashes)}")
    return specs


def load_nodes(directory: Path) -> dict[str, dict[str, Any]]:
    """The nodes that joined the hub whose broker lives in `directory` ({} if none)."""
    path = directory / NODES_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise AccountError(f"cannot read the joined nodes {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise AccountError(f"the joined nodes {path} are damaged: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise AccountError(f"the joined nodes {path} are damaged: expected {{node: {{...}}}}")
    return data


def save_nodes(directory: Path, nodes: Mapping[str, Mapping[str, Any]]) -> None:
    """Write the joined nodes (0600, atomically)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(directory / NODES_FILE, json.dumps(nodes, indent=2, sort_keys=True) + "\n")


def node_accounts(settings: Mapping[str, Any], services: Iterable[str]) -> list[AccountSpec]:
    """plan_accounts for the node the settings describe, with the installed `services`."""
    return plan_accounts(
        root=topic_root(settings["EDGE_SITE"]),
        node=settings["EDGE_NODE_ID"],
        services=services,
        discovery_prefix=settings.get(DISCOVERY_PREFIX_KEY) or DEFAULT_DISCOVERY_PREFIX,
    )


def ensure_accounts(
    directory: Path, specs: Iterable[AccountSpec], root: str, revoke: Iterable[str] = ()
) -> BrokerAccounts:
    """Make the missing passwords, keep the others; write the store, `passwd` and `acl`.

    The passwords of `revoke` (accounts that must not come back with them: a node that
    left) are forgotten; the names must not be in `specs`.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = directory / STORE_FILE
    passwords: dict[str, str] = _read_store(store)["passwords"] if store.exists() else {}
    specs = list(specs)
    for name in revoke:
        passwords.pop(name, None)
    made = [spec.name for spec in specs if spec.name not in passwords]
    for name in made:
        passwords[name] = secrets.token_urlsafe(PASSWORD_BYTES)
    # Passwords of accounts no longer planned (a service removed) are kept, not used: if
    # the service comes back, whatever was set up with its account works again.
    content = {
        "root": root,
        "accounts": [
            {"name": s.name, "description": s.description, "read": s.read, "write": s.write}
            for s in specs
        ],
        "passwords": passwords,
    }
    write_atomic(store, json.dumps(content, indent=2) + "\n")
    accounts = {spec.name: Account(spec, passwords[spec.name]) for spec in specs}
    result = BrokerAccounts(directory, root, accounts)
    write_atomic(result.passwd, "".join(_passwd_line(a) for a in accounts.values()))
    write_atomic(result.acl, acl_text(accounts.values(), store.resolve()))
    if made:
        logger.info("made broker accounts %s in %s", ", ".join(made), store)
    return result


def load_accounts(directory: Path) -> BrokerAccounts:
    """The accounts `pyedge run` made in `directory`; AccountError if there are none."""
    store = directory / STORE_FILE
    if not store.exists():
        raise AccountError(
            f"no broker accounts in {directory}: `pyedge run` makes them when it first starts"
        )
    data = _read_store(store)
    accounts = {}
    for item in data["accounts"]:
        spec = AccountSpec(
            item["name"], item["description"], tuple(item["read"]), tuple(item["write"])
        )
        accounts[spec.name] = Account(spec, data["passwords"][spec.name])
    return BrokerAccounts(directory, data["root"], accounts)


def acl_text(accounts: Iterable[Account], source: Path) -> str:
    """Mosquitto's ACL file: a `user` block per account, its topic filters under it."""
    lines = [
        f"# Written by pyedge from {source}; rewritten at every start.",
        "# No rule before the first `user` line: anonymous clients may do nothing.",
    ]
    for account in accounts:
        spec = account.spec
        lines += ["", f"# {spec.description}", f"user {spec.name}"]
        both = [t for t in spec.read if t in spec.write]
        lines += [f"topic readwrite {t}" for t in both]
        lines += [f"topic read {t}" for t in spec.read if t not in both]
        lines += [f"topic write {t}" for t in spec.write if t not in both]
    return "\n".join(lines) + "\n"


def _passwd_line(account: Account) -> str:
    # mosquitto_passwd's format: user:$7$<rounds>$<base64 salt>$<base64 PBKDF2-SHA512>.
    salt = os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", account.password.encode(), salt, PBKDF2_ROUNDS)
    encoded = [base64.b64encode(part).decode() for part in (salt, digest)]
    return f"{account.username}:$7${PBKDF2_ROUNDS}${encoded[0]}${encoded[1]}\n"


def _read_store(store: Path) -> dict[str, Any]:
    try:
        data = json.loads(store.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("passwords"), dict):
            raise ValueError("no passwords in it")
        data.setdefault("accounts", [])
        missing = [i["name"] for i in data["accounts"] if i["name"] not in data["passwords"]]
        if missing:
            raise ValueError(f"no password for {', '.join(missing)}")
        data.setdefault("root", topic_root())
    except OSError as exc:
        raise AccountError(f"cannot read the broker accounts {store}: {exc.strerror}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise AccountError(
            f"the broker accounts {store} are damaged ({exc}); remove the file to make new "
            "passwords (every client must then be given its new one)"
        ) from exc
    return data
