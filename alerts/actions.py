"""Actions of a rule: switch an actuator over MQTT, or POST the event to a webhook."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import requests.auth

from pyedge import ServiceRuntime

logger = logging.getLogger(__name__)

# Webhook calls waiting for the worker at most: a dead endpoint must not grow memory.
QUEUE_SIZE = 100
# The longest single back-off wait, whatever the doubling reaches.
MAX_BACKOFF_S = 60.0


def redact(url: str) -> str:
    """The URL without userinfo or query string: what the logs may show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def actuator_topic(runtime: ServiceRuntime, actuator: str) -> str:
    """The device-service's set topic of an actuator on this node."""
    return "/".join((runtime.root, runtime.node, "device-service", "actuators", actuator, "set"))


class BearerAuth(requests.auth.AuthBase):
    """Authorization: Bearer <token>."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(<redacted>)"  # never the token, even in a traceback's locals


@dataclass(frozen=True)
class WebhookSettings:
    """How webhooks are called."""

    timeout: float
    retries: int
    backoff: float
    token: str | None = field(default=None, repr=False)


class Webhooks:
    """A background worker that POSTs events, retrying with exponential back-off."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(QUEUE_SIZE)
        self._stop = threading.Event()
        self.delivered = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._work, name="alerts-webhooks", daemon=True)
        self._thread.start()

    def submit(self, url: str, event: dict[str, Any]) -> bool:
        """Queue a call; False (and a warning) when the queue is full."""
        try:
            self._queue.put_nowait((url, event))
        except queue.Full:
            logger.warning("webhook queue full: dropping the call to %s", redact(url))
            return False
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Stop the worker (calls still queued are dropped)."""
        self._stop.set()
        with contextlib.suppress(queue.Full):  # a full queue: the worker sees _stop anyway
            self._queue.put_nowait(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            url, event = item
            try:
                self.call(url, event)
            except Exception:  # a bug here must not end the worker
                logger.exception("webhook to %s failed", redact(url))

    def call(self, url: str, event: dict[str, Any]) -> bool:
        """POST `event`; retry connection errors and 5xx; True when delivered."""
        # With a token, it is the Authorization (userinfo in the URL is then ignored);
        # without, requests sends the URL's userinfo, if any, as Basic auth.
        auth = BearerAuth(self.settings.token) if self.settings.token else None
        shown = redact(url)
        attempts = self.settings.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                response = requests.post(url, json=event, auth=auth, timeout=self.settings.timeout)
            except requests.RequestException as exc:
                # The exception's text may quote the URL: log its kind only.
                problem = type(exc).__name__
            else:
                if response.status_code < 400:
                    self.delivered += 1
                    logger.info("webhook %s: %d", shown, response.status_code)
                    return True
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500:  # the request is wrong: retrying cannot help
                    attempts = attempt
            if attempt >= attempts:
                break
            delay = min(self.settings.backoff * 2 ** (attempt - 1), MAX_BACKOFF_S)
            logger.warning(
                "webhook %s attempt %d/%d: %s; retrying in %.2f s",
                shown,
                attempt,
                attempts,
                problem,
                delay,
            )
            if self._stop.wait(delay):
                break
        self.failed += 1
        logger.error("webhook %s failed after %d attempts: %s", shown, attempt, problem)
        return False


def run_actions(
    runtime: ServiceRuntime,
    webhooks: Webhooks,
    rule: dict[str, Any],
    event: dict[str, Any],
    on: str,
) -> list[str]:
    """Run the rule's actions for `on` (fire or clear); what was done, one line each."""
    done = []
    for action in rule["actions"]:
        if action["on"] != on:
            continue
        if action.get("actuator"):
            topic = actuator_topic(runtime, action["actuator"])
            runtime.bus.publish(topic, action["state"], qos=1)
            done.append(f"set {action['actuator']} {action['state']}")
        elif action.get("webhook"):
            queued = webhooks.submit(action["webhook"], event)
            shown = redact(action["webhook"])
            done.append(f"webhook {shown} {'queued' if queued else 'dropped (queue full)'}")
    return done
