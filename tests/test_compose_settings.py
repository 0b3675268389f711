"""The compose bundle's settings: EDGE_SERVICES=none and EDGE_HUB_PUBLIC_KEY.

In the bundle the edge-server runs no service of its own (EDGE_SERVICES=none) and fronts
the services of the other containers; each container has a data dir of its own, so the
edge-server writes its public key to a shared volume (EDGE_HUB_PUBLIC_KEY) that the
services read to trust the callers it forwards.
"""

from __future__ import annotations

import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask
from werkzeug.serving import make_server

from edge_server import create_app
from edge_server.config import load_settings
from edge_server.network.identity import hub_key, hub_public_pem
from edge_server.registry import configure, enabled_services
from pyedge import ConfigError
from pyedge.auth import EXTENSION as AUTH_EXTENSION
from pyedge.config import slug_list
from pyedge.identity import HubKey, hub_public_key_path, load_public_key
from pyedge.security import Role
from tests.conftest import Broker, authorized_client, free_port
from tests.test_identity import PATH, forwarded, served_config
from tests.test_network_registry import clear_retained, wait_status

SLUG = "custom-service"
OPS = f"/api/{SLUG}/ops"


# --- EDGE_SERVICES=none ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["none", " none ", "none,", ["none"], [" none"]])
def test_none_is_no_service_at_all(value: Any) -> None:
    assert slug_list(value) == []


def test_unset_or_empty_is_every_service_and_slugs_stay_slugs() -> None:
    assert slug_list(None) is None
    assert slug_list("") is None
    assert slug_list([]) is None
    assert slug_list("custom-service, none-such") == ["custom-service", "none-such"]
    # `none` beside slugs is not "no service": it is a slug no service has.
    assert slug_list("none,custom-service") == ["none", "custom-service"]
    with pytest.raises(ValueError, match="'None' is not a service slug"):
        slug_list("None")


def test_edge_services_none_enables_nothing(tmp_path: Path) -> None:
    settings = load_settings(environ={"EDGE_SERVICES": "none"})
    assert settings["EDGE_SERVICES"] == []
    assert enabled_services(settings) == []
    toml = tmp_path / "edge.toml"
    toml.write_text('[edge]\nservices = "none"\n')
    assert load_settings(environ={"EDGE_CONFIG": str(toml)})["EDGE_SERVICES"] == []
    toml.write_text('[edge]\nservices = ["none"]\n')
    settings = load_settings(environ={"EDGE_CONFIG": str(toml)})
    assert enabled_services(settings) == []


def test_none_with_slugs_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="not installed: none") as raised:
        configure({"EDGE_SERVICES": "none,custom-service"})
    assert raised.value.key == "EDGE_SERVICES"


@pytest.fixture
def fronting_app(app_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    """The bundle's edge-server: EDGE_SERVICES=none from its environment, in the node role."""
    config = {k: v for k, v in app_config.items() if k != "EDGE_SERVICES"}
    monkeypatch.setenv("EDGE_SERVICES", "none")
    app = create_app({**config, "EDGE_ROLE": "node"})
    assert app.extensions["pyedge"].bus.wait_connected(5), "app did not reach the broker"
    yield app
    app.extensions["pyedge"].close()


def test_an_edge_server_with_no_service_of_its_own(fronting_app: Flask, node_id: str) -> None:
    host = fronting_app.extensions["pyedge"]
    assert host.runtimes == {}
    assert host.process_slug == "edge-server"
    client = authorized_client(fronting_app)
    health = client.get("/api/health")
    body: dict[str, Any] = health.get_json()
    assert health.status_code == 200, body
    assert body["status"] == "ok" and body["node"] == node_id
    assert body["services"] == {}
    assert client.get("/api/services").json == []
    paths = client.get("/api/openapi.json").get_json()["paths"]
    assert "/api/health" in paths
    assert not [path for path in paths if path.startswith(f"/api/{SLUG}")]
    # Nothing is served here or announced elsewhere yet: the slug is unknown.
    assert client.get(f"/api/{SLUG}/hello").status_code == 404


# --- EDGE_HUB_PUBLIC_KEY ---------------------------------------------------------------------


def test_the_public_key_path_is_the_setting_else_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shared = tmp_path / "shared" / "hub.pub"
    assert hub_public_key_path(data) == data / "network" / "hub.pub"
    assert hub_public_key_path(data, None) == data / "network" / "hub.pub"
    assert hub_public_key_path(data, shared) == shared
    assert HubKey(data, shared).path == shared
    assert HubKey(data).path == data / "network" / "hub.pub"
    settings = load_settings(environ={"EDGE_HUB_PUBLIC_KEY": str(shared)})
    assert settings["EDGE_HUB_PUBLIC_KEY"] == shared
    assert load_settings(environ={})["EDGE_HUB_PUBLIC_KEY"] is None


def test_the_hub_key_writes_its_public_half_where_configured(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shared = tmp_path / "shared" / "keys" / "hub.pub"
    key = hub_key(data, shared)
    assert stat.S_IMODE((data / "network" / "hub.key").stat().st_mode) == 0o600
    assert not (data / "network" / "hub.pub").exists()
    public = load_public_key(shared.read_bytes())
    assert public.public_bytes_raw() == key.public_key().public_bytes_raw()
    assert hub_public_pem(data, shared) == shared.read_text()


def test_an_old_key_of_its_own_is_replaced_a_joined_hubs_is_kept(tmp_path: Path) -> None:
    shared = tmp_path / "hub-key" / "hub.pub"
    hub_key(tmp_path / "old-data", shared)
    # The edge-server's data made anew, the shared key kept (compose: edge-data removed).
    new = hub_key(tmp_path / "new-data", shared)
    public = load_public_key(shared.read_bytes())
    assert public.public_bytes_raw() == new.public_key().public_bytes_raw()
    # A node that joined a hub keeps that hub's key: its services trust the hub.
    joined = tmp_path / "joined-data"
    (joined / "network").mkdir(parents=True)
    (joined / "network" / "join.json").write_text("{}")
    hubs = shared.read_text()
    hub_key(joined, shared)
    assert shared.read_text() == hubs


@pytest.fixture
def shared_key(tmp_path: Path) -> Path:
    """The volume the edge-server writes its public key to and the services read."""
    return tmp_path / "hub-key" / "hub.pub"


def test_a_node_edge_server_writes_hub_pub_to_the_configured_path(
    app_config: dict[str, Any], shared_key: Path
) -> None:
    app = create_app({**app_config, "EDGE_ROLE": "node", "EDGE_HUB_PUBLIC_KEY": str(shared_key)})
    try:
        key: Ed25519PrivateKey = app.extensions["pyedge.proxy"].key
        public = load_public_key(shared_key.read_bytes())
        assert public.public_bytes_raw() == key.public_key().public_bytes_raw()
        network = Path(app_config["EDGE_DATA_DIR"]) / "network"
        assert (network / "hub.key").exists()
        assert not (network / "hub.pub").exists()
    finally:
        app.extensions["pyedge"].close()


def test_a_service_trusts_the_key_at_the_configured_path_only(
    app_config: dict[str, Any],
    broker: Broker,
    shared_key: Path,
    tmp_path: Path,
    node_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trusted = hub_key(tmp_path / "edge-data", shared_key)
    # Another key in the service's own data dir, where it would look without the setting.
    other_dir = tmp_path / "other-hub"
    other = hub_key(other_dir)
    own = hub_public_key_path(Path(app_config["EDGE_DATA_DIR"]))
    own.parent.mkdir(parents=True)
    own.write_text(hub_public_pem(other_dir))
    monkeypatch.setenv("EDGE_HUB_PUBLIC_KEY", str(shared_key))
    app = create_app(served_config(app_config, broker))
    try:
        assert app.extensions["pyedge"].serves_alone
        client = app.test_client()
        aud = f"{node_id}/{SLUG}"
        accepted = client.get(OPS, headers=forwarded(trusted, Role.VIEWER, "GET", OPS, aud))
        assert accepted.status_code == 200, accepted.json
        refused = client.get(OPS, headers=forwarded(other, Role.VIEWER, "GET", OPS, aud))
        assert refused.status_code == 401
        # The service only reads the key: it writes nothing there.
        assert app.extensions[AUTH_EXTENSION].hub_key.path == shared_key
        assert shared_key.read_text() == hub_public_pem(tmp_path / "edge-data", shared_key)
    finally:
        app.extensions["pyedge"].close()


# --- the bundle's layout, end to end ---------------------------------------------------------


def test_the_fronting_edge_server_forwards_to_a_service_that_trusts_its_key(
    app_config: dict[str, Any], broker: Broker, shared_key: Path, tmp_path: Path, node_id: str
) -> None:
    # The service's container: custom-service on its own, with its own account and data
    # dir, on a real HTTP server; started first, before the key exists.
    port = free_port()
    service = create_app(
        {
            **served_config(app_config, broker),
            "EDGE_DATA_DIR": str(tmp_path / "service-data"),
            "EDGE_ADVERTISE_URL": f"http://127.0.0.1:{port}",
            "EDGE_HUB_PUBLIC_KEY": str(shared_key),
        }
    )
    server = make_server("127.0.0.1", port, service, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    # The edge-server's container: no service of its own, the same node, its own data dir.
    edge = create_app(
        {
            **app_config,
            "EDGE_SERVICES": "none",
            "EDGE_ROLE": "node",
            "EDGE_DATA_DIR": str(tmp_path / "edge-data"),
            "EDGE_HUB_PUBLIC_KEY": str(shared_key),
            "EDGE_REMOTE_HEALTH_INTERVAL": 1,
        }
    )
    try:
        assert shared_key.exists()
        assert not (tmp_path / "service-data" / "network" / "hub.pub").exists()
        client = authorized_client(edge, Role.OPERATOR)
        entry = wait_status(client, node_id, "ok")
        assert entry["url"] == f"/api/{SLUG}"
        hello = client.get(f"/api/{SLUG}/hello?name=compose")
        assert hello.status_code == 200, hello.json
        started = client.post(PATH, json={"seconds": 0.1})
        assert started.status_code == 202, started.json
        seen = service.extensions[AUTH_EXTENSION].accounts.audit_log(1)[0]
        assert seen["actor"].endswith("@hub") and seen["status"] == 202, seen
    finally:
        edge.extensions["pyedge"].close()
        server.shutdown()
        server.server_close()
        service.extensions["pyedge"].close()
        base = f"pyedge/{node_id}/{SLUG}"
        clear_retained(broker, f"{base}/announce", f"{base}/status")
