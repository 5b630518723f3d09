"""Plugin discovery and activation.

Discovery: every plugin, built-in or third-party, is an entry point in the group
``aigw.plugins``; conf.d may also name a class directly as ``module:Class``. Activation: only
the plugins conf.d lists are built, each from its validated config, and registered with pluggy
as an instance under its conf.d name (``pm.register(instance, name=...)``), then
``pm.check_pending()`` makes a misspelt hook name a start-up error.

A plugin class may declare ``config_class`` (a :class:`~aigw.config.Settings` subclass); it is
then built as ``cls(config)``, otherwise as ``cls()`` and must have no config. The last plugin
must be terminal: see :class:`TerminalPlugin`. A plugin whose ``on_request`` needs only the headers
declares ``reads_body = False`` (see :func:`aigw.hookspecs.on_request`).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable

import pluggy

from aigw import hookspecs
from aigw.config import Config, PluginEntry, Settings, validate
from aigw.context import Target
from aigw.errors import ConfigError

GROUP = "aigw.plugins"


@runtime_checkable
class TerminalPlugin(Protocol):
    """The contract of the last plugin in conf.d (``provider-proxy``).

    It always replies in ``on_request``, and it tells the core, before the request phase,
    which provider and upstream model serve a requested model, so caches can key on it.
    """

    terminal: ClassVar[bool]

    def resolve_target(self, model: str) -> Target | None:
        """The target serving ``model``, or ``None`` when no provider serves it."""

    def model_ids(self) -> list[str]:
        """Model names to list on ``/v1/models``."""


@dataclass(frozen=True, slots=True)
class LoadedPlugins:
    """The plugin manager and the configured plugin instances in conf.d order."""

    pm: pluggy.PluginManager
    order: list[tuple[str, object]]
    terminal: TerminalPlugin


def installed() -> dict[str, str]:
    """Installed plugin entry points: name → ``module:attr``."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def resolve_class(entry: PluginEntry) -> type[Any]:
    """Find the class a conf.d ``plugin:`` value names."""
    ref = entry.name
    if ":" not in ref:
        eps = {ep.name: ep for ep in entry_points(group=GROUP)}
        if ref not in eps:
            names = ", ".join(sorted(eps)) or "none (run `pip install -e .`?)"
            raise ConfigError(f"{entry.file}: plugin: unknown plugin {ref!r}; installed: {names}")
        ref = eps[ref].value
    module_name, _, attr = ref.partition(":")
    # The `aigw` script, unlike `python -m aigw`, does not look in the working directory:
    # a plugin module next to conf.d (README "Writing a plugin") is found either way. Last,
    # so an installed module of the same name wins.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except Exception as err:  # ImportError, but also a SyntaxError or any error at import
        raise ConfigError(f"{entry.file}: plugin: cannot load {ref!r}: {err!r}") from None
    if not isinstance(obj, type):
        raise ConfigError(f"{entry.file}: plugin: {ref!r} is not a class")
    return obj


def build(entry: PluginEntry) -> object:
    """Validate the entry's config and build its plugin instance."""
    cls = resolve_class(entry)
    config_class: type[Settings] | None = getattr(cls, "config_class", None)
    if config_class is None and entry.config:
        raise ConfigError(f"{entry.file}: config: plugin {entry.name!r} takes no config")
    try:
        if config_class is None:
            return cls()
        return cls(validate(config_class, entry.config, f"{entry.file}: config"))
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:  # e.g. a Redis URL its client cannot parse
        raise ConfigError(f"{entry.file}: config: {err}") from None
    except Exception as err:  # a plugin that fails to build for its own reasons
        raise ConfigError(f"{entry.file}: plugin {entry.name!r}: {err!r}") from None


def load(config: Config) -> LoadedPlugins:
    """Build, register and check every plugin conf.d enables."""
    pm = pluggy.PluginManager("aigw")
    pm.add_hookspecs(hookspecs)
    order: list[tuple[str, object]] = []
    for entry in config.plugins:
        name = entry.name
        if pm.has_plugin(name):
            raise ConfigError(f"{entry.file}: plugin: {name!r} is configured twice")
        instance = build(entry)
        try:
            pm.register(instance, name=name)
            pm.check_pending()  # after each one, so a misspelt hook names its file
        except pluggy.PluginValidationError as err:
            raise ConfigError(f"{entry.file}: plugin {name!r}: {err}") from None
        order.append((name, instance))
    last_name, last = order[-1]
    if not (getattr(last, "terminal", False) and isinstance(last, TerminalPlugin)):
        raise ConfigError(
            f"{config.plugins[-1].file}: the last plugin must be terminal (like provider-proxy), "
            f"but {last_name!r} is not"
        )
    for (name, instance), entry in zip(order[:-1], config.plugins, strict=False):
        if getattr(instance, "terminal", False):
            raise ConfigError(f"{entry.file}: terminal plugin {name!r} must be the last one")
    return LoadedPlugins(pm=pm, order=order, terminal=last)
