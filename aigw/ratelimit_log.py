"""A ``logging.Filter`` that bounds how many log records of one kind pass per period.

A flood of bad requests (a scanner, a broken client) must not become a flood of log lines:
the first ``burst`` records of a kind in a ``period`` pass, the last of them saying that more
will be suppressed; the rest are dropped and counted, and the next record of that kind to pass
(in a later period) says how many were. A record's kind is its ``ratelimit_key`` (given with
``extra=``) if it has one, else its logger, level and message template (not its arguments:
``"request %s failed"`` is one kind whatever the request).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable


class RateLimitFilter(logging.Filter):
    """At most ``burst`` records of each kind per ``period`` seconds (monotonic clock).

    Attach it to a logger (``logger.addFilter``): it then sees that logger's own records, not
    those propagated from its children. Records it lets through past a suppression carry a
    note appended to their message. It never raises; a record it drops is simply not logged.
    """

    # Kinds kept at most; a flood of distinct templates (none today) must not grow it forever.
    _MAX_KINDS = 1024

    def __init__(self, burst: int = 10, period: float = 10.0) -> None:
        super().__init__()
        self.burst = burst
        self.period = period
        # kind -> [start of its period, records passed in it, records suppressed since]
        self._kinds: dict[Hashable, list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is logged; it may get a note about suppression appended."""
        key: Hashable = getattr(record, "ratelimit_key", None) or (
            record.name,
            record.levelno,
            record.msg,
        )
        now = time.monotonic()
        state = self._kinds.get(key)
        if state is None:
            if len(self._kinds) >= self._MAX_KINDS:
                self._kinds.clear()
            state = self._kinds[key] = [now, 0, 0]
        elif now - state[0] >= self.period:
            state[0], state[1] = now, 0
        if state[1] >= self.burst:
            state[2] += 1
            return False
        state[1] += 1
        note = ""
        if state[2]:
            note = f" [{int(state[2])} similar messages suppressed]"
            state[2] = 0
        if state[1] == self.burst:
            note += f" [further similar messages suppressed for up to {self.period:g}s]"
        if note:
            # Formatted now, so that the note cannot be taken for a %-placeholder.
            record.msg, record.args = record.getMessage() + note, None
        return True
