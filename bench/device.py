"""The device-service's reading path (body, outbox, forwarder, Bus) vs bare paho, on one broker.

Throughput: QoS 1 retained readings until all are PUBACKed, through the Bus alone and
through the durable outbox (one commit per sampling tick). Latency: sampling moment to a
subscriber's on_message, at a moderate rate, through the outbox and forwarder.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bench.broker import bench_login, running_broker
from device_service.drivers.base import Reading as RawReading
from device_service.drivers.simulated import Simulated, SimulatedOptions
from device_service.forwarder import Forwarder
from device_service.outbox import Outbox
from device_service.outbox import Reading as StoredReading
from device_service.sensors import Sensor
from pyedge import Bus, BusSettings
from pyedge.operations import utc_now

READINGS = 20000
SENSORS = 10
INFLIGHT = 100
# Far above any rate reached here: the forwarder's drain limiter never binds.
DRAIN_RATE = 1e9
BATCHES = (1, 50)
LATENCY_RATE = 200.0
LATENCY_SECONDS = 3.0
# Every wait is bounded by this (a stuck broker fails the benchmark instead of hanging it).
TIMEOUT_S = 120.0
HOST = "127.0.0.1"


def sensors() -> list[Sensor]:
    """Simulated temperature sensors, configured the way the service configures them."""
    options = SimulatedOptions().load({"unit": "°C", "minimum": 18.0, "maximum": 24.0})
    return [
        Sensor(f"temp{i}", "simulated", Simulated(**options), interval=1.0, unit="°C")
        for i in range(SENSORS)
    ]


def raw(seq: int) -> RawReading:
    """A driver's raw reading (not read from the driver: the benchmark is the path after it)."""
    return {"value": 21.5 + seq % 10}


def bare_payload(seq: int, **extra: float) -> str:
    """What the baseline publishes: the same small JSON reading, built by hand."""
    return json.dumps(
        {"value": 21.5 + seq % 10, "unit": "°C", "ts": utc_now(), "seq": seq, **extra},
        separators=(",", ":"),
    )


def topic(node: str, sensor: str) -> str:
    """The service's topic of a sensor's readings."""
    return f"pyedge/{node}/device-service/sensors/{sensor}"


def paho_client(client_id: str, port: int) -> mqtt.Client:
    """A bare paho 2.x MQTT 5 client, connected, its network loop running."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    connected = threading.Event()
    client.on_connect = lambda *_args: connected.set()
    client.username_pw_set(**bench_login())
    client.connect(HOST, port)
    client.loop_start()
    if not connected.wait(10):
        close_paho(client)
        raise TimeoutError(f"{client_id}: no CONNACK")
    return client


def close_paho(client: mqtt.Client) -> None:
    """Disconnect and stop the network thread."""
    client.disconnect()
    client.loop_stop()


def new_bus(client_id: str, port: int) -> Bus:
    """A started, connected pyedge Bus."""
    will_topic = f"bench/{client_id}/status"
    bus = Bus(BusSettings(HOST, port, client_id, will_topic=will_topic, **bench_login()))
    bus.start()
    if not bus.wait_connected(10):
        bus.close()
        raise TimeoutError(f"{client_id}: not connected")
    return bus


def acked(info: mqtt.MQTTMessageInfo, deadline: float) -> None:
    """Wait for a QoS 1 PUBLISH's PUBACK, until `deadline` (perf_counter)."""
    info.wait_for_publish(max(0.0, deadline - time.perf_counter()))
    if not info.is_published():
        raise TimeoutError("no PUBACK in time")


def wait_until(condition: Callable[[], bool], deadline: float, what: str) -> None:
    """Poll `condition` every 5 ms until true; TimeoutError after `deadline` (perf_counter)."""
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.005)


def bare_throughput(port: int, count: int) -> float:
    """Msg/s of a bare paho loop: QoS 1 retained, all published, then every ack awaited."""
    client = paho_client("bench-device-bare", port)
    try:
        started = time.perf_counter()
        infos = [
            client.publish(
                f"bench/bare/sensors/temp{i % SENSORS}", bare_payload(i), qos=1, retain=True
            )
            for i in range(count)
        ]
        deadline = started + TIMEOUT_S
        for info in infos:
            acked(info, deadline)
        return count / (time.perf_counter() - started)
    finally:
        close_paho(client)


def bus_throughput(port: int, count: int) -> float:
    """Msg/s of service bodies through Bus.publish_json, at most INFLIGHT unacknowledged."""
    bus = new_bus("bench-device-bus", port)
    fleet = sensors()
    window: deque[mqtt.MQTTMessageInfo] = deque()
    try:
        started = time.perf_counter()
        deadline = started + TIMEOUT_S
        for i in range(count):
            sensor = fleet[i % SENSORS]
            body = {**sensor.body(raw(i), utc_now()), "seq": i}
            if len(window) >= INFLIGHT:
                acked(window.popleft(), deadline)
            window.append(
                bus.publish_json(topic("bench-bus", sensor.name), body, qos=1, retain=True)
            )
        while window:
            acked(window.popleft(), deadline)
        return count / (time.perf_counter() - started)
    finally:
        bus.close()


class Pipeline:
    """An Outbox in a temp dir, a Forwarder and its Bus: the service's store and forward."""

    def __init__(self, port: int, node: str) -> None:
        self.node = node
        self.sensors = sensors()
        self._dir = tempfile.TemporaryDirectory(prefix="bench-device-")
        # synchronous="FULL" is the service's default: every commit is fsynced.
        self.outbox = Outbox(
            Path(self._dir.name) / "device.sqlite3", max_rows=10_000_000, max_age=86400.0
        )
        try:
            self.bus = new_bus(f"bench-{node}", port)
        except BaseException:
            self.outbox.close()
            self._dir.cleanup()
            raise
        self.forwarder = Forwarder(self.outbox, self.bus, inflight=INFLIGHT, rate=DRAIN_RATE)
        self.forwarder.start()

    def reading(self, seq: int, **extra: float) -> StoredReading:
        """One sensor's reading as the sampling loop stores it (body without seq)."""
        sensor = self.sensors[seq % SENSORS]
        body = {**sensor.body(raw(seq), utc_now()), **extra}
        return StoredReading(sensor.name, topic(self.node, sensor.name), body, time.time())

    def sample(self, readings: list[StoredReading]) -> None:
        """One sampling tick: commit the batch, wake the forwarder (as Device.sample does)."""
        self.outbox.append(readings)
        self.forwarder.wake()

    def drained(self) -> bool:
        """True once every reading is acknowledged and gone from the outbox."""
        return self.outbox.stats()["depth"] == 0 and self.forwarder.in_flight == 0

    def close(self) -> None:
        """Stop the forwarder, close the bus and the outbox, delete the temp dir."""
        try:
            self.forwarder.stop()
            self.bus.close()
            self.outbox.close()
        finally:
            self._dir.cleanup()


def outbox_throughput(port: int, count: int, batch: int) -> float:
    """Msg/s from the first append until the outbox is empty, `batch` readings per commit."""
    pipeline = Pipeline(port, f"bench-outbox{batch}")
    try:
        started = time.perf_counter()
        for first in range(0, count, batch):
            pipeline.sample([pipeline.reading(i) for i in range(first, min(first + batch, count))])
        # Poll the depth only once the producer is done (stats() takes the outbox's lock).
        wait_until(pipeline.drained, started + TIMEOUT_S, "the outbox to drain")
        return count / (time.perf_counter() - started)
    finally:
        pipeline.close()


class Subscriber:
    """A QoS 1 subscriber noting each live message's delay since the `t0` in its body."""

    def __init__(self, port: int, client_id: str, topic_filter: str) -> None:
        self.delays: list[float] = []
        self._lock = threading.Lock()
        self.client = paho_client(client_id, port)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.on_message = self._on_message
        self.client.subscribe(topic_filter, qos=1)
        if not subscribed.wait(10):
            close_paho(self.client)
            raise TimeoutError("no SUBACK")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        if message.retain:
            return  # a previous run's retained reading, not a live one
        t0 = json.loads(message.payload).get("t0")
        if t0 is not None:
            with self._lock:
                self.delays.append(now - t0)

    def count(self) -> int:
        """How many live readings have arrived."""
        with self._lock:
            return len(self.delays)

    def close(self) -> None:
        """Unsubscribe by disconnecting."""
        close_paho(self.client)


def paced(count: int, rate: float, send: Callable[[int], None]) -> None:
    """Call send(i) for i in range(count) at `rate` per second (on schedule, no drift)."""
    started = time.perf_counter()
    for i in range(count):
        ahead = started + i / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
        send(i)


def bare_latency(port: int, count: int) -> list[float]:
    """Seconds from sampling to on_message, a bare paho publisher to a bare subscriber."""
    subscriber = Subscriber(port, "bench-device-sub-bare", "bench/latency/bare/#")
    publisher = paho_client("bench-device-lat-bare", port)
    try:

        def send(i: int) -> None:
            t0 = time.perf_counter()
            publisher.publish(
                f"bench/latency/bare/temp{i % SENSORS}",
                bare_payload(i, t0=t0),
                qos=1,
                retain=True,
            )

        paced(count, LATENCY_RATE, send)
        wait_until(
            lambda: subscriber.count() >= count,
            time.perf_counter() + TIMEOUT_S / 4,
            "bare readings",
        )
        return subscriber.delays
    finally:
        close_paho(publisher)
        subscriber.close()


def pipeline_latency(port: int, count: int) -> list[float]:
    """Seconds from sampling to on_message through Outbox.append (1 per commit) + Forwarder."""
    node = "bench-latency"
    subscriber = Subscriber(port, "bench-device-sub-pipeline", topic(node, "#"))
    try:
        pipeline = Pipeline(port, node)
        try:

            def send(i: int) -> None:
                t0 = time.perf_counter()
                pipeline.sample([pipeline.reading(i, t0=t0)])

            paced(count, LATENCY_RATE, send)
            wait_until(
                lambda: subscriber.count() >= count,
                time.perf_counter() + TIMEOUT_S / 4,
                "pipeline readings",
            )
        finally:
            pipeline.close()
        return subscriber.delays
    finally:
        subscriber.close()


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` quantile, in milliseconds."""
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return 1000.0 * cuts[round(fraction * 100) - 1]


def run(scale: float) -> list[dict[str, Any]]:
    """Throughput and latency of the device pipeline vs bare paho, on one broker."""
    count = max(1000, int(READINGS * scale))
    samples = max(100, int(LATENCY_RATE * LATENCY_SECONDS * scale))
    with running_broker() as port:
        baseline = bare_throughput(port, count)
        bus_rate = bus_throughput(port, count)
        outbox_rates = {batch: outbox_throughput(port, count, batch) for batch in BATCHES}
        bare_delays = bare_latency(port, samples)
        pipeline_delays = pipeline_latency(port, samples)
    sent = f"{count} QoS 1 retained readings to {SENSORS} topics, all PUBACKed"
    results = [
        {
            "name": "device: Bus, no outbox",
            "unit": "msg/s",
            "pyedge": bus_rate,
            "baseline": baseline,
            "ratio": bus_rate / baseline,
            "what": f"{sent}; Sensor.body + publish_json, <= {INFLIGHT} unacked; "
            "baseline bare paho; target >= 0.8",
        }
    ]
    for batch, rate in outbox_rates.items():
        results.append(
            {
                "name": f"device: outbox, {batch}/commit",
                "unit": "msg/s",
                "pyedge": rate,
                "baseline": baseline,
                "ratio": rate / baseline,
                "what": f"{sent}; Outbox (synchronous=FULL) {batch} reading(s) per commit "
                f"+ Forwarder(inflight={INFLIGHT}), first append to depth 0; "
                "baseline bare paho; target >= 0.5",
            }
        )
    for label, fraction in (("p50", 0.5), ("p99", 0.99)):
        pyedge = percentile(pipeline_delays, fraction)
        bare = percentile(bare_delays, fraction)
        results.append(
            {
                "name": f"device: latency {label}",
                "unit": "ms",
                "pyedge": pyedge,
                "baseline": bare,
                "ratio": bare / pyedge,
                "what": f"sampling to subscriber on_message, {samples} readings at "
                f"{LATENCY_RATE:.0f}/s, Outbox (1 per commit) + Forwarder vs bare paho "
                "publish; ratio = baseline/pyedge, >= 1 means as fast",
            }
        )
    return results
