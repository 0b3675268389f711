"""`pyedge broker`: Mosquitto on its own, as the compose bundle's `mqtt` container runs it.

It does what `pyedge run` does for its embedded broker (accounts, the optional TLS
listener, the generated configuration), hands each service its login as a file, and then
becomes Mosquitto (exec), so that the container's stop signal reaches the broker itself.

Logins: for every directory in the credentials directory (`--credentials`), named after a
service slug or another account, it writes `<dir>/<name>/credentials.json` (0600,
`{"username", "password"}`: what EDGE_MQTT_CREDENTIALS reads). The compose file mounts
one volume per service there, and each service mounts only its own, so a service never
sees another's password. A directory named after a slug no installed service has (a
user's own service, in an image of its own) gets a service account all the same.

Started as root (the only way to own the volumes Docker creates for those directories), it
gives them and the data dir to the image's unprivileged user, then drops to that user
before it writes anything or starts Mosquitto.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
from pathlib import Path

from edge_server.broker.accounts import (
    CONTROLLER,
    EDGE_SERVER,
    HOME_ASSISTANT,
    SUBSCRIBER,
    BrokerAccounts,
)
from edge_server.broker.embedded import BrokerError, broker_dir, embedded_broker, find_mosquitto
from edge_server.files import write_atomic
from edge_server.registry import installed_services
from edge_server.security.tls import TLS_DIR
from pyedge.config import SLUG_RE, LoadedConfig

logger = logging.getLogger(__name__)

CREDENTIALS_FILE = "credentials.json"
# The image's unprivileged user (Dockerfile): the owner of everything the broker writes.
RUN_AS = "pyedge"
# Accounts every broker has; any other directory name is a service's slug.
NOT_SERVICES = frozenset({EDGE_SERVER, SUBSCRIBER, HOME_ASSISTANT, CONTROLLER})


def login_dirs(credentials: Path | None) -> dict[str, Path]:
    """The account names the credentials directory asks logins for, with their directory."""
    if credentials is None:
        return {}
    if not credentials.is_dir():
        raise BrokerError(f"--credentials: {credentials} is not a directory")
    found = {}
    for entry in sorted(credentials.iterdir()):
        # A link could point the root phase's chown and the logins anywhere.
        if entry.is_symlink() or not entry.is_dir() or entry.name.startswith("."):
            continue
        if not SLUG_RE.fullmatch(entry.name):
            logger.warning("%s: not an account name (a service slug); left alone", entry)
            continue
        found[entry.name] = entry
    return found


def drop_privileges(paths: list[Path], user: str = RUN_AS) -> None:
    """As root: give `paths` to `user`, then become `user` for good. Else do nothing."""
    if os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise BrokerError(f"started as root, but there is no user {user!r} to drop to") from None
    for path in paths:
        if path.is_symlink():
            raise BrokerError(f"{path} is a symbolic link: refusing to give its target to {user}")
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ["HOME"] = entry.pw_dir
    logger.info("running as %s (uid %d)", user, entry.pw_uid)


def hand_out(accounts: BrokerAccounts, dirs: dict[str, Path]) -> None:
    """Write each directory's login file (0600) from the accounts."""
    for name, directory in dirs.items():
        login = accounts.login(name)
        write_atomic(directory / CREDENTIALS_FILE, json.dumps(login) + "\n", 0o600)
    if dirs:
        logger.info("broker logins written for %s", ", ".join(dirs))


def prepare(settings: LoadedConfig, credentials: Path | None) -> Path:
    """Accounts, logins and Mosquitto's configuration; returns the configuration file."""
    dirs = login_dirs(credentials)
    data_dir: Path = settings["EDGE_DATA_DIR"]
    # The TLS directory may be a volume of its own, shared with the edge-server.
    drop_privileges([data_dir, data_dir / TLS_DIR, *dirs.values()])
    services = {*installed_services(), *(name for name in dirs if name not in NOT_SERVICES)}
    broker = embedded_broker(settings, sorted(services))
    hand_out(broker.accounts, dirs)
    return broker.write_config()


def exec_broker(settings: LoadedConfig, credentials: Path | None) -> None:
    """Prepare, then replace this process with Mosquitto (never returns)."""
    conf = prepare(settings, credentials)
    binary = find_mosquitto()
    logger.info("starting Mosquitto (%s) in %s", conf, broker_dir(settings))
    logging.shutdown()
    os.execv(binary, [binary, "-c", str(conf.resolve())])
