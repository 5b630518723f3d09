"""What the core runs for one process: the shared clients, background work, the shutdown clock.

Plugins never see this class: they get its :class:`~aigw.gateway.Gateway`, the part meant for
them. The app opens the clients on start-up, drains the background work and closes the
clients on shutdown, and the CLI starts the shutdown clock when the stop signal arrives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import aiohttp

from aigw.config import Config
from aigw.connections import ConnectionPolicy
from aigw.gateway import Gateway
from aigw.http_client import HTTPClient

log = logging.getLogger("aigw")


class Runtime:
    """The process's shared clients and tracked background tasks, and the plugins' gateway.

    ``session`` and ``client`` exist between :meth:`open` and :meth:`close`; ``tasks`` holds
    what :meth:`spawn` started until it ends; ``shutdown_deadline`` is the event-loop time by
    which shutdown must be over (``None`` until the stop signal); ``connections`` keeps the
    client connections to the server settings.
    """

    def __init__(self, config: Config) -> None:
        self.settings = config.gateway
        self.session: aiohttp.ClientSession | None = None
        self.client: HTTPClient | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.shutdown_deadline: float | None = None
        self.gateway = Gateway(config, self)
        self.connections = ConnectionPolicy(config.gateway, self.gateway.counters)

    def open(self) -> None:
        """Create the shared session and client (on start-up, in the loop)."""
        self.client = HTTPClient()
        # No total timeout: streams may last minutes; callers set connect/read timeouts.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
            # The session serves every client: a cookie one upstream answer set must not ride
            # along with the next request, whoever sends it. (It also spares a jar lookup per
            # request and per answer.)
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        """Close the shared session and client."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.session is not None:
            await self.session.close()
            self.session = None

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, tracked until done; failures are logged."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(lambda t: self._finished(t, what))
        return task

    def _finished(self, task: asyncio.Task[Any], what: str) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background %s failed: %r", what, task.exception())

    def shutdown_left(self) -> float:
        """Seconds left of ``shutdown_timeout_s`` since the stop signal (all of it if none)."""
        if self.shutdown_deadline is None:
            return self.settings.shutdown_timeout_s
        return max(0.0, self.shutdown_deadline - asyncio.get_running_loop().time())

    async def drain(self, seconds: float) -> None:
        """Wait up to ``seconds`` for background work, then cancel what is left."""
        if not self.tasks:
            return
        _, late = await asyncio.wait(set(self.tasks), timeout=seconds)
        for task in late:
            task.cancel()
        if late:
            log.warning("cancelled %d background task(s) still running at shutdown", len(late))
            await asyncio.wait(late)
