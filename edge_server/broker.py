"""The embedded Mosquitto broker that `pyedge run` starts in solo mode."""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from pyedge import PyEdgeError

logger = logging.getLogger(__name__)

# Debian installs mosquitto in /usr/sbin, which is not on a normal user's PATH.
SEARCH_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
INSTALL_HINT = (
    "Mosquitto is not installed. Install it with `sudo apt-get install mosquitto` "
    "(Debian / Raspberry Pi OS), or set EDGE_MQTT_EMBEDDED=0 and EDGE_MQTT_HOST to use "
    "a broker that is already running."
)
PR_SET_PDEATHSIG = 1


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


class Mosquitto:
    """A Mosquitto process with PyEdge's configuration, its data in `data_dir`."""

    def __init__(self, config_file: Path, data_dir: Path, bind: str, port: int) -> None:
        self.config_file = config_file
        self.data_dir = data_dir
        self.bind = bind
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        """Write the node's broker configuration: the shipped file plus listener and paths."""
        try:
            shipped = self.config_file.read_text()
        except OSError as exc:
            raise BrokerError(f"EDGE_MQTT_CONFIG: cannot read {self.config_file}: {exc}") from exc
        self.data_dir.mkdir(parents=True, exist_ok=True)
        generated = self.data_dir / "mosquitto.conf"
        generated.write_text(
            f"# Written by pyedge run from {self.config_file}; edit that file instead.\n"
            f"listener {self.port} {self.bind}\n"
            # Run as whoever runs pyedge: started as root, Mosquitto would otherwise drop
            # to its own user, which can neither write our data dir nor keep the
            # parent-death signal (it is cleared when credentials change).
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            f"persistence_location {self.data_dir.resolve()}/\n"
            "log_dest stderr\n\n" + shipped
        )
        return generated

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections."""
        binary = find_mosquitto()
        probe_host = "127.0.0.1" if self.bind in ("0.0.0.0", "::") else self.bind
        if port_open(probe_host, self.port):
            raise BrokerError(
                f"EDGE_MQTT_PORT: port {self.port} is already in use; stop what listens "
                "there, pick another port, or set EDGE_MQTT_EMBEDDED=0 to use that broker"
            )
        conf = self.write_config()
        log = (self.data_dir / "mosquitto.log").open("ab")
        logger.info("starting Mosquitto on %s:%d (%s)", self.bind, self.port, conf)
        # Own session: a Ctrl-C in the terminal must not stop the broker before the
        # services have said goodbye on it; we stop it ourselves afterwards.
        self.process = subprocess.Popen(
            [binary, "-c", str(conf)],
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
            if port_open(probe_host, self.port):
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
