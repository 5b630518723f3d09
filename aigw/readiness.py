"""What ``GET /readyz`` answers, from the plugins' ``check_ready`` results.

A load balancer takes an instance out of rotation when its readiness probe fails. That is right
when the instance cannot serve (a backend it fails closed on, such as an auth server, is
unreachable) and wrong when only a backend it fails open on is down: a shared Redis going away
would take every instance out at once, although each still answers every request through the
provider. So a plugin reports the second kind as :class:`Degraded`, and ``/readyz`` answers:

- 200 ``{"status": "ready"}`` when no plugin reports a problem;
- 200 ``{"status": "degraded", "problems": [...]}`` when every problem is :class:`Degraded`;
- 503 ``{"status": "not ready", "problems": [...]}`` when any other reason is returned or a
  probe raises (a probe that cannot tell counts as down).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class Degraded(str):
    """A ``check_ready`` reason for a backend the plugin fails open on: the instance still
    serves, without it, so ``/readyz`` reports the reason and stays 200."""

    __slots__ = ()


def verdict(results: Iterable[object]) -> tuple[int, dict[str, Any]]:
    """The status code and JSON body of ``/readyz`` for the ``check_ready`` results (``None``,
    a reason, a :class:`Degraded` reason, or the exception a probe raised)."""
    problems: list[str] = []
    blocking = False
    for result in results:
        if result is None:
            continue
        if isinstance(result, Degraded):
            problems.append(str(result))
            continue
        blocking = True
        problems.append(result if isinstance(result, str) else f"probe failed: {result!r}")
    if blocking:
        return 503, {"status": "not ready", "problems": problems}
    if problems:
        return 200, {"status": "degraded", "problems": problems}
    return 200, {"status": "ready"}
