"""A circuit breaker per cache backend: a backend that keeps failing is skipped for a while.

Each call to a slow or paused backend waits for its whole deadline before it fails open, so
without a breaker a stalled Redis costs every request that deadline (on the reference machine
lookups fell from about 1,600 to 135 requests per second). After ``failures`` failures in a row
the breaker opens: calls fail at once, without touching the backend, for ``cooldown_s``
seconds. Then one call is let through as a probe (half-open): if it succeeds the breaker
closes; if it fails, or never reports, the next probe goes one cool-down later. Any success
closes it and resets the count.

One warning is logged when it opens and one line when the backend is back, never a line per
call. Counts, in the counters given to :meth:`CircuitBreaker.report_to`, under its source:
``breaker_open``, ``breaker_close`` and ``breaker_skip`` (calls not made).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aigw.counters import Counters

from .stores import StoreError

log = logging.getLogger("aigw.cache.breaker")


class CircuitOpen(StoreError):
    """A call that was not made: its backend's breaker is open. The breaker has logged the
    outage, so whoever fails open on it counts it without logging it again."""


class CircuitBreaker:
    """Counts a backend's consecutive failures and decides whether to call it at all.

    The caller asks :meth:`check` before each call (it raises :class:`CircuitOpen` to skip it)
    and reports the outcome with :meth:`succeeded` or :meth:`failed`; an outcome of a call that
    failed for its own sake while the backend answered (a refused command) is a success here.
    ``clock`` (seconds, monotonic) is replaceable for tests. A closed breaker costs an
    attribute check per call and per outcome.
    """

    def __init__(
        self,
        backend: str,
        failures: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        # Until report_to: counted, but where nobody reads.
        self.counters = Counters()
        self.source = backend
        self._failed = 0  # consecutive failures
        self._retry_at: float | None = None  # when the next probe may go; None: closed
        self._why = ""  # the latest failure while open

    def report_to(self, counters: Counters, source: str) -> None:
        """Count in ``counters`` under ``source`` (also the log lines' prefix) from now on."""
        self.counters = counters
        self.source = source

    def check(self, what: str) -> None:
        """Raise :class:`CircuitOpen` (naming ``what``, the call) if the call must be skipped.
        Once the cool-down is over, one call goes through as the probe, and the next probe
        is due a cool-down later, so a probe that never reports cannot keep it open."""
        retry_at = self._retry_at
        if retry_at is None:
            return
        now = self.clock()
        if now >= retry_at:
            self._retry_at = now + self.cooldown_s
            return
        self.counters.inc(self.source, "breaker_skip")
        raise CircuitOpen(
            f"{self.backend} {what}: skipped, {self.backend} unreachable ({self._why}); "
            f"next try in {retry_at - now:.1f} s"
        )

    def succeeded(self) -> None:
        """A call got its answer: the backend is there."""
        if self._retry_at is not None:
            self._retry_at = None
            self.counters.inc(self.source, "breaker_close")
            log.warning("%s: %s is back", self.source, self.backend)
        self._failed = 0

    def failed(self, err: BaseException | str) -> None:
        """A call failed (a timeout, a lost connection); the breaker opens at ``failures`` in
        a row. Failures while open (a probe's, calls made before it opened) change nothing
        but the reason given."""
        if self._retry_at is not None:
            self._why = str(err)
            log.debug("%s: %s still unreachable: %s", self.source, self.backend, err)
            return
        self._failed += 1
        if self._failed >= self.failures:
            self._retry_at = self.clock() + self.cooldown_s
            self._why = str(err)
            self.counters.inc(self.source, "breaker_open")
            log.warning(
                "%s: %s unreachable (%s, %d failures in a row); skipping it for %g s",
                self.source,
                self.backend,
                err,
                self._failed,
                self.cooldown_s,
            )
