"""Live bus messages, GET /api/events, from a real `pyedge run` under load.

One node, as on a device (`pyedge run`: its Mosquitto, one gunicorn gthread worker), and
three measures, each against a baseline taken in the same run:

- latency: 50 streams on one bench topic while a paho client publishes to the node's
  broker; publish to event read at each stream, vs a bare paho subscriber on that broker
  receiving the same messages (the broker's own hop). Target: SSE p95 within 50 ms of it.
- throughput: sequential keep-alive GET /hello with 20 streams open (receiving messages)
  vs none, in alternating rounds, the same message flow in both. Target: ratio >= 0.8.
- stalled clients: 10 streams that never read (small SO_RCVBUF) while 1 KB messages flow;
  the API's p99 and failures from their connecting until the server has let go of them
  (target < 200 ms, none failed) vs the same flow without them, the worker's memory
  (before, peak, after), whether the server dropped and closed those streams, and what
  the kernel held for them meanwhile (/proc/net/tcp).

The streams' client is one thread with a selector over raw sockets, which only stamps the
arrival time of each `data:` line; the JSON is parsed after the measure.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import statistics
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import paho.mqtt.client as mqtt
import requests
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bench.processes import PYEDGE, free_port, pyedge_environment, running, wait
from edge_server.broker.accounts import EDGE_SERVER, SUBSCRIBER, load_accounts
from pyedge.accounts import AccountStore
from pyedge.security import Role

HOST = "127.0.0.1"
HELLO = "/api/custom-service/hello?name=bench"
# Stream slots of the node: the 50 latency streams need more than the default 32.
SSE_CLIENTS = 64
# Every wait is bounded (a stuck node fails the benchmark instead of hanging it).
TIMEOUT_S = 30.0

LATENCY_STREAMS = 50
LATENCY_MESSAGES = 500
LATENCY_RATE = 50.0
LATENCY_TARGET_MS = 50.0

LOAD_STREAMS = 20
LOAD_RATE = 20.0
REQUESTS = 2000
ROUNDS = 10
WARMUP = 50
LOAD_TARGET = 0.8

STALLED = 10
STALL_RATE = 200.0
STALL_SECONDS = 30.0
QUICK_STALL_SECONDS = 20.0
BASELINE_SECONDS = 10.0
PAYLOAD_BYTES = 1024
# The API probe during the stall: sequential requests at this rate.
PROBE_RATE = 50.0
PROBE_TARGET_MS = 200.0
# Stalled clients' receive buffer (the kernel doubles it and keeps a floor).
STALLED_RCVBUF = 4096
# The server's write to a stalled client times out after 10 s (pyedge.sse.SEND_TIMEOUT_S).
CLOSE_WAIT_S = 25.0
DROPPED_LINE = "dropped an event stream"
# gunicorn's line for a write that failed (a stalled stream's, timed out with nothing sent).
SOCKET_ERROR_LINE = "Socket error processing request"
# The API probe goes on this long after the server let go of the stalled streams.
RELEASE_PROBE_S = 5.0
# INFO: the hub's DROPPED_LINE is logged (and gunicorn logs no requests).
LOG_LEVEL = "INFO"


@dataclass
class Node:
    """A running `pyedge run`: its process, ports, broker logins and a viewer token."""

    process: subprocess.Popen[bytes]
    http_port: int
    mqtt_port: int
    node_id: str
    data_dir: Path
    log: Path
    token: str

    @property
    def url(self) -> str:
        """The API's base URL."""
        return f"http://{HOST}:{self.http_port}"

    def topic(self, name: str) -> str:
        """A bench topic in the node's subtree (the edge-server account may publish there)."""
        return f"pyedge/{self.node_id}/bench/{name}"

    def login(self, account: str) -> dict[str, str]:
        """`username` and `password` of one of the broker accounts the node made."""
        return load_accounts(self.data_dir / "mosquitto").login(account)

    def worker(self) -> int:
        """The pid of the one gunicorn worker (the master's other child is Mosquitto)."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        workers = [
            c for c in children if b"mosquitto" not in Path(f"/proc/{c}/cmdline").read_bytes()
        ]
        if len(workers) != 1:
            raise RuntimeError(f"bench sse: expected one gunicorn worker, found {workers}")
        return int(workers[0])

    def log_count(self, text: str) -> int:
        """How many lines of the node's output contain `text`."""
        return sum(text in line for line in self.log.read_text(errors="replace").splitlines())


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/api/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@contextmanager
def running_node(tmp: Path) -> Iterator[Node]:
    """`pyedge run` on free ports with custom-service only; stopped with SIGTERM."""
    data_dir = tmp / "data"
    token = AccountStore(data_dir / "accounts.db").create_token("bench", Role.VIEWER)
    http_port, mqtt_port = free_port(), free_port()
    node_id = f"bench-sse-{uuid.uuid4().hex[:6]}"
    env = pyedge_environment(
        node_id,
        EDGE_SERVICES="custom-service",
        EDGE_CUSTOM_SERVICE_HEARTBEAT_AUTOSTART="0",
        EDGE_SSE_CLIENTS=str(SSE_CLIENTS),
        EDGE_LOG_LEVEL=LOG_LEVEL,
    )
    args = [PYEDGE, "run", "--host", HOST, "--port", str(http_port)]
    args += ["--mqtt-port", str(mqtt_port), "--data-dir", str(data_dir)]
    log = tmp / "node.log"
    with running(args, env, log) as process:
        node = Node(process, http_port, mqtt_port, node_id, data_dir, log, token)
        wait(lambda: process.poll() is None and _healthy(node.url), TIMEOUT_S, "pyedge run")
        yield node


def open_stream(node: Node, topic: str, rcvbuf: int | None = None) -> tuple[socket.socket, bytes]:
    """A raw GET /api/events?topic=...; returns the socket and what followed the headers."""
    sock = socket.socket()
    if rcvbuf is not None:
        # Before connect: the window the server sees is set from it at the handshake.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(TIMEOUT_S)
    sock.connect((HOST, node.http_port))
    sock.sendall(
        f"GET /api/events?topic={quote(topic, safe='/')} HTTP/1.1\r\n"
        f"Host: {HOST}:{node.http_port}\r\nAuthorization: Bearer {node.token}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"bench sse: stream closed before its headers: {received!r}")
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"bench sse: /api/events answered {head.splitlines()[0]!r}")
    # The headers came after the hub registered the stream: it gets every later message.
    return sock, rest


def abort(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0): the server's next write to it fails at once."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass
class Streams:
    """Open streams read by one selector thread: each `data:` line with its arrival time."""

    sockets: list[socket.socket]
    rests: list[bytes]
    lines: list[list[tuple[float, bytes]]]
    ended: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def read(self) -> None:
        """Read every stream until stopped (the thread's body)."""
        selector = selectors.DefaultSelector()
        for index, sock in enumerate(self.sockets):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, index)
        while not self._stop.is_set():
            for key, _ in selector.select(0.1):
                now = time.monotonic()
                index = key.data
                try:
                    chunk = self.sockets[index].recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    selector.unregister(key.fileobj)
                    self.ended += 1
                    continue
                # Chunked transfer: each event is one chunk, its lines arrive whole.
                lines = (self.rests[index] + chunk).split(b"\n")
                self.rests[index] = lines.pop()
                self.lines[index].extend((now, line) for line in lines if line[:6] == b"data: ")
        selector.close()

    def stop(self) -> None:
        """End the reading thread's loop."""
        self._stop.set()

    def payloads(self, run: str) -> list[list[tuple[float, dict[str, Any]]]]:
        """Per stream: (arrival time, published payload) of this run's messages."""
        result = []
        for lines in self.lines:
            events = [(now, json.loads(line[6:])["payload"]) for now, line in lines]
            mine = [(now, p) for now, p in events if isinstance(p, dict) and p.get("run") == run]
            result.append(mine)
        return result


@contextmanager
def reading_streams(node: Node, count: int, topic: str) -> Iterator[Streams]:
    """`count` streams on `topic`, read by one thread; reset when the block ends."""
    opened: list[tuple[socket.socket, bytes]] = []
    try:
        for _ in range(count):
            opened.append(open_stream(node, topic))
        streams = Streams([s for s, _ in opened], [r for _, r in opened], [[] for _ in opened])
        thread = threading.Thread(target=streams.read, name="bench-sse-streams", daemon=True)
        thread.start()
        try:
            yield streams
        finally:
            streams.stop()
            thread.join(5)
    finally:
        for sock, _ in opened:
            abort(sock)


def paho_client(node: Node, client_id: str, account: str) -> mqtt.Client:
    """A connected paho client (MQTT 5, loop started) logged in as `account`."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.username_pw_set(**node.login(account))
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(HOST, node.mqtt_port)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError(f"bench sse: {client_id} did not connect to the node's broker")
    return client


def close_paho(client: mqtt.Client) -> None:
    """Disconnect and stop the network thread."""
    client.disconnect()
    client.loop_stop()


class Publisher:
    """A paho client publishing stamped QoS 1 JSON messages to the node's broker."""

    def __init__(self, node: Node, name: str) -> None:
        self.client = paho_client(node, f"bench-sse-pub-{name}", EDGE_SERVER)

    def send(self, topic: str, tag: str, seq: int, pad: str = "") -> mqtt.MQTTMessageInfo:
        """Publish message `seq` of `tag`, stamped with the time just before it is sent."""
        body = {"run": tag, "seq": seq, "pad": pad, "sent": time.monotonic()}
        return self.client.publish(topic, json.dumps(body), qos=1)

    def paced(
        self,
        topic: str,
        tag: str,
        rate: float,
        count: int | None = None,
        until: threading.Event | None = None,
        pad: str = "",
    ) -> int:
        """Publish at `rate` per second (on schedule), `count` or until `until`; how many."""
        started = time.monotonic()
        seq = 0
        while (count is None or seq < count) and not (until is not None and until.is_set()):
            ahead = started + seq / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            self.send(topic, tag, seq, pad)
            seq += 1
        return seq

    def close(self) -> None:
        """Disconnect."""
        close_paho(self.client)


@contextmanager
def publishing(
    publisher: Publisher, topic: str, tag: str, rate: float, pad: str = ""
) -> Iterator[None]:
    """Publish at `rate` from a background thread while the block runs."""
    stop = threading.Event()
    thread = threading.Thread(
        target=publisher.paced,
        args=(topic, tag, rate),
        kwargs={"until": stop, "pad": pad},
        name="bench-sse-publish",
        daemon=True,
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


class Subscriber:
    """A bare paho subscriber on the node's broker: the broker's own hop, the baseline."""

    def __init__(self, node: Node, topic: str, tag: str) -> None:
        self.tag = tag
        self.delays: list[float] = []
        self.seqs: set[int] = set()
        self.client = paho_client(node, f"bench-sse-sub-{tag}", SUBSCRIBER)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.subscribe(topic, qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("bench sse: the bare subscriber's SUBACK did not come")

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        body = json.loads(message.payload)
        if body.get("run") == self.tag:
            self.delays.append(now - body["sent"])
            self.seqs.add(body["seq"])

    def close(self) -> None:
        """Disconnect."""
        close_paho(self.client)


class Sample(NamedTuple):
    """One look at the worker: its memory, the drops so far, the stalled streams' bytes."""

    at: float
    rss: float
    pss: float
    dropped: int
    queued_kib: float
    # The server's connections to the watched ports still established.
    established: int


@dataclass
class Watch:
    """The worker's memory, the node's drops and the stalled sockets, sampled by a thread."""

    node: Node
    pid: int
    interval: float = 0.2
    ports: set[int] = field(default_factory=set)
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def now(self) -> Sample:
        """A sample now."""
        fields = {}
        for line in Path(f"/proc/{self.pid}/smaps_rollup").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("Rss", "Pss"):
                fields[name] = int(value.split()[0]) / 1024
        return Sample(
            time.monotonic(),
            fields["Rss"],
            fields["Pss"],
            self.node.log_count(DROPPED_LINE),
            *self.connections(),
        )

    def connections(self) -> tuple[float, int]:
        """KiB sent to the watched ports not read yet, and how many the server holds open."""
        # /proc/net/tcp: the server's send queues plus the clients' receive queues.
        total, established = 0, 0
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            columns = line.split()
            local, remote = (int(a.rsplit(":", 1)[1], 16) for a in columns[1:3])
            tx_queue, rx_queue = (int(q, 16) for q in columns[4].split(":"))
            if local == self.node.http_port and remote in self.ports:
                total += tx_queue
                established += columns[3] == "01"
            elif local in self.ports and remote == self.node.http_port:
                total += rx_queue
        return total / 1024, established

    def sample(self) -> None:
        """Sample until stopped (the thread's body)."""
        while not self._stop.wait(self.interval):
            self.samples.append(self.now())

    def between(self, since: float, until: float) -> list[Sample]:
        """The samples taken between two monotonic times."""
        return [s for s in self.samples if since <= s.at <= until]

    def at(self, moment: float) -> Sample:
        """The last sample taken at or before `moment`."""
        return [s for s in self.samples if s.at <= moment][-1]

    @contextmanager
    def sampling(self) -> Iterator[Watch]:
        """Sample in a background thread while the block runs."""
        self.samples.append(self.now())
        thread = threading.Thread(target=self.sample, name="bench-sse-watch", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(5)


def percentile_ms(values: list[float], fraction: float) -> float:
    """The `fraction` quantile of `values` (seconds), in milliseconds."""
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return 1000.0 * cuts[round(fraction * 100) - 1]


def settle(check: Callable[[], bool], timeout: float) -> bool:
    """Wait until `check()` or `timeout`; whether it came true."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def viewer_session(node: Node) -> requests.Session:
    """A keep-alive session with the node's viewer token."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {node.token}"
    return session


def per_second(session: requests.Session, url: str, count: int) -> float:
    """Requests per second of `count` sequential GETs."""
    started = time.perf_counter()
    for _ in range(count):
        session.get(url, timeout=TIMEOUT_S).raise_for_status()
    return count / (time.perf_counter() - started)


@dataclass
class Probe:
    """What the API probe saw: each GET's seconds (failed ones too) and the failures."""

    times: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def ms(self, fraction: float) -> float:
        """The `fraction` quantile of the times, in milliseconds."""
        return percentile_ms(self.times, fraction)


def probe(
    session: requests.Session, url: str, done: Callable[[], bool], seen: Probe | None = None
) -> Probe:
    """Sequential GETs at PROBE_RATE until `done()`, into `seen` (failed ones count too)."""
    # No catch-up burst after a slow GET; a failed one counts with the time it took.
    seen = seen or Probe()
    due = time.monotonic()
    while not done():
        ahead = due - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        started = time.perf_counter()
        try:
            session.get(url, timeout=TIMEOUT_S).raise_for_status()
        except requests.RequestException as exc:
            seen.errors.append(type(exc).__name__)
        seen.times.append(time.perf_counter() - started)
        due = max(due + 1 / PROBE_RATE, time.monotonic())
    return seen


def ended_by_server(sockets: list[socket.socket], timeout: float) -> int:
    """Drain the stalled streams; how many the server closed (EOF or reset) within `timeout`."""
    selector = selectors.DefaultSelector()
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    ended = 0
    deadline = time.monotonic() + timeout
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(0.2):
            try:
                chunk = key.fileobj.recv(262144)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                selector.unregister(key.fileobj)
                ended += 1
    selector.close()
    return ended


def measure_latency(node: Node, count: int) -> list[dict[str, Any]]:
    """Publish to event read at LATENCY_STREAMS streams vs the bare subscriber's hop."""
    topic, tag = node.topic("latency"), f"latency-{uuid.uuid4().hex[:6]}"
    subscriber = Subscriber(node, topic, tag)
    publisher = Publisher(node, "latency")
    expected = count * LATENCY_STREAMS
    try:
        with reading_streams(node, LATENCY_STREAMS, topic) as streams:
            # Warm-up, untimed: the first events of a stream and of the hub.
            publisher.paced(topic, "warmup", LATENCY_RATE, count=20)
            publisher.paced(topic, tag, LATENCY_RATE, count=count)
            settle(
                lambda: (
                    len(subscriber.seqs) >= count
                    and sum(map(len, streams.lines)) >= expected + 20 * LATENCY_STREAMS
                ),
                10,
            )
            streams.stop()
        # The reset streams' threads wait for their next event to find out: send it.
        publisher.paced(topic, "flush", LATENCY_RATE, count=3)
        time.sleep(0.3)
    finally:
        publisher.close()
        subscriber.close()
    delays: list[float] = []
    delivered = 0
    # Per message, its arrival times over the streams: their spread is the fan-out's share.
    arrivals: dict[int, list[float]] = {}
    for events in streams.payloads(tag):
        delays.extend(now - payload["sent"] for now, payload in events)
        delivered += len({payload["seq"] for _, payload in events})
        for now, payload in events:
            arrivals.setdefault(payload["seq"], []).append(now)
    if not delays:
        raise RuntimeError("bench sse: no event reached the streams")
    spread = [max(times) - min(times) for times in arrivals.values()]
    what = (
        f"{count} QoS 1 messages at {LATENCY_RATE:.0f}/s, publish to `data:` read at each of "
        f"{LATENCY_STREAMS} streams ({len(delays)} deliveries; first to last stream p50 "
        f"{percentile_ms(spread, 0.5):.1f}, p95 {percentile_ms(spread, 0.95):.1f} ms); baseline "
        "a bare paho subscriber on the node's broker; ratio = baseline/pyedge"
    )
    results: list[dict[str, Any]] = []
    for label, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        sse, broker = percentile_ms(delays, fraction), percentile_ms(subscriber.delays, fraction)
        row: dict[str, Any] = {
            "name": f"sse: latency {label}",
            "unit": "ms",
            "pyedge": sse,
            "baseline": broker,
            "ratio": broker / sse,
            "what": what,
        }
        if label == "p95":
            met = sse <= broker + LATENCY_TARGET_MS
            row["target_met"] = met
            row["what"] = (
                f"{what}; target SSE p95 <= broker p95 + {LATENCY_TARGET_MS:.0f} ms: "
                f"{'met' if met else 'NOT met'} (+{sse - broker:.1f} ms)"
            )
        results.append(row)
    results.append(
        {
            "name": "sse: delivered",
            "unit": "events",
            "pyedge": delivered,
            "baseline": expected,
            "ratio": delivered / expected,
            "target_met": delivered == expected,
            "what": f"distinct messages read at the {LATENCY_STREAMS} streams vs published x "
            f"streams ({streams.ended} streams ended early); the bare subscriber got "
            f"{len(subscriber.seqs)}/{count}",
        }
    )
    return results


def measure_throughput(node: Node, count: int) -> dict[str, Any]:
    """GET /hello per second with LOAD_STREAMS streams open vs none, alternating rounds."""
    topic, tag = node.topic("load"), "load"
    url = node.url + HELLO
    session = viewer_session(node)
    publisher = Publisher(node, "load")
    none: list[float] = []
    streaming: list[float] = []
    events, seconds = 0, 0.0

    def with_streams() -> None:
        nonlocal events, seconds
        with reading_streams(node, LOAD_STREAMS, topic) as streams:
            started = time.monotonic()
            streaming.append(per_second(session, url, count // ROUNDS))
            seconds += time.monotonic() - started
            events += sum(map(len, streams.lines))
        # The reset streams end at their next event; let that pass before the next round.
        time.sleep(0.3)

    try:
        # The same message flow in both: the ratio is what the open streams cost.
        with publishing(publisher, topic, tag, LOAD_RATE):
            per_second(session, url, WARMUP)
            with reading_streams(node, LOAD_STREAMS, topic):
                per_second(session, url, WARMUP)
            time.sleep(0.3)
            for index in range(ROUNDS):
                # Alternating rounds, each side first in turn: drift and order weigh alike.
                if index % 2:
                    with_streams()
                none.append(per_second(session, url, count // ROUNDS))
                if not index % 2:
                    with_streams()
    finally:
        publisher.close()
        session.close()
    baseline, pyedge = statistics.mean(none), statistics.mean(streaming)
    ratio = pyedge / baseline
    per_round = [s / n for s, n in zip(streaming, none, strict=True)]
    return {
        "name": f"sse: /hello, {LOAD_STREAMS} streams",
        "unit": "req/s",
        "pyedge": pyedge,
        "baseline": baseline,
        "ratio": ratio,
        "ratio_median": statistics.median(per_round),
        "target_met": ratio >= LOAD_TARGET,
        "what": f"{count} sequential keep-alive GETs each side in {ROUNDS} alternating rounds, "
        f"{LOAD_RATE:.0f} msg/s on the bus in both; {LOAD_STREAMS} streams read "
        f"{events / max(seconds, 1e-9) / LOAD_STREAMS:.1f} events/s each; baseline no "
        f"streams; target >= {LOAD_TARGET}: {'met' if ratio >= LOAD_TARGET else 'NOT met'}",
    }


def when(samples: list[Sample], start: float, check: Callable[[Sample], bool]) -> float | None:
    """Seconds after `start` of the first sample from then on for which `check` holds."""
    return next((s.at - start for s in samples if s.at >= start and check(s)), None)


def measure_stalled(node: Node, seconds: float, baseline_seconds: float) -> list[dict[str, Any]]:
    """API latency, worker memory and the drops while STALLED streams never read."""
    topic, tag = node.topic("stall"), "stall"
    url = node.url + HELLO
    session = viewer_session(node)
    publisher = Publisher(node, "stall")
    pad = "x" * PAYLOAD_BYTES
    stalled: list[socket.socket] = []
    busy, probing = Probe(), threading.Event()
    prober = threading.Thread(
        target=probe, args=(session, url, probing.is_set, busy), name="bench-sse-probe", daemon=True
    )
    try:
        with Watch(node, node.worker()).sampling() as watch:
            with publishing(publisher, topic, tag, STALL_RATE, pad):
                time.sleep(1)
                calm_until = time.monotonic() + baseline_seconds
                calm = probe(session, url, lambda: time.monotonic() > calm_until)
                start = time.monotonic()
                for _ in range(STALLED):
                    # Only the headers are read (they prove the stream was registered).
                    stalled.append(open_stream(node, topic, rcvbuf=STALLED_RCVBUF)[0])
                    watch.ports.add(stalled[-1].getsockname()[1])
                prober.start()
                time.sleep(seconds)
                stop = time.monotonic()
            # The API is probed on until the server let go of every stalled stream (their
            # blocked writes time out, SO_SNDTIMEO) and a while after: closing is work too.
            settle(lambda: watch.samples[-1].established == 0, CLOSE_WAIT_S)
            time.sleep(RELEASE_PROBE_S)
            probing.set()
            prober.join(TIMEOUT_S)
            released = time.monotonic()
            ended = ended_by_server(stalled, CLOSE_WAIT_S)
            time.sleep(2)
            after_moment = time.monotonic()
            time.sleep(2 * watch.interval)
        # The service goes on: a new stream gets the next events.
        with reading_streams(node, 1, topic) as fresh:
            publisher.paced(topic, "after", 50, count=10)
            settle(lambda: len(fresh.lines[0]) >= 10, 5)
            fresh_events = len(fresh.lines[0])
    finally:
        probing.set()
        publisher.close()
        session.close()
        for sock in stalled:
            abort(sock)
    before, after = watch.at(start), watch.at(after_moment)
    during = watch.between(start, after_moment)
    mid, end = watch.at(start + (stop - start) / 2), watch.at(stop)
    peak_rss, peak_pss = max(s.rss for s in during), max(s.pss for s in during)
    dropped = after.dropped - before.dropped
    first_drop = when(during, start, lambda s: s.dropped > before.dropped)
    all_dropped = when(during, start, lambda s: s.dropped >= before.dropped + STALLED)
    # After every stalled stream was seen open: the first sample with none left.
    opened = when(during, start, lambda s: s.established == STALLED) or 0.0
    all_closed = when(during, start + opened, lambda s: s.established == 0)
    if all_closed is not None:
        all_closed += opened
    peak_queued = max(s.queued_kib for s in during)
    held = watch.at(released)
    event_kib = (PAYLOAD_BYTES + 150) / 1024
    unbounded = STALL_RATE * seconds * STALLED * event_kib / 1024
    p99, calm_p99 = busy.ms(0.99), calm.ms(0.99)
    met = p99 < PROBE_TARGET_MS and not busy.errors
    window = released - start
    socket_errors = node.log_count(SOCKET_ERROR_LINE)

    def since(moment: float | None) -> str:
        return "never" if moment is None else f"{moment:.1f} s"

    return [
        {
            "name": f"sse: API p99, {STALLED} stalled",
            "unit": "ms",
            "pyedge": p99,
            "baseline": calm_p99,
            "ratio": calm_p99 / p99,
            "target_met": met,
            "errors": len(busy.errors),
            "what": f"GET /hello at {PROBE_RATE:.0f}/s sequential, {len(busy.times)} in "
            f"{window:.0f} s from connecting {STALLED} streams that never read until "
            f"{RELEASE_PROBE_S:.0f} s after the server let go of them ({STALL_RATE:.0f} msg/s "
            f"of {PAYLOAD_BYTES} B for "
            f"the first {seconds:.0f} s): p50 {busy.ms(0.5):.1f}, max {1000 * max(busy.times):.1f} "
            f"ms, {len(busy.errors)} failed {sorted(set(busy.errors))}; baseline the same flow, "
            f"no stalled streams ({len(calm.times)} GETs, p50 {calm.ms(0.5):.1f}, max "
            f"{1000 * max(calm.times):.1f} ms, {len(calm.errors)} failed); target < "
            f"{PROBE_TARGET_MS:.0f} ms and none failed: {'met' if met else 'NOT met'}",
        },
        {
            "name": "sse: worker PSS, stalled",
            "unit": "MiB",
            "pyedge": peak_pss,
            "baseline": before.pss,
            "ratio": before.pss / peak_pss,
            "before_rss": before.rss,
            "peak_rss": peak_rss,
            "after_rss": after.rss,
            "after_pss": after.pss,
            "what": f"the gunicorn worker's peak PSS vs before the stalled streams; PSS at "
            f"mid-stall {mid.pss:.1f}, end {end.pss:.1f}, after {after.pss:.1f} MiB; RSS before "
            f"{before.rss:.1f} peak {peak_rss:.1f} after {after.rss:.1f} MiB; unbounded queues "
            f"would hold ~{unbounded:.0f} MiB; the kernel held up to {peak_queued / 1024:.1f} "
            f"MiB for the stalled sockets, still {held.queued_kib / 1024:.1f} MiB once the "
            "server had closed them (not read yet)",
            "kernel_peak_mib": peak_queued / 1024,
            "kernel_closed_mib": held.queued_kib / 1024,
        },
        {
            "name": "sse: stalled dropped",
            "unit": "streams",
            "pyedge": dropped,
            "baseline": STALLED,
            "ratio": dropped / STALLED,
            "target_met": dropped == STALLED and ended == STALLED,
            "first_drop_s": first_drop,
            "all_dropped_s": all_dropped,
            "all_closed_s": all_closed,
            "socket_errors": socket_errors,
            "what": f"'{DROPPED_LINE}' lines in the node's log (first {since(first_drop)}, all "
            f"{since(all_dropped)} after connecting); server closed {ended}/{STALLED} "
            f"(all {since(all_closed)}); {socket_errors} '{SOCKET_ERROR_LINE}' lines; a new "
            f"stream afterwards read {fresh_events}/10 events",
        },
    ]


def run(scale: float) -> list[dict[str, Any]]:
    """The three measures against one `pyedge run`."""
    messages = max(100, int(LATENCY_MESSAGES * scale))
    count = max(ROUNDS * 40, int(REQUESTS * scale))
    # Not shorter in a quick run: a stalled stream is only dropped once the kernel's send
    # buffer (autotuned, MiBs) and then its queue are full, ~13 s at this rate here.
    seconds = max(QUICK_STALL_SECONDS, STALL_SECONDS * scale)
    calm_seconds = max(3.0, BASELINE_SECONDS * scale)
    with tempfile.TemporaryDirectory() as tmp, running_node(Path(tmp)) as node:
        results = measure_latency(node, messages)
        results.append(measure_throughput(node, count))
        results.extend(measure_stalled(node, seconds, calm_seconds))
    # Two cores shared with whatever else runs: the load says how far to trust the tails.
    load = round(os.getloadavg()[0], 1)
    return [{**result, "load_average": load} for result in results]
