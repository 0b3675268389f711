"""The gateway's listener: werkzeug's threaded HTTP/1.1 server on its own address, in a
thread of the container-manager's process (so one engine client serves both APIs).

Under TLS the handshake is made in the connection's own thread, with a time-out, so that a
client that never finishes it holds no other; a client certificate is optional (a token
works too) and, when given, must be one the gateway's CA issued. Connections are bounded:
each holds a thread, and a stream (logs -f, events) holds it for long.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import sys
import threading
from typing import Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from container_manager.gateway.app import PEER_SERIAL, GatewayApp
from pyedge.tls import NodeTls

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
# An idle keep-alive connection (or a client that stops reading) is closed after this.
IDLE_TIMEOUT_S = 300.0
BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: 75\r\n\r\n"
    b'{"message": "too many connections to PyEdge\'s Docker API gateway at once"}'
)


def tls_context(tls: NodeTls, client_ca: str) -> ssl.SSLContext:
    """The node's certificate; client certificates of the gateway's CA, optional."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    context.load_verify_locations(client_ca)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


class GatewayRequestHandler(WSGIRequestHandler):
    """werkzeug's handler with the TLS handshake in its thread and the peer's serial."""

    timeout = IDLE_TIMEOUT_S
    server: GatewayServer

    def setup(self) -> None:
        self.failed = False
        context = self.server.tls_context
        if context is not None:
            try:
                self.request.settimeout(HANDSHAKE_TIMEOUT_S)
                self.request = context.wrap_socket(self.request, server_side=True)
            except (OSError, ValueError) as exc:
                # A scan, a client of the wrong CA, plain HTTP on the TLS port.
                peer = self.client_address[0]
                logger.info("gateway: TLS handshake with %s failed: %s", peer, exc)
                self.failed = True
                self.request.close()
                return
        super().setup()

    def handle(self) -> None:
        if not self.failed:
            super().handle()

    def finish(self) -> None:
        if self.failed:
            return
        try:
            super().finish()
        finally:
            if isinstance(self.request, ssl.SSLSocket):
                self.request.close()  # the wrapped socket: the server only knows the plain one

    def make_environ(self) -> Any:
        environ = super().make_environ()
        if isinstance(self.connection, ssl.SSLSocket):
            peer = self.connection.getpeercert()
            if peer:  # verified against the gateway's CA, or the handshake had failed
                environ[PEER_SERIAL] = peer.get("serialNumber")
        return environ

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug("gateway: %s %s %s", self.address_string(), self.requestline, code)

    def log_error(self, format: str, *args: Any) -> None:
        logger.info("gateway: %s", format % args if args else format)


class GatewayServer(ThreadedWSGIServer):
    """A threaded server that refuses connections beyond `max_connections` with a 503."""

    def __init__(
        self,
        listener: socket.socket,
        app: GatewayApp,
        context: ssl.SSLContext | None,
        max_connections: int,
    ) -> None:
        host, port = listener.getsockname()[:2]
        # A socket of ours: werkzeug exits the process when its own bind fails.
        super().__init__(host, port, app, handler=GatewayRequestHandler, fd=listener.fileno())
        # werkzeug's handler reads it for the URL scheme (the socket stays plain here).
        self.ssl_context = context
        self.tls_context = context
        self.slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                if self.tls_context is None:
                    request.sendall(BUSY_ANSWER)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Called from the connection's except clause (socketserver).
        logger.error(
            "gateway: error on a connection from %s",
            client_address[0],
            exc_info=sys.exc_info(),
        )


class GatewayUnavailable(OSError):
    """The listener cannot be opened (the address is in use, or not this host's)."""


class Gateway:
    """The listener, served by a thread from `start` until `close`."""

    def __init__(
        self,
        address: tuple[str, int],
        app: GatewayApp,
        context: ssl.SSLContext | None,
        max_connections: int,
    ) -> None:
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            listener = socket.create_server((host, port), family=family)
        except OSError as exc:
            raise GatewayUnavailable(f"cannot listen on {host}:{port}: {bind_error(exc)}") from exc
        with listener:  # the server keeps a duplicate of it
            self.server = GatewayServer(listener, app, context, max_connections)
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="container-manager-gateway", daemon=True
        )

    @property
    def port(self) -> int:
        """The port it listens on (the one given, or the one the system chose for 0)."""
        return int(self.server.port)

    @property
    def url(self) -> str:
        """The address for DOCKER_HOST."""
        host = self.server.server_address[0]
        host = f"[{host}]" if ":" in str(host) else host
        return f"tcp://{host}:{self.port}"

    def start(self) -> None:
        """Serve in the background."""
        self.thread.start()
        logger.info(
            "Docker API gateway on %s (%s)",
            self.url,
            "TLS" if self.server.tls_context is not None else "plain HTTP",
        )

    def close(self) -> None:
        """Stop accepting and close the listening socket (open streams end with their client)."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def bind_error(exc: OSError) -> str:
    """What a failed bind means, for the config error."""
    if exc.errno == errno.EADDRINUSE:
        return "the address is in use"
    return exc.strerror or str(exc)
