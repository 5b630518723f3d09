"""Single-flight: concurrent identical misses in one process go upstream once.

The first request for a key is the leader; the others wait (bounded) for the leader's record.
If the leader fails (error, truncated or uncacheable answer, client gone) the waiters are woken
with ``None`` and one of them becomes the next leader.
"""

from __future__ import annotations

import asyncio

from .record import CacheRecord


class SingleFlight:
    """Per-key futures of in-flight misses."""

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[CacheRecord | None]] = {}

    def lead(self, key: str) -> asyncio.Future[CacheRecord | None] | None:
        """Become the leader for ``key`` (returns the future to resolve), or ``None`` if a
        flight is already under way."""
        if key in self._flights:
            return None
        future: asyncio.Future[CacheRecord | None] = asyncio.get_running_loop().create_future()
        self._flights[key] = future
        return future

    async def wait(self, key: str, seconds: float) -> CacheRecord | None:
        """Wait for the flight of ``key``; ``None`` if it failed, timed out or is gone."""
        future = self._flights.get(key)
        if future is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(future), seconds)
        except TimeoutError:
            return None

    def land(
        self, key: str, future: asyncio.Future[CacheRecord | None], record: CacheRecord | None
    ) -> None:
        """Resolve the leader's flight (once) and forget it."""
        if self._flights.get(key) is future:
            del self._flights[key]
        if not future.done():
            future.set_result(record)

    def __len__(self) -> int:
        return len(self._flights)
