"""One OpenAPI document for the node: its own, plus every remote service's paths.

A remote service's document is fetched from the URL it announced, once per announcement
(`announced_at` changes on every re-announce), and merged in: its paths under
`/api/<slug>`, the components they use under a name prefixed per service
(`<slug>.` or, for a slug served by several nodes, `<node>.<slug>.`) with every `$ref`
rewritten, its tags, and `x-pyedge-node` / `x-pyedge-mode: remote` on each operation.
A slug on several nodes is listed under `/api/nodes/<node>/<slug>/...` too. Swagger UI
(/api/docs) reads the same document.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

import flask
import requests
from flask import current_app, g
from flask_smorest import Api

from edge_server.identity import sign_caller
from edge_server.remote import EXTENSION as REMOTE_EXTENSION
from edge_server.remote import AmbiguousService, RemoteRegistry, RemoteService
from pyedge.accounts import Identity
from pyedge.host import EXTENSION as HOST_EXTENSION
from pyedge.security import Role

logger = logging.getLogger(__name__)

FETCH_TIMEOUT = (3.0, 10.0)
# A document that failed to come is asked for again after this long, not on every view.
RETRY_AFTER_S = 30.0
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
# Component kinds named by $ref, and so prefixed; security schemes are named in
# `security` lists instead, and are the same on every node.
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
# Who asks a service for its document when no caller is at hand (it needs `viewer`).
FETCHER = Identity(name="edge-server", role=Role.VIEWER, kind="token")


class RemoteDocs:
    """The remote services' documents, by (node, slug), each kept for one announcement."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._docs: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        self._failed: dict[tuple[str, str, str], float] = {}
        self.session = requests.Session()
        self.session.trust_env = False

    def document(self, service: RemoteService, identity: Identity) -> dict[str, Any] | None:
        """The service's document for its current announcement; None when it cannot be had."""
        with self._lock:
            cached = self._docs.get(service.key)
            if cached is not None and cached[0] == service.announced_at:
                return cached[1]
            failed = self._failed.get((*service.key, service.announced_at))
        if failed is not None and time.monotonic() - failed < RETRY_AFTER_S:
            return cached[1] if cached is not None else None
        if not service.online:
            # Still documented from its last announcement, if it was fetched then.
            return cached[1] if cached is not None else None
        fetched = self._fetch(service, identity)
        with self._lock:
            if fetched is None:
                self._failed[(*service.key, service.announced_at)] = time.monotonic()
                return cached[1] if cached is not None else None
            self._docs[service.key] = (service.announced_at, fetched)
            return fetched

    def prune(self, keep: Iterable[tuple[str, str]]) -> None:
        """Forget the documents of services no longer known."""
        kept = set(keep)
        with self._lock:
            for key in [key for key in self._docs if key not in kept]:
                del self._docs[key]
            for failure in [f for f in self._failed if (f[0], f[1]) not in kept]:
                del self._failed[failure]

    def _fetch(self, service: RemoteService, identity: Identity) -> dict[str, Any] | None:
        url = service.openapi_url
        headers = {"Accept": "application/json"}
        proxy = current_app.extensions.get("pyedge.proxy")
        if proxy is not None and proxy.key is not None:
            headers.update(sign_caller(proxy.key, identity, "GET", urlparse(url).path))
        try:
            response = self.session.get(url, headers=headers, timeout=FETCH_TIMEOUT)
            response.raise_for_status()
            document = response.json()
        except (requests.RequestException, ValueError) as exc:
            logger.warning(
                "OpenAPI of %s on node %s not merged: %s", service.slug, service.node, exc
            )
            return None
        if not isinstance(document, dict) or not isinstance(document.get("paths"), dict):
            logger.warning(
                "OpenAPI of %s on node %s not merged: %s is no OpenAPI document",
                service.slug,
                service.node,
                url,
            )
            return None
        logger.info("OpenAPI of %s on node %s fetched", service.slug, service.node)
        return document


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


def _service_paths(document: dict[str, Any], slug: str) -> dict[str, Any]:
    """The document's paths that belong to `slug` (a served process documents more)."""
    base = f"/api/{slug}"
    return {
        path: item
        for path, item in document.get("paths", {}).items()
        if path == base or path.startswith(base + "/")
    }


def merge_service(
    merged: dict[str, Any],
    service: RemoteService,
    document: dict[str, Any],
    prefix: str,
    unqualified: bool,
    qualified: bool,
) -> None:
    """Add one remote service's paths, components and tags to `merged` (in place)."""
    own = _service_paths(document, service.slug)
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
    schemes = target_components.setdefault("securitySchemes", {})
    for name, scheme in components.get("securitySchemes", {}).items():
        schemes.setdefault(name, scheme)
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
    identity: Identity,
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
    for service in services:
        document = docs.document(service, identity)
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
                g.get("identity") or FETCHER,
                host.runtimes,
                host.node,
            )
        response: flask.Response = current_app.response_class(
            flask.json.dumps(document, indent=2, sort_keys=False),
            mimetype="application/json",
        )
        return response

    def close(self) -> None:
        """Close the pooled connections of the document fetches."""
        self.remote_docs.session.close()
