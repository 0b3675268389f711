"""`pyedge broker`: the logins it hands out, the privileges it drops, the Mosquitto it becomes.

The tests run as root in CI: the test process itself never changes its user. prepare() is
run with standalone_broker's view of the effective uid made non-root (nothing chowned, no
setuid); the root path (chown, drop to an unprivileged user, exec Mosquitto) runs in a
child process of its own.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_server.broker import standalone as standalone_broker
from edge_server.broker.accounts import (
    CONTROLLER,
    EDGE_SERVER,
    SUBSCRIBER,
    AccountError,
    load_accounts,
)
from edge_server.broker.embedded import BrokerError, find_mosquitto, port_open
from edge_server.broker.standalone import (
    CREDENTIALS_FILE,
    drop_privileges,
    hand_out,
    login_dirs,
    prepare,
)
from edge_server.config import load_settings
from edge_server.registry import installed_services
from pyedge.config import LoadedConfig
from pyedge.service import topic_root
from tests.conftest import free_port
from tests.test_mqtt_security import NOT_AUTHORIZED, Publisher, connect_result
from tests.test_run import PYEDGE

MY_SERVICE = "my-service"  # a user's own service, in an image of its own: not installed here
UNPRIVILEGED = "nobody"


class OsAs:
    """The os module as standalone_broker sees it, with another effective uid."""

    def __init__(self, euid: int) -> None:
        self.euid = euid

    def geteuid(self) -> int:
        return self.euid

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """standalone_broker runs as an ordinary user: it chowns nothing and keeps its uid."""
    monkeypatch.setattr(standalone_broker, "os", OsAs(4321))


def broker_settings(data_dir: Path, node: str, port: int) -> LoadedConfig:
    """What the compose file gives the mqtt container, on a free loopback port."""
    return load_settings(
        {
            "EDGE_DATA_DIR": str(data_dir),
            "EDGE_NODE_ID": node,
            "EDGE_MQTT_PORT": port,
            "EDGE_MQTT_BIND": "127.0.0.1",
        },
        environ={},
    )


def credentials_dir(base: Path, *names: str) -> Path:
    """A credentials directory with an (empty) directory per name, as the volumes are."""
    credentials = base / "credentials"
    for name in names:
        (credentials / name).mkdir(parents=True)
    return credentials


def handed_out(credentials: Path, name: str) -> dict[str, str]:
    """The login written for `name`, checked to be readable by its owner only."""
    path = credentials / name / CREDENTIALS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    login: dict[str, str] = json.loads(path.read_text())
    return login


def wait_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Wait until the broker listens on the port; fail with its output if it exits."""
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        assert process.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, f"no broker on {port}:\n{log.read_text()}"
        time.sleep(0.05)


def end(process: subprocess.Popen[bytes]) -> None:
    """Stop a broker this test started (SIGTERM, SIGKILL only if that hangs)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- login_dirs ------------------------------------------------------------------------------


def test_login_dirs_are_the_slug_named_directories(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    credentials = credentials_dir(tmp_path, EDGE_SERVER, "device-service", MY_SERVICE)
    (credentials / ".snapshot").mkdir()
    (credentials / "Bad_Name").mkdir()
    (credentials / "9lives").mkdir()
    (credentials / "notes-file").write_text("a file, not a volume")
    with caplog.at_level(logging.WARNING, logger="edge_server.broker.standalone"):
        found = login_dirs(credentials)
    assert found == {
        name: credentials / name for name in ("device-service", EDGE_SERVER, MY_SERVICE)
    }
    warned = sorted(r.getMessage() for r in caplog.records)
    assert len(warned) == 2, warned
    assert "9lives" in warned[0] and "Bad_Name" in warned[1]
    assert all("not an account name" in message for message in warned)


def test_login_dirs_without_a_directory(tmp_path: Path) -> None:
    assert login_dirs(None) == {}
    with pytest.raises(BrokerError, match=r"--credentials: .* is not a directory"):
        login_dirs(tmp_path / "missing")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(BrokerError, match="is not a directory"):
        login_dirs(tmp_path / "a-file")
    (tmp_path / "empty").mkdir()
    assert login_dirs(tmp_path / "empty") == {}


# --- drop_privileges -------------------------------------------------------------------------


def test_an_ordinary_user_keeps_its_user_and_chowns_nothing(tmp_path: Path, not_root: None) -> None:
    uid = os.getuid()
    drop_privileges([tmp_path / "data"], user="no-such-user-xyz")
    assert os.getuid() == uid
    assert not (tmp_path / "data").exists()


def test_root_without_the_user_to_drop_to_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(standalone_broker, "os", OsAs(0))
    with pytest.raises(
        BrokerError, match="started as root, but there is no user 'no-such-user-xyz'"
    ):
        drop_privileges([tmp_path / "data"], user="no-such-user-xyz")
    # Refused before it touched anything.
    assert not (tmp_path / "data").exists()


def test_root_refuses_a_symbolic_link_rather_than_give_away_its_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The user could leave a link where a volume is expected: root must not follow it.
    target = tmp_path / "elsewhere"
    target.mkdir()
    owner = target.stat().st_uid
    (tmp_path / "link").symlink_to(target)
    monkeypatch.setattr(standalone_broker, "os", OsAs(0))
    with pytest.raises(BrokerError, match="is a symbolic link"):
        drop_privileges([tmp_path / "link"], user="nobody")
    assert target.stat().st_uid == owner


def test_login_dirs_skip_symbolic_links(tmp_path: Path) -> None:
    credentials = credentials_dir(tmp_path, MY_SERVICE)
    (tmp_path / "elsewhere").mkdir()
    (credentials / "evil").symlink_to(tmp_path / "elsewhere")
    assert login_dirs(credentials) == {MY_SERVICE: credentials / MY_SERVICE}


# --- prepare ---------------------------------------------------------------------------------


@pytest.fixture
def prepared(tmp_path: Path, node_id: str, not_root: None) -> tuple[LoadedConfig, Path, Path]:
    """prepare() for the edge-server, the device-service and a user's own service."""
    settings = broker_settings(tmp_path / "data", node_id, free_port())
    credentials = credentials_dir(tmp_path, EDGE_SERVER, "device-service", MY_SERVICE)
    conf = prepare(settings, credentials)
    return settings, credentials, conf


def test_prepare_hands_each_directory_its_own_login(
    prepared: tuple[LoadedConfig, Path, Path], node_id: str
) -> None:
    settings, credentials, conf = prepared
    directory = Path(settings["EDGE_DATA_DIR"]) / "mosquitto"
    assert conf == directory / "mosquitto.conf"
    text = conf.read_text()
    assert f"listener {settings['EDGE_MQTT_PORT']} 127.0.0.1\n" in text
    assert f"password_file {(directory / 'passwd').resolve()}\n" in text
    accounts = load_accounts(directory)
    for name in (EDGE_SERVER, "device-service", MY_SERVICE):
        assert handed_out(credentials, name) == accounts.login(name), name
    # The user's own service gets a service account: its own subtree, nothing else.
    mine = accounts.get(MY_SERVICE).spec
    assert mine.write == (f"{topic_root()}/{node_id}/{MY_SERVICE}/#",)
    assert mine.read == (f"{topic_root()}/#",)
    # Every installed service and the fixed accounts are there too, though not handed out.
    assert {*installed_services(), SUBSCRIBER, CONTROLLER} <= set(accounts.accounts)
    assert sorted(p.name for p in credentials.iterdir()) == sorted(
        [EDGE_SERVER, "device-service", MY_SERVICE]
    )


def test_prepare_again_keeps_the_logins(prepared: tuple[LoadedConfig, Path, Path]) -> None:
    # A restarted mqtt container: the services, which keep running, still log in.
    settings, credentials, _ = prepared
    before = {name: handed_out(credentials, name) for name in (EDGE_SERVER, MY_SERVICE)}
    (credentials / "controller").mkdir()
    prepare(settings, credentials)
    assert {name: handed_out(credentials, name) for name in before} == before
    assert handed_out(credentials, CONTROLLER)["username"] == CONTROLLER


def test_hand_out_refuses_an_account_the_broker_lacks(
    prepared: tuple[LoadedConfig, Path, Path], tmp_path: Path
) -> None:
    settings, _, _ = prepared
    accounts = load_accounts(Path(settings["EDGE_DATA_DIR"]) / "mosquitto")
    (tmp_path / "stranger").mkdir()
    with pytest.raises(AccountError, match="no broker account 'stranger'"):
        hand_out(accounts, {"stranger": tmp_path / "stranger"})
    assert not (tmp_path / "stranger" / CREDENTIALS_FILE).exists()


@pytest.fixture
def prepared_broker(
    prepared: tuple[LoadedConfig, Path, Path],
) -> Iterator[tuple[int, Path]]:
    """Mosquitto started from the configuration prepare() wrote, as exec_broker does."""
    settings, credentials, conf = prepared
    log = conf.parent / "broker.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [find_mosquitto(), "-c", str(conf.resolve())],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_listening(process, settings["EDGE_MQTT_PORT"], log)
        yield settings["EDGE_MQTT_PORT"], credentials
    finally:
        end(process)


def test_a_handed_out_login_writes_its_own_subtree_only(
    prepared_broker: tuple[int, Path], node_id: str
) -> None:
    port, credentials = prepared_broker
    login = handed_out(credentials, MY_SERVICE)
    assert not connect_result(port, login["username"], login["password"]).is_failure
    assert connect_result(port, login["username"], "not-the-password").is_failure
    edge = handed_out(credentials, EDGE_SERVER)
    assert not connect_result(port, edge["username"], edge["password"]).is_failure
    mine = Publisher(port, login, f"mine-{node_id}")
    try:
        root = topic_root()
        assert not mine.publish(f"{root}/{node_id}/{MY_SERVICE}/status").is_failure
        assert not mine.publish(f"{root}/{node_id}/{MY_SERVICE}/ops/x/call/y").is_failure
        denied = [
            f"{root}/{node_id}/custom-service/status",
            f"{root}/{node_id}/device-service/readings",
            f"{root}/other-node/{MY_SERVICE}/status",
            f"{root}/{node_id}/{MY_SERVICE}-two/status",
            "homeassistant/status",
        ]
        assert {topic: mine.publish(topic).value for topic in denied} == dict.fromkeys(
            denied, NOT_AUTHORIZED
        )
    finally:
        mine.close()


# --- as root: the container's own path, in a child process -----------------------------------

AS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (the mqtt container starts as root)"
)


def has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# The image's user is `pyedge`; on the test machine, drop to `nobody` instead.
BECOME_BROKER = f"""
import sys
from edge_server import cli
from edge_server.broker import standalone as standalone_broker
standalone_broker.drop_privileges.__defaults__ = ({UNPRIVILEGED!r},)
sys.exit(cli.main(["broker", "--credentials", sys.argv[1]]))
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is root's only)."""
    base = Path(tempfile.mkdtemp(prefix="pyedge-broker-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def broker_environment(data_dir: Path, node: str, port: int) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    environ.update(
        EDGE_DATA_DIR=str(data_dir),
        EDGE_NODE_ID=node,
        EDGE_MQTT_PORT=str(port),
        EDGE_MQTT_BIND="127.0.0.1",
    )
    return environ


@AS_ROOT
@pytest.mark.skipif(not has_user(UNPRIVILEGED), reason=f"no user {UNPRIVILEGED}")
def test_as_root_it_gives_away_its_files_drops_and_becomes_mosquitto(
    shared_dir: Path, node_id: str
) -> None:
    nobody = pwd.getpwnam(UNPRIVILEGED)
    data_dir = shared_dir / "data"
    credentials = credentials_dir(shared_dir, EDGE_SERVER, MY_SERVICE)
    port = free_port()
    log = shared_dir / "broker.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", BECOME_BROKER, str(credentials)],
            env=broker_environment(data_dir, node_id, port),
            cwd=shared_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_listening(process, port, log)
        # The same process, now Mosquitto, running as the unprivileged user.
        assert Path(f"/proc/{process.pid}/exe").resolve() == Path(find_mosquitto()).resolve()
        status = Path(f"/proc/{process.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines())
        assert fields["Uid"].split() == [str(nobody.pw_uid)] * 4, fields["Uid"]
        assert fields["Gid"].split() == [str(nobody.pw_gid)] * 4, fields["Gid"]
        assert fields["Groups"].split() == [], fields["Groups"]  # root's groups are gone
        # Everything it wrote is that user's, so that it can write it again next time.
        for path in (
            data_dir,
            data_dir / "tls",
            data_dir / "mosquitto" / "accounts.json",
            credentials / MY_SERVICE,
            credentials / MY_SERVICE / CREDENTIALS_FILE,
        ):
            assert path.stat().st_uid == nobody.pw_uid, path
        login = handed_out(credentials, MY_SERVICE)
        mine = Publisher(port, login, f"root-{uuid.uuid4().hex[:8]}")
        try:
            assert not mine.publish(f"{topic_root()}/{node_id}/{MY_SERVICE}/x").is_failure
            assert mine.publish(f"{topic_root()}/{node_id}/edge-server/x").value == NOT_AUTHORIZED
        finally:
            mine.close()
    finally:
        end(process)


@AS_ROOT
@pytest.mark.skipif(has_user(standalone_broker.RUN_AS), reason="the image's user exists here")
def test_as_root_without_the_images_user_the_command_fails(shared_dir: Path) -> None:
    credentials = credentials_dir(shared_dir, MY_SERVICE)
    done = subprocess.run(
        [PYEDGE, "broker", "--credentials", str(credentials)],
        env=broker_environment(shared_dir / "data", "n1", free_port()),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1, done.stderr
    assert "no user 'pyedge' to drop to" in done.stderr
    assert not (credentials / MY_SERVICE / CREDENTIALS_FILE).exists()
    assert not (shared_dir / "data").exists()
