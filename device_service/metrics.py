"""The device-service's metrics, read from the outbox and the sensors at every scrape.

The counts come from what the outbox keeps anyway (each sensor's `seq`, the drained and
dropped counters), so sampling pays nothing for them and they survive restarts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from device_service.device import Device


def families(device: Device) -> Iterator[Metric]:
    """Readings sampled, published and dropped; the outbox's depth and age; sensors up."""
    slug = device.runtime.slug
    stats = device.outbox.stats()
    sampled = CounterMetricFamily(
        "pyedge_readings_sampled",
        "Readings sampled and stored, by sensor (its seq: kept across restarts)",
        labels=["service", "sensor"],
    )
    for sensor, count in sorted(device.outbox.sampled().items()):
        sampled.add_metric([slug, sensor], count)
    yield sampled
    yield _one(
        CounterMetricFamily,
        "pyedge_readings_published",
        "Readings the broker acknowledged (kept across restarts)",
        slug,
        stats["drained"],
    )
    yield _one(
        CounterMetricFamily,
        "pyedge_readings_dropped",
        "Readings dropped by the outbox's bounds, never published (kept across restarts)",
        slug,
        stats["dropped"],
    )
    yield _one(
        CounterMetricFamily,
        "pyedge_readings_unstored",
        "Readings sampled that the store refused (a full disk): lost, counted since start",
        slug,
        device.unstored,
    )
    yield _one(
        GaugeMetricFamily,
        "pyedge_outbox_depth",
        "Readings in the outbox, waiting for the broker's acknowledgement",
        slug,
        stats["depth"],
    )
    yield _one(
        GaugeMetricFamily,
        "pyedge_outbox_oldest_age_seconds",
        "Age of the oldest reading in the outbox (0 when it is empty)",
        slug,
        stats["oldest_age"] or 0.0,
    )
    yield _one(
        GaugeMetricFamily,
        "pyedge_outbox_in_flight",
        "Readings published and not yet acknowledged",
        slug,
        device.forwarder.in_flight,
    )
    available = GaugeMetricFamily(
        "pyedge_sensor_available",
        "1 while a sensor reads, 0 while it fails (not listed before its first read)",
        labels=["service", "sensor"],
    )
    for sensor, ok in sorted(device.available.items()):
        if ok is not None:
            available.add_metric([slug, sensor], 1 if ok else 0)
    yield available


def _one(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    documentation: str,
    slug: str,
    value: float,
) -> Metric:
    """A family with the one sample of the service `slug`."""
    family = kind(name, documentation, labels=["service"])
    family.add_metric([slug], value)
    return family
