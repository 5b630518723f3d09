"""``CircuitBreaker`` on its own, with a fake clock: when it opens, probes and closes."""

from __future__ import annotations

import logging

import pytest

from aigw.cache.breaker import CircuitBreaker, CircuitOpen
from aigw.cache.failopen import FailureLog
from aigw.cache.stores import StoreError
from aigw.counters import Counters


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    breaker = CircuitBreaker("redis", failures=3, cooldown_s=5.0, clock=clock)
    breaker.report_to(Counters(), "exact-cache")
    return breaker


def counts(breaker: CircuitBreaker) -> dict[str, int]:
    return breaker.counters.snapshot().get("exact-cache", {})


def test_it_opens_after_failures_in_a_row_only(breaker: CircuitBreaker) -> None:
    for _ in range(5):  # a success between failures starts the count again
        breaker.failed("timed out")
        breaker.failed("timed out")
        breaker.check("GET")
        breaker.succeeded()
    breaker.failed("timed out")
    breaker.failed("timed out")
    breaker.failed("connection refused")
    with pytest.raises(CircuitOpen, match=r"redis GET: skipped.*connection refused.*5\.0 s"):
        breaker.check("GET")
    assert counts(breaker) == {"breaker_open": 1, "breaker_skip": 1}


def test_one_probe_per_cool_down_until_one_succeeds(
    breaker: CircuitBreaker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aigw.cache.breaker")
    for _ in range(3):
        breaker.failed("timed out")
    clock.now += 4.9
    with pytest.raises(CircuitOpen):
        breaker.check("GET")
    clock.now += 0.1
    breaker.check("GET")  # the probe goes
    with pytest.raises(CircuitOpen):
        breaker.check("GET")  # and only it
    breaker.failed("timed out")  # the probe failed: the next one a cool-down after it went
    clock.now += 4.9
    with pytest.raises(CircuitOpen):
        breaker.check("GET")
    clock.now += 0.1
    breaker.check("GET")  # this probe never reports (its caller was cancelled) ...
    clock.now += 5
    breaker.check("GET")  # ... which does not keep the breaker open
    breaker.succeeded()
    breaker.check("GET")
    breaker.check("GET")
    assert counts(breaker) == {"breaker_open": 1, "breaker_skip": 3, "breaker_close": 1}
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "exact-cache: redis unreachable (timed out, 3 failures in a row); skipping it for 5 s",
        ),
        ("WARNING", "exact-cache: redis is back"),
    ]


def test_failures_while_open_neither_reopen_it_nor_log(
    breaker: CircuitBreaker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aigw.cache.breaker")
    for _ in range(10):  # calls under way when it opened fail later
        breaker.failed("timed out")
    clock.now += 5
    breaker.check("GET")
    assert counts(breaker) == {"breaker_open": 1}
    assert len(caplog.records) == 1


def test_a_skipped_call_is_counted_as_a_failure_but_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counters = Counters()
    failures = FailureLog(logging.getLogger("test.failopen"), counters, "exact-cache", 0.0)
    failures.failed("lookup", CircuitOpen("redis MGET: skipped"))
    failures.failed("lookup", StoreError("redis MGET: timed out"))
    assert counters.get("exact-cache", "lookup_failure") == 2
    assert [r.getMessage() for r in caplog.records] == [
        "cache lookup failed, serving without the cache: redis MGET: timed out"
    ]
