"""The log rate limit: a burst per kind and period, and what was suppressed said."""

from __future__ import annotations

import logging

import pytest

from aigw import ratelimit_log
from aigw.ratelimit_log import RateLimitFilter


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("aigw.t", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_a_burst_per_kind_then_silence_then_a_count(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(ratelimit_log.time, "monotonic", lambda: now[0])
    limit = RateLimitFilter(burst=3, period=10.0)
    passed = [r for i in range(10) if limit.filter(r := _record("request %s failed", i))]
    assert [r.args for r in passed[:2]] == [(0,), (1,)]
    assert len(passed) == 3
    assert passed[2].getMessage() == (
        "request 2 failed [further similar messages suppressed for up to 10s]"
    )
    # Another template is another kind; so is another ratelimit_key.
    assert limit.filter(_record("other %s", 1))
    assert limit.filter(_record("request %s failed", 11, ratelimit_key="k"))
    now[0] += 9.9
    assert not limit.filter(_record("request %s failed", 12))
    now[0] += 0.1  # a new period: the count of what was suppressed comes with the next one
    assert limit.filter(first := _record("request %s failed", 13))
    assert first.getMessage() == "request 13 failed [8 similar messages suppressed]"
    assert limit.filter(again := _record("request %s failed", 14))
    assert again.getMessage() == "request 14 failed"


def test_a_note_is_not_taken_for_a_placeholder() -> None:
    limit = RateLimitFilter(burst=1, period=10.0)
    record = _record("%s%%", 5)
    assert limit.filter(record)
    assert record.getMessage() == "5% [further similar messages suppressed for up to 10s]"


def test_the_kinds_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RateLimitFilter, "_MAX_KINDS", 2)
    limit = RateLimitFilter(burst=1, period=10.0)
    assert limit.filter(_record("a")) and limit.filter(_record("b"))
    assert not limit.filter(_record("a"))
    assert limit.filter(_record("c"))  # room made: what was known is forgotten
    assert limit.filter(_record("a"))
