"""Counting and rate-limited logging of cache backend failures (the caches fail open)."""

from __future__ import annotations

import logging
import time
from collections import Counter

from aigw.counters import Counters

from .breaker import CircuitOpen


class FailureLog:
    """Counts failures in the gateway's counters (``<source>``, ``<kind>_failure``: a lookup
    that failed is ``lookup_failure``) and logs a warning per kind at most once every
    ``interval_s``, saying how many were not logged since. A call skipped by an open circuit
    breaker (:class:`~aigw.cache.breaker.CircuitOpen`) is counted, never logged: the breaker
    said once that the backend is gone."""

    def __init__(
        self, logger: logging.Logger, counters: Counters, source: str, interval_s: float = 10.0
    ) -> None:
        self.log = logger
        self.counters = counters
        self.source = source
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def failed(self, kind: str, err: BaseException | str) -> None:
        """Record one failure of ``kind``; maybe log it."""
        self.counters.inc(self.source, f"{kind}_failure")
        if isinstance(err, CircuitOpen):
            return
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval_s) < self.interval_s:
            self._suppressed[kind] += 1
            return
        self._last[kind] = now
        more = self._suppressed.pop(kind, 0)
        note = f" ({more} more since the last warning)" if more else ""
        self.log.warning("cache %s failed, serving without the cache: %s%s", kind, err, note)
