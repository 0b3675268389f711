"""Typed settings loaded from defaults < TOML file < environment < explicit mapping."""

from __future__ import annotations

import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyedge.errors import PyEdgeError

Parser = Callable[[Any], Any]

CONFIG_FILE_ENV = "EDGE_CONFIG"
ENV_PREFIX = "EDGE_"
SLUG_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
# MQTT topic segments must not hold wildcards or separators. Used with fullmatch: `$`
# alone would let a trailing line break through, into the broker's ACL file.
NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(PyEdgeError):
    """A setting has a bad value; the message names the key and where it came from."""

    def __init__(self, key: str, source: str, problem: str) -> None:
        super().__init__(f"{key} (from {source}): {problem}")
        self.key = key
        self.source = source
        self.problem = problem


@dataclass(frozen=True)
class Setting:
    """One configuration key: its name within a section, parser, default and meaning."""

    name: str
    parse: Parser
    default: Any
    help: str = ""
    # Another environment variable that also sets it (e.g. EDGE_SENSORS for a service's
    # sensors file); the prefixed name, when set, wins.
    env_alias: str | None = None
    # A password or key: `pyedge config` shows that it is set, never its value.
    secret: bool = False


@dataclass(frozen=True)
class Section:
    """A group of settings sharing a TOML table and an environment prefix.

    The setting `name` in section `custom-service` is read from TOML as
    `[custom-service] name` and from the environment as `EDGE_CUSTOM_SERVICE_NAME`;
    the core section `edge` maps to plain `EDGE_NAME`.
    """

    table: str
    settings: tuple[Setting, ...] = field(default_factory=tuple)

    @property
    def prefix(self) -> str:
        """The key prefix shared by the environment and the Flask config."""
        if self.table == "edge":
            return ENV_PREFIX
        return ENV_PREFIX + self.table.upper().replace("-", "_") + "_"

    def key(self, setting: Setting) -> str:
        """The flat key of a setting, e.g. EDGE_MQTT_PORT."""
        return self.prefix + setting.name.upper()


# --- parsers: each takes a TOML value or an environment string and raises ValueError ---


def integer(low: int | None = None, high: int | None = None) -> Parser:
    """Parse an integer, optionally within [low, high]."""

    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
        if (low is not None and number < low) or (high is not None and number > high):
            raise ValueError(f"expected an integer from {low} to {high}, got {number}")
        return number

    return parse


def number(low: float | None = None) -> Parser:
    """Parse a float, optionally at least `low`."""

    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
        if not math.isfinite(result):
            raise ValueError(f"expected a finite number, got {value!r}")
        if low is not None and result < low:
            raise ValueError(f"expected a number of at least {low}, got {result}")
        return result

    return parse


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def boolean(value: Any) -> bool:
    """Parse a boolean from TOML or 1/0/true/false/yes/no/on/off."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected a boolean (1/0, true/false, yes/no, on/off), got {value!r}")


def text(value: Any) -> str:
    """Parse a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


def choice(*options: str) -> Parser:
    """Parse one of the given strings."""

    def parse(value: Any) -> str:
        # TOML may give `5` or `"5"` for the same choice.
        text = str(value)
        if isinstance(value, bool) or text not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return text

    return parse


# In place of slugs: no service at all (an edge-server that only fronts others).
NO_SERVICES = "none"


def slug_list(value: Any) -> list[str] | None:
    """Parse service slugs from a TOML list or a comma-separated string.

    Empty means all, `none` means none (an empty list).
    """
    if value is None:
        return None
    items = value if isinstance(value, list) else str(value).split(",")
    slugs = [str(item).strip() for item in items if str(item).strip()]
    if slugs == [NO_SERVICES]:
        return []
    for slug in slugs:
        if not SLUG_RE.fullmatch(slug):
            raise ValueError(f"{slug!r} is not a service slug (lowercase words joined by '-')")
    return slugs or None


def text_list(value: Any) -> list[str]:
    """Parse a list of strings from a TOML list or a comma-separated string."""
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def node_id(value: Any) -> str:
    """Parse a node id usable as one MQTT topic segment."""
    if not isinstance(value, str) or not NODE_ID_RE.fullmatch(value):
        raise ValueError(
            f"expected letters, digits, '.', '_' or '-' (at most 64, no '/', '+', '#'), "
            f"got {value!r}"
        )
    return value


def site(value: Any) -> str:
    """Parse a site name (one MQTT topic segment, like a node id); empty means none."""
    if isinstance(value, str) and not value.strip():
        return ""
    return node_id(value.strip() if isinstance(value, str) else value)


def secret(value: Any) -> str:
    """Parse a password: a non-empty string, kept exactly as given (spaces included)."""
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def path(value: Any) -> Path:
    """Parse a filesystem path (not required to exist)."""
    if isinstance(value, Path):
        return value
    return Path(text(value)).expanduser()


def default_node_id() -> str:
    """The hostname, made safe for use as a topic segment."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "edge"
    return name[:64]


class LoadedConfig(dict[str, Any]):
    """Loaded settings, remembering where each value came from."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: dict[str, str] = {}
        # Keys of settings marked secret, whose values are never shown.
        self.secrets: set[str] = set()

    def error(self, key: str, problem: str) -> ConfigError:
        """A ConfigError about `key`, naming the source its value came from."""
        return ConfigError(key, self.sources.get(key, "default"), problem)


def load(
    sections: Iterable[Section],
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Load every section's settings into one flat dict keyed like EDGE_MQTT_PORT.

    The TOML file is named by EDGE_CONFIG (in `overrides` or the environment). Unknown
    keys in a known TOML table are errors, so that a typo does not pass unnoticed.
    """
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    sections = list(sections)
    file_path = overrides.get(CONFIG_FILE_ENV) or environ.get(CONFIG_FILE_ENV)
    tables = _read_toml(Path(file_path)) if file_path else {}
    values = LoadedConfig()
    for section in sections:
        table = tables.get(section.table, {})
        names = {setting.name for setting in section.settings}
        for unknown in sorted(set(table) - names):
            raise ConfigError(f"[{section.table}] {unknown}", str(file_path), "unknown key")
        for setting in section.settings:
            key = section.key(setting)
            raw, source = setting.default, "default"
            if setting.name in table:
                raw, source = table[setting.name], f"{file_path} [{section.table}] {setting.name}"
            if setting.env_alias and setting.env_alias in environ:
                raw, source = environ[setting.env_alias], f"environment {setting.env_alias}"
            if key in environ:
                raw, source = environ[key], f"environment {key}"
            if setting.env_alias and setting.env_alias in overrides:
                raw, source = overrides[setting.env_alias], "create_app(config)"
            if key in overrides:
                raw, source = overrides[key], "create_app(config)"
            values[key] = _parse(setting, key, raw, source)
            values.sources[key] = source
            if setting.secret:
                values.secrets.add(key)
    # Tables of services that are not installed or not enabled are left alone, not errors.
    values[CONFIG_FILE_ENV] = file_path
    return values


def _parse(setting: Setting, key: str, raw: Any, source: str) -> Any:
    if raw is None or (source == "default" and callable(raw)):
        return raw() if callable(raw) else None
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise ConfigError(key, source, str(exc)) from exc


def _read_toml(file_path: Path) -> dict[str, dict[str, Any]]:
    try:
        with file_path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(CONFIG_FILE_ENV, str(file_path), "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(CONFIG_FILE_ENV, str(file_path), f"invalid TOML: {exc}") from exc
    for table, content in data.items():
        if not isinstance(content, dict):
            raise ConfigError(
                table, str(file_path), "expected a table such as [edge], not a top-level key"
            )
    return data
