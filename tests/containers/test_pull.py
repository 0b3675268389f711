"""The pull Task against a real local registry (Debian's docker-registry) on loopback."""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import docker
import pytest
from flask.testing import FlaskClient

from container_manager.pull import Reference, parse_ref
from edge_server import create_app
from tests.conftest import authorized_client, free_port
from tests.containers.conftest import API, Registry, wait_for
from tests.docker_engine import TEST_IMAGE, DockerEngine

REPOSITORY = "pyedge/bigimage"
TAG = "1"
# Two layers of random (incompressible) data on top of the busybox test image: 10 MB in all,
# enough for several progress lines per layer.
DOCKERFILE = f"""FROM {TEST_IMAGE}
RUN busybox dd if=/dev/urandom of=/data/blob1 bs=1M count=4
RUN busybox dd if=/dev/urandom of=/data/blob2 bs=1M count=6
"""
# The slow proxy's rate per connection: a layer takes seconds, so an abort lands mid-pull.
SLOW_BYTES_PER_S = 200_000
CHUNK = 16_384


@dataclass(frozen=True)
class Pushed:
    """The test image as pushed to the registry."""

    image_id: str
    digest: str


@pytest.fixture(scope="module")
def pushed(docker_engine: DockerEngine, registry: Registry) -> Pushed:
    """Build a multi-layer image, push it to the registry, and remove the local copy."""
    if not docker_engine.answers():  # an earlier test stopped the engine and failed
        docker_engine.start()
    client = docker_engine.client()
    try:
        repository = f"{registry.host}/{REPOSITORY}"
        image, _ = client.images.build(
            fileobj=io.BytesIO(DOCKERFILE.encode()), tag=f"{repository}:{TAG}", rm=True
        )
        digest = ""
        for line in client.api.push(repository, tag=TAG, stream=True, decode=True):
            assert "error" not in line, line
            digest = (line.get("aux") or {}).get("Digest", digest)
        assert digest.startswith("sha256:")
        client.images.remove(image.id, force=True)
        return Pushed(image.id, digest)
    finally:
        client.close()


class SlowProxy:
    """A TCP proxy on loopback passing the server's bytes on at a limited rate, or not at all
    while `stalled` is set (a stalled pull sends no progress lines: its reader blocks)."""

    def __init__(self, target: tuple[str, int], bytes_per_s: int) -> None:
        self.target = target
        self.bytes_per_s = bytes_per_s
        self.stalled = threading.Event()
        self.closed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        # accept() wakes up this often to notice close().
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.open_connections = 0
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, name="slow-proxy", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.target)
            with self.lock:
                self.open_connections += 1
                self.sockets += [client, server]
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        ended = threading.Event()
        upstream = threading.Thread(
            target=self._pump, args=(client, server, ended, False), daemon=True
        )
        upstream.start()
        self._pump(server, client, ended, True)
        upstream.join()
        with self.lock:
            self.open_connections -= 1

    def _pump(
        self, source: socket.socket, sink: socket.socket, ended: threading.Event, slow: bool
    ) -> None:
        try:
            while True:
                while slow and self.stalled.is_set() and not ended.is_set():
                    time.sleep(0.02)
                data = source.recv(CHUNK)
                if not data:
                    break
                sink.sendall(data)
                if slow:
                    time.sleep(len(data) / self.bytes_per_s)
        except OSError:
            pass
        finally:
            # Either side gone ends the whole connection, so the other pump returns too.
            ended.set()
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting and cut every connection."""
        self.closed.set()
        self.stalled.clear()
        self.thread.join(5)
        self.listener.close()
        with self.lock:
            sockets = list(self.sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture
def slow_proxy(registry: Registry) -> Iterator[SlowProxy]:
    """The registry behind a slow proxy (dockerd trusts every 127.0.0.0/8 port over HTTP)."""
    host, port = registry.host.split(":")
    proxy = SlowProxy((host, int(port)), SLOW_BYTES_PER_S)
    yield proxy
    proxy.close()


def read_head(source: BinaryIO) -> bytes:
    """An HTTP message's start line and headers, up to the blank line (b"" at the end)."""
    head = b""
    while True:
        line = source.readline()
        head += line
        if line in (b"\r\n", b""):
            return head if line else b""


def header(head: bytes, name: bytes) -> bytes | None:
    """The value of header `name` (lowercase) in `head`."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


class EngineCutter:
    """A proxy in front of the engine's unix socket, relaying each HTTP exchange as it is;
    once `armed`, it ends the next pull's response cleanly (with the closing empty chunk)
    right after its first progress line, then drops both sides: a stream that ends
    early without an error, as an engine or a proxy going away at a chunk boundary would."""

    def __init__(self, engine_socket: str) -> None:
        self.engine_socket = engine_socket
        # A unix socket path may not exceed 108 bytes: pytest's tmp paths can be longer.
        self.root = Path(tempfile.mkdtemp(prefix="pyedge-cutter-", dir="/tmp"))
        self.url = f"unix://{self.root / 'engine.sock'}"
        self.armed = threading.Event()
        self.cut = threading.Event()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.root / "engine.sock"))
        self.listener.listen()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, name="engine-cutter", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            engine.connect(self.engine_socket)
            with self.lock:
                self.sockets += [client, engine]
            threading.Thread(target=self._serve, args=(client, engine), daemon=True).start()

    def _serve(self, client: socket.socket, engine: socket.socket) -> None:
        # Request bodies are taken by Content-Length: the pull Task sends no chunked one.
        from_client, from_engine = client.makefile("rb"), engine.makefile("rb")
        try:
            # One exchange after the other, as a keep-alive connection carries them.
            while request := read_head(from_client):
                length = int(header(request, b"content-length") or 0)
                engine.sendall(request + from_client.read(length))
                start_line = request.split(b"\r\n", 1)[0]
                pull = start_line.startswith(b"POST ") and b"/images/create" in start_line
                if not self._relay_response(from_engine, client, pull and self.armed.is_set()):
                    return
        except OSError:
            pass
        finally:
            for sock in (client, engine):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _relay_response(self, source: BinaryIO, sink: socket.socket, cut: bool) -> bool:
        """Pass one response on; False when the connection is to end."""
        head = read_head(source)
        if not head:
            return False
        sink.sendall(head)
        if header(head, b"transfer-encoding") == b"chunked":
            while True:
                size_line = source.readline()
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    sink.sendall(size_line + read_head(source))  # the trailer's blank line
                    return True
                chunk = size_line + source.read(size + 2)
                sink.sendall(chunk)
                # The first progress line after "Pulling from": whatever the engine reports
                # next (Downloading, Waiting, Already exists), the stream is cut there.
                if cut and b'"status"' in chunk and b"Pulling from" not in chunk:
                    sink.sendall(b"0\r\n\r\n")
                    self.cut.set()
                    return False
        length = header(head, b"content-length")
        if length is not None:
            sink.sendall(source.read(int(length)))
            return True
        status = int(head.split(b" ", 2)[1])
        return status in (204, 304)  # no body; any other runs to the end of the connection

    def close(self) -> None:
        """Stop accepting and cut every connection."""
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)
        with self.lock:
            sockets = list(self.sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cutter(docker_engine: DockerEngine) -> Iterator[EngineCutter]:
    """The test engine behind an EngineCutter."""
    proxy = EngineCutter(str(docker_engine.socket))
    yield proxy
    proxy.close()


@pytest.fixture
def cut_client(cm_config: dict[str, Any], cutter: EngineCutter) -> Iterator[FlaskClient]:
    """A test client of a container-manager whose engine is reached through the cutter."""
    app = create_app({**cm_config, "EDGE_CONTAINER_MANAGER_DOCKER_HOST": cutter.url})
    yield authorized_client(app)
    app.extensions["pyedge"].close()


def start_pull(client: FlaskClient, **params: Any) -> dict[str, Any]:
    """POST /ops/pull/start; asserts 202."""
    response = client.post(f"{API}/ops/pull/start", json=params)
    assert response.status_code == 202, response.json
    body: dict[str, Any] = response.get_json()
    return body


def wait_pull(client: FlaskClient, timeout: float = 60) -> dict[str, Any]:
    """POST /ops/pull/wait; asserts the session ended and returns it."""
    session: dict[str, Any] = client.post(f"{API}/ops/pull/wait?timeout={timeout}").get_json()
    assert session["state"] == "done", session
    return session


def last_message(session: dict[str, Any]) -> str:
    """The session's last message: its result."""
    text: str = session["messages"][-1]["text"]
    return text


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("busybox", Reference("busybox", None, None)),
        ("busybox:1.36", Reference("busybox", "1.36", None)),
        ("127.0.0.1:5000/x/y:tag", Reference("127.0.0.1:5000/x/y", "tag", None)),
        ("localhost:5000/app", Reference("localhost:5000/app", None, None)),
        ("registry.example.com/team/app", Reference("registry.example.com/team/app", None, None)),
        (
            "127.0.0.1:5000/x@sha256:" + "a" * 64,
            Reference("127.0.0.1:5000/x", None, "sha256:" + "a" * 64),
        ),
        ("x/y:2@sha256:" + "b" * 64, Reference("x/y", "2", "sha256:" + "b" * 64)),
    ],
)
def test_parse_ref(ref: str, expected: Reference) -> None:
    assert parse_ref(ref) == expected


def test_reference_versions() -> None:
    assert parse_ref("busybox").version == "latest"
    assert parse_ref("busybox").local == "busybox:latest"
    digested = parse_ref("x/y:2@sha256:" + "b" * 64)
    assert digested.version == "sha256:" + "b" * 64  # the digest wins, as docker pull does
    assert digested.local == "x/y@sha256:" + "b" * 64


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"ref": ""},
        {"ref": "Upper/Case"},
        {"ref": "x:bad tag"},
        {"ref": "http://127.0.0.1:5000/x"},
        {"ref": "x@sha256:short"},
        {"ref": "busybox", "platform": "linux arm64"},
        {"ref": "busybox", "other": 1},
    ],
)
def test_pull_refuses_bad_params(cm_client: FlaskClient, params: dict[str, Any]) -> None:
    response = cm_client.post(f"{API}/ops/pull/start", json=params)
    assert response.status_code == 422, response.json


def test_pull_reports_layers_and_percent(
    cm_client: FlaskClient, registry: Registry, pushed: Pushed
) -> None:
    ref = f"{registry.host}/{REPOSITORY}:{TAG}"
    started = start_pull(cm_client, ref=ref)
    assert started["params"] == {"ref": ref, "platform": None}
    session = wait_pull(cm_client)
    assert session["success"] is True, session["messages"]
    assert last_message(session) == f"pulled {ref} ({pushed.image_id[7:19]})"
    data = session["data"]
    assert data["image_id"] == pushed.image_id
    assert data["digest"] == pushed.digest
    assert data["percent"] == 100.0
    assert data["status"].startswith(f"Status: Downloaded newer image for {ref}")
    layers = data["layers"]
    # The base layer is the local busybox image's; the two RUN layers came over the wire.
    assert sorted(layer["status"] for layer in layers.values()) == [
        "Already exists",
        "Pull complete",
        "Pull complete",
    ]
    downloaded = [layer for layer in layers.values() if layer["status"] == "Pull complete"]
    for layer in downloaded:
        assert layer["current"] == layer["total"]
    assert sum(layer["total"] for layer in downloaded) > 9 * 2**20
    texts = [m["text"] for m in session["messages"]]
    assert f"Pulling from {REPOSITORY}" in texts
    assert f"Digest: {pushed.digest}" in texts

    images = cm_client.get(f"{API}/images").get_json()
    assert any(ref in image["tags"] for image in images)
    # Pulled again: nothing to download, still a success.
    start_pull(cm_client, ref=ref)
    again = wait_pull(cm_client)
    assert again["success"] is True, again["messages"]
    assert again["data"]["status"] == f"Status: Image is up to date for {ref}"
    assert again["data"]["percent"] == 100.0


def test_pull_by_digest(cm_client: FlaskClient, registry: Registry, pushed: Pushed) -> None:
    ref = f"{registry.host}/{REPOSITORY}@{pushed.digest}"
    start_pull(cm_client, ref=ref)
    session = wait_pull(cm_client)
    assert session["success"] is True, session["messages"]
    assert session["data"]["image_id"] == pushed.image_id
    image = cm_client.get(f"{API}/images/{ref}").get_json()
    assert image["id"] == pushed.image_id


def test_pull_with_platform(
    cm_client: FlaskClient, registry: Registry, pushed: Pushed, docker_client: docker.DockerClient
) -> None:
    arch = docker_client.images.get(TEST_IMAGE).attrs["Architecture"]
    ref = f"{registry.host}/{REPOSITORY}:{TAG}"
    start_pull(cm_client, ref=ref, platform=f"linux/{arch}")
    session = wait_pull(cm_client)
    assert session["success"] is True, session["messages"]
    assert session["params"]["platform"] == f"linux/{arch}"
    assert session["data"]["image_id"] == pushed.image_id


def test_pull_of_a_missing_image_fails_clearly(cm_client: FlaskClient, registry: Registry) -> None:
    ref = f"{registry.host}/pyedge/nope:1"
    start_pull(cm_client, ref=ref)
    session = wait_pull(cm_client)
    assert session["success"] is False
    message = last_message(session)
    assert message.startswith(f"failed: pull {ref}: ")
    assert "manifest unknown" in message


def test_pull_of_a_missing_tag_fails_clearly(
    cm_client: FlaskClient, registry: Registry, pushed: Pushed
) -> None:
    ref = f"{registry.host}/{REPOSITORY}:2"
    start_pull(cm_client, ref=ref)
    session = wait_pull(cm_client)
    assert session["success"] is False
    assert last_message(session).startswith(f"failed: pull {ref}: ")
    assert "not found" in last_message(session)


def test_pull_from_an_unreachable_registry_fails_clearly(cm_client: FlaskClient) -> None:
    ref = f"127.0.0.1:{free_port()}/pyedge/app:1"
    start_pull(cm_client, ref=ref)
    session = wait_pull(cm_client)
    assert session["success"] is False
    assert last_message(session).startswith(f"failed: pull {ref}: ")
    assert "connection refused" in last_message(session)


def test_abort_interrupts_the_pull(
    cm_client: FlaskClient,
    slow_proxy: SlowProxy,
    pushed: Pushed,
    docker_client: docker.DockerClient,
) -> None:
    ref = f"127.0.0.1:{slow_proxy.port}/{REPOSITORY}:{TAG}"
    start_pull(cm_client, ref=ref)

    def downloading() -> dict[str, Any] | None:
        session: dict[str, Any] = cm_client.get(f"{API}/ops/pull").get_json()
        assert session["state"] == "running", session
        return session if session["data"].get("percent", 0) > 0 else None

    during = wait_for(downloading, 30, "the download to start")
    assert during["data"]["percent"] < 100
    assert any(layer["status"] == "Downloading" for layer in during["data"]["layers"].values())
    # No more bytes, so no more progress lines: the pull's read blocks, and only cutting
    # its stream can end it.
    slow_proxy.stalled.set()
    time.sleep(0.5)

    aborted_at = time.monotonic()
    response = cm_client.post(f"{API}/ops/pull/abort")
    assert response.status_code == 200, response.json
    session = wait_pull(cm_client, timeout=10)
    assert time.monotonic() - aborted_at < 3
    assert session["success"] is False
    assert last_message(session).startswith(f"aborted pulling {ref} at ")
    assert "image_id" not in session["data"]

    # The engine noticed its client gone and cancelled the download. Its reads of a
    # cancelled download return on the next bytes, so let them flow again: at this rate the
    # rest would take far longer than the few seconds in which the connections now close.
    slow_proxy.stalled.clear()
    wait_for(lambda: slow_proxy.open_connections == 0, 5, "the engine to drop the download")
    assert cm_client.get(f"{API}/images/{ref}").status_code == 404
    assert not any(ref in image.tags for image in docker_client.images.list())


def test_abort_before_the_engine_answers(cm_client: FlaskClient) -> None:
    # A registry that accepts connections and never answers: the engine writes nothing, not
    # even its response headers, while it waits for it (tens of seconds).
    with socket.create_server(("127.0.0.1", 0)) as blackhole:
        blackhole.settimeout(20)
        ref = f"127.0.0.1:{blackhole.getsockname()[1]}/x/y:1"
        threads_before = set(threading.enumerate())
        start_pull(cm_client, ref=ref)
        # Once the engine is at the registry, the pull's request is in flight, unanswered.
        registry_side, _ = blackhole.accept()
        with registry_side:
            assert cm_client.get(f"{API}/ops/pull").get_json()["state"] == "running"

            aborted_at = time.monotonic()
            response = cm_client.post(f"{API}/ops/pull/abort")
            assert response.status_code == 200, response.json
            session = wait_pull(cm_client, timeout=5)
            assert time.monotonic() - aborted_at < 2
    assert session["success"] is False
    assert last_message(session) == f"aborted pulling {ref} before the engine answered"
    assert "image_id" not in session["data"]
    # The Task's thread ended, and no helper was left blocked on the engine.
    wait_for(
        lambda: not set(threading.enumerate()) - threads_before, 5, "the pull's threads to end"
    )


def push_image(client: docker.DockerClient, ref: str, dockerfile: str) -> str:
    """Build `dockerfile` as `ref`, push it, and remove it locally; returns its image id."""
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=ref, rm=True)
    repository, _, tag = ref.rpartition(":")
    for line in client.api.push(repository, tag=tag, stream=True, decode=True):
        assert "error" not in line, line
    client.images.remove(image.id, force=True)
    image_id: str = image.id
    return image_id


def test_a_stream_that_ends_early_is_no_success(
    cut_client: FlaskClient,
    cutter: EngineCutter,
    registry: Registry,
    slow_proxy: SlowProxy,
    docker_client: docker.DockerClient,
) -> None:
    pushed_as = f"{registry.host}/pyedge/retag:t"
    # Pulled through the slow proxy: the second pull is still downloading when it is cut.
    ref = f"127.0.0.1:{slow_proxy.port}/pyedge/retag:t"
    old_id = push_image(docker_client, pushed_as, f"FROM {TEST_IMAGE}\nRUN echo 1 > /data/v\n")
    start_pull(cut_client, ref=ref)
    first = wait_pull(cut_client)
    assert first["success"] is True, first["messages"]
    assert first["data"]["image_id"] == old_id

    # A newer image under the same tag; its pull ends without the engine's closing status.
    newer = f"FROM {TEST_IMAGE}\nRUN busybox dd if=/dev/urandom of=/data/v bs=1M count=3\n"
    new_id = push_image(docker_client, pushed_as, newer)
    cutter.armed.set()
    start_pull(cut_client, ref=ref)
    session = wait_pull(cut_client)
    assert cutter.cut.is_set()
    assert session["success"] is False, session["messages"]
    message = last_message(session)
    assert message.startswith(f"failed: pull {ref}: the engine's pull stream ended early: "), (
        message
    )
    assert "image_id" not in session["data"]
    # The tag still names the old image: reporting it as pulled would have been wrong.
    assert docker_client.images.get(ref).id == old_id != new_id
