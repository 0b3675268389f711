"""The embedded Mosquitto broker that `pyedge run` starts in solo mode."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_server.broker.accounts import (
    EDGE_SERVER,
    AccountSpec,
    BrokerAccounts,
    ensure_accounts,
    hub_accounts,
    load_nodes,
    node_accounts,
)
from edge_server.security.tls import server_tls
from pyedge import PyEdgeError
from pyedge.config import LoadedConfig
from pyedge.service import topic_root

logger = logging.getLogger(__name__)

# Debian installs mosquitto in /usr/sbin, which is not on a normal user's PATH.
SEARCH_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
INSTALL_HINT = (
    "Mosquitto is not installed. Install it with `sudo apt-get install mosquitto` "
    "(Debian / Raspberry Pi OS), or set EDGE_MQTT_EMBEDDED=0 and EDGE_MQTT_HOST to use "
    "a broker that is already running."
)
PR_SET_PDEATHSIG = 1
LOOPBACK = ("127.0.0.1", "::1", "localhost")
CONFIG_FILE = "mosquitto.conf"
# Written by Mosquitto itself (and removed when it exits): how the gunicorn worker, which
# did not start the broker, finds it to make it reload the accounts (SIGHUP) after a join.
PID_FILE = "mosquitto.pid"
# The listeners of the running broker, for the worker: its settings say EDGE_MQTT_TLS off
# (solo_login keeps the app on the plain listener) whatever the broker opened.
LISTENERS_FILE = "listeners.json"
HUB = "hub"


class BrokerError(PyEdgeError):
    """The embedded broker could not be started."""


def find_mosquitto() -> str:
    """The mosquitto binary's path; raises BrokerError with how to install it."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path=SEARCH_PATH)
    if found is None:
        raise BrokerError(INSTALL_HINT)
    return found


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    # Linux: the broker gets SIGTERM if `pyedge run` is killed, so none is left behind.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class TlsListener:
    """The broker's TLS listener: where it listens and the certificate it presents."""

    bind: str
    port: int
    cert: Path
    key: Path


def _probe_host(bind: str) -> str:
    return "127.0.0.1" if bind in ("0.0.0.0", "::") else bind


class Mosquitto:
    """A Mosquitto process with PyEdge's configuration, its data in `data_dir`.

    Clients log in with `accounts` (see mqtt_accounts), which also say what each may
    publish and read; `tls` adds a TLS listener beside the plain one.
    """

    def __init__(
        self,
        config_file: Path,
        data_dir: Path,
        bind: str,
        port: int,
        accounts: BrokerAccounts,
        tls: TlsListener | None = None,
    ) -> None:
        self.config_file = config_file
        self.data_dir = data_dir
        self.bind = bind
        self.port = port
        self.accounts = accounts
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        """Write the node's broker configuration: the shipped file plus listener and paths."""
        try:
            shipped = self.config_file.read_text()
        except OSError as exc:
            raise BrokerError(f"EDGE_MQTT_CONFIG: cannot read {self.config_file}: {exc}") from exc
        self.data_dir.mkdir(parents=True, exist_ok=True)
        generated = self.data_dir / CONFIG_FILE
        tls = self.tls
        tls_listener = (
            "# TLS (EDGE_MQTT_TLS): the same accounts and ACL as the plain listener.\n"
            f"listener {tls.port} {tls.bind}\n"
            f"certfile {tls.cert.resolve()}\n"
            f"keyfile {tls.key.resolve()}\n"
            if tls
            else ""
        )
        generated.write_text(
            f"# Written by pyedge run from {self.config_file}; edit that file instead.\n"
            f"listener {self.port} {self.bind}\n" + tls_listener +
            # Run as whoever runs pyedge: started as root, Mosquitto would otherwise drop
            # to its own user, which can neither write our data dir nor keep the
            # parent-death signal (it is cleared when credentials change).
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            f"persistence_location {self.data_dir.resolve()}/\n"
            # The accounts and what each may publish and read, from accounts.json.
            f"password_file {self.accounts.passwd.resolve()}\n"
            f"acl_file {self.accounts.acl.resolve()}\n"
            f"pid_file {self.data_dir.resolve() / PID_FILE}\n"
            "log_dest stderr\n\n" + shipped
        )
        listeners = {
            "plain": {"bind": self.bind, "port": self.port},
            "tls": {"bind": tls.bind, "port": tls.port, "cert": str(tls.cert.resolve())}
            if tls
            else None,
        }
        (self.data_dir / LISTENERS_FILE).write_text(json.dumps(listeners, indent=2) + "\n")
        return generated

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections."""
        binary = find_mosquitto()
        listeners = [(_probe_host(self.bind), self.port)]
        if port_open(*listeners[0]):
            raise BrokerError(
                f"EDGE_MQTT_PORT: port {self.port} is already in use; stop what listens "
                "there, pick another port, or set EDGE_MQTT_EMBEDDED=0 to use that broker"
            )
        if self.tls is not None:
            listeners.append((_probe_host(self.tls.bind), self.tls.port))
            if port_open(*listeners[1]):
                raise BrokerError(
                    f"EDGE_MQTT_TLS_PORT: port {self.tls.port} is already in use; stop what "
                    "listens there or pick another port"
                )
        conf = self.write_config()
        log = (self.data_dir / "mosquitto.log").open("ab")
        logger.info("starting Mosquitto on %s:%d (%s)", self.bind, self.port, conf)
        # Own session: a Ctrl-C in the terminal must not stop the broker before the
        # services have said goodbye on it; we stop it ourselves afterwards.
        self.process = subprocess.Popen(
            # Absolute: broker_pid() knows the process by this path in its command line.
            [binary, "-c", str(conf.resolve())],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.data_dir / "mosquitto.log").read_text(errors="replace")[-800:]
                raise BrokerError(f"Mosquitto exited with code {self.process.returncode}:\n{tail}")
            if all(port_open(*listener) for listener in listeners):
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"Mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker (it saves its persistence file on SIGTERM)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("Mosquitto did not stop within %.0f s; killing it", timeout)
            self.process.kill()
            self.process.wait()


def broker_dir(settings: Any) -> Path:
    """Where the embedded broker's accounts, configuration and pid file live."""
    return Path(settings["EDGE_DATA_DIR"]) / "mosquitto"


def broker_plan(settings: Any, services: Iterable[str]) -> list[AccountSpec]:
    """The embedded broker's accounts: the node's, and on a hub those of the joined nodes."""
    nodes = load_nodes(broker_dir(settings))
    if settings["EDGE_ROLE"] == HUB:
        return hub_accounts(settings, services, nodes)
    if nodes:
        logger.warning(
            "the broker accounts of the joined nodes %s are left out: EDGE_ROLE is %s, not hub",
            ", ".join(sorted(nodes)),
            settings["EDGE_ROLE"],
        )
    return node_accounts(settings, services)


def broker_pid(directory: Path) -> int | None:
    """The pid of the Mosquitto running with the configuration in `directory`, if any."""
    try:
        pid = int((directory / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    proc = Path(f"/proc/{pid}/cmdline")
    if not Path("/proc/self").exists():  # no /proc: the file is all there is to go by
        return pid
    # A broker killed with SIGKILL leaves its pid file, and the pid may be reused since:
    # only a process started with our configuration is ours to signal.
    try:
        arguments = proc.read_bytes().split(b"\0")
    except OSError:
        return None
    conf = str((directory / CONFIG_FILE).resolve()).encode()
    return pid if conf in arguments else None


def broker_listeners(directory: Path) -> dict[str, Any]:
    """The listeners the broker in `directory` was started with (LISTENERS_FILE)."""
    try:
        listeners: dict[str, Any] = json.loads((directory / LISTENERS_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BrokerError(f"no embedded broker's listeners in {directory}: {exc}") from exc
    return listeners


def reload_broker(directory: Path) -> None:
    """Make the running embedded Mosquitto reload `passwd` and `acl` (SIGHUP)."""
    pid = broker_pid(directory)
    if pid is None:
        raise BrokerError(f"the embedded Mosquitto is not running (no live {directory / PID_FILE})")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise BrokerError(f"the embedded Mosquitto (pid {pid}) has just exited") from None


def embedded_broker(settings: LoadedConfig, services: Iterable[str]) -> Mosquitto:
    """The node's Mosquitto as `pyedge run` starts it: accounts made, TLS with EDGE_MQTT_TLS."""
    directory = broker_dir(settings)
    root = topic_root(settings["EDGE_SITE"])
    accounts = ensure_accounts(directory, broker_plan(settings, services), root)
    tls = None
    if settings["EDGE_MQTT_TLS"]:
        # The node's one certificate: the one HTTPS serves (given, or made in the data dir).
        files = server_tls(settings)
        tls = TlsListener(
            settings["EDGE_MQTT_TLS_BIND"], settings["EDGE_MQTT_TLS_PORT"], files.cert, files.key
        )
        logger.info(
            "MQTT over TLS on %s:%d; clients verify %s (SHA256 %s)",
            tls.bind,
            tls.port,
            files.cert,
            files.fingerprint,
        )
    bind = settings["EDGE_MQTT_BIND"]
    if bind not in LOOPBACK:
        logger.warning(
            "the plain MQTT listener is open on %s: passwords cross the network in the clear; "
            "prefer EDGE_MQTT_TLS and EDGE_MQTT_BIND=127.0.0.1",
            bind,
        )
    return Mosquitto(
        settings["EDGE_MQTT_CONFIG"], directory, bind, settings["EDGE_MQTT_PORT"], accounts, tls
    )


def solo_login(broker: Mosquitto) -> dict[str, Any]:
    """Settings for solo mode's app: the edge-server account, on the plain listener.

    The app and the broker share the machine, so it stays on the loopback listener even
    with EDGE_MQTT_TLS, which opens the TLS one for the other machines.
    """
    login = broker.accounts.login(EDGE_SERVER)
    return {
        "EDGE_MQTT_USERNAME": login["username"],
        "EDGE_MQTT_PASSWORD": login["password"],
        "EDGE_MQTT_CREDENTIALS": None,
        "EDGE_MQTT_TLS": False,
    }
