"""The per-process runtime handed to plugins: shared HTTP session, settings, background work."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import aiohttp

from aigw.config import Config
from aigw.http_client import HTTPClient

log = logging.getLogger("aigw")


class Gateway:
    """What plugins get in ``startup(gateway)`` and ``register_routes``.

    ``session`` is the one pooled :class:`aiohttp.ClientSession` of the process (created when
    the app starts; never create one per request). It keeps no cookies: it is shared by every
    client. ``client`` is the lean HTTP/1.1 client (:mod:`aigw.http_client`) for calls on the
    hot path, upstream LLM calls: it costs a fraction of the session's CPU per call.
    :meth:`spawn` runs work after the reply
    (cache write-back) with a strong reference, so it is not garbage-collected mid-flight and
    shutdown can wait for it.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config.gateway
        self._session: aiohttp.ClientSession | None = None
        self._client: HTTPClient | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Event-loop time by which shutdown must be over (set when the stop signal arrives).
        self.shutdown_deadline: float | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared client session; only valid between start-up and shutdown."""
        if self._session is None:
            raise RuntimeError("the gateway's ClientSession exists only while the app runs")
        return self._session

    @property
    def client(self) -> HTTPClient:
        """The shared lean client; only valid between start-up and shutdown."""
        if self._client is None:
            raise RuntimeError("the gateway's HTTP client exists only while the app runs")
        return self._client

    def open_session(self) -> aiohttp.ClientSession:
        """Create the shared session and client (called by the app on start-up, in the loop)."""
        self._client = HTTPClient()
        # No total timeout: streams may last minutes; callers set connect/read timeouts.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
            # The session serves every client: a cookie one upstream answer set must not ride
            # along with the next request, whoever sends it. (It also spares a jar lookup per
            # request and per answer.)
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self._session

    async def close_session(self) -> None:
        """Close the shared session and client."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, tracked until done; failures are logged."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(t, what))
        return task

    def _finished(self, task: asyncio.Task[Any], what: str) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background %s failed: %r", what, task.exception())

    def shutdown_left(self) -> float:
        """Seconds left of ``shutdown_timeout_s`` since the stop signal (all of it if none)."""
        if self.shutdown_deadline is None:
            return self.settings.shutdown_timeout_s
        return max(0.0, self.shutdown_deadline - asyncio.get_running_loop().time())

    async def drain(self, seconds: float) -> None:
        """Wait up to ``seconds`` for background work, then cancel what is left."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=seconds)
        for task in late:
            task.cancel()
        if late:
            log.warning("cancelled %d background task(s) still running at shutdown", len(late))
            await asyncio.wait(late)
