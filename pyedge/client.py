"""Blocking clients of services' operations: over HTTP (`Client`) and MQTT 5 (`MqttClient`).

Both have the same shape::

    with Client("https://edge.local:8443", token) as client:
        op = client.service("custom-service").op("sleep").start(seconds=2)
        session = op.wait()          # the session dict, whatever the outcome
        session = op.result()        # the same, but raises OperationError if it failed

Every error is a `ClientError` (HTTP status, message and validation errors of the API's
error envelope); a call without an answer in time is a `ClientTimeout`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import paho.mqtt.client as mqtt
import requests
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from pyedge.config import default_node_id
from pyedge.errors import PyEdgeError
from pyedge.schemas import MAX_WAIT_S
from pyedge.service import topic_root

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
ACTIVE_STATES = frozenset({"starting", "running", "stopping"})
NOT_AUTHORIZED = 0x87
CALL_QOS = 1


class ClientError(PyEdgeError):
    """A call failed; the root of every error this module raises.

    `status` is the HTTP status code (None when nothing answered), `message` and `errors`
    (validation errors by location, e.g. {"json": {"seconds": [...]}}) come from the
    API's error envelope, over MQTT as over HTTP.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        errors: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.errors = dict(errors) if errors else None

    def __str__(self) -> str:
        text = f"{self.status}: {self.message}" if self.status is not None else self.message
        return f"{text} {json.dumps(self.errors)}" if self.errors else text


class ClientTimeout(ClientError, TimeoutError):
    """No answer within the timeout, or an operation still running when `result` gave up."""


class OperationError(ClientError):
    """`result()` of an operation whose session ended with success false."""

    def __init__(self, message: str, session: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.session = dict(session)


@contextmanager
def translated(what: str) -> Iterator[None]:
    """The one place requests' and paho's errors become ClientErrors, saying what failed."""
    try:
        yield
    except ClientError:
        raise
    except requests.Timeout as exc:
        raise ClientTimeout(f"{what}: no answer in time ({exc})") from exc
    except (requests.RequestException, OSError, ValueError) as exc:
        # OSError: refused, unreachable, TLS verification; ValueError: paho's bad arguments.
        raise ClientError(f"{what}: {exc}") from exc


class Op:
    """One operation of a service: start it, follow its session, end it."""

    def __init__(self, service: Service, name: str) -> None:
        self.service = service
        self.name = name
        # The last session seen by any call.
        self.session: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"<Op {self.service.label}/{self.name}>"

    @property
    def success(self) -> bool | None:
        """The last seen session's success (None: not done, or not seen)."""
        return self.session.get("success") if self.session else None

    def start(self, params: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Self:
        """Start a session with `params` (and/or keyword params); returns this handle."""
        self._call("start", params={**(params or {}), **kwargs})
        return self

    def status(self) -> dict[str, Any]:
        """The current (or last) session."""
        return self._call("status")

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the session is done, or `timeout` seconds pass; returns the session.

        The server waits at most 60 s per call, so longer waits are made of several.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = MAX_WAIT_S if deadline is None else max(0.0, deadline - time.monotonic())
            session = self._call("wait", wait=min(left, MAX_WAIT_S))
            if session.get("state") not in ACTIVE_STATES:
                return session
            if deadline is not None and time.monotonic() >= deadline:
                return session

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """`wait`, then the session if it succeeded.

        Raises OperationError (with `.session`) if it failed or was aborted, ClientTimeout
        if it is still running after `timeout`.
        """
        session = self.wait(timeout)
        if session.get("state") in ACTIVE_STATES:
            raise ClientTimeout(f"{self.service.label}/{self.name} still {session['state']}")
        if session.get("success") is False:
            messages = session.get("messages") or [{"text": "failed"}]
            raise OperationError(
                f"{self.service.label}/{self.name}: {messages[-1]['text']}", session
            )
        return session

    def abort(self) -> dict[str, Any]:
        """Abort the running Task; returns its session."""
        return self._call("abort")

    def stop(self) -> dict[str, Any]:
        """Stop the running Process; returns its session."""
        return self._call("stop")

    def _call(
        self, action: str, *, params: Mapping[str, Any] | None = None, wait: float = 0.0
    ) -> dict[str, Any]:
        session = self.service.client.call(self.service, self.name, action, params, wait)
        self.session = session
        return session


class Service:
    """A service on a node (None: the node the client talks to)."""

    def __init__(self, client: BaseClient, slug: str, node: str | None) -> None:
        self.client = client
        self.slug = slug
        self.node = node

    @property
    def label(self) -> str:
        """`node/slug`, or the slug alone, for messages."""
        return f"{self.node}/{self.slug}" if self.node else self.slug

    def op(self, name: str) -> Op:
        """A handle on the operation `name` (nothing is sent yet)."""
        return Op(self, name)


class BaseClient(ABC):
    """What both clients share: services, operation handles, closing."""

    def __init__(self, timeout: float) -> None:
        # Seconds an answer may take, on top of the server-side wait of a `wait` call.
        self.timeout = timeout

    def service(self, slug: str, node: str | None = None) -> Service:
        """A service, on `node` when given."""
        return Service(self, slug, node)

    @abstractmethod
    def call(
        self,
        service: Service,
        op: str,
        action: str,
        params: Mapping[str, Any] | None,
        wait: float,
    ) -> dict[str, Any]:
        """Do `action` on `op` and return the session; raises ClientError."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class Client(BaseClient):
    """The HTTP API with an API token (`pyedge token add`). One thread at a time.

    `verify` is requests': True (the system's CAs), False, or a CA bundle's path (the
    node's self-signed certificate, for instance).
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        verify: bool | str = True,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(timeout)
        self.url = url.rstrip("/")
        self._http = requests.Session()
        self._http.headers.update(
            {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        )
        # Passed with every request too: requests lets REQUESTS_CA_BUNDLE override a
        # Session's own `verify` (psf/requests#4726), and the caller's choice must win.
        self.verify = verify

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        query: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """`method path` (e.g. GET /api/health) with a JSON body; the JSON answer.

        Raises ClientError with the status, message and errors of an error answer.
        """
        url = self.url + path
        with translated(f"{method} {url}"):
            response = self._http.request(
                method,
                url,
                json=json_body,
                params=query,
                timeout=timeout or self.timeout,
                verify=self.verify,
            )
            if response.status_code >= 400:
                raise _http_error(response)
            return response.json() if response.content else None

    def call(
        self,
        service: Service,
        op: str,
        action: str,
        params: Mapping[str, Any] | None,
        wait: float,
    ) -> dict[str, Any]:
        """Do `action` on `op` over HTTP and return the session; raises ClientError."""
        base = "/api" + (f"/nodes/{_segment(service.node)}" if service.node else "")
        path = f"{base}/{_segment(service.slug)}/ops/{_segment(op)}"
        if action == "status":
            session = self.request("GET", path)
        elif action == "wait":
            session = self.request(
                "POST", f"{path}/wait", query={"timeout": wait}, timeout=wait + self.timeout
            )
        else:
            body = dict(params or {}) if action == "start" else None
            session = self.request("POST", f"{path}/{action}", json_body=body)
        if not isinstance(session, dict):
            raise ClientError(f"{path}: the answer is not a session", status=200)
        return session

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()


class MqttClient(BaseClient):
    """Operation calls over MQTT 5 request/response, with a broker account that may
    publish call topics (`controller`). Safe to use from several threads.

    `node` is the node of services given without one (default: this machine's node id).
    Raises ClientError if the broker cannot be reached or refuses the login.
    """

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        username: str,
        password: str,
        site: str = "",
        tls: bool = False,
        ca: str | Path | None = None,
        node: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        client_id: str | None = None,
    ) -> None:
        super().__init__(timeout)
        self.root = topic_root(site)
        self.node = node or default_node_id()
        self.broker = f"{host}:{port}"
        # Each client's replies come to a topic of its own under the service's subtree.
        self._reply_id = uuid.uuid4().hex
        self._cond = threading.Condition()
        self._connack: ReasonCode | None = None
        self._replies: dict[bytes, dict[str, Any] | None] = {}
        self._reply_topics: set[str] = set()
        self._subacks: dict[int, list[ReasonCode]] = {}
        # Failing PUBACKs by message id (the broker's ACL refused the call).
        self._refused: dict[int, ReasonCode] = {}
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"pyedge-client-{self._reply_id[:12]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.username_pw_set(username, password)
        if tls:
            # Verified against `ca` (or the system's CAs), host name included.
            self._client.tls_set(ca_certs=str(ca) if ca else None)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._connect(host, port)

    def call(
        self,
        service: Service,
        op: str,
        action: str,
        params: Mapping[str, Any] | None,
        wait: float,
    ) -> dict[str, Any]:
        """Do `action` on `op` over MQTT and return the session; raises ClientError."""
        node = service.node or self.node
        levels = [_level(node), _level(service.slug)]
        subtree = "/".join((self.root, *levels))
        request: dict[str, Any] = {"action": action}
        if action == "start":
            request["params"] = dict(params or {})
        elif action == "wait":
            request["timeout"] = wait
        reply_topic = f"{subtree}/reply/{self._reply_id}"
        self._subscribe(reply_topic)
        what = f"{action} {node}/{service.slug}/{op}"
        reply = self._exchange(
            f"{subtree}/ops/{_level(op)}/call", reply_topic, request, wait + self.timeout, what
        )
        if reply.get("code") != 200:
            raise ClientError(
                str(reply.get("message") or reply.get("status") or "refused"),
                status=reply.get("code") if isinstance(reply.get("code"), int) else None,
                errors=reply.get("errors"),
            )
        session = reply.get("session")
        if not isinstance(session, dict):
            raise ClientError(f"{what}: the answer carries no session", status=200)
        return session

    def close(self) -> None:
        """Disconnect from the broker."""
        self._client.disconnect()
        self._client.loop_stop()

    def _connect(self, host: str, port: int) -> None:
        with translated(f"connect to MQTT broker {self.broker}"):
            self._client.connect(host, port)
        self._client.loop_start()
        with self._cond:
            self._cond.wait_for(lambda: self._connack is not None, self.timeout)
            connack = self._connack
        if connack is None or connack.is_failure:
            self.close()
            if connack is None:
                raise ClientTimeout(f"MQTT broker {self.broker} did not answer the connect")
            raise ClientError(f"MQTT broker {self.broker} refused the connection: {connack}")

    def _subscribe(self, topic: str) -> None:
        # Before the first call to a service: its answer must not arrive unheard.
        with self._cond:
            if topic in self._reply_topics:
                return
        with translated(f"subscribe to {topic}"):
            result, mid = self._client.subscribe(topic, qos=CALL_QOS)
        if result is not MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise ClientError(f"subscribe to {topic}: {mqtt.error_string(result)}")
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._subacks, self.timeout):
                raise ClientTimeout(f"MQTT broker {self.broker} did not confirm {topic}")
            codes = self._subacks.pop(mid)
            if any(code.is_failure for code in codes):
                raise ClientError(
                    f"the broker refused the subscription to {topic}: {codes[0]}", status=403
                )
            self._reply_topics.add(topic)

    def _exchange(
        self, topic: str, reply_topic: str, request: dict[str, Any], timeout: float, what: str
    ) -> dict[str, Any]:
        correlation = uuid.uuid4().bytes
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = reply_topic
        properties.CorrelationData = correlation
        properties.ContentType = "application/json"
        with self._cond:
            self._replies[correlation] = None
        try:
            if not self._client.is_connected():
                raise ClientError(f"{what}: not connected to MQTT broker {self.broker}")
            with translated(what):
                info = self._client.publish(
                    topic, json.dumps(request), qos=CALL_QOS, properties=properties
                )
            if info.rc is not MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise ClientError(f"{what}: {mqtt.error_string(info.rc)}")
            with self._cond:
                self._cond.wait_for(
                    lambda: self._replies[correlation] is not None or info.mid in self._refused,
                    timeout,
                )
                reply = self._replies[correlation]
                refused = self._refused.pop(info.mid, None)
        finally:
            with self._cond:
                self._replies.pop(correlation, None)
        if refused is not None:
            status = 403 if refused.value == NOT_AUTHORIZED else None
            raise ClientError(f"{what}: the broker refused the call: {refused}", status=status)
        if reply is None:
            raise ClientTimeout(
                f"{what}: no answer within {timeout:g} s (is the service running, "
                "on this node, and does the broker speak MQTT 5?)"
            )
        return reply

    # --- paho's network thread ----------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        with self._cond:
            first = self._connack is None
            self._connack = reason_code
            topics = list(self._reply_topics)
            self._cond.notify_all()
        if not first and not reason_code.is_failure and topics:
            # A clean-start reconnect lost the subscriptions.
            client.subscribe([(topic, CALL_QOS) for topic in topics])

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Any,
    ) -> None:
        with self._cond:
            self._subacks[mid] = reason_codes
            self._cond.notify_all()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            with self._cond:
                self._refused[mid] = reason_code
                self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        with self._cond:
            if correlation not in self._replies:
                return  # an answer to a call given up on, or to another client
            try:
                reply = json.loads(message.payload)
            except ValueError:
                reply = None
            if not isinstance(reply, dict):
                reply = {"code": 502, "message": "the service's answer is not a JSON object"}
            self._replies[correlation] = reply
            self._cond.notify_all()


def _http_error(response: requests.Response) -> ClientError:
    """A ClientError from an error answer, with the envelope's message and errors."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = str(body.get("message") or body.get("status") or response.reason)
        errors = body.get("errors") if isinstance(body.get("errors"), dict) else None
    else:
        message, errors = (response.text.strip()[:200] or response.reason), None
    return ClientError(message, status=response.status_code, errors=errors)


def _segment(value: str) -> str:
    """A URL path segment."""
    return quote(value, safe="")


def _level(value: str) -> str:
    """A topic level: no separator, no wildcard."""
    if not value or any(c in value for c in "/+#\0"):
        raise ClientError(f"{value!r} cannot be a topic level")
    return value
