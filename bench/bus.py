"""QoS 1 JSON publishing through pyedge.Bus vs a bare paho-mqtt client, until all acked."""

from __future__ import annotations

import json
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bench.broker import bench_login, running_broker
from pyedge import Bus, BusSettings
from pyedge.operations import utc_now

MESSAGES = 20000


def payload(seq: int) -> dict[str, Any]:
    """A small reading, like a session update or a heartbeat."""
    return {"seq": seq, "ts": utc_now(), "value": 21.5 + seq % 10}


def bare_paho(port: int, count: int) -> float:
    """Messages per second: a bare paho loop publishing QoS 1 JSON, waiting for every ack."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, "bench-bare", protocol=MQTTProtocolVersion.MQTTv5
    )
    client.username_pw_set(**bench_login())
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.perf_counter()
    infos = [
        client.publish(f"bench/bare/{i % 10}", json.dumps(payload(i)), qos=1) for i in range(count)
    ]
    for info in infos:
        info.wait_for_publish(30)
    rate = count / (time.perf_counter() - started)
    client.disconnect()
    client.loop_stop()
    return rate


def pyedge_bus(port: int, count: int) -> float:
    """Messages per second through pyedge.Bus.publish_json at QoS 1."""
    bus = Bus(
        BusSettings("127.0.0.1", port, "bench-bus", will_topic="bench/bus/status", **bench_login())
    )
    bus.start()
    assert bus.wait_connected(5)
    started = time.perf_counter()
    infos = [bus.publish_json(f"bench/bus/{i % 10}", payload(i)) for i in range(count)]
    for info in infos:
        info.wait_for_publish(30)
    rate = count / (time.perf_counter() - started)
    bus.close()
    return rate


def run(scale: float) -> dict[str, Any]:
    """Compare the Bus with bare paho on the same broker."""
    count = max(1000, int(MESSAGES * scale))
    with running_broker() as port:
        baseline = bare_paho(port, count)
        pyedge = pyedge_bus(port, count)
    return {
        "name": "bus: QoS 1 publish",
        "unit": "msg/s",
        "pyedge": pyedge,
        "baseline": baseline,
        "ratio": pyedge / baseline,
        "what": f"{count} JSON messages to Mosquitto, all PUBACKed; baseline bare paho",
    }
