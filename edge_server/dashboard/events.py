"""The live channel: bus messages streamed to browsers as Server-Sent Events.

One subscription to the site's topic root feeds every client (never one MQTT client per
browser). The MQTT network thread only formats a message once and offers it to each
client's bounded queue; a client whose queue is full has stopped reading and is dropped,
so it can neither grow memory nor slow the others. Retained messages are kept as the
snapshot a client gets when it connects, and the last events are kept so that a browser
reconnecting with `Last-Event-ID` gets what it missed.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import queue
import secrets
import socket
import struct
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import marshmallow as ma
from flask import Flask, current_app, g, request
from flask.views import MethodView
from flask_smorest import abort
from paho.mqtt.client import MQTTMessage
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from pyedge import ServiceHost
from pyedge.security import Blueprint, Role, requires
from pyedge.service import topic_root
from pyedge.sse import HEADERS, MIMETYPE, doc, hold_stream_socket

logger = logging.getLogger(__name__)

EXTENSION = "pyedge.events"
# Per client: events waiting to be written. A browser reads them as they come; a client
# this far behind is not reading.
QUEUE_SIZE = 256
# Events kept for clients that reconnect with Last-Event-ID.
HISTORY = 1000
# A retry hint to EventSource, in milliseconds.
RETRY_MS = 3000
# Topics a viewer never sees: operation calls and their answers carry other callers'
# parameters and results. Relative to the topic root.
OPERATOR_ONLY = ("+/+/ops/+/call", "+/+/reply/#")
MAX_FILTERS = 16


class EventsArgs(ma.Schema):
    """The topic filters to stream."""

    topic = ma.fields.List(
        ma.fields.String(validate=ma.validate.Length(1, 512)),
        load_default=list,
        validate=ma.validate.Length(max=MAX_FILTERS),
        metadata={"description": "MQTT topic filters under the site's root (default: all)"},
    )


Levels = tuple[str, ...]


def matches(sub: Levels, topic: Levels) -> bool:
    """MQTT filter matching on levels split once (paho's builds a matcher on every call,
    and the hub matches every message against every stream's filters)."""
    for index, level in enumerate(sub):
        if level == "#":
            return True  # also matches the parent level: `a/#` matches `a`
        if index >= len(topic) or (level != "+" and level != topic[index]):
            return False
    return len(sub) == len(topic)


@dataclass(eq=False)
class Client:
    """One open stream: its filters, its role, its queue and its socket."""

    filters: tuple[str, ...]
    role: Role
    queue: queue.Queue[str | None] = field(default_factory=lambda: queue.Queue(QUEUE_SIZE))
    dropped: bool = False
    # The connection, when the server exposes it: dropping the stream shuts it at once.
    sock: socket.socket | None = None
    # What it gets first (the retained state, or what it missed): apart from the queue, so
    # that a site's large snapshot never counts against a reader's live slack.
    backlog: list[str] = field(default_factory=list)
    # The hub's last event id when it opened: where a reconnect resumes from.
    opened_at: str = ""

    def __post_init__(self) -> None:
        self._subs = [tuple(sub.split("/")) for sub in self.filters]

    def wants(self, topic: Levels) -> bool:
        """True if one of the client's filters matches the topic's levels."""
        return any(matches(sub, topic) for sub in self._subs)


@dataclass(frozen=True)
class Event:
    """A bus message as it is streamed: its sequence number, topic and formatted text."""

    seq: int
    topic: str
    text: str
    retained: bool


def payload_of(message: MQTTMessage) -> Any:
    """The message's payload: JSON when it parses, else text."""
    text = message.payload.decode("utf-8", errors="replace")
    try:
        # NaN and Infinity (which json.dumps writes) are no JSON a browser can parse.
        return json.loads(text, parse_constant=lambda _: None)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python goes
        return text


class EventHub:
    """The process's one subscription to the bus, fanned out to every open stream."""

    def __init__(self, root: str, max_clients: int, heartbeat: float) -> None:
        self.root = root
        self.max_clients = max_clients
        self.heartbeat = heartbeat
        # A new boot id per process: an id from before a restart is not ours to resume.
        self.boot = secrets.token_hex(4)
        self._seq = itertools.count(1)
        self._last_seq = 0
        self._clients: set[Client] = set()
        self._history: deque[Event] = deque(maxlen=HISTORY)
        self._retained: dict[str, Event] = {}
        self._lock = threading.Lock()
        self.dropped = 0

    def attach(self, host: ServiceHost) -> None:
        """Subscribe to everything under the topic root, through the host's bus."""
        assert host.bus is not None, "the host's init_app first"
        # After a reconnect the broker sends the retained state again: what was cleared
        # meanwhile must not stay in the snapshot.
        host.bus.on_connect(self.forget_retained)
        host.bus.subscribe(f"{self.root}/#", self.on_message, retain_as_published=True)

    def forget_retained(self) -> None:
        """Drop the snapshot; the broker's resend of the retained messages rebuilds it."""
        with self._lock:
            self._retained.clear()

    @property
    def clients(self) -> int:
        """Streams open now."""
        return len(self._clients)

    def families(self) -> Iterator[Metric]:
        """The live channel's metrics: streams open now, and streams dropped for not reading."""
        yield GaugeMetricFamily(
            "pyedge_sse_clients", "Live channel streams open now", value=self.clients
        )
        yield CounterMetricFamily(
            "pyedge_sse_dropped",
            "Live channel streams dropped because their client stopped reading",
            value=self.dropped,
        )

    def on_message(self, message: MQTTMessage) -> None:
        """Format the message once and offer it to every client that wants it."""
        topic = message.topic
        with self._lock:
            seq = self._last_seq = next(self._seq)
            data = {"topic": topic, "payload": payload_of(message), "retained": message.retain}
            event = Event(seq, topic, self.format(seq, data), bool(message.retain))
            # A topic already held is state: its update counts whatever the flag says
            # (MQTT 3.1.1 has no retain-as-published, and clears the flag live).
            if message.retain or topic in self._retained:
                if message.payload:
                    self._retained[topic] = event
                else:  # an empty retained message clears the topic
                    self._retained.pop(topic, None)
            self._history.append(event)
            clients = list(self._clients)
        levels = tuple(topic.split("/"))
        visible: dict[Role, bool] = {}  # decided once per role, not once per stream
        for client in clients:
            if client.dropped or not client.wants(levels):
                continue
            if client.role not in visible:
                visible[client.role] = may_see(client.role, self.root, topic)
            if not visible[client.role]:
                continue
            try:
                client.queue.put_nowait(event.text)
            except queue.Full:
                self.drop(client)

    def format(self, seq: int, data: dict[str, Any]) -> str:
        """One SSE event: the boot-qualified id, the `message` event, JSON data."""
        body = json.dumps(data, separators=(",", ":"))
        return f"id: {self.boot}-{seq}\nevent: message\ndata: {body}\n\n"

    def drop(self, client: Client) -> None:
        """Stop feeding a client that is not reading; its stream ends."""
        with self._lock:
            if client not in self._clients:
                return  # already gone: its socket may be serving another request by now
            self._clients.discard(client)
            self.dropped += 1
            client.dropped = True
        if client.sock is not None:
            # Its thread is blocked writing to a full socket: end the write now (a broken
            # pipe, which the server takes quietly) rather than after the send time-out,
            # whose error path would make gunicorn wait for the client on its main loop.
            with contextlib.suppress(OSError):
                client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.sock.shutdown(socket.SHUT_RDWR)
        logger.info("dropped an event stream that stopped reading (%d open)", self.clients)

    def open(
        self,
        filters: tuple[str, ...],
        role: Role,
        last_id: str | None,
        sock: socket.socket | None = None,
    ) -> Client:
        """Register a stream; its first events are what it missed, or the retained state."""
        client = Client(filters, role, sock=sock)
        with self._lock:
            if len(self._clients) >= self.max_clients:
                raise StreamsFull(len(self._clients))
            client.backlog = [
                event.text
                for event in self._backlog(last_id)
                if client.wants(tuple(event.topic.split("/")))
                and may_see(role, self.root, event.topic)
            ]
            client.opened_at = f"{self.boot}-{self._last_seq}"
            self._clients.add(client)
        return client

    def close_client(self, client: Client) -> None:
        """Forget a stream that ended."""
        with self._lock:
            self._clients.discard(client)

    def close(self) -> None:
        """End every stream (the process is stopping)."""
        with self._lock:
            clients, self._clients = list(self._clients), set()
        for client in clients:
            client.dropped = True
            with contextlib.suppress(queue.Full):
                client.queue.put_nowait(None)

    def _backlog(self, last_id: str | None) -> Iterable[Event]:
        """Events after `last_id` when we still hold them, else the retained snapshot."""
        if last_id:
            boot, _, seq = last_id.partition("-")
            if boot == self.boot and seq.isdigit() and self._history:
                after = int(seq)
                if self._history[0].seq <= after + 1:
                    return [event for event in self._history if event.seq > after]
        return sorted(self._retained.values(), key=lambda event: event.seq)

    def stream(self, client: Client) -> Iterator[str]:
        """The stream's text: the retry hint, then events and heartbeat comments."""
        try:
            yield f"retry: {RETRY_MS}\n: {self.boot}\n\n"
            backlog, client.backlog = client.backlog, []
            yield from backlog
            # The snapshot's events keep their old ids: a reconnect from the last of them
            # would replay what came before this stream. An id alone (no data) moves the
            # browser's last event id to now without an event.
            yield f"id: {client.opened_at}\n\n"
            while not client.dropped:
                try:
                    text = client.queue.get(timeout=self.heartbeat)
                except queue.Empty:
                    yield ": keep-alive\n\n"
                    continue
                if text is None:
                    return
                yield text
        finally:
            self.close_client(client)


class StreamsFull(Exception):
    """Every stream slot is taken."""


def may_see(role: Role, root: str, topic: str) -> bool:
    """True if a caller of `role` may receive `topic` (a topic under the root)."""
    if role >= Role.OPERATOR:
        return True
    relative = topic[len(root) + 1 :]
    levels = tuple(relative.split("/"))
    return not any(matches(tuple(sub.split("/")), levels) for sub in OPERATOR_ONLY)


def check_filter(root: str, sub: str) -> str | None:
    """Why `sub` cannot be streamed, or None: a valid MQTT filter under the site's root."""
    levels = sub.split("/")
    for index, level in enumerate(levels):
        if ("#" in level and (level != "#" or index != len(levels) - 1)) or (
            "+" in level and level != "+"
        ):
            return f"{sub!r} is not a valid MQTT topic filter"
    root_levels = root.split("/")
    for index, level in enumerate(root_levels):
        if index >= len(levels):
            return f"{sub!r} is outside this site's topics ({root}/#)"
        if levels[index] != level:
            return f"{sub!r} is outside this site's topics ({root}/#)"
    return None


def hub() -> EventHub:
    """The app's event hub."""
    found: EventHub = current_app.extensions[EXTENSION]
    return found


blp = Blueprint("events", __name__, url_prefix="/api", description="Live bus messages (SSE)")


@blp.route("/events")
class Events(MethodView):
    @requires(Role.VIEWER)
    @blp.arguments(EventsArgs, location="query")
    @blp.doc(**doc("bus messages as Server-Sent Events"))
    def get(self, args: dict[str, Any]) -> Any:
        """Stream bus messages under the site's root as Server-Sent Events."""
        events = hub()
        filters = tuple(dict.fromkeys(args["topic"])) or (f"{events.root}/#",)
        for sub in filters:
            problem = check_filter(events.root, sub)
            if problem:
                abort(HTTPStatus.FORBIDDEN, message=problem)
        last_id = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
        sock = hold_stream_socket(request.environ)
        try:
            client = events.open(filters, g.identity.role, last_id, sock)
        except StreamsFull as exc:
            abort(
                HTTPStatus.SERVICE_UNAVAILABLE,
                message=f"{exc.args[0]} event streams are open, the most this server holds",
                headers={"Retry-After": "5"},
            )
        response = current_app.response_class(
            events.stream(client), mimetype=MIMETYPE, headers=HEADERS
        )
        # The server closes the response even when it never iterates it (HEAD, a client
        # gone before the first byte), when the stream's own `finally` never runs.
        response.call_on_close(functools.partial(events.close_client, client))
        return response


def init_app(app: Flask, host: ServiceHost, api: Any) -> EventHub:
    """Create the app's hub on the host's bus and mount `GET /api/events`."""
    settings = app.config
    events = EventHub(
        topic_root(settings.get("EDGE_SITE", "")),
        max_clients=settings["EDGE_SSE_CLIENTS"],
        heartbeat=settings["EDGE_SSE_HEARTBEAT"],
    )
    events.attach(host)
    host.metrics.register(events.families)
    app.extensions[EXTENSION] = events
    api.register_blueprint(blp)
    host.close_hooks.append(events.close)
    return events
