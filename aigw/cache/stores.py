"""Exact-cache stores: the :class:`ExactStore` protocol and the bounded in-memory store.

A store maps a key to a :class:`~aigw.cache.record.CacheRecord` for the record's TTL, and knows
each entry's scope, so that one consumer's entries can be purged without touching anyone
else's (:meth:`ExactStore.purge`: what an admin purge calls; in memory from a per-scope index,
in Redis by a ``SCAN`` whose cost grows with the whole database;
:meth:`ExactStore.delete` forgets one entry). Keys are exact keys, which already differ
between scopes (:mod:`aigw.cache.key`): the scope is what groups them. A store raises
:class:`StoreError` when the backend fails and :class:`~aigw.cache.record.InvalidRecord` when
what it holds is not a record; the cache plugin turns both into a miss (fail open). The memory
store keeps each record serialised until its first hit and as an object from then on, so
only the second and later hits deserialise nothing (records are shared: treat them as
read-only); the Redis store, in :mod:`aigw.cache.redis_store`, serialises them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Final, Literal, Protocol

from pydantic import Field

from aigw.config import Settings

from .record import CacheRecord, InvalidRecord, decode, encode

# What the memory store charges an entry beyond its record's serialised length, so that
# max_bytes bounds what the store really holds (#16). Measured with tracemalloc in a full
# store that evicts (checked in tests/cache/test_stores.py): a serialised entry costs 540 to
# 570 bytes more (its bytes' header, its tuple, expiry and size, its 64-character key and
# its scope, its slots in the OrderedDict and in its scope's set, which grow in steps); a
# decoded one, with the replay's rendered body, twice its length plus about 1,800 bytes for
# one choice (3,100 for four: each choice's dicts).
ENTRY_OVERHEAD: Final = 640
DECODED_FACTOR: Final = 2
DECODED_OVERHEAD: Final = 2048


class StoreError(Exception):
    """A store could not answer."""


class ExactStore(Protocol):
    """(scope, key) → record with a TTL; async so that networked stores fit."""

    #: True when calls never wait for I/O, so the cache writes inline instead of in a task.
    local: bool

    async def get(self, scope: str, key: str) -> CacheRecord | None:
        """The record of ``key`` in ``scope``, or ``None`` when absent or expired."""

    async def set(self, record: CacheRecord) -> None:
        """Store ``record`` under ``record.key`` in ``record.scope`` for ``record.ttl``
        seconds."""

    async def delete(self, scope: str, key: str) -> None:
        """Forget ``key`` in ``scope``."""

    async def purge(self, scope: str) -> int:
        """Forget every entry of ``scope``; how many there were."""

    async def ping(self) -> None:
        """Raise if the backend is unreachable."""

    async def aclose(self) -> None:
        """Release connections."""


class MemoryStoreConfig(Settings):
    """``type: memory``: per process; bounded by ``max_entries`` and ``max_bytes`` (LRU).

    ``max_bytes`` bounds the memory the entries hold: an entry that was never hit counts its
    record's serialised size plus ``ENTRY_OVERHEAD`` (640 bytes); one that has been hit holds
    the record's objects and its rendered reply instead and counts twice the serialised size
    plus ``DECODED_OVERHEAD`` (2 KiB), measured for answers of one choice.
    """

    type: Literal["memory"] = "memory"
    max_entries: int = Field(10_000, ge=1)
    max_bytes: int = Field(64 * 1024 * 1024, ge=1024)


class MemoryStore:
    """An LRU dict with per-entry expiry, bounded in entries and in the bytes they hold.

    An entry holds its record serialised, one bytes object, until the record is first read;
    it is decoded then and kept as an object, so that a hot entry is replayed without
    decoding it again. Most entries are never read: held as a few dozen small objects each
    (the record's dicts, lists and strings), a full store scattered the heap so that every
    request ran slower, each eviction freeing cold objects all over it and the next
    request's objects landing in those holes (a miss cost 1.36-1.49 times the CPU of the
    proxy alone; 1.20 times held serialised; see benchmarks/README.md). On another machine,
    loads run side by side (benchmarks/paired.py) found no difference between the two (within
    1.5%): holding bytes costs nothing there and helped here. A record that fails to decode
    is dropped and raises :class:`~aigw.cache.record.InvalidRecord`. An entry weighs more once
    decoded (see :class:`MemoryStoreConfig`), so a first hit may evict the least recently used
    entries, or the entry itself when it no longer fits on its own.

    Each scope's keys are indexed (a set per scope with entries, each key in one set), so a
    purge visits only that scope's entries; the index is bounded by ``max_entries`` like the
    entries themselves. Keys are exact keys, unique across scopes, so a lookup needs no scope.
    """

    local = True

    def __init__(self, config: MemoryStoreConfig) -> None:
        self.max_entries = config.max_entries
        self.max_bytes = config.max_bytes
        # key -> (expiry on the monotonic clock, weight, the record or its bytes, scope)
        self._data: OrderedDict[str, tuple[float, int, CacheRecord | bytes, str]] = OrderedDict()
        self._scopes: dict[str, set[str]] = {}  # scope -> its keys in _data
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, scope: str, key: str) -> CacheRecord | None:
        record = self.peek(key)
        return record if record is not None and record.scope == scope else None

    def peek(self, key: str) -> CacheRecord | None:
        """:meth:`get` without a coroutine: the exact cache calls it directly, which made a
        memory hit 1.6% cheaper (a coroutine less to create and run per lookup)."""
        item = self._data.get(key)
        if item is None:
            return None
        expires, size, value, scope = item
        if expires <= time.monotonic():
            self._drop(key)
            return None
        self._data.move_to_end(key)
        if isinstance(value, CacheRecord):
            return value
        try:
            record = decode(value)
        except InvalidRecord:
            self._drop(key)
            raise
        data = self._data
        weight = DECODED_FACTOR * len(value) + DECODED_OVERHEAD
        data[key] = (expires, weight, record, scope)  # keeps its place, last
        self.bytes += weight - size
        while self.bytes > self.max_bytes:  # this entry last: kept if it fits on its own
            self._drop(next(iter(data)))
        return record

    async def set(self, record: CacheRecord) -> None:
        key, scope = record.key, record.scope
        self._drop(key)  # even when the new value is not kept: the old one is stale
        # A copy of exactly its length: orjson's bytes keep the whole buffer it wrote them in
        # (in orjson 3.13, 64 KiB for 8 KB of JSON, 4 KiB for 500 bytes), and a store of them
        # held 8 times what it counted (#16).
        raw = memoryview(encode(record)).tobytes()
        size = len(raw) + ENTRY_OVERHEAD
        if DECODED_FACTOR * len(raw) + DECODED_OVERHEAD > self.max_bytes:
            # Larger than the whole cache once hit (its first hit would evict everything else,
            # then itself): not kept.
            return
        data = self._data
        data[key] = (time.monotonic() + record.ttl, size, raw, scope)
        self.bytes += size
        keys = self._scopes.get(scope)
        if keys is None:
            keys = self._scopes[scope] = set()
        keys.add(key)
        while len(data) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(data)))  # the least recently used

    async def delete(self, scope: str, key: str) -> None:
        if key in self._scopes.get(scope, ()):
            self._drop(key)

    async def purge(self, scope: str) -> int:
        keys = list(self._scopes.get(scope, ()))  # a copy: _drop empties the set
        for key in keys:
            self._drop(key)
        return len(keys)

    def _drop(self, key: str) -> None:
        item = self._data.pop(key, None)
        if item is not None:
            self.bytes -= item[1]
            scope = item[3]
            keys = self._scopes[scope]
            keys.discard(key)
            if not keys:
                del self._scopes[scope]

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        self._data.clear()
        self._scopes.clear()
        self.bytes = 0
