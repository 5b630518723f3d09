"""Deterministic model routing: exact name, then longest prefix (``gpt-4*``), then ``*``.

Ties (the same pattern on two providers) go to the provider listed first. Results are
memoised per model name, so routing costs one dict lookup on the hot path.
"""

from __future__ import annotations

from aigw.context import Target

from .config import ProviderConfig


class ModelRouter:
    """Maps a requested model to the provider and upstream model that serve it."""

    def __init__(self, providers: list[ProviderConfig]) -> None:
        self._exact: dict[str, Target] = {}
        self._prefixes: list[tuple[str, str, str | None]] = []  # (prefix, provider, rename)
        self._any: tuple[str, str | None] | None = None
        for p in providers:
            for pattern, rename in p.models.items():
                if pattern == "*":
                    self._any = self._any or (p.name, rename)
                elif pattern.endswith("*"):
                    if all(pattern[:-1] != prefix for prefix, _, _ in self._prefixes):
                        self._prefixes.append((pattern[:-1], p.name, rename))
                else:
                    self._exact.setdefault(pattern, Target(p.name, rename or pattern))
        # Stable sort: longest prefix first, declaration order among equals.
        self._prefixes.sort(key=lambda item: -len(item[0]))
        self._memo: dict[str, Target | None] = {}

    def resolve(self, model: str) -> Target | None:
        """The target for ``model``, or ``None`` if no pattern matches."""
        try:
            return self._memo[model]
        except KeyError:
            pass
        target = self._exact.get(model)
        if target is None:
            for prefix, provider, rename in self._prefixes:
                if model.startswith(prefix):
                    target = Target(provider, rename or model)
                    break
        if target is None and self._any is not None:
            target = Target(self._any[0], self._any[1] or model)
        if len(self._memo) < 10_000:  # bounded: model names come from clients
            self._memo[model] = target
        return target

    def providers_in_use(self) -> set[str]:
        """Providers that own at least one route (the others are shadowed by earlier ones)."""
        used = {t.provider for t in self._exact.values()} | {p for _, p, _ in self._prefixes}
        return used | ({self._any[0]} if self._any else set())

    def listed(self) -> list[str]:
        """Concrete model names to advertise (patterns with ``*`` are not listable)."""
        return sorted(self._exact)
