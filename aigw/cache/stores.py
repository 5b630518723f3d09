"""Exact-cache stores: the :class:`ExactStore` protocol and the bounded in-memory store.

A store maps a key to bytes with a TTL. It raises :class:`StoreError` (or lets a backend
error through) on failure; the cache plugin turns every failure into a miss (fail open).
The Redis store is in :mod:`aigw.cache.redis_store`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Literal, Protocol

from pydantic import Field

from aigw.config import Settings


class StoreError(Exception):
    """A store could not answer."""


class ExactStore(Protocol):
    """Key → bytes with a TTL; async so that networked stores fit."""

    async def get(self, key: str) -> bytes | None:
        """The value, or ``None`` when absent or expired."""

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        """Store ``value`` for ``ttl`` seconds."""

    async def delete(self, key: str) -> None:
        """Forget ``key``."""

    async def ping(self) -> None:
        """Raise if the backend is unreachable."""

    async def aclose(self) -> None:
        """Release connections."""


class MemoryStoreConfig(Settings):
    """``type: memory``: per process; bounded by ``max_entries`` and ``max_bytes`` (LRU)."""

    type: Literal["memory"] = "memory"
    max_entries: int = Field(10_000, ge=1)
    max_bytes: int = Field(64 * 1024 * 1024, ge=1024)


class MemoryStore:
    """An LRU dict with per-entry expiry, bounded in entries and in bytes."""

    def __init__(self, config: MemoryStoreConfig) -> None:
        self.max_entries = config.max_entries
        self.max_bytes = config.max_bytes
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= time.monotonic():
            self._drop(key)
            return None
        self._data.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        self._drop(key)  # even when the new value is not kept: the old one is stale
        if len(value) > self.max_bytes:
            return  # larger than the whole cache: not worth evicting everything for
        self._data[key] = (time.monotonic() + ttl, value)
        self.bytes += len(value)
        while len(self._data) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._data)))

    async def delete(self, key: str) -> None:
        self._drop(key)

    def _drop(self, key: str) -> None:
        item = self._data.pop(key, None)
        if item is not None:
            self.bytes -= len(item[1])

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        self._data.clear()
        self.bytes = 0
