"""conf.d loading: YAML files in name order, ``${VAR}`` expansion, typed validation.

A conf.d directory holds ``*.yaml`` (or ``*.yml``) files read in file-name order. One file may
hold the server settings under ``gateway:``; every other file configures one plugin::

    plugin: exact-cache          # entry-point name in group aigw.plugins, or module:Class
    enabled: true                # optional; false skips the file
    config: {...}                # validated by the plugin's Config model

Strings may use ``${VAR}`` (the variable must be set), ``${VAR:-default}`` (default when unset
or empty) and ``${VAR:+word}`` (word when set and non-empty, else empty). Every error is a
:class:`~aigw.errors.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aigw.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\+)([^}]*))?\}")


class Settings(BaseModel):
    """Base of every settings model: immutable, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class GatewaySettings(Settings):
    """Server settings (the ``gateway:`` block).

    ``host``/``port``: where to listen. ``workers``: processes sharing the port
    (SO_REUSEPORT). ``max_body_bytes``: request body limit (413 above it).
    ``shutdown_timeout_s``: how long the whole shutdown may take (in-flight requests get half).
    ``log_level``: Python logging level name.

    Slow and idle clients: ``header_timeout_s``: a request's head (request line and headers)
    must be complete within this of the connection opening, or of its first byte on a kept-alive
    connection (408 and close, or a silent close if nothing came). ``body_timeout_s``: its body
    must have arrived whole within this of its head (408 and close). ``idle_timeout_s``: a
    kept-alive connection whose next request head is not complete this long after the last
    response is closed, and so is one whose client reads nothing more of its response for this
    long (keep it above the idle timeout of a load balancer in front).
    ``max_connections``: open client connections per process; beyond it a new connection is
    answered 503 and closed. Unset: derived from the process's file-descriptor limit (each
    client connection may need an upstream one too). See :mod:`aigw.connections`.
    """

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=256)
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0)
    shutdown_timeout_s: float = Field(30.0, gt=0)
    header_timeout_s: float = Field(30.0, gt=0)
    body_timeout_s: float = Field(60.0, gt=0)
    idle_timeout_s: float = Field(75.0, gt=0)
    max_connections: int | None = Field(None, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True, slots=True)
class PluginEntry:
    """One enabled plugin file: its name (entry point or ``module:Class``) and raw config."""

    name: str
    file: Path
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Config:
    """A loaded conf.d: server settings and the enabled plugins in order."""

    gateway: GatewaySettings
    plugins: list[PluginEntry]
    source: Path


def expand_env(value: Any, where: str, env: dict[str, str] | None = None, key: str = "") -> Any:
    """Expand ``${...}`` in every string inside ``value``; errors name ``where`` and the key."""
    env = os.environ.copy() if env is None else env
    if isinstance(value, str):
        return _expand_str(value, f"{where}: {key}" if key else where, env)
    if isinstance(value, list):
        return [
            expand_env(v, where, env, f"{key}.{i}" if key else str(i)) for i, v in enumerate(value)
        ]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            path = f"{key}.{k}" if key else str(k)
            # Keys too: a model pattern (`models: {"${CHAT_MODEL:-gpt-4o}": ...}`) is a string.
            name = _expand_str(k, f"{where}: {path}", env) if isinstance(k, str) else k
            if name in out:
                raise ConfigError(f"{where}: {path}: expands to {name!r}, which is already a key")
            out[name] = expand_env(v, where, env, path)
        return out
    return value


def _expand_str(text: str, where: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, op, word = m.group(1), m.group(2), m.group(3) or ""
        val = env.get(name, "")
        if op == ":-":
            return val or word
        if op == ":+":
            return word if val else ""
        if name not in env:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return val

    return _VAR.sub(sub, text)


def format_validation_error(err: ValidationError, where: str) -> str:
    """One line per problem: ``<where>.<key path>: <what was expected>``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        lines.append(f"{where}{'.' + loc if loc else ''}: {e['msg']}")
    return "\n".join(lines)


def validate(model: type[Settings], raw: Any, where: str) -> Any:
    """Validate ``raw`` into ``model``; a :class:`ConfigError` names ``where`` and the key."""
    try:
        return model.model_validate(raw if raw is not None else {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where)) from None


def load_config(conf_dir: str | Path, env: dict[str, str] | None = None) -> Config:
    """Read and validate a conf.d directory (plugin configs are validated when built)."""
    root = Path(conf_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a directory (expected a conf.d with *.yaml files)")
    gateway: GatewaySettings | None = None
    plugins: list[PluginEntry] = []
    files = [*root.glob("*.yaml"), *root.glob("*.yml")]
    # Hidden files are editors' locks and backups (`.#30-exact-cache.yaml`), not configuration.
    for path in sorted((p for p in files if not p.name.startswith(".")), key=lambda p: p.name):
        doc = _read_yaml(path)
        # `enabled` first: a disabled file may reference variables that are not set.
        if "enabled" in doc:
            doc["enabled"] = expand_env(doc["enabled"], str(path), env, "enabled")
            if not _enabled(doc["enabled"]):
                continue
        doc = expand_env(doc, str(path), env)
        if "gateway" in doc:
            if gateway is not None or set(doc) != {"gateway"}:
                raise ConfigError(f"{path}: a gateway file holds only one 'gateway:' block")
            gateway = validate(GatewaySettings, doc["gateway"], f"{path}: gateway")
            continue
        entry = _plugin_entry(path, doc)
        if entry is not None:
            plugins.append(entry)
    if not plugins:
        raise ConfigError(f"{root}: no enabled plugin files; the last one must be terminal")
    return Config(gateway=gateway or GatewaySettings(), plugins=plugins, source=root)


def _enabled(value: Any) -> bool:
    """``enabled:`` as YAML or as an expanded string (empty means off)."""
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text: {err}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping with 'plugin:' or 'gateway:'")
    return doc


def _plugin_entry(path: Path, doc: dict[str, Any]) -> PluginEntry | None:
    unknown = set(doc) - {"plugin", "config", "enabled"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {sorted(unknown)}; expected plugin, config, enabled"
        )
    name = doc.get("plugin")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: plugin: expected a plugin name (entry point or module:Class)")
    if not _enabled(doc.get("enabled", True)):
        return None
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: config: expected a mapping")
    return PluginEntry(name=name, file=path, config=config)
