"""A subscriber that loses nothing: MQTT 5 persistent session, QoS 1, reconnecting by itself."""

from __future__ import annotations

import itertools
import json
import threading
from collections import defaultdict
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class PersistentSubscriber:
    """What the README tells a consumer to do: a fixed client id, clean_start off, a
    session that outlives a disconnect, QoS 1; it records every reading's seq per sensor."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        topic: str,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.topic = topic
        self.seqs: dict[str, list[int]] = defaultdict(list)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        self.client.connect(host, port, clean_start=False, properties=properties)
        self.client.loop_start()
        assert self._subscribed.wait(5), "no SUBACK"

    def received(self, sensor: str) -> list[int]:
        """The seqs received for `sensor`, duplicates included, in arrival order."""
        with self._lock:
            return list(self.seqs[sensor])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        sensor = message.topic.rsplit("/", 1)[-1]
        if message.topic.endswith("/availability") or message.retain:
            return  # only the live stream counts; a retained copy repeats the last reading
        with self._lock:
            self.seqs[sensor].append(json.loads(message.payload)["seq"])


def account(received: list[int], last: int) -> dict[str, int]:
    """Lost, duplicated and out-of-order counts of a sensor's seqs against 1..last."""
    unique = set(received)
    first_seen = list(dict.fromkeys(received))
    return {
        "expected": last,
        "received": len(received),
        "lost": len(set(range(1, last + 1)) - unique),
        "duplicates": len(received) - len(unique),
        "out_of_order": sum(1 for a, b in itertools.pairwise(first_seen) if b < a),
    }
