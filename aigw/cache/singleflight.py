"""Single-flight: concurrent identical misses in one process go upstream once.

The first request for a key is the leader; the others wait (bounded) for the leader's record.
If the leader fails (error, truncated or uncacheable answer, client gone) the waiters are woken
with ``None`` and one of them becomes the next leader.
"""

from __future__ import annotations

import asyncio

from .record import CacheRecord


class SingleFlight:
    """Per-key flights of in-flight misses.

    A flight's future is created only when a follower arrives, so the common case (a miss
    nobody else is waiting for) costs a dict insert and a delete.
    """

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[CacheRecord | None] | None] = {}

    def lead(self, key: str) -> bool:
        """Become the leader for ``key``; ``False`` if a flight is already under way. The
        leader must :meth:`land` it."""
        if key in self._flights:
            return False
        self._flights[key] = None
        return True

    async def wait(self, key: str, seconds: float) -> CacheRecord | None:
        """Wait for the flight of ``key``; ``None`` if it failed, timed out or is gone."""
        if key not in self._flights:
            return None
        future = self._flights[key]
        if future is None:
            future = self._flights[key] = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(asyncio.shield(future), seconds)
        except TimeoutError:
            return None

    def land(self, key: str, record: CacheRecord | None) -> None:
        """End the leader's flight of ``key``, handing ``record`` to its followers."""
        future = self._flights.pop(key, None)
        if future is not None and not future.done():
            future.set_result(record)

    def __len__(self) -> int:
        return len(self._flights)
