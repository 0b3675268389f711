"""Prometheus metrics: one registry per app, PyEdge's metrics defined here, HTTP timed per request.

Events are counters, incremented where they happen (HTTP answers, rejected MQTT messages,
engine calls, proxied requests). State is read when Prometheus scrapes, by collectors
(`Metrics.register`): the bus's connection, the operations' states, an outbox's depth. A
registry of its own per app, never prometheus_client's global one, so that a process (a
test) may hold several apps.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

from flask import Flask
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pyedge.operations import OpState
from pyedge.version import __version__

if TYPE_CHECKING:
    from pyedge.host import ServiceHost

logger = logging.getLogger(__name__)

EXTENSION = "pyedge.metrics"
# The route label of a request no URL rule matched (404s): the raw path would let any
# client mint new series.
UNMATCHED = "<unmatched>"
# Seconds to the response's headers: a light GET takes a millisecond on a Pi, a `wait`
# up to 60 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# What of a rejected payload the log shows: enough to recognise it, never a megabyte.
EXCERPT = 60

Families = Callable[[], Iterable[Metric]]


class Metrics:
    """A process's registry and the metrics PyEdge defines, with the helpers that move them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.http_requests = Counter(
            "pyedge_http_requests",
            "HTTP requests answered, by route (the URL rule), method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "pyedge_http_request_duration_seconds",
            "Time from a request's arrival to its response's headers, by route and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.mqtt_rejected = Counter(
            "pyedge_mqtt_rejected",
            "MQTT messages refused on a subscribed topic (malformed or not allowed), by kind",
            ["kind"],
            registry=registry,
        )
        self.engine_calls = Counter(
            "pyedge_engine_calls",
            "Docker engine calls, by kind (call, slow, stream)",
            ["kind"],
            registry=registry,
        )
        self.engine_errors = Counter(
            "pyedge_engine_errors",
            "Docker engine calls that failed, by kind and error",
            ["kind", "error"],
            registry=registry,
        )
        self.proxy_requests = Counter(
            "pyedge_proxy_requests",
            "Requests forwarded to remote services, by upstream node, service and outcome "
            "(answered, offline, unreachable, timeout, too_large)",
            ["upstream_node", "upstream_service", "outcome"],
            registry=registry,
        )
        Info("pyedge_build", "PyEdge's version", registry=registry).info({"version": __version__})
        # CPU, memory and file descriptors of this process, read from /proc at scrape time.
        ProcessCollector(registry=registry)
        # (route, method, status) -> its counter and histogram children: one dict lookup per
        # request instead of two labels() calls.
        self._http_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def init_app(self, app: Flask) -> None:
        """Time and count every HTTP request of `app`; keep this in app.extensions."""
        app.wsgi_app = HttpMetrics(app.wsgi_app, self)  # type: ignore[method-assign]
        app.extensions[EXTENSION] = self

    def register(self, families: Families) -> Collector:
        """Read `families()` at every scrape (state, not events); returns the collector to
        `unregister` when what it reads goes away."""
        collector = CallbackCollector(families)
        self.registry.register(collector)
        return collector

    def unregister(self, collector: Collector) -> None:
        """Stop reading a collector `register` returned (idempotent)."""
        with contextlib.suppress(KeyError):
            self.registry.unregister(collector)

    def reject(
        self,
        kind: str,
        topic: str,
        payload: bytes | bytearray,
        why: object,
        log: logging.Logger = logger,
    ) -> None:
        """Count an MQTT message a handler refuses, and log it on the handler's `log` with its
        payload cut short."""
        self.mqtt_rejected.labels(kind).inc()
        excerpt = bytes(payload[:EXCERPT])
        more = f" (+{len(payload) - EXCERPT} bytes)" if len(payload) > EXCERPT else ""
        log.warning(
            "ignoring a malformed %s on %s: %s; payload %r%s", kind, topic, why, excerpt, more
        )

    def engine_call(self, kind: str, error: BaseException | None = None) -> None:
        """Count one Docker engine call, and its error if it failed."""
        self.engine_calls.labels(kind).inc()
        if error is not None:
            self.engine_errors.labels(kind, type(error).__name__).inc()

    def proxied(self, node: str, service: str, outcome: str) -> None:
        """Count one request forwarded to `service` on `node`."""
        self.proxy_requests.labels(node, service, outcome).inc()

    def observe_http(self, route: str, method: str, status: str, seconds: float) -> None:
        """Count one answered request and its latency."""
        key = (route, method, status)
        children = self._http_children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(route, method, status),
                self.http_duration.labels(route, method),
            )
            # A race only builds the same pair twice; labels() returns the same children.
            self._http_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def watch_host(self, host: ServiceHost) -> None:
        """Read the host's bus and operations at every scrape."""
        self.register(lambda: host_families(host))


class CallbackCollector(Collector):
    """A collector that asks a function for its families at every scrape."""

    def __init__(self, families: Families) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        """The function's families; a failing one costs its families, not the scrape."""
        try:
            return list(self.families())
        except Exception:
            logger.exception("a metrics collector failed")
            return []


class HttpMetrics:
    """WSGI middleware timing each request to its response's headers.

    The status and the matched URL rule are taken when the app calls start_response, which
    Flask does inside the request context: the rule, not the raw path, labels the series.
    """

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """Serve the request, recording it as its headers go out."""
        started = perf_counter()
        observe = self.metrics.observe_http

        def recording(status: str, headers: Any, exc_info: Any = None) -> Any:
            request = environ.get("werkzeug.request")
            rule = getattr(request, "url_rule", None)
            route = rule.rule if rule is not None else UNMATCHED
            observe(route, environ["REQUEST_METHOD"], status[:3], perf_counter() - started)
            return start_response(status, headers, exc_info)

        return self.app(environ, recording)


def host_families(host: ServiceHost) -> Iterator[Metric]:
    """The bus's connection and every service's operations by state, as they are now."""
    bus = host.bus
    connects = bus.connections if bus is not None else 0
    yield GaugeMetricFamily(
        "pyedge_mqtt_connected",
        "1 while the process's MQTT connection is up",
        value=1 if bus is not None and bus.connected else 0,
    )
    yield CounterMetricFamily(
        "pyedge_mqtt_connects", "Successful MQTT connects of this process", value=connects
    )
    yield CounterMetricFamily(
        "pyedge_mqtt_reconnects",
        "MQTT connects after the first (the broker went away, or the network)",
        value=max(0, connects - 1),
    )
    operations = GaugeMetricFamily(
        "pyedge_operations",
        "Operations of each service by their session's state",
        labels=["service", "state"],
    )
    for slug, runtime in host.runtimes.items():
        states = Tally(session.state for session in list(runtime.runner.sessions.values()))
        for state in OpState:
            operations.add_metric([slug, state.value], states.get(state, 0))
    yield operations


def current_metrics(app: Flask) -> Metrics:
    """The app's Metrics."""
    metrics: Metrics = app.extensions[EXTENSION]
    return metrics
