"""Single-flight: concurrent identical misses in one process go upstream once.

The first request for a key is the leader; the others wait (bounded) for the leader's record.
If the leader fails (upstream error, client gone) the followers are woken with ``None`` and one
of them becomes the next leader. If the leader got a complete answer that may not be shared
(``length``, tool calls, a 4xx), trying again one at a time would only queue them: the
followers are released with :data:`PROCEED` and all go upstream at once.
"""

from __future__ import annotations

import asyncio
from typing import Final

from .record import CacheRecord


class _Proceed:
    """Followers may not share the leader's answer: each goes upstream on its own."""


PROCEED: Final = _Proceed()


class SingleFlight:
    """Per-key flights of in-flight misses.

    A flight's future is created only when a follower arrives, so the common case (a miss
    nobody else is waiting for) costs a dict insert and a delete.
    """

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[CacheRecord | _Proceed | None] | None] = {}

    def lead(self, key: str) -> bool:
        """Become the leader for ``key``; ``False`` if a flight is already under way. The
        leader must :meth:`land` it."""
        if key in self._flights:
            return False
        self._flights[key] = None
        return True

    async def wait(self, key: str, seconds: float) -> CacheRecord | _Proceed | None:
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

    def land(self, key: str, record: CacheRecord | _Proceed | None) -> None:
        """End the leader's flight of ``key``, handing ``record`` (or ``None``: retry, or
        :data:`PROCEED`) to its followers."""
        future = self._flights.pop(key, None)
        if future is not None and not future.done():
            future.set_result(record)

    def __len__(self) -> int:
        return len(self._flights)
