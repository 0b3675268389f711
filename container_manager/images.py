"""Images as the API shows them."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from container_manager.engine import Engine


def _created(value: Any) -> str:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).isoformat()
    return str(value or "")


def summary(raw: dict[str, Any], in_use: Counter[str]) -> dict[str, Any]:
    """An image of the engine's listing (or inspect), with how many containers use it."""
    tags = raw.get("RepoTags") or []
    return {
        "id": raw["Id"],
        "tags": [tag for tag in tags if tag != "<none>:<none>"],
        "size": raw.get("Size", 0),
        "created": _created(raw.get("Created")),
        "containers": in_use.get(raw["Id"], 0),
        "labels": raw.get("Labels") or (raw.get("Config") or {}).get("Labels"),
    }


def usage(engine: Engine) -> Counter[str]:
    """How many containers (running or not) use each image id."""
    containers = engine.call(lambda c: c.api.containers(all=True))
    return Counter(raw.get("ImageID", "") for raw in containers)


def list_images(engine: Engine) -> list[dict[str, Any]]:
    """Every tagged or used image."""
    in_use = usage(engine)
    return [summary(raw, in_use) for raw in engine.call(lambda c: c.api.images())]


def inspect(engine: Engine, ref: str) -> dict[str, Any]:
    """An image inspected by id or reference."""
    attrs: dict[str, Any] = engine.call(lambda c: c.api.inspect_image(ref))
    return {
        **summary(attrs, usage(engine)),
        "architecture": attrs.get("Architecture"),
        "os": attrs.get("Os"),
        "attrs": attrs,
    }


def prune(engine: Engine, *, all: bool) -> dict[str, Any]:
    """Remove dangling images (or every unused one); what went and the space it freed."""
    result = engine.call(lambda c: c.api.prune_images(filters={"dangling": not all}), slow=True)
    deleted = [
        item.get("Deleted") or item.get("Untagged") for item in result.get("ImagesDeleted") or []
    ]
    return {"deleted": deleted, "space_reclaimed": result.get("SpaceReclaimed", 0)}
