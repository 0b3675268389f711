"""The alerts engine: rules from the file and the API, their states, events and actions."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from alerts.actions import Webhooks, WebhookSettings, run_actions
from alerts.evaluator import FIRING, OK, RuleState, Transition, field_value
from alerts.rules import load_rules_file
from alerts.store import Store
from pyedge import ConfigError, ServiceRuntime
from pyedge.operations import utc_now

logger = logging.getLogger(__name__)

API = "api"
# The kind a malformed reading is counted as (pyedge_mqtt_rejected_total).
READING = "alerts_reading"


class RuleConflict(Exception):
    """A change the rule's source does not allow (a file rule, an existing name)."""


class Engine:
    """Everything the alerts service owns in one process; built by its start hook."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self.rules_file = settings["rules"]
        self.file_error: str | None = None
        self.file_rules: dict[str, dict[str, Any]] = {}
        if self.rules_file is not None:
            # A broken file leaves the API rules running and the service degraded, its
            # health naming the key and the file: alerts half-working beat none.
            try:
                self.file_rules = load_rules_file(self.rules_file)
            except ConfigError as exc:
                self.file_error = str(exc)
                logger.error("rules file not loaded: %s", exc)
        self.store = Store(runtime.data_dir / "alerts.sqlite3", settings["history_max"])
        self.api_rules = self.store.rules()
        self.webhooks = Webhooks(
            WebhookSettings(
                timeout=settings["webhook_timeout"],
                retries=settings["webhook_retries"],
                backoff=settings["webhook_backoff"],
                token=settings["webhook_token"],
            )
        )
        # One lock for rules, states and subscriptions: the API, the MQTT thread and the
        # watch Process all change them.
        self._lock = threading.RLock()
        self.states: dict[str, RuleState] = {}
        self.watching = False
        self._topics: set[str] = set()

    # --- rules ---

    def rules(self) -> dict[str, dict[str, Any]]:
        """Every rule by name; a file rule wins over an API rule of the same name."""
        with self._lock:
            return {**self.api_rules, **self.file_rules}

    def source(self, name: str) -> str:
        """Where a rule comes from: the file's path, or `api`."""
        return str(self.rules_file) if name in self.file_rules else API

    def create(self, rule: dict[str, Any]) -> None:
        """Add an API rule; RuleConflict if the name is taken."""
        with self._lock:
            if rule["name"] in self.rules():
                raise RuleConflict(f"rule {rule['name']!r} exists ({self.source(rule['name'])})")
            self.store.put_rule(rule)
            self.api_rules[rule["name"]] = rule
            self._sync()

    def replace(self, rule: dict[str, Any]) -> None:
        """Replace (or create) an API rule; its state starts afresh."""
        with self._lock:
            self._check_writable(rule["name"])
            self.store.put_rule(rule)
            self.api_rules[rule["name"]] = rule
            self._forget(rule["name"])
            self._sync()

    def delete(self, name: str) -> None:
        """Delete an API rule, and its retained state."""
        with self._lock:
            self._check_writable(name)
            self.store.delete_rule(name)
            self.api_rules.pop(name, None)
            self._forget(name)
            self._sync()

    def _check_writable(self, name: str) -> None:
        if name in self.file_rules:
            raise RuleConflict(
                f"rule {name!r} comes from {self.rules_file}: change it there (read-only here)"
            )

    def _forget(self, name: str) -> None:
        # An empty retained payload deletes the broker's copy of the old state.
        self.states.pop(name, None)
        self.runtime.bus.publish(self.state_topic(name), b"", retain=True)

    # --- watching ---

    def start_watching(self) -> None:
        """Subscribe to the sensors the rules need and evaluate from now on."""
        with self._lock:
            self.watching = True
            self._sync()

    def stop_watching(self) -> None:
        """Unsubscribe from every sensor."""
        with self._lock:
            self.watching = False
            self._sync()

    def sensor_topic(self, rule: dict[str, Any]) -> str:
        """The topic of the rule's sensor readings."""
        node = rule["node"] or self.runtime.node
        return "/".join((self.runtime.root, node, "device-service", "sensors", rule["sensor"]))

    def state_topic(self, name: str) -> str:
        """Where a rule's state is retained."""
        return self.runtime.topic("rules", name)

    def _active(self) -> dict[str, dict[str, Any]]:
        return {name: rule for name, rule in self.rules().items() if rule["enabled"]}

    def _sync(self) -> None:
        """Bring states and subscriptions in line with the rules (under the lock)."""
        active = self._active() if self.watching else {}
        now = time.monotonic()
        for name in list(self.states):
            if name not in active:
                del self.states[name]
        for name, rule in active.items():
            if name not in self.states:
                self.states[name] = RuleState(rule, now)
        wanted = {self.sensor_topic(rule) for rule in active.values()}
        bus = self.runtime.bus
        for topic in self._topics - wanted:
            bus.unsubscribe(topic)
        for topic in sorted(wanted - self._topics):
            bus.subscribe(topic, self._on_reading)
        self._topics = wanted

    def _on_reading(self, message: Any) -> None:
        if not message.payload:
            return  # a retained reading cleared: nothing to evaluate
        try:
            body = json.loads(message.payload)
        except (ValueError, RecursionError) as exc:
            self._reject(message, f"not JSON: {exc}")
            return
        now = time.monotonic()
        if message.retain and isinstance(body, dict):
            now -= _age(body.get("ts"))
        with self._lock:
            for name, state in list(self.states.items()):
                rule = state.rule
                if self.sensor_topic(rule) != message.topic:
                    continue
                try:
                    value = None if rule["kind"] == "stale" else field_value(rule, body)
                except ValueError as exc:
                    self._reject(message, f"rule {name}: {exc}")
                    continue
                self._apply(state, state.reading(value, now))

    def _reject(self, message: Any, why: str) -> None:
        self.runtime.metrics.reject(READING, message.topic, message.payload, why, log=logger)

    def tick(self) -> None:
        """Check durations and staleness."""
        now = time.monotonic()
        with self._lock:
            for state in list(self.states.values()):
                self._apply(state, state.tick(now))

    def _apply(self, state: RuleState, transition: Transition | None) -> None:
        if transition is None:
            return
        rule = state.rule
        event = self.event(rule, transition.state, transition.value, transition.message)
        state.since = event["ts"]
        logger.info("rule %s %s: %s", rule["name"], transition.state, transition.message)
        self.publish_event(event)
        self.runtime.bus.publish_json(
            self.state_topic(rule["name"]), self.describe_state(state), retain=True
        )
        try:
            self.store.add_event(event)
        except Exception:  # a full disk loses history, never the alert itself
            logger.exception("cannot store the event of %s", rule["name"])
        run_actions(self.runtime, self.webhooks, rule, event, "fire" if state.firing else "clear")

    def event(
        self, rule: dict[str, Any], state: str, value: float | None, message: str
    ) -> dict[str, Any]:
        """The event of a rule entering `state`."""
        return {
            "rule": rule["name"],
            "state": state,
            "value": value,
            "sensor": rule["sensor"],
            "node": rule["node"] or self.runtime.node,
            "severity": rule["severity"],
            "message": message,
            "ts": utc_now(),
        }

    def publish_event(self, event: dict[str, Any]) -> None:
        """Publish an event (QoS 1, not retained: each one matters, none is state)."""
        self.runtime.bus.publish_json(self.runtime.topic("events"), event, qos=1)

    def describe_state(self, state: RuleState) -> dict[str, Any]:
        """A rule's state as it is retained and shown."""
        return {
            "rule": state.rule["name"],
            "state": state.state,
            "value": state.value,
            "since": state.since,
            "severity": state.rule["severity"],
        }

    def state_of(self, name: str) -> dict[str, Any]:
        """A rule's current state: ok, firing, or off (disabled or not watched)."""
        with self._lock:
            state = self.states.get(name)
            if state is None:
                return {"state": "off", "value": None, "since": None}
            return {"state": state.state, "value": state.value, "since": state.since}

    def test(self, name: str, value: float | None) -> dict[str, Any]:
        """Send a rule's event once as a test, and run its fire actions."""
        rule = self.rules()[name]
        with self._lock:
            state = self.states.get(name)
            if value is None and state is not None:
                value = state.value
        event = self.event(rule, FIRING, value, f"test of rule {name}")
        event["test"] = True
        self.publish_event(event)
        done = run_actions(self.runtime, self.webhooks, rule, event, "fire")
        return {"event": event, "actions": done}

    def summary(self) -> str:
        """N rules, M firing."""
        with self._lock:
            firing = sum(1 for state in self.states.values() if state.state != OK)
            return f"{len(self.rules())} rules, {firing} firing"

    def close(self) -> None:
        """Stop the webhook worker and close the store."""
        self.webhooks.close()
        self.store.close()


def _age(ts: Any) -> float:
    """Seconds since a reading's `ts` (0 when absent, unreadable or in the future)."""
    if not isinstance(ts, str):
        return 0.0
    try:
        stamp = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if stamp.tzinfo is None:
        return 0.0
    return max(0.0, (datetime.now(UTC) - stamp).total_seconds())
