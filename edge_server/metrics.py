"""GET /metrics: this process's Prometheus metrics, and those of the remote services it fronts.

Every sample gets `node` and `process` labels (the process slug: `edge-server`, or a served
service's slug), so that one scrape of the edge-server tells every process apart. In
network mode and the compose bundle the edge-server fetches each online remote service's
own /metrics through the signed-caller path, as its OpenAPI document, all at once within
SCRAPE_DEADLINE_S: a service that does not answer is `pyedge_scrape_up 0`, never a failed
scrape. The route is not in the OpenAPI document: it answers Prometheus' text format, at
Prometheus' default path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from edge_server.network.identity import sign_caller
from edge_server.network.remote import EXTENSION as REMOTE_EXTENSION
from edge_server.network.remote import RemoteRegistry, RemoteService
from edge_server.network.remote_http import FetchError, fetch_body
from pyedge import ServiceHost
from pyedge.accounts import Identity
from pyedge.host import EXTENSION as HOST_EXTENSION
from pyedge.identity import METRICS_PATH
from pyedge.metrics import current_metrics
from pyedge.security import Role, requires

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

logger = logging.getLogger(__name__)

EXTENSION = "pyedge.scraper"
# A scrape of the edge-server waits this long for the services it fronts (Prometheus'
# own default timeout is 10 s).
SCRAPE_DEADLINE_S = 2.0
MAX_METRICS_BYTES = 4 * 1024 * 1024
SCRAPE_THREADS = 8
# The suffix of the series prometheus_client adds beside each counter and histogram.
CREATED = "_created"
# The text format generate_latest writes, as every Prometheus reads it (prometheus_client's
# own "latest" is 1.0.0 lately, which older servers do not know).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Who asks a service for its metrics (it needs `viewer`), whoever scrapes the edge-server.
SCRAPER = Identity(name="edge-server", role=Role.VIEWER, kind="token")

KeySource = Callable[[], "Ed25519PrivateKey | None"]

bp = Blueprint("metrics", __name__)


@dataclass
class Scraped:
    """One remote service's metrics, or why there are none."""

    service: RemoteService
    families: list[Metric] | None
    seconds: float
    error: str = ""


class RemoteScraper:
    """Fetches the remote services' metrics for a scrape, all at once, each within the deadline."""

    def __init__(self, registry: RemoteRegistry, key: KeySource) -> None:
        self.registry = registry
        self.key = key
        self._pool = ThreadPoolExecutor(SCRAPE_THREADS, thread_name_prefix="metrics-scrape")
        # The last error of each service, so that a service down is logged once, not per scrape.
        self._errors: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def scrape(self) -> list[Scraped]:
        """Every known remote service's metrics; offline or silent ones without."""
        services = self.registry.services()
        futures: dict[tuple[str, str], Future[Scraped]] = {
            service.key: self._pool.submit(self._fetch, service)
            for service in services
            if service.online
        }
        # fetch_body keeps its own deadline; this bounds a pool busy with other scrapes.
        wait_futures(futures.values(), SCRAPE_DEADLINE_S + 0.5)
        results = []
        for service in services:
            future = futures.get(service.key)
            if future is None:
                result = Scraped(service, None, 0.0, f"offline: {service.reason}")
            elif not future.done():
                future.cancel()
                result = Scraped(service, None, SCRAPE_DEADLINE_S, "no answer in time")
            else:
                try:
                    result = future.result()
                except Exception as exc:  # a bug of ours costs this service, not the scrape
                    logger.exception("scraping %s on node %s failed", service.slug, service.node)
                    result = Scraped(service, None, 0.0, repr(exc))
            self._note(result)
            results.append(result)
        return results

    def close(self) -> None:
        """Stop the fetching threads (the host's close hook)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _fetch(self, service: RemoteService) -> Scraped:
        started = time.monotonic()
        url = f"{service.url.rstrip('/')}{METRICS_PATH}"
        headers = {"Accept": "text/plain"}
        key = self.key()
        if key is not None:
            # As the edge-server itself, a viewer, for this one path: never as whoever
            # scrapes the edge-server.
            audience = f"{service.node}/{service.slug}"
            headers.update(sign_caller(key, SCRAPER, "GET", METRICS_PATH, audience=audience))
        try:
            body, _status = fetch_body(
                url,
                headers=headers,
                deadline_s=SCRAPE_DEADLINE_S,
                max_bytes=MAX_METRICS_BYTES,
                fingerprint=service.tls_fingerprint,
            )
            families = parse(body.decode("utf-8"))
        except FetchError as exc:
            return Scraped(service, None, time.monotonic() - started, str(exc))
        except (ValueError, IndexError, KeyError) as exc:  # not UTF-8, not the text format
            error = f"{url} did not answer Prometheus' text format: {exc}"
            return Scraped(service, None, time.monotonic() - started, error)
        return Scraped(service, families, time.monotonic() - started)

    def _note(self, result: Scraped) -> None:
        key = result.service.key
        with self._lock:
            before = self._errors.pop(key, "")
            if result.error:
                self._errors[key] = result.error
        if result.error and result.error != before and result.service.online:
            logger.warning(
                "metrics of %s on node %s not scraped: %s",
                result.service.slug,
                result.service.node,
                result.error,
            )


class Merged(Collector):
    """Families merged by name from several processes, each sample labelled with its own."""

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}

    def add(self, families: Iterable[Metric], node: str, process: str) -> None:
        """Add a process's families; its `node` and `process` labels are set here, whatever
        it said of itself."""
        for family in families:
            if family.name.endswith(CREATED) and family.name.removesuffix(CREATED) in self.families:
                continue  # a counter's or histogram's creation time: Prometheus needs none
            merged = self.families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                self.families[family.name] = merged
            elif merged.type != family.type:
                # A process of another version defining the name otherwise: one type wins.
                logger.debug(
                    "%s of %s/%s is a %s here: left out", family.name, node, process, merged.type
                )
                continue
            merged.samples.extend(
                sample._replace(labels={**sample.labels, "node": node, "process": process})
                for sample in family.samples
            )

    def collect(self) -> list[Metric]:
        """The merged families (what generate_latest reads)."""
        return list(self.families.values())


def parse(text: str) -> list[Metric]:
    """Families from Prometheus' text format; ValueError (or its kin) when it is not."""
    return list(text_string_to_metric_families(text))


def exposition(app: Flask) -> bytes:
    """The text Prometheus gets: this process's metrics and every remote service's."""
    host: ServiceHost = app.extensions[HOST_EXTENSION]
    merged = Merged()
    # Through the text format and back: the remote ones come that way, and both must be
    # in one form (counters' _created series, info metrics) for their names to merge.
    local = generate_latest(current_metrics(app).registry).decode("utf-8")
    merged.add(parse(local), host.node, host.process_slug)
    scraper: RemoteScraper | None = app.extensions.get(EXTENSION)
    if scraper is not None:
        up = GaugeMetricFamily(
            "pyedge_scrape_up",
            "1 when the remote service's metrics were fetched in this scrape",
            labels=["node", "process"],
        )
        took = GaugeMetricFamily(
            "pyedge_scrape_duration_seconds",
            "How long fetching the remote service's metrics took",
            labels=["node", "process"],
        )
        for result in scraper.scrape():
            service = result.service
            up.add_metric([service.node, service.slug], 0 if result.families is None else 1)
            took.add_metric([service.node, service.slug], round(result.seconds, 6))
            if result.families is not None:
                merged.add(result.families, service.node, service.slug)
        merged.families[up.name] = up
        merged.families[took.name] = took
    return generate_latest(merged)


@bp.get(METRICS_PATH)
@requires(Role.VIEWER)
def metrics() -> Response:
    """Prometheus' text format: every process's metrics, labelled with its node and process."""
    return Response(exposition(current_app), content_type=CONTENT_TYPE)


def init_app(app: Flask, host: ServiceHost, key: KeySource | None = None) -> None:
    """Serve GET /metrics; with `key` (an edge-server fronting remote services, which signs
    its requests to them with it), scrape those services too."""
    app.register_blueprint(bp)
    registry: RemoteRegistry | None = app.extensions.get(REMOTE_EXTENSION)
    if key is not None and registry is not None:
        scraper = RemoteScraper(registry, key)
        app.extensions[EXTENSION] = scraper
        host.close_hooks.append(scraper.close)
