"""Server-Sent Events from the engine's streams: container logs and Docker events.

Each Docker stream is read by its own thread into a queue, so that the response can send
a heartbeat comment while the engine is silent. The heartbeat is also how a client that
went away is noticed (its write fails): the Docker streams are then closed at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from container_manager.containers import STAMP_RE, order_key, split_timestamp, timestamp_key
from container_manager.engine import Engine
from container_manager.errors import ContainerManagerError, translated
from container_manager.specs import MANAGED_LABEL
from pyedge.sse import format_event

logger = logging.getLogger(__name__)

_END = object()


class Closable(Protocol):
    """A Docker stream: iterable and closable from another thread (CancellableStream)."""

    def __iter__(self) -> Iterator[Any]: ...

    def close(self) -> None: ...


@dataclass
class Source:
    """One Docker stream and how its items become (event id, payload) pairs."""

    stream: Closable
    parse: Callable[[Any], Iterable[tuple[str, dict[str, Any]]]]


def _read(index: int, source: Source, out: queue.Queue[Any]) -> None:
    """Put the source's (index, id, data) items on `out` until it ends or is closed; then _END."""
    try:
        with translated():
            for item in source.stream:
                for event_id, data in source.parse(item):
                    out.put((index, event_id, data))
    except ContainerManagerError as exc:
        out.put((index, "", {"error": str(exc)}))
    except Exception:
        # Closing the stream from the response side makes the blocked read fail: expected.
        logger.debug("docker stream ended", exc_info=True)
    finally:
        out.put(_END)


def resume_floors(after: str | None, count: int) -> list[str] | None:
    """Each source's last sent id from a Last-Event-ID (ids joined by '|', one per source).

    None when there is none, or when it is not one of ours: a bad header starts afresh.
    """
    parts = (after or "").split("|")
    if len(parts) != count or not all(STAMP_RE.match(part) for part in parts):
        return None
    return parts


def engine_now() -> str:
    """Now, written as the engine writes its timestamps (RFC 3339, nanoseconds, Z)."""
    now_ns = time.time_ns()
    stamp = datetime.fromtimestamp(now_ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{now_ns % 1_000_000_000:09d}Z"


class EventStream:
    """Opened sources, and one idempotent cleanup: close them, then run `on_close`.

    The cleanup runs when the response's body ends or when the server closes the response,
    whichever comes first; a response whose body never starts (HEAD) still gets it.
    """

    def __init__(self, sources: list[Source], on_close: Callable[[], None]) -> None:
        self.sources = sources
        self._on_close = on_close
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Close every source (unblocking its reader) and run on_close, once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        close_all(self.sources)
        self._on_close()


def close_all(sources: Iterable[Source]) -> None:
    """Close Docker streams; a failure to close one does not keep the others open."""
    for source in sources:
        try:
            source.stream.close()
        except Exception:
            logger.debug("closing a docker stream failed", exc_info=True)


def serve(
    stream: EventStream, heartbeat: float, floors: list[str] | None, opened_at: str
) -> Iterator[str]:
    """SSE text of the sources' items as they come, with heartbeats, resumable.

    An event's id holds every source's position (ids joined by '|'): the sources are not
    ordered among themselves (stdout and stderr), so one position could not tell what the
    client has missed. A source that has sent nothing yet is at `opened_at`, so that a
    resume does not replay its history. Items at or before a resumed position are skipped.
    Ends with an `end` event when every source has ended; closes the stream in any case.
    """
    sources = stream.sources
    items: queue.Queue[Any] = queue.Queue()
    threads = [
        threading.Thread(target=_read, args=(i, source, items), name="sse-reader", daemon=True)
        for i, source in enumerate(sources)
    ]
    for thread in threads:
        thread.start()
    positions = list(floors) if floors else [opened_at] * len(sources)
    keys = [timestamp_key(floor) for floor in floors] if floors else None
    running = len(sources)
    try:
        yield ": stream open\n\n"
        while running:
            try:
                item = items.get(timeout=heartbeat)
            except queue.Empty:
                yield ": keepalive\n\n"
                continue
            if item is _END:
                running -= 1
                continue
            index, event_id, data = item
            if "error" in data:
                yield format_event(data, event="error")
                continue
            if keys is not None and order_key(event_id) <= keys[index]:
                continue  # sent before the client reconnected
            positions[index] = event_id
            yield format_event(data, "|".join(positions))
        yield format_event({}, event="end")
    finally:
        stream.close()
        for thread in threads:
            thread.join(5)


def _lines(stream_name: str) -> Callable[[Any], Iterable[tuple[str, dict[str, Any]]]]:
    """A parser of raw log chunks into (ts, line) pairs, buffering partial lines."""
    pending = b""

    def parse(chunk: bytes) -> Iterable[tuple[str, dict[str, Any]]]:
        nonlocal pending
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            ts, text = split_timestamp(raw.decode("utf-8", "replace"))
            yield ts, {"ts": ts, "stream": stream_name, "text": text}

    return parse


def log_sources(engine: Engine, ident: str, tail: int, floors: list[str] | None) -> list[Source]:
    """Followed stdout and stderr of a container: each from its resume point, else `tail`."""
    sources: list[Source] = []
    try:
        for index, stream_name in enumerate(("stdout", "stderr")):
            # The engine's `since` has whole-second effect; serve() drops what was sent.
            since = max(_stamp_seconds(floors[index]) - 1.0, 0.0) if floors else None
            stream = engine.stream(
                lambda c, s=stream_name, t=since: c.api.logs(
                    ident,
                    stdout=s == "stdout",
                    stderr=s == "stderr",
                    stream=True,
                    follow=True,
                    timestamps=True,
                    tail="all" if floors else tail,
                    since=t or None,
                )
            )
            sources.append(Source(stream, _lines(stream_name)))
    except BaseException:
        close_all(sources)  # stdout is open when stderr fails: do not leave it behind
        raise
    return sources


def _stamp_seconds(ts: str) -> float:
    base, _ = timestamp_key(ts)
    return datetime.fromisoformat(base).replace(tzinfo=UTC).timestamp()


def _event(item: dict[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    actor = item.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    time_nano = int(item.get("timeNano") or int(item.get("time", 0)) * 1_000_000_000)
    stamp = datetime.fromtimestamp(time_nano // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    event_id = f"{stamp}.{time_nano % 1_000_000_000:09d}Z"
    yield (
        event_id,
        {
            "ts": event_id,
            "type": item.get("Type"),
            "action": item.get("Action") or item.get("status"),
            "id": actor.get("ID") or item.get("id"),
            "name": attributes.get("name"),
            "attributes": attributes,
        },
    )


def event_sources(engine: Engine, *, managed_only: bool, floors: list[str] | None) -> list[Source]:
    """The engine's events stream (only objects PyEdge created, unless asked for all)."""
    filters = {"label": [f"{MANAGED_LABEL}=true"]} if managed_only else None
    since = int(_stamp_seconds(floors[0])) if floors else None
    stream = engine.stream(lambda c: c.api.events(decode=True, filters=filters, since=since))
    return [Source(stream, _event)]
