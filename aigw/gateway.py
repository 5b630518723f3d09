"""What plugins get of the process: settings, shared HTTP clients, counters, background work."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import aiohttp

from aigw.config import Config
from aigw.counters import Counters
from aigw.http_client import HTTPClient

if TYPE_CHECKING:
    from aigw.runtime import Runtime


class Gateway:
    """What plugins get in ``startup(gateway)`` and ``register_routes``.

    ``config`` and ``settings`` are the validated conf.d and its gateway file. ``session`` is
    the one pooled :class:`aiohttp.ClientSession` of the process (never create one per
    request); it keeps no cookies, as it is shared by every client. ``client`` is the lean
    HTTP/1.1 client (:mod:`aigw.http_client`) for calls on the hot path: it costs a fraction
    of the session's CPU per call. Both exist only while the app runs (from ``startup`` to
    ``shutdown``); reading them otherwise raises ``RuntimeError``. ``counters`` is where a
    plugin counts what happened, for metrics to read (:mod:`aigw.counters`). :meth:`spawn`
    runs work after the reply (a cache write-back) with a strong reference, so it is not
    garbage-collected mid-flight and shutdown waits for it.

    The lifecycle behind it (opening and closing the clients, draining the background work)
    is the core's: :class:`aigw.runtime.Runtime`.
    """

    def __init__(self, config: Config, runtime: Runtime) -> None:
        self.config = config
        self.settings = config.gateway
        #: The process's event counts, which plugins report to.
        self.counters = Counters()
        self._runtime = runtime

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared client session; only valid between start-up and shutdown."""
        session = self._runtime.session
        if session is None:
            raise RuntimeError("the gateway's ClientSession exists only while the app runs")
        return session

    @property
    def client(self) -> HTTPClient:
        """The shared lean client; only valid between start-up and shutdown."""
        client = self._runtime.client
        if client is None:
            raise RuntimeError("the gateway's HTTP client exists only while the app runs")
        return client

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, tracked until done (``what`` names it in the log
        if it fails); shutdown waits for it up to the shutdown budget, then cancels it."""
        return self._runtime.spawn(coro, what)

    def shutdown_left(self) -> float:
        """Seconds left of ``shutdown_timeout_s`` since the stop signal (all of it if none)."""
        return self._runtime.shutdown_left()
