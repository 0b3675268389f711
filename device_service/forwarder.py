"""The forwarder: drains the outbox to the broker in order, a bounded window at a time."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from device_service.outbox import Outbox, OutboxError
from pyedge import Bus

logger = logging.getLogger(__name__)

READING_QOS = 1
# With nothing to do, look again this often (new readings and acks wake it sooner).
IDLE_WAIT_S = 0.5
# A window that sees no acknowledgement this long while connected is published again
# (duplicates are QoS 1 redeliveries; losing the window would be worse).
STALL_S = 30.0
PACE_SLACK_S = 0.01
# Acknowledged rows are deleted together: this many, or this often, or when idle.
ACK_BATCH = 500
ACK_FLUSH_S = 0.05
# A reading the broker refused is sent again after this pause.
RETRY_S = 5.0


class Forwarder:
    """Publishes outbox rows oldest first and removes each once its PUBACK has arrived.

    At most `inflight` rows are handed to paho at a time and none while disconnected, so
    paho's memory stays bounded however long the broker is away; the outbox holds the rest.
    On reconnect paho re-sends its unacknowledged window, then new rows follow in order.
    """

    def __init__(self, outbox: Outbox, bus: Bus, *, inflight: int, rate: float) -> None:
        self.outbox = outbox
        self.bus = bus
        self.inflight = inflight
        self.interval = 1.0 / rate
        self._pending: OrderedDict[int, mqtt.MQTTMessageInfo] = OrderedDict()
        self._cursor = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_progress = time.monotonic()
        self._next_send = 0.0
        self._acked: list[int] = []
        self._last_flush = time.monotonic()
        self._refused: dict[int, str] = {}
        self._retry_from: int | None = None
        self._retry_at = 0.0
        self._hold = False
        self._generation = bus.connections
        self.refusal: str | None = None
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        self._failing: str | None = None  # the error last logged, until a pass succeeds
        bus.on_ack(self._on_ack)
        bus.on_connect(self._on_connect)

    def wake(self) -> None:
        """New rows are in the outbox: publish them soon."""
        self._wake.set()

    def start(self) -> None:
        """Run in a thread of its own until stop()."""
        self._thread = threading.Thread(target=self._run, name="device-forwarder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0, drain: float = 2.0) -> None:
        """Stop forwarding, after up to `drain` seconds of sending what is left.

        What is still unacknowledged then stays in the outbox for the next start.
        """
        deadline = time.monotonic() + drain
        while (
            self.bus.connected
            and time.monotonic() < deadline
            and (self._pending or self.outbox.stats()["depth"])
        ):
            self._wake.set()
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def in_flight(self) -> int:
        """Rows handed to paho and not yet acknowledged."""
        return len(self._pending)

    def _on_ack(self, mid: int, reason_code: ReasonCode) -> None:
        # paho marks a message published whatever the PUBACK's reason code: remember the
        # refusals (not authorized, quota exceeded) so their rows are kept, not deleted.
        if reason_code.is_failure:
            self._refused[mid] = str(reason_code)
        self._wake.set()

    def _on_connect(self) -> None:
        # Time spent disconnected is no stall.
        self._last_progress = time.monotonic()
        self._wake.set()

    def _reconnected(self) -> bool:
        """True once per new connection; then the unacknowledged window must go first."""
        if self.bus.connections == self._generation:
            return False
        self._generation = self.bus.connections
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._collect_acks()
                self._publish_window()
                if self._failing:
                    logger.warning("forwarder: working again")
                    self._failing = None
                self.error = self.refusal
            except Exception as exc:
                # This thread must outlive any error: if it died, delivery would stop
                # silently. The error degrades the service until a pass succeeds.
                self.error = f"{type(exc).__name__}: {exc}"
                # Once per error, not per pass: a full disk fails every pass.
                if self.error != self._failing:
                    logger.exception("forwarder")
                self._failing = self.error
            self._wake.wait(IDLE_WAIT_S)
            self._wake.clear()
        try:
            self._collect_acks()
            if self._acked:
                self._flush_acks()
        except OutboxError as exc:
            # The rows stay: the next start sends them again (QoS 1 duplicates, no loss).
            logger.error("forwarder: acknowledgements not saved at stop: %s", exc)

    def _collect_acks(self) -> None:
        now = time.monotonic()
        # Only the acknowledged prefix, in order: a refusal is then always seen before
        # the acknowledgements of the rows that followed it.
        done = list(itertools.takewhile(lambda item: _acknowledged(item[1]), self._pending.items()))
        for row_id, info in done:
            # The window slot is free at once; the rows are deleted in batches.
            del self._pending[row_id]
            reason = self._refused.pop(info.mid, None)
            if reason is not None:
                self._refuse(row_id, reason)
            elif self._retry_from is None or row_id < self._retry_from:
                self._acked.append(row_id)
            # else: kept, and sent again after the refused row, so that order holds.
        # Refusals of other messages (or of rows given up by a stall) must not match a
        # later message that reuses the id.
        live = {info.mid for info in self._pending.values()}
        for mid in [m for m in self._refused if m not in live]:
            self._refused.pop(mid, None)
        if done:
            self._last_progress = now
        elif self._pending and self.bus.connected and now - self._last_progress > STALL_S:
            logger.warning("forwarder: no PUBACK for %.0f s; publishing again", STALL_S)
            self._pending.clear()
            self._retry_from = 1
            self._last_progress = now
        if not self._pending:
            self._hold = False
        if self._acked and (
            not self._pending
            or len(self._acked) >= ACK_BATCH
            or now - self._last_flush >= ACK_FLUSH_S
        ):
            self._flush_acks()

    def _refuse(self, row_id: int, reason: str) -> None:
        # The row stays in the outbox and is sent again, with what followed it, once the
        # window has drained and a pause has passed; the service is degraded meanwhile.
        self.refusal = f"the broker refused a reading: {reason}"
        logger.error("forwarder: %s; retrying in %.0f s", self.refusal, RETRY_S)
        first = row_id if self._retry_from is None else min(self._retry_from, row_id)
        self._retry_from = first
        self._retry_at = time.monotonic() + RETRY_S

    def _flush_acks(self) -> None:
        self.outbox.ack(self._acked)
        self._acked = []
        self._last_flush = time.monotonic()

    def _publish_window(self) -> None:
        if not self.bus.connected:
            return
        if self._reconnected() and self._pending:
            # paho re-sends the unacknowledged window on reconnect; newer rows wait until
            # it is acknowledged, or they could overtake it.
            self._hold = True
        if self._hold:
            return
        if self._retry_from is not None:
            if self._pending or time.monotonic() < self._retry_at:
                return
            self._flush_acks()  # so that the rows sent again are only the unacknowledged
            self._cursor = self._retry_from - 1
            self._retry_from = None
            self.refusal = None
        room = self.inflight - len(self._pending)
        if room <= 0:
            return
        for row in self.outbox.peek(room, self._cursor):
            if (
                self._stop.is_set()
                or not self.bus.connected
                or self.bus.connections != self._generation
            ):
                return  # stopping, disconnected, or reconnected: the next pass decides
            info = self.bus.publish(row.topic, row.payload, qos=READING_QOS, retain=True)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                # The connection dropped under us (or paho refused): this row is not in
                # the window and goes again after reconnect, at worst as a duplicate.
                logger.info("forwarder: publish not accepted (rc %s); later", info.rc)
                return
            self._pending[row.id] = info
            self._cursor = row.id
            self._pace()

    def _pace(self) -> None:
        # A token bucket: the drain rate bounds a backlog's burst, while a live stream far
        # below it never waits. Sleep only once ahead by 10 ms, as sleeps are coarse.
        now = time.monotonic()
        self._next_send = max(self._next_send, now - PACE_SLACK_S) + self.interval
        ahead = self._next_send - now
        if ahead > PACE_SLACK_S:
            time.sleep(ahead)

    def stats(self) -> dict[str, Any]:
        """What the forwarder is doing, for the outbox endpoint."""
        return {"in_flight": self.in_flight, "error": self.error}


def _acknowledged(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether the broker has acknowledged it; paho raises for odd return codes."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False
