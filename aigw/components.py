"""Pluggable components chosen by ``type:`` in a config block (embedders, vector stores).

``type`` names an entry point of the component's group (``aigw.embedders``,
``aigw.vector_stores``), or a ``module:Class`` reference for one that is not packaged. The rest
of the block is validated by that class's ``Config`` (an :class:`aigw.config.Settings` model:
unknown keys are errors) and passed to its constructor. Every error is a
:class:`~aigw.errors.ConfigError` naming ``where`` and the key; an unknown ``type`` lists the
installed ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from aigw.config import Settings, validate
from aigw.errors import ConfigError


def installed(group: str) -> dict[str, str]:
    """The entry points of ``group``: name → ``module:attr``."""
    return {ep.name: ep.value for ep in entry_points(group=group)}


def resolve(group: str, name: str, where: str, what: str) -> type[Any]:
    """The class a ``type:`` value names: an entry point of ``group``, or ``module:Class``."""
    ref = name
    if ":" not in ref:
        known = installed(group)
        if ref not in known:
            names = ", ".join(sorted(known)) or "none (run `pip install -e .`?)"
            raise ConfigError(f"{where}.type: unknown {what} {name!r}; installed: {names}")
        ref = known[ref]
    module_name, _, attr = ref.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except Exception as err:  # ImportError, but also any error the module raises on import
        raise ConfigError(f"{where}.type: cannot load {what} {ref!r}: {err!r}") from None
    if not isinstance(obj, type):
        raise ConfigError(f"{where}.type: {ref!r} is not a class")
    return obj


def load(
    group: str,
    spec: Mapping[str, Any] | None,
    where: str,
    what: str,
    default_type: str,
    protocol: type[Any],
) -> Any:
    """Build (not start) the ``what`` that ``spec`` describes (``None`` or empty: the
    ``default_type`` with its defaults), checked to follow ``protocol`` (a runtime-checkable
    protocol)."""
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping with 'type:' and the {what}'s settings")
    raw = dict(spec)
    name = raw.pop("type", default_type)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.type: expected the name of an installed {what}, got {name!r}")
    cls = resolve(group, name, where, what)
    config_model = getattr(cls, "Config", None)
    if not (isinstance(config_model, type) and issubclass(config_model, Settings)):
        raise ConfigError(f"{where}.type: {what} {name!r} has no Config settings model")
    config = validate(config_model, raw, where)
    try:
        instance = cls(config)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from None
    except Exception as err:  # a component that fails to build for its own reasons
        raise ConfigError(f"{where}: {what} {name!r}: {err!r}") from None
    if not isinstance(instance, protocol):
        raise ConfigError(f"{where}.type: {name!r} is not a {protocol.__name__}")
    return instance
