"""The MQTT bus: one paho-mqtt 2.x client per process, reconnecting by itself."""

from __future__ import annotations

import itertools
import json
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

logger = logging.getLogger(__name__)

# MQTT 5 reason codes we act on (paho's names for them differ between releases).
UNSUPPORTED_PROTOCOL_VERSION = 0x84
SESSION_TAKEN_OVER = 0x8E
ONLINE = "online"
OFFLINE = "offline"
STATE_QOS = 1
MessageCallback = Callable[[mqtt.MQTTMessage], None]
ConnectCallback = Callable[[], None]
# Called (in the network thread) with a message id and the broker's reason code when a
# QoS 1 PUBLISH is acknowledged (or a QoS 0 one is written).
AckCallback = Callable[[int, ReasonCode], None]


@dataclass(frozen=True)
class Subscription:
    """A topic filter the bus keeps subscribed, and who its messages go to."""

    topic: str
    qos: int
    callback: MessageCallback
    # MQTT 5: the identifier the broker tags this subscription's messages with.
    identifier: int
    retain_as_published: bool = False


@dataclass(frozen=True)
class BusSettings:
    """Where the broker is and who this process is on it."""

    host: str
    port: int
    client_id: str
    will_topic: str
    keepalive: int = 30
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5
    # The broker account; None connects anonymously (PyEdge's own broker refuses that).
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # TLS: the broker's certificate is verified against `ca_file` (None: the system's CAs),
    # and so is its name against `host`. There is no switch to turn verification off.
    tls: bool = False
    ca_file: Path | None = None


class Bus:
    """A process's connection to the broker.

    Subscriptions and the retained `online` status are restored after every reconnect;
    the last will marks `will_topic` `offline` when the process dies without closing.
    """

    def __init__(self, settings: BusSettings) -> None:
        self.settings = settings
        # Re-entrant: a downgrade builds the new client while holding it.
        self._lock = threading.RLock()
        self._subscriptions: dict[str, Subscription] = {}
        # False when the broker says it has no subscription identifiers (MQTT 5 allows
        # that): then messages are matched to the filters, as paho does.
        self._identifiers_available = True
        self._identifiers = itertools.count(1)
        self._status_topics: list[str] = [settings.will_topic]
        self._connect_callbacks: list[ConnectCallback] = []
        self._ack_callbacks: list[AckCallback] = []
        self._connected = threading.Event()
        # Counts successful connects; it changes before `connected` turns true, so a
        # publisher can tell a reconnect happened even before any callback has run.
        self.connections = 0
        self._closing = False
        self.last_error: str | None = "not connected yet"
        self._client = self._new_client(settings.protocol)

    @property
    def connected(self) -> bool:
        """True while the broker has accepted the connection."""
        return self._connected.is_set()

    @property
    def protocol(self) -> MQTTProtocolVersion:
        """The MQTT version of the current client (3.1.1 after a fallback)."""
        protocol: MQTTProtocolVersion = self._client.protocol
        return protocol

    @property
    def broker(self) -> str:
        """host:port of the broker, for health reports."""
        return f"{self.settings.host}:{self.settings.port}"

    def add_status_topic(self, topic: str) -> None:
        """Mark `topic` retained `online` on every connect and `offline` on close."""
        # Under the lock, as the connect handler is: a topic is announced exactly once.
        with self._lock:
            if topic in self._status_topics:
                # The will's topic, when a service runs on its own: already announced.
                return
            self._status_topics.append(topic)
            if self.connected:
                self.publish(topic, ONLINE, retain=True)

    def on_connect(self, callback: ConnectCallback) -> None:
        """Call `callback` (in the network thread) after every successful (re)connect."""
        self._connect_callbacks.append(callback)

    def on_ack(self, callback: AckCallback) -> None:
        """Call `callback(mid, reason_code)` when the broker acknowledges a PUBLISH."""
        self._ack_callbacks.append(callback)

    def subscribe(
        self,
        topic: str,
        callback: MessageCallback,
        qos: int = STATE_QOS,
        retain_as_published: bool = False,
    ) -> None:
        """Deliver messages matching `topic` to `callback`, across reconnects.

        Filters may overlap (a live view of `pyedge/#` beside a service's own calls): each
        message reaches each callback once, by the subscription identifier the broker tags
        it with. With `retain_as_published`, a retained message published while subscribed
        keeps its retain flag, so a subscriber can tell state from events.
        """
        with self._lock:
            previous = self._subscriptions.get(topic)
            identifier = previous.identifier if previous else next(self._identifiers)
            subscription = Subscription(topic, qos, callback, identifier, retain_as_published)
            self._subscriptions[topic] = subscription
            if self.connected:
                self._subscribe(self._client, subscription, self._identifiers_available)

    def unsubscribe(self, topic: str) -> None:
        """Stop delivering `topic` (subscribed with `subscribe`), now and after reconnects."""
        with self._lock:
            if self._subscriptions.pop(topic, None) is None:
                return
            if self.connected:
                self._client.unsubscribe(topic)

    @staticmethod
    def _subscribe(client: mqtt.Client, subscription: Subscription, identify: bool) -> None:
        """One SUBSCRIBE per filter: an MQTT 5 packet carries one subscription identifier."""
        if client.protocol != MQTTProtocolVersion.MQTTv5:
            client.subscribe(subscription.topic, subscription.qos)
            return
        properties = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
        if identify:
            properties.SubscriptionIdentifier = subscription.identifier
        options = SubscribeOptions(
            qos=subscription.qos, retainAsPublished=subscription.retain_as_published
        )
        client.subscribe(subscription.topic, options=options, properties=properties)

    def _dispatch(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """Hand a message to the callbacks of the subscriptions it came through."""
        identifiers = getattr(message.properties, "SubscriptionIdentifier", None)
        with self._lock:
            subscriptions = list(self._subscriptions.values())
        for subscription in subscriptions:
            if identifiers is not None:
                wanted = subscription.identifier in identifiers
            else:  # MQTT 3.1.1, or a broker without them: match the filters, as paho would
                wanted = mqtt.topic_matches_sub(subscription.topic, message.topic)
            if not wanted:
                continue
            try:
                subscription.callback(message)
            except Exception:
                # A bad handler must not take the network thread down with it.
                logger.exception("handler for %s failed", message.topic)

    def publish(
        self,
        topic: str,
        payload: str | bytes,
        qos: int = STATE_QOS,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> mqtt.MQTTMessageInfo:
        """Publish; QoS 1 messages given while disconnected are sent after reconnect.

        `properties` (MQTT 5 only, e.g. CorrelationData) are dropped under MQTT 3.1.1.
        """
        # paho keeps QoS > 0 messages until acknowledged, with no cap: its cap
        # (max_queued_messages) counts in-flight messages too and would drop a burst even
        # while connected. Volume data needs its own flow control (an outbox); telemetry
        # that is stale after an outage should be published at QoS 0.
        if self._client.protocol is not MQTTProtocolVersion.MQTTv5:
            properties = None  # paho refuses properties on an MQTT 3.1.1 connection
        return self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)

    def publish_json(
        self,
        topic: str,
        value: Any,
        qos: int = STATE_QOS,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> mqtt.MQTTMessageInfo:
        """Publish `value` as compact JSON."""
        payload = json.dumps(value, separators=(",", ":"))
        return self.publish(topic, payload, qos, retain, properties=properties)

    def start(self) -> None:
        """Connect in the background; paho retries with backoff until the broker answers."""
        self._client.connect_async(
            self.settings.host, self.settings.port, keepalive=self.settings.keepalive
        )
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected; False on timeout."""
        return self._connected.wait(timeout)

    def close(self, timeout: float = 3.0) -> None:
        """Publish `offline` for every status topic, then disconnect cleanly."""
        # Under the lock: a connect or downgrade in flight either finished (and we say
        # offline) or will see `_closing` (and says nothing).
        with self._lock:
            self._closing = True
            infos = []
            if self.connected:
                infos = [self.publish(t, OFFLINE, retain=True) for t in self._status_topics]
        for info in infos:
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                logger.warning("offline status not confirmed by the broker")
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    def _new_client(self, protocol: MQTTProtocolVersion) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.settings.client_id, protocol=protocol
        )
        client.will_set(self.settings.will_topic, OFFLINE, qos=STATE_QOS, retain=True)
        if self.settings.username is not None:
            client.username_pw_set(self.settings.username, self.settings.password)
        if self.settings.tls:
            ca_file = self.settings.ca_file
            # CERT_REQUIRED and hostname checking are paho's defaults with tls_set.
            client.tls_set(ca_certs=str(ca_file) if ca_file else None)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._handle_connect
        client.on_connect_fail = self._handle_connect_fail
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        client.on_message = self._dispatch
        return client

    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused connection: {reason_code}"
            logger.error("%s (%s)", self.last_error, self.broker)
            if (
                reason_code.value == UNSUPPORTED_PROTOCOL_VERSION
                and client.protocol is MQTTProtocolVersion.MQTTv5
            ):
                # An older broker: fall back to MQTT 3.1.1 once, outside paho's thread.
                threading.Thread(target=self._downgrade, daemon=True).start()
            return
        with self._lock:
            if self._closing:
                return  # a connect that raced close(): say nothing, close() disconnects
            self.last_error = None
            # A broker may say it has no subscription identifiers (and would disconnect a
            # SUBSCRIBE that carries one).
            available = getattr(properties, "SubscriptionIdentifierAvailable", 1)
            self._identifiers_available = bool(available)
            for subscription in self._subscriptions.values():
                self._subscribe(client, subscription, self._identifiers_available)
            for topic in self._status_topics:
                client.publish(topic, ONLINE, qos=STATE_QOS, retain=True)
            self.connections += 1
            self._connected.set()
        logger.info("connected to MQTT broker %s as %s", self.broker, self.settings.client_id)
        for callback in list(self._connect_callbacks):
            try:
                callback()
            except Exception:
                logger.exception("on-connect callback failed")

    def _handle_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError`: the exception says why (refused,
        # unreachable, or a TLS certificate that failed verification).
        reason = sys.exception() or "connection failed"
        error = f"cannot connect to broker: {reason}"
        if error != self.last_error and not self._closing:
            logger.warning("%s (%s)", error, self.broker)
        self.last_error = error

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if not self._closing:
            self.last_error = f"disconnected from broker: {reason_code}"
            if reason_code.value == SESSION_TAKEN_OVER:
                logger.error(
                    "another client connected as %s: is node id %r used twice on this broker?",
                    self.settings.client_id,
                    self.settings.client_id,
                )
            elif was_connected:
                logger.warning("%s; reconnecting", self.last_error)

    def _handle_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        for callback in list(self._ack_callbacks):
            try:
                callback(mid, reason_code)
            except Exception:
                logger.exception("ack callback failed")

    def _downgrade(self) -> None:
        with self._lock:
            if self._closing:
                return
            logger.warning("broker %s lacks MQTT 5; using MQTT 3.1.1", self.broker)
            old = self._client
            old.disconnect()
            old.loop_stop()
            self._client = self._new_client(MQTTProtocolVersion.MQTTv311)
            self.start()
