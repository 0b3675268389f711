"""container-manager settings: [container-manager] in TOML, EDGE_CONTAINER_MANAGER_* in the env.

The policy settings grant what is denied by default; see policy.py for what each covers.
"""

from __future__ import annotations

from pyedge import config as cfg


def listen_address(value: object) -> tuple[str, int]:
    """'HOST:PORT' (an IPv6 host in brackets) as (host, port)."""
    text = cfg.text(value)
    host, colon, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT, e.g. 127.0.0.1:2375")
    return host, int(port)


# Capabilities a container may add without a grant: all are in Docker's default set
# already, so adding them back after a cap_drop gives nothing new.
DEFAULT_CAPS = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "NET_BIND_SERVICE", "SETGID", "SETUID")

SETTINGS = (
    cfg.Setting(
        "docker_host",
        cfg.text,
        None,
        "engine address, e.g. unix:///var/run/docker.sock (default: DOCKER_HOST, else the"
        " local socket)",
    ),
    cfg.Setting(
        "timeout",
        cfg.number(low=0.5),
        4.0,
        "seconds an ordinary engine call may take: a hung engine is answered 503 within it",
    ),
    cfg.Setting(
        "slow_timeout",
        cfg.number(low=1),
        120.0,
        "seconds a slow engine call may take (create, remove, prune, stats, logs)",
    ),
    cfg.Setting("allow_privileged", cfg.boolean, False, "allow privileged containers"),
    cfg.Setting(
        "allow_host_namespaces",
        cfg.boolean,
        False,
        "allow the host's network, pid, ipc, uts or user namespace",
    ),
    cfg.Setting(
        "bind_dirs",
        cfg.text_list,
        [],
        "host directories that bind mounts may come from (system directories never)",
    ),
    cfg.Setting("devices", cfg.text_list, [], "host devices containers may get, e.g. /dev/i2c-1"),
    cfg.Setting("cap_add", cfg.text_list, list(DEFAULT_CAPS), "capabilities cap_add may add"),
    cfg.Setting(
        "reconcile_autostart", cfg.boolean, True, "converge apps from when the service starts"
    ),
    cfg.Setting("reconcile_interval", cfg.number(low=0.2), 2.0, "seconds between reconcile passes"),
    cfg.Setting(
        "crash_backoff_max",
        cfg.number(low=1),
        300.0,
        "longest wait, in seconds, before restarting a crash-looping container",
    ),
    cfg.Setting(
        "stream_heartbeat",
        cfg.number(low=0.1),
        15.0,
        "seconds between SSE heartbeat comments (also how a departed client is noticed)",
    ),
    cfg.Setting(
        "gateway_listen",
        listen_address,
        None,
        "HOST:PORT of the Docker API gateway, for the docker CLI and Portainer (default: off);"
        " HTTPS when the node's is (EDGE_TLS)",
    ),
    cfg.Setting(
        "gateway_max_connections",
        cfg.integer(1, 1000),
        16,
        "Docker API connections open at once at most (each holds a thread)",
    ),
    cfg.Setting(
        "max_streams",
        cfg.integer(1, 1000),
        8,
        "SSE streams open at once at most (each holds a server thread)",
    ),
)
