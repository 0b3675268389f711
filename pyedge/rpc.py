"""Operation calls over MQTT 5 request/response: the HTTP API's actions, on the broker.

A caller publishes `{"action", "params"?, "timeout"?}` to `<root>/<node>/<slug>/ops/<op>/call`
with a ResponseTopic under `<root>/<node>/<slug>/reply/` and CorrelationData; the service
answers there with `{"code": 200, "session": {...}}` or flask-smorest's error envelope.
The calls run through `ops_views.perform`, as HTTP's do.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import marshmallow as ma
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pyedge.ops_views import ACTIONS, OpCallError, perform
from pyedge.schemas import MAX_WAIT_S
from pyedge.security import Role

if TYPE_CHECKING:
    from pyedge.service import ServiceRuntime

logger = logging.getLogger(__name__)

# A call has the rights of the broker account that published it, and the accounts that may
# publish call topics (`controller`, the edge-server) are operators' tools: no more.
MQTT_ROLE = Role.OPERATOR
# Calls run here, never in paho's network thread: a `wait` holds its thread up to 60 s.
WORKERS = 4
# Calls accepted but not yet answered; beyond this a call is answered 503 at once.
MAX_PENDING = 64
REPLY_QOS = 1
CHANGES = frozenset({"start", "abort", "stop"})
# The kind a refused call is counted as (pyedge_mqtt_rejected_total).
REJECTED = "op_call"


class CallSchema(ma.Schema):
    """The JSON body of an operation call (the params are checked by the op's own schema)."""

    class Meta:
        unknown = ma.RAISE

    action = ma.fields.String(required=True, validate=ma.validate.OneOf(ACTIONS))
    params = ma.fields.Raw(load_default=dict)
    timeout = ma.fields.Float(
        load_default=MAX_WAIT_S, validate=ma.validate.Range(min=0, max=MAX_WAIT_S)
    )


class OpResponder:
    """Answers a ServiceRuntime's operation calls over MQTT 5 (stopped with the runtime)."""

    def __init__(
        self, runtime: ServiceRuntime, workers: int = WORKERS, max_pending: int = MAX_PENDING
    ) -> None:
        self.runtime = runtime
        self.call_topic = runtime.topic("ops", "+", "call")
        # The service's account may write only its own subtree: answers go there.
        self.reply_prefix = runtime.topic("reply") + "/"
        self._workers = workers
        self._max_pending = max_pending
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pending: set[Future[None]] = set()
        self._open = False
        self._closed = False
        self._warned_v311 = False

    def start(self) -> None:
        """Subscribe to the service's call topics; calls are refused (503) until `open`.

        Called before the service's status goes `online`: the subscription then reaches the
        broker first, so a caller that has seen `online` is heard.
        """
        self._executor = ThreadPoolExecutor(
            self._workers, thread_name_prefix=f"{self.runtime.slug}-rpc"
        )
        bus = self.runtime.bus
        bus.on_connect(self._check_protocol)
        if bus.connected:
            self._check_protocol()
        bus.subscribe(self.call_topic, self._receive)

    def open(self) -> None:
        """Answer calls from now on (the service has started)."""
        with self._lock:
            self._open = True

    def stop(self, timeout: float = 5.0) -> None:
        """Take no more calls; give the calls in progress up to `timeout` to answer."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = set(self._pending)
        self.runtime.bus.unsubscribe(self.call_topic)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        # The runner has shut down first, so a waiting call returns at once.
        _done, late = wait_futures(pending, timeout)
        if late:
            logger.warning("%d MQTT call(s) of %s still running", len(late), self.runtime.slug)

    def call(self, name: str, payload: bytes) -> dict[str, Any]:
        """Perform one call with MQTT_ROLE; the session, or raises OpCallError."""
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
            raise self._malformed(
                name, payload, HTTPStatus.BAD_REQUEST, f"the call is not JSON: {exc}"
            ) from None
        if not isinstance(body, dict):
            raise self._malformed(
                name, payload, HTTPStatus.BAD_REQUEST, "the call must be a JSON object"
            )
        try:
            request = CallSchema().load(body)
        except ma.ValidationError as exc:
            raise self._malformed(
                name,
                payload,
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "invalid call",
                {"request": exc.messages},
            ) from exc
        action = request["action"]
        if action in CHANGES:
            # Over HTTP the audit log records changes; an MQTT call's account is unknown here.
            logger.info("MQTT call: %s %s/%s", action, self.runtime.slug, name)
        return perform(
            self.runtime.runner,
            self.runtime.slug,
            name,
            action,
            params=request["params"],
            timeout=request["timeout"],
            caller=MQTT_ROLE,
            raw_params=True,
        )

    def _malformed(
        self, name: str, payload: bytes, status: HTTPStatus, message: str, errors: Any = None
    ) -> OpCallError:
        """A call whose envelope is refused: logged, counted, answered with the error."""
        topic = self.runtime.topic("ops", name, "call")
        self.runtime.metrics.reject(REJECTED, topic, payload, message, log=logger)
        return OpCallError(status, message, errors)

    def _receive(self, message: mqtt.MQTTMessage) -> None:
        # paho's network thread: check the envelope, hand the work to the pool.
        if self.runtime.bus.protocol is not MQTTProtocolVersion.MQTTv5:
            self._check_protocol()
            return
        reject = self.runtime.metrics.reject
        if message.retain:
            # A retained call would run again at every reconnect.
            reject(REJECTED, message.topic, message.payload, "a retained call", log=logger)
            return
        properties = message.properties
        response_topic: str | None = getattr(properties, "ResponseTopic", None)
        correlation: bytes | None = getattr(properties, "CorrelationData", None)
        if not response_topic:
            reject(REJECTED, message.topic, message.payload, "no response topic", log=logger)
            return
        if not self._valid_reply(response_topic):
            reject(
                REJECTED,
                message.topic,
                message.payload,
                f"response topic {response_topic!r} is not under {self.reply_prefix}",
                log=logger,
            )
            return
        name = message.topic.split("/")[-2]
        with self._lock:
            if self._closed or self._executor is None:
                return
            if not self._open or len(self._pending) >= self._max_pending:
                why = "is starting" if not self._open else "has too many calls in progress"
                busy = OpCallError(HTTPStatus.SERVICE_UNAVAILABLE, f"{self.runtime.slug} {why}")
                self._reply(response_topic, correlation, busy.envelope())
                return
            future = self._executor.submit(
                self._answer, name, bytes(message.payload), response_topic, correlation
            )
            self._pending.add(future)
        future.add_done_callback(self._forget)

    def _answer(
        self, name: str, payload: bytes, response_topic: str, correlation: bytes | None
    ) -> None:
        try:
            body = {"code": HTTPStatus.OK.value, "session": self.call(name, payload)}
        except OpCallError as exc:
            body = exc.envelope()
        except Exception:
            logger.exception("MQTT call of %s/%s failed", self.runtime.slug, name)
            body = OpCallError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error").envelope()
        logger.debug(
            "MQTT call %s/%s -> %s (reply to %s)",
            self.runtime.slug,
            name,
            body["code"],
            response_topic,
        )
        self._reply(response_topic, correlation, body)

    def _reply(self, topic: str, correlation: bytes | None, body: dict[str, Any]) -> None:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ContentType = "application/json"
        if correlation is not None:
            properties.CorrelationData = correlation
        self.runtime.bus.publish_json(topic, body, qos=REPLY_QOS, properties=properties)

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def _valid_reply(self, topic: str) -> bool:
        rest = topic.removeprefix(self.reply_prefix)
        return (
            topic.startswith(self.reply_prefix)
            and bool(rest)
            and not any(c in rest for c in "+#\0")
            and "" not in rest.split("/")
        )

    def _check_protocol(self) -> None:
        if self.runtime.bus.protocol is MQTTProtocolVersion.MQTTv5 or self._warned_v311:
            return
        self._warned_v311 = True
        logger.warning(
            "%s: the broker speaks MQTT 3.1.1 only; operation calls over MQTT are "
            "unavailable (use the HTTP API)",
            self.runtime.slug,
        )
