"""Joining a hub, node side: `pyedge join` and `pyedge leave`, and what the node keeps.

`<data>/network/join.json` (0600: the hub's URL, the node id, the site, the broker and the
accounts), `ca.pem` (the broker's CA, with TLS), `hub.pub` (the key the hub signs
forwarded callers with), and `hub-ca.pem` (the hub's HTTPS CA given with --ca, for
`pyedge leave`). `joined_overrides` turns them into a served service's settings.

The hub's admin token, the broker passwords and the hub's key cross the network here:
a plain http:// hub URL is refused unless it is a loopback one or `insecure_http` is
given, and a redirect is never followed (the token would go along to wherever it points).
The hub's side (its API) is edge_server.network.join_views.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from http import HTTPStatus
from pathlib import Path
from typing import Any

from edge_server.files import write_atomic
from pyedge import PyEdgeError
from pyedge.config import NODE_ID_RE, SLUG_RE
from pyedge.identity import NETWORK_DIR, hub_public_key_path

JOIN_FILE = "join.json"
CA_FILE = "ca.pem"
HUB_CA_FILE = "hub-ca.pem"
# How long `pyedge join` / `leave` wait for the hub's answer (a join waits for its broker).
HTTP_TIMEOUT_S = 20.0
# The hub's 404 for a node it does not know, which `pyedge leave` takes as already gone.
NO_JOINED_NODE = "no joined node"


class JoinError(PyEdgeError):
    """Joining or leaving a hub failed; the message says why and what to do."""


class HubUnreachable(JoinError):
    """The hub did not answer at all (network, DNS, TLS)."""


def utc_now() -> str:
    """The time now, UTC, to the second (when a node joined)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def network_dir(data_dir: Path) -> Path:
    """Where a data dir keeps what joining a hub gave it."""
    return Path(data_dir) / NETWORK_DIR


def joined(data_dir: Path) -> dict[str, Any] | None:
    """join.json of the data dir, None when it has not joined a hub."""
    path = network_dir(data_dir) / JOIN_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise JoinError(f"cannot read {path}: {exc}; `pyedge join` again") from exc
    if not isinstance(data, dict) or not isinstance(data.get("accounts"), dict):
        raise JoinError(f"{path} is damaged; `pyedge join` again")
    return data


def joined_overrides(data_dir: Path, slug: str) -> dict[str, Any]:
    """The broker settings of `slug` served on a node that joined a hub ({} if none joined)."""
    info = joined(data_dir)
    if info is None:
        return {}
    account = info["accounts"].get(slug)
    if account is None:
        raise JoinError(
            f"{slug} has no account on the hub {info['hub_url']}: this node joined with "
            f"{', '.join(sorted(info['accounts']))}; run `pyedge join {info['hub_url']} "
            f"--services {slug}` to add it"
        )
    broker = info["broker"]
    ca = network_dir(data_dir) / CA_FILE
    return {
        "EDGE_MQTT_HOST": broker["host"],
        "EDGE_MQTT_PORT": broker["port"],
        "EDGE_MQTT_TLS": broker["tls"],
        "EDGE_MQTT_CA": ca.resolve() if broker["tls"] and ca.exists() else None,
        "EDGE_MQTT_USERNAME": account["username"],
        "EDGE_MQTT_PASSWORD": account["password"],
        "EDGE_MQTT_CREDENTIALS": None,
        "EDGE_SITE": info["site"],
        # The account writes this node's topics only: the node id must be the joined one.
        "EDGE_NODE_ID": info["node"],
    }


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: the answer stays the 3xx (urllib raises it as HTTPError)."""

    def redirect_request(self, *args: Any) -> None:
        return None


def _loopback_host(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(hub_url: str, insecure_http: bool, command: str) -> None:
    """Refuse a plain http:// hub beyond loopback unless `insecure_http` (JoinError)."""
    parts = urllib.parse.urlsplit(hub_url)
    if parts.scheme != "http" or insecure_http or _loopback_host(parts.hostname):
        return
    if command == "pyedge join":
        secure = "give its https:// URL"
    else:  # leave: the URL is the one saved at the join
        secure = "join it again by its https:// URL (the one saved is plain)"
    raise JoinError(
        f"refusing the plain http:// hub URL {hub_url}: the admin token, the broker passwords "
        "and the hub's key (which this node then trusts to sign callers) would cross the "
        f"network in clear. Serve the hub over HTTPS (`pyedge run --tls`) and {secure}, with "
        "--ca and the hub's data/tls/server.crt when its certificate is self-signed; on a "
        f"network you trust, `{command} --insecure-http` goes ahead in clear"
    )


def hub_call(
    url: str, method: str, token: str, body: Any = None, ca: Path | None = None
) -> tuple[int, Any]:
    """A request to the hub's API with the token; (status, JSON).

    Raises HubUnreachable if the hub did not answer, and JoinError on a redirect, which is
    never followed: the token would go along to wherever it points.
    """
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    # Straight to the hub: no environment proxy (http_proxy) gets the token on the way.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=context),
        _NoRedirects,
    )
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with opener.open(req, timeout=HTTP_TIMEOUT_S) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
        if HTTPStatus.MULTIPLE_CHOICES <= status < HTTPStatus.BAD_REQUEST:
            location = error.headers.get("Location") or "(no Location)"
            raise JoinError(
                f"the hub at {url} answered {status}, a redirect to {location}: not followed "
                "(the token would go along); give the URL the hub serves its API at"
            ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        hint = ""
        if isinstance(reason, ssl.SSLCertVerificationError):
            hint = " (a hub with a self-signed certificate: give it with --ca)"
        raise HubUnreachable(f"cannot reach the hub at {url}: {reason}{hint}") from exc
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def _refused(what: str, status: int, answer: Any) -> JoinError:
    message = answer.get("message") if isinstance(answer, dict) else None
    errors = answer.get("errors") if isinstance(answer, dict) else None
    detail = f"{message or HTTPStatus(status).phrase}" + (f" {errors}" if errors else "")
    if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
        detail += " (an admin token of the hub is needed: --token or PYEDGE_TOKEN)"
    return JoinError(f"the hub refused to {what}: {status} {detail}")


def join_hub(
    data_dir: Path,
    hub_url: str,
    token: str,
    node: str,
    services: list[str],
    machine: str,
    ca: Path | None = None,
    insecure_http: bool = False,
    hub_public_key: Path | None = None,
) -> dict[str, Any]:
    """Join the hub at `hub_url` as `node` serving `services`; the saved join.json.

    The hub's key goes to `hub_public_key` (EDGE_HUB_PUBLIC_KEY) when it is set.

    A plain http:// `hub_url` beyond loopback needs `insecure_http` (check_transport).
    """
    if not NODE_ID_RE.fullmatch(node):
        raise JoinError(f"node id {node!r}: letters, digits, '.', '_' or '-' (at most 64)")
    bad = [slug for slug in services if not SLUG_RE.fullmatch(slug)]
    if bad or not services:
        raise JoinError(f"not service slugs: {', '.join(bad) or '(none given)'}")
    base = hub_url.rstrip("/")
    if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        raise JoinError(f"the hub's URL must start with http:// or https://, not {hub_url!r}")
    check_transport(base, insecure_http, "pyedge join")
    url = f"{base}/api/nodes/{urllib.parse.quote(node)}/join"
    status, answer = hub_call(url, "POST", token, {"services": services, "machine": machine}, ca)
    if status != HTTPStatus.OK or not isinstance(answer, dict):
        raise _refused(f"join {node}", status, answer)
    directory = network_dir(data_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Public material first, the accounts last: join.json is what says "joined".
    if answer.get("ca"):
        write_atomic(directory / CA_FILE, answer["ca"], 0o644)
    else:
        (directory / CA_FILE).unlink(missing_ok=True)
    if ca is not None:
        write_atomic(directory / HUB_CA_FILE, Path(ca).read_text(), 0o644)
    else:  # the hub verified without it: the system's CAs (or plain HTTP)
        (directory / HUB_CA_FILE).unlink(missing_ok=True)
    write_atomic(hub_public_key_path(data_dir, hub_public_key), answer["hub_key"], 0o644)
    saved = {
        # The URL given (not the one the hub saw): what this node reaches it by.
        "hub_url": base,
        "node": answer["node"],
        "site": answer["site"],
        "broker": answer["broker"],
        "accounts": answer["accounts"],
        "joined_at": utc_now(),
    }
    write_atomic(directory / JOIN_FILE, json.dumps(saved, indent=2) + "\n", 0o600)
    return saved


def leave_hub(
    data_dir: Path,
    token: str | None,
    force: bool = False,
    insecure_http: bool = False,
    hub_public_key: Path | None = None,
) -> dict[str, Any]:
    """Leave the hub this data dir joined: revoke on the hub, then remove the files.

    Raises JoinError (HubUnreachable when the hub did not answer) and keeps the files,
    unless `force`, which removes them whatever the hub said. A plain http:// hub beyond
    loopback needs `insecure_http` (check_transport).
    """
    info = joined(data_dir)
    if info is None:
        raise JoinError(f"{data_dir} has not joined a hub (no {JOIN_FILE})")
    hub_ca = network_dir(data_dir) / HUB_CA_FILE
    try:
        if not token:
            raise JoinError("leaving needs an admin token of the hub: --token or PYEDGE_TOKEN")
        check_transport(info["hub_url"], insecure_http, "pyedge leave")
        url = f"{info['hub_url']}/api/nodes/{urllib.parse.quote(info['node'])}"
        status, answer = hub_call(url, "DELETE", token, ca=hub_ca if hub_ca.exists() else None)
        # The hub's own 404 (not a 404 of something else at that URL): it had already
        # forgotten the node, and nothing is left to revoke there.
        message = answer.get("message") if isinstance(answer, dict) else None
        forgotten = status == HTTPStatus.NOT_FOUND and str(message).startswith(NO_JOINED_NODE)
        if status not in (HTTPStatus.NO_CONTENT, HTTPStatus.OK) and not forgotten:
            raise _refused(f"let {info['node']} leave", status, answer)
    except JoinError:
        if not force:
            raise
    directory = network_dir(data_dir)
    for name in (JOIN_FILE, CA_FILE, HUB_CA_FILE):
        (directory / name).unlink(missing_ok=True)
    hub_public_key_path(data_dir, hub_public_key).unlink(missing_ok=True)
    return info
