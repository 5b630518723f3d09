"""The gateway's counters: one facade every plugin reports to, and metrics read.

A plugin counts what happened (``counters.inc("exact-cache", "hit")``) here rather than in an
attribute of its own, so that a metrics plugin, the access log or an admin endpoint reads
every plugin's counts in one place without reaching into another plugin. A plugin gets the
facade as ``gateway.counters`` in its ``startup`` hook.

With ``--workers N``, each worker is its own process (started with ``spawn``) with its own
counters, and nothing here crosses processes. The workers share one port through
SO_REUSEPORT, so the kernel hands each connection to one worker: a ``/metrics`` scrape on that
port reads one worker's counts, a different one from scrape to scrape, and its totals would
jump. A metrics plugin must therefore either serve each worker's counts on a port of its own
(scraped per process, with a ``worker`` label, summed by the query: ``sum without (worker)``),
or pool them between the processes (prometheus-client's multiprocess mode, where each process
writes its values to files under ``PROMETHEUS_MULTIPROC_DIR`` and whichever process answers a
scrape sums them all). Counts are lost with the process that held them (a worker restarted);
Prometheus's ``rate()`` and ``increase()`` take such resets into account.
"""

from __future__ import annotations

from collections import Counter


class Counters:
    """Monotonic event counts per source (a plugin's name) and event name, for one process.

    ``inc`` is a dict update: cheap enough for the request path. Sources and events are names
    the code chooses (never request data), so the set of counts stays small.
    """

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()

    def inc(self, source: str, event: str, n: int = 1) -> None:
        """Add ``n`` to ``source``'s count of ``event``."""
        self._counts[source, event] += n

    def get(self, source: str, event: str) -> int:
        """``source``'s count of ``event`` (0 if never counted)."""
        return self._counts[source, event]

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Every count, by source then event (a copy)."""
        out: dict[str, dict[str, int]] = {}
        for (source, event), n in self._counts.items():
            out.setdefault(source, {})[event] = n
        return out
