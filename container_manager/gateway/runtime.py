"""The gateway in a container-manager's runtime: opened by its start hook, closed by its stop."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from pyedge import ConfigError, ServiceRuntime

if TYPE_CHECKING:
    from container_manager.gateway.certs import ClientCertificates
    from container_manager.gateway.server import Gateway

logger = logging.getLogger(__name__)

# runtime.extras keys.
GATEWAY = "gateway"
CERTIFICATES = "gateway.certificates"
_certificates_lock = threading.Lock()


def certificates_of(runtime: ServiceRuntime) -> ClientCertificates:
    """The runtime's client certificates, opened on first use (cryptography loads then)."""
    with _certificates_lock:
        found: ClientCertificates | None = runtime.extras.get(CERTIFICATES)
        if found is None:
            from container_manager.gateway.certs import ClientCertificates

            found = runtime.extras[CERTIFICATES] = ClientCertificates(runtime.data_dir / "gateway")
        return found


def open_gateway(runtime: ServiceRuntime) -> Gateway | None:
    """Start the listener when `gateway_listen` is set; ConfigError when it cannot listen."""
    address = runtime.settings["gateway_listen"]
    if address is None:
        return None
    # Imported here: a node without the gateway loads none of it.
    from container_manager.engine import engine_of
    from container_manager.gateway.app import GatewayApp
    from container_manager.gateway.server import Gateway, GatewayUnavailable, tls_context
    from container_manager.service import policy_of

    key = runtime.service.section.prefix + "GATEWAY_LISTEN"
    certificates = None
    context = None
    if runtime.tls is not None:
        certificates = certificates_of(runtime)
        try:
            context = tls_context(runtime.tls, str(certificates.ca_path))
        except (OSError, ValueError) as exc:
            raise ConfigError(key, "settings", f"the node's TLS certificate: {exc}") from exc
    if runtime.accounts is None and certificates is None:
        logger.warning("Docker API gateway: no accounts and no TLS: every request is refused")
    app = GatewayApp(engine_of(runtime), policy_of(runtime), runtime.accounts, certificates)
    try:
        gateway = Gateway(address, app, context, runtime.settings["gateway_max_connections"])
    except GatewayUnavailable as exc:
        raise ConfigError(key, "settings", str(exc)) from exc
    gateway.start()
    runtime.extras[GATEWAY] = gateway
    return gateway


def close_gateway(runtime: ServiceRuntime) -> None:
    """Stop the listener, if it runs."""
    gateway: Gateway | None = runtime.extras.pop(GATEWAY, None)
    if gateway is not None:
        gateway.close()
