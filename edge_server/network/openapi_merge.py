"""One OpenAPI document for the node: its own, plus every remote service's paths.

A remote service's document is `<url>/api/openapi.json` of the base URL it announced,
fetched in the background (never inside a request: see RemoteDocs) once per announcement
(`announced_at` changes on every re-announce), and merged in: its paths under
`/api/<slug>`, the components they use under a name prefixed per service
(`<slug>.` or, for a slug served by several nodes, `<node>.<slug>.`) with every `$ref`
rewritten, its tags, and `x-pyedge-node` / `x-pyedge-mode: remote` on each operation.
A slug on several nodes is listed under `/api/nodes/<node>/<slug>/...` too. Swagger UI
(/api/docs) reads the same document.

What a remote document says is not trusted: its `servers` (which would send Swagger UI's
Try-it-out, with the user's token, elsewhere), its links' `server`, its security schemes
and every `$ref` outside the document are left out.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import TYPE_CHECKING, Any

import flask
from flask import current_app
from flask_smorest import Api
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from edge_server.network.identity import sign_caller
from edge_server.network.remote import EXTENSION as REMOTE_EXTENSION
from edge_server.network.remote import AmbiguousService, RemoteRegistry, RemoteService
from edge_server.network.remote_http import FetchError, fetch_json
from pyedge.accounts import Identity
from pyedge.host import EXTENSION as HOST_EXTENSION
from pyedge.security import Role

if TYPE_CHECKING:  # cryptography is loaded with the hub's key, not before
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

logger = logging.getLogger(__name__)

OPENAPI_PATH = "/api/openapi.json"
# A fetch ends after this long in all, and a document may be this big.
FETCH_DEADLINE_S = 10.0
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
# Deeper documents are refused (the merge walks them recursively).
MAX_DEPTH = 64
# Documents are fetched by a few threads; one fetch in flight per service.
FETCH_THREADS = 2
# A document that failed to come is asked for again after this long, not on every view.
RETRY_AFTER_S = 30.0
# A view of /api/openapi.json gives a fetch that started less than this long ago (a service
# just announced) the rest of this time to finish; it never starts one nor waits longer.
VIEW_WAIT_S = 1.0
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
# Component kinds named by $ref, and so prefixed; security schemes are never taken from a
# remote document: the merged document's are the edge-server's own.
PREFIXED_KINDS = (
    "schemas",
    "responses",
    "parameters",
    "examples",
    "requestBodies",
    "headers",
    "links",
    "callbacks",
)
# Who asks a service for its document (it needs `viewer`), whoever views the merged one.
FETCHER = Identity(name="edge-server", role=Role.VIEWER, kind="token")

KeySource = Callable[[], "Ed25519PrivateKey | None"]


class RemoteDocs:
    """The remote services' documents, by (node, slug), each kept for one announcement.

    Fetched in the background: when a service is announced or comes back online (the
    registry's on_change), and when a view finds one missing whose last attempt failed
    more than RETRY_AFTER_S ago. At most one fetch per service is in flight.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._docs: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        # The announcement whose fetch failed last, and when, by service.
        self._failed: dict[tuple[str, str], tuple[str, float]] = {}
        # The fetch in flight per service, and when it started.
        self._inflight: dict[tuple[str, str], tuple[Future[None], float]] = {}
        self._pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="openapi-fetch")
        self._closed = False
        self.registry: RemoteRegistry | None = None
        # The hub key the fetches are signed with (the proxy's), None when there is none.
        self.key: KeySource = lambda: None

    def bind(self, registry: RemoteRegistry, key: KeySource) -> None:
        """Follow `registry`'s changes, and sign fetches with `key()`."""
        self.registry = registry
        self.key = key
        registry.on_change.append(self.changed)

    def changed(self, old: RemoteService | None, new: RemoteService | None) -> None:
        """A registry change: forget a forgotten service, fetch a new announcement's document."""
        if new is None:
            if old is not None:
                self.forget(old.key)
            return
        self.refresh(new)

    def forget(self, key: tuple[str, str]) -> None:
        """Drop what is kept of one service."""
        with self._lock:
            self._docs.pop(key, None)
            self._failed.pop(key, None)

    def document(self, service: RemoteService) -> dict[str, Any] | None:
        """What is cached of the service's document (maybe of an older announcement).

        Never waits on the network: a missing document is asked for in the background.
        """
        self.refresh(service)
        with self._lock:
            cached = self._docs.get(service.key)
        return cached[1] if cached is not None else None

    def refresh(self, service: RemoteService) -> None:
        """Start fetching the service's document unless it is fetched, failed or on its way."""
        key = service.key
        with self._lock:
            if self._closed or not service.online or key in self._inflight:
                return
            cached = self._docs.get(key)
            if cached is not None and cached[0] == service.announced_at:
                return
            failed = self._failed.get(key)
            if (
                failed is not None
                and failed[0] == service.announced_at
                and time.monotonic() - failed[1] < RETRY_AFTER_S
            ):
                return
            future: Future[None] = Future()
            self._inflight[key] = (future, time.monotonic())
        try:
            self._pool.submit(self._work, key, future)
        except RuntimeError:  # shut down meanwhile
            with self._lock:
                self._inflight.pop(key, None)
            future.set_result(None)

    def settle(self, services: Iterable[RemoteService], wait_s: float = VIEW_WAIT_S) -> None:
        """Give the fetches of `services` that started under `wait_s` ago the rest of it."""
        now = time.monotonic()
        with self._lock:
            pending = [self._inflight.get(service.key) for service in services]
        fresh = [(f, started) for f, started in filter(None, pending) if now - started < wait_s]
        if fresh:
            until = max(started for _f, started in fresh) + wait_s
            wait_futures([f for f, _started in fresh], timeout=max(0.0, until - now))

    def prune(self, keep: Iterable[tuple[str, str]]) -> None:
        """Forget the documents of services no longer known."""
        kept = set(keep)
        with self._lock:
            for key in [key for key in self._docs if key not in kept]:
                del self._docs[key]
            for key in [key for key in self._failed if key not in kept]:
                del self._failed[key]

    def close(self) -> None:
        """Stop fetching."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _work(self, key: tuple[str, str], future: Future[None]) -> None:
        service = self.registry.get(*key) if self.registry is not None else None
        try:
            if service is not None and service.online:
                document = self._fetch(service)
                with self._lock:
                    if self.registry is None or self.registry.get(*key) is None:
                        pass  # forgotten meanwhile
                    elif document is None:
                        self._failed[key] = (service.announced_at, time.monotonic())
                    else:
                        self._docs[key] = (service.announced_at, document)
                        self._failed.pop(key, None)
        except Exception:
            logger.exception("OpenAPI fetch of %s/%s failed", *key)
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            future.set_result(None)
        # Re-announced while it was fetched: fetch the new one.
        current = self.registry.get(*key) if self.registry is not None else None
        if (
            current is not None
            and service is not None
            and current.announced_at != service.announced_at
        ):
            self.refresh(current)

    def _fetch(self, service: RemoteService) -> dict[str, Any] | None:
        # Never the announced `openapi` field: the document of the announced base URL.
        url = f"{service.url}{OPENAPI_PATH}"
        headers = {"Accept": "application/json"}
        key = self.key()
        if key is not None:
            # As the edge-server itself, a viewer, for this one path: never as whoever
            # views the merged document (its signature could be replayed by the service).
            headers.update(
                sign_caller(
                    key, FETCHER, "GET", OPENAPI_PATH, audience=f"{service.node}/{service.slug}"
                )
            )
        try:
            document = fetch_json(
                url,
                headers=headers,
                deadline_s=FETCH_DEADLINE_S,
                max_bytes=MAX_DOCUMENT_BYTES,
                fingerprint=service.tls_fingerprint,
            )
            if not isinstance(document, dict) or not isinstance(document.get("paths"), dict):
                raise FetchError(f"{url} is no OpenAPI document")
            if _too_deep(document, MAX_DEPTH):
                raise FetchError(f"{url} is nested deeper than {MAX_DEPTH} levels")
        except FetchError as exc:
            logger.warning(
                "OpenAPI of %s on node %s not merged: %s", service.slug, service.node, exc
            )
            return None
        logger.info("OpenAPI of %s on node %s fetched", service.slug, service.node)
        return document


def _too_deep(value: Any, limit: int) -> bool:
    """True when `value` nests dicts and lists deeper than `limit` (without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return False


def _without(mapping: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if key not in keys}


def _each(mapping: Any, clean: Callable[[Any], Any]) -> Any:
    """`mapping` (an OpenAPI map of named objects) with each value cleaned."""
    if not isinstance(mapping, dict):
        return mapping
    return {name: clean(value) for name, value in mapping.items()}


def _clean_link(link: Any) -> Any:
    return _without(link, "server") if isinstance(link, dict) else link


def _clean_response(response: Any) -> Any:
    if not isinstance(response, dict):
        return response
    cleaned = dict(response)
    if "links" in cleaned:
        cleaned["links"] = _each(cleaned["links"], _clean_link)
    return cleaned


def _clean_callback(callback: Any) -> Any:
    return _each(callback, _clean_path_item)


def _clean_operation(operation: Any) -> Any:
    if not isinstance(operation, dict):
        return operation
    cleaned = _without(operation, "servers")
    if "responses" in cleaned:
        cleaned["responses"] = _each(cleaned["responses"], _clean_response)
    if "callbacks" in cleaned:
        cleaned["callbacks"] = _each(cleaned["callbacks"], _clean_callback)
    return cleaned


def _clean_path_item(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    cleaned = _without(item, "servers")
    for method in HTTP_METHODS & cleaned.keys():
        cleaned[method] = _clean_operation(cleaned[method])
    return cleaned


def _drop_external_refs(value: Any) -> Any:
    """A copy of `value` without any `$ref` that leaves the document (not `#/...`)."""
    if isinstance(value, dict):
        return {
            key: _drop_external_refs(item)
            for key, item in value.items()
            if not (key == "$ref" and isinstance(item, str) and not item.startswith("#/"))
        }
    if isinstance(value, list):
        return [_drop_external_refs(item) for item in value]
    return value


def sanitize(document: dict[str, Any]) -> dict[str, Any]:
    """A remote document without what could send a browser elsewhere.

    Leaves out `servers` (the document's, its path items', operations' and callbacks'),
    links' `server`, security schemes (the merged document keeps only the edge-server's)
    and every `$ref` not starting with `#/`.
    """
    cleaned = _without(document, "servers")
    cleaned["paths"] = _each(document.get("paths", {}), _clean_path_item)
    components = document.get("components")
    if isinstance(components, dict):
        components = _without(components, "securitySchemes")
        for kind, clean in (
            ("links", _clean_link),
            ("responses", _clean_response),
            ("callbacks", _clean_callback),
        ):
            if kind in components:
                components[kind] = _each(components[kind], clean)
        cleaned["components"] = components
    result: dict[str, Any] = _drop_external_refs(cleaned)
    return result


def _known_security(operation: dict[str, Any], schemes: Iterable[str]) -> None:
    """Keep only the operation's security requirements that name this document's schemes."""
    security = operation.get("security")
    if not isinstance(security, list):
        return
    known = set(schemes)
    kept = [
        requirement
        for requirement in security
        if isinstance(requirement, dict) and set(requirement) <= known
    ]
    if kept or not security:
        operation["security"] = kept
    else:
        del operation["security"]  # none left: the document's own apply


def _rewrite_refs(value: Any, prefix: str) -> Any:
    """A copy of `value` whose local component $refs name prefixed components."""
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                result[key] = _prefixed_ref(item, prefix)
            else:
                result[key] = _rewrite_refs(item, prefix)
        return result
    if isinstance(value, list):
        return [_rewrite_refs(item, prefix) for item in value]
    return value


def _split_ref(ref: str) -> tuple[str, str] | None:
    """(kind, name) of a `#/components/<kind>/<name>` reference to a prefixed kind."""
    parts = ref.split("/")
    if len(parts) == 4 and parts[:2] == ["#", "components"] and parts[2] in PREFIXED_KINDS:
        return parts[2], parts[3]
    return None


def _prefixed_ref(ref: str, prefix: str) -> str:
    split = _split_ref(ref)
    if split is None:
        return ref
    kind, name = split
    return f"#/components/{kind}/{prefix}{name}"


def _refs(value: Any) -> Iterable[tuple[str, str]]:
    """Every (kind, name) `value` references."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                split = _split_ref(item)
                if split is not None:
                    yield split
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def _used_components(components: dict[str, Any], roots: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """The components `roots` need, directly or through other components."""
    needed: dict[str, dict[str, Any]] = {}
    pending = [ref for root in roots for ref in _refs(root)]
    while pending:
        kind, name = pending.pop()
        if name in needed.get(kind, {}):
            continue
        component = components.get(kind, {}).get(name)
        if component is None:
            continue  # a dangling reference: the validator will name it
        needed.setdefault(kind, {})[name] = component
        pending.extend(_refs(component))
    return needed


# A path a service may document: under its prefix, plain segments and {templates} only.
# No `%`, `\`, `?` or `#`, and (checked apart) no `.` or `..` segment: a browser resolves
# those before sending, so Swagger UI on the hub would call another path of the hub.
PATH_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@{}-]+\Z")


def _service_paths(document: dict[str, Any], slug: str) -> dict[str, Any]:
    """The document's paths that belong to `slug` (a served process documents more)."""
    base = f"/api/{slug}"
    paths = {}
    for path, item in document.get("paths", {}).items():
        if not isinstance(path, str) or not (path == base or path.startswith(base + "/")):
            continue
        segments = path[len(base) :].split("/")[1:]
        if all(PATH_SEGMENT_RE.match(s) and s not in (".", "..") for s in segments):
            paths[path] = item
        else:
            logger.warning("left out of the merged document: %r of %s", path, slug)
    return paths


def merge_service(
    merged: dict[str, Any],
    service: RemoteService,
    document: dict[str, Any],
    prefix: str,
    unqualified: bool,
    qualified: bool,
) -> None:
    """Add one remote service's paths, components and tags to `merged` (in place).

    `document` is sanitized first (see `sanitize`): the merged document keeps its own
    servers and security schemes.
    """
    document = sanitize(document)
    own = _service_paths(document, service.slug)
    schemes = merged.get("components", {}).get("securitySchemes", {})
    components = document.get("components", {})
    paths = merged.setdefault("paths", {})
    tags_used: set[str] = set()
    variants: list[tuple[str, str]] = []
    # operationIds must stay unique where one service is listed under two paths.
    if unqualified:
        variants.append((f"/api/{service.slug}", f"{service.slug}."))
    if qualified:
        variants.append(
            (f"/api/nodes/{service.node}/{service.slug}", f"{service.node}.{service.slug}.")
        )
    for path, item in own.items():
        rewritten = _rewrite_refs(item, prefix)
        for method, operation in rewritten.items():
            if method in HTTP_METHODS and isinstance(operation, dict):
                operation["x-pyedge-node"] = service.node
                operation["x-pyedge-mode"] = "remote"
                _known_security(operation, schemes)
                tags_used.update(operation.get("tags", []))
        for base, id_prefix in variants:
            target = base + path[len(f"/api/{service.slug}") :]
            if target in paths:
                logger.warning("%s of node %s left out: already documented", target, service.node)
                continue
            entry = copy.deepcopy(rewritten)
            for method, operation in entry.items():
                if method in HTTP_METHODS and "operationId" in operation:
                    operation["operationId"] = f"{id_prefix}{operation['operationId']}"
            paths[target] = entry
    target_components = merged.setdefault("components", {})
    for kind, named in _used_components(components, own.values()).items():
        into = target_components.setdefault(kind, {})
        for name, component in named.items():
            into[f"{prefix}{name}"] = _rewrite_refs(component, prefix)
    tags = merged.setdefault("tags", [])
    known = {tag.get("name") for tag in tags}
    for tag in document.get("tags", []):
        name = tag.get("name")
        if name in tags_used and name not in known:
            tags.append(copy.deepcopy(tag))
            known.add(name)
    for name in sorted(tags_used - known):
        tags.append({"name": name})


def merge(
    local: dict[str, Any],
    registry: RemoteRegistry,
    docs: RemoteDocs,
    local_slugs: Iterable[str],
    local_node: str,
) -> dict[str, Any]:
    """`local` (not changed) with every remote service whose document can be had."""
    merged = copy.deepcopy(local)
    services = registry.services()
    docs.prune(service.key for service in services)
    in_process = set(local_slugs)
    nodes_of: dict[str, list[str]] = {}
    for service in services:
        nodes_of.setdefault(service.slug, []).append(service.node)
    docs.settle(services)
    for service in services:
        document = docs.document(service)
        if document is None:
            continue
        several = len(nodes_of[service.slug]) > 1
        owner: RemoteService | None = None
        if service.slug not in in_process:
            try:
                owner = registry.find(service.slug, prefer_node=local_node)
            except AmbiguousService:
                owner = None
        unqualified = owner is not None and owner.key == service.key
        prefix = f"{service.node}.{service.slug}." if several else f"{service.slug}."
        merge_service(
            merged,
            service,
            document,
            prefix,
            unqualified=unqualified,
            qualified=several or not unqualified,
        )
    return merged


class MergedApi(Api):  # type: ignore[misc]
    """flask-smorest's Api, whose /api/openapi.json (and so Swagger UI) adds remote services."""

    def __init__(self, app: flask.Flask | None = None, **kwargs: Any) -> None:
        # Before Api.__init__: it registers the view that reads this.
        self.remote_docs = RemoteDocs()
        super().__init__(app, **kwargs)

    def init_app(self, app: flask.Flask, *args: Any, **kwargs: Any) -> None:
        """Api.init_app, and fetch remote documents as the app's services tree changes."""
        super().init_app(app, *args, **kwargs)
        registry: RemoteRegistry = app.extensions.setdefault(REMOTE_EXTENSION, RemoteRegistry())

        def key() -> Ed25519PrivateKey | None:
            proxy = app.extensions.get("pyedge.proxy")
            found: Ed25519PrivateKey | None = getattr(proxy, "key", None)
            return found

        self.remote_docs.bind(registry, key)

    def _openapi_json(self) -> flask.Response:
        """Serve the node's document, remote services merged in."""
        document = self.spec.to_dict()
        registry: RemoteRegistry | None = current_app.extensions.get(REMOTE_EXTENSION)
        if registry is not None:
            host = current_app.extensions[HOST_EXTENSION]
            document = merge(
                document,
                registry,
                self.remote_docs,
                host.runtimes,
                host.node,
            )
        response: flask.Response = current_app.response_class(
            flask.json.dumps(document, indent=2, sort_keys=False),
            mimetype="application/json",
        )
        return response

    def handle_http_exception(self, error: HTTPException) -> Any:
        """The smorest envelope, with the `Allow` header RFC 9110 requires on every 405."""
        payload, code, headers = super().handle_http_exception(error)
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            headers = {**headers, "Allow": ", ".join(sorted(error.valid_methods))}
        return payload, code, headers

    def close(self) -> None:
        """Stop the document fetches."""
        self.remote_docs.close()
