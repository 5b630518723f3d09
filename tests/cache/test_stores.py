"""``MemoryStore``, ``SingleFlight``, ``FailureLog`` and the exact cache's cacheability rules."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aigw_plugins.exact_cache import uncacheable_answer, uncacheable_request
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from aigw.cache import failopen, stores
from aigw.cache.failopen import FailureLog
from aigw.cache.record import CacheRecord
from aigw.cache.singleflight import SingleFlight
from aigw.cache.stores import MemoryStore, MemoryStoreConfig
from aigw.context import RequestContext, Target


class Clock:
    """A hand-driven ``time.monotonic``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Drive ``time.monotonic`` as seen by the stores and the failure log (only there, so the
    event loop keeps its own clock)."""
    fake = Clock()
    monkeypatch.setattr(stores, "time", SimpleNamespace(monotonic=fake))
    monkeypatch.setattr(failopen, "time", SimpleNamespace(monotonic=fake))
    return fake


def memory(max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> MemoryStore:
    return MemoryStore(MemoryStoreConfig(max_entries=max_entries, max_bytes=max_bytes))


# --------------------------------------------------------------------------- MemoryStore


async def test_memory_get_set_delete(clock: Clock) -> None:
    store = memory()
    assert await store.get("a") is None
    await store.set("a", b"one", 60)
    await store.set("b", b"two", 60)
    assert await store.get("a") == b"one"
    assert await store.get("b") == b"two"
    assert len(store) == 2
    await store.set("a", b"uno", 60)
    assert await store.get("a") == b"uno"
    assert len(store) == 2
    await store.delete("a")
    assert await store.get("a") is None
    assert await store.get("b") == b"two"
    await store.delete("a")  # deleting a missing key is fine
    await store.delete("never")
    assert len(store) == 1
    assert await store.ping() is None
    await store.aclose()
    assert len(store) == 0
    assert store.bytes == 0
    assert await store.get("b") is None


async def test_memory_ttl_expiry(clock: Clock) -> None:
    store = memory()
    await store.set("short", b"s", 10)
    await store.set("long", b"l" * 5, 100)
    assert store.bytes == 6
    clock.now += 9.999
    assert await store.get("short") == b"s"
    clock.now += 0.001  # exactly the TTL: gone
    assert await store.get("short") is None
    assert len(store) == 1
    assert store.bytes == 5
    assert await store.get("long") == b"lllll"
    clock.now += 90
    assert await store.get("long") is None
    assert len(store) == 0
    assert store.bytes == 0


async def test_memory_overwrite_renews_the_ttl(clock: Clock) -> None:
    store = memory()
    await store.set("a", b"1", 10)
    clock.now += 8
    await store.set("a", b"2", 10)
    clock.now += 8
    assert await store.get("a") == b"2"
    clock.now += 2
    assert await store.get("a") is None


async def test_memory_evicts_the_least_recently_used_entry(clock: Clock) -> None:
    store = memory(max_entries=3)
    for key in "abc":
        await store.set(key, key.encode(), 60)
    assert await store.get("a") == b"a"  # a is now the most recently used
    await store.set("d", b"d", 60)
    assert len(store) == 3
    assert await store.get("b") is None
    assert await store.get("a") == b"a"
    assert await store.get("c") == b"c"
    assert await store.get("d") == b"d"
    # overwriting counts as use too
    await store.set("a", b"A", 60)  # order now: c, d, a
    await store.set("e", b"e", 60)
    assert await store.get("c") is None
    assert [await store.get(k) for k in "ade"] == [b"A", b"d", b"e"]
    assert store.bytes == 3


async def test_memory_evicts_by_bytes(clock: Clock) -> None:
    store = memory(max_bytes=1024)
    await store.set("a", b"a" * 400, 60)
    await store.set("b", b"b" * 400, 60)
    assert store.bytes == 800
    assert await store.get("a") is not None  # a is used, so b goes first
    await store.set("c", b"c" * 400, 60)
    assert await store.get("b") is None
    assert await store.get("a") == b"a" * 400
    assert await store.get("c") == b"c" * 400
    assert store.bytes == 800
    # one value of exactly max_bytes pushes everything else out
    await store.set("big", b"x" * 1024, 60)
    assert len(store) == 1
    assert store.bytes == 1024
    assert await store.get("big") == b"x" * 1024


async def test_memory_bytes_accounting(clock: Clock) -> None:
    store = memory()
    await store.set("a", b"x" * 100, 60)
    await store.set("b", b"y" * 50, 60)
    assert store.bytes == 150
    await store.set("a", b"z" * 30, 60)
    assert store.bytes == 80
    await store.set("a", b"z" * 300, 60)
    assert store.bytes == 350
    await store.delete("a")
    assert store.bytes == 50
    await store.delete("a")
    assert store.bytes == 50
    await store.delete("b")
    assert store.bytes == 0


async def test_memory_does_not_store_a_value_larger_than_max_bytes(clock: Clock) -> None:
    store = memory(max_bytes=1024)
    await store.set("small", b"s" * 10, 60)
    await store.set("huge", b"h" * 1025, 60)
    assert await store.get("huge") is None
    assert await store.get("small") == b"s" * 10  # nothing was evicted for it
    assert len(store) == 1
    assert store.bytes == 10


keys = st.sampled_from("abcdefgh")
ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), keys, st.integers(0, 700), st.integers(1, 20)),
        st.tuples(st.just("get"), keys),
        st.tuples(st.just("delete"), keys),
        st.tuples(st.just("tick"), st.integers(0, 10)),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(ops=ops, max_entries=st.integers(1, 5))
async def test_memory_bounds_hold_under_any_operations(
    ops: list[tuple[Any, ...]], max_entries: int
) -> None:
    fake = Clock()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stores, "time", SimpleNamespace(monotonic=fake))
        store = memory(max_entries=max_entries, max_bytes=1024)
        for op in ops:
            if op[0] == "set":
                _, key, size, ttl = op
                value = key.encode() * size
                await store.set(key, value, ttl)
                # the value just written is always readable (it fits in max_bytes)
                assert await store.get(key) == value
            elif op[0] == "get":
                await store.get(op[1])
            elif op[0] == "delete":
                await store.delete(op[1])
                assert await store.get(op[1]) is None
            else:
                fake.now += op[1]
            assert len(store) <= max_entries
            assert 0 <= store.bytes <= 1024
            live = store._data.values()
            assert store.bytes == sum(len(v) for _, v in live)


# --------------------------------------------------------------------------- SingleFlight


def record(text: str = "answer") -> CacheRecord:
    return CacheRecord({"choices": [{"message": {"content": text}}]}, 0.0, 60, "k", "s")


async def test_first_lead_wins_and_the_second_waits() -> None:
    flights = SingleFlight()
    future = flights.lead("k")
    assert future is not None
    assert not future.done()
    assert flights.lead("k") is None
    assert len(flights) == 1
    other = flights.lead("other")
    assert other is not None
    assert other is not future
    assert len(flights) == 2


async def test_waiters_get_the_landed_record() -> None:
    flights = SingleFlight()
    future = flights.lead("k")
    assert future is not None
    answer = record()
    waiters = [asyncio.create_task(flights.wait("k", 30)) for _ in range(3)]
    # call_soon runs callbacks in order: the waiters start waiting before the leader lands
    asyncio.get_running_loop().call_soon(flights.land, "k", future, answer)
    assert await asyncio.gather(*waiters) == [answer, answer, answer]
    assert future.result() is answer
    assert len(flights) == 0
    assert await flights.wait("k", 30) is None  # the flight is over


async def test_land_none_wakes_waiters_and_frees_the_key() -> None:
    flights = SingleFlight()
    future = flights.lead("k")
    assert future is not None
    waiters = [asyncio.create_task(flights.wait("k", 30)) for _ in range(2)]
    asyncio.get_running_loop().call_soon(flights.land, "k", future, None)
    assert await asyncio.gather(*waiters) == [None, None]
    assert len(flights) == 0
    again = flights.lead("k")
    assert again is not None
    assert again is not future


async def test_wait_without_a_flight_is_none() -> None:
    assert await SingleFlight().wait("nobody", 30) is None


async def test_wait_times_out_with_none_and_leaves_the_flight() -> None:
    flights = SingleFlight()
    future = flights.lead("k")
    assert future is not None
    assert await flights.wait("k", 0.01) is None
    assert not future.cancelled()  # the leader's future is shielded from the waiter's timeout
    assert not future.done()
    assert flights.lead("k") is None
    answer = record()
    flights.land("k", future, answer)
    assert future.result() is answer


async def test_a_stale_leader_cannot_land_the_next_flight() -> None:
    flights = SingleFlight()
    first = flights.lead("k")
    assert first is not None
    flights.land("k", first, None)
    second = flights.lead("k")
    assert second is not None
    flights.land("k", first, record("late"))  # the first leader lands again: ignored
    assert first.result() is None
    assert not second.done()
    assert flights.lead("k") is None  # the second flight is still under way
    flights.land("k", second, record("second"))
    assert second.result() == record("second")
    assert len(flights) == 0


# --------------------------------------------------------------------------- FailureLog

LOGGER = "tests.cache.failures"


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelname == "WARNING"]


def test_failure_log_rate_limits_per_kind(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    failures = FailureLog(logging.getLogger(LOGGER), interval_s=10.0)

    failures.failed("lookup", ConnectionError("redis down"))
    assert failures.counts["lookup"] == 1
    assert warnings_of(caplog) == ["cache lookup failed, serving without the cache: redis down"]

    for _ in range(3):
        clock.now += 3
        failures.failed("lookup", ConnectionError("redis down"))
    assert failures.counts["lookup"] == 4
    assert len(warnings_of(caplog)) == 1  # repeats within 10 s are only counted

    failures.failed("store", "timeout")  # another kind has its own limit
    assert warnings_of(caplog)[-1] == "cache store failed, serving without the cache: timeout"
    assert failures.counts["store"] == 1

    clock.now += 1  # 10 s since the first lookup warning
    failures.failed("lookup", "still down")
    assert failures.counts["lookup"] == 5
    assert warnings_of(caplog)[-1] == (
        "cache lookup failed, serving without the cache: still down (3 more since the last warning)"
    )
    assert len(warnings_of(caplog)) == 3

    clock.now += 5
    failures.failed("lookup", "x")
    clock.now += 5
    failures.failed("lookup", "back again")
    assert warnings_of(caplog)[-1].endswith("back again (1 more since the last warning)")
    clock.now += 100
    failures.failed("lookup", "much later")
    assert warnings_of(caplog)[-1] == "cache lookup failed, serving without the cache: much later"
    assert len(warnings_of(caplog)) == 5
    assert failures.counts == {"lookup": 8, "store": 1}


def test_failure_log_logs_at_a_clock_of_zero(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    clock.now = 0.0
    failures = FailureLog(logging.getLogger(LOGGER), interval_s=10.0)
    failures.failed("lookup", "first")
    assert warnings_of(caplog) == ["cache lookup failed, serving without the cache: first"]


# --------------------------------------------------------------------------- cacheability


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ({}, None),
        ({"n": 1}, None),
        ({"n": None}, None),
        ({"n": 2}, "n > 1"),
        ({"n": 5}, "n > 1"),
        ({"logprobs": True}, "logprobs are not stored"),
        ({"logprobs": True, "top_logprobs": 3}, "logprobs are not stored"),
        ({"top_logprobs": 2}, "logprobs are not stored"),
        ({"logprobs": False}, None),
        ({"temperature": 0.7, "stream": True}, None),
    ],
)
def test_uncacheable_request(payload: dict[str, Any], why: str | None) -> None:
    assert uncacheable_request({"model": "m", "messages": [], **payload}) == why


def answer(
    content: Any = "Paris.",
    finish: str | None = "stop",
    tool_calls: list[dict[str, Any]] | None = None,
    choices: int = 1,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {"index": i, "message": message, "finish_reason": finish} for i in range(choices)
        ],
    }


CALLS = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]


def answer_ctx(status: int, completion: dict[str, Any] | None) -> RequestContext:
    return RequestContext(
        request=make_mocked_request("POST", "/v1/chat/completions"),
        request_id="req-test",
        api="chat.completions",
        payload={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        model="gpt-4o-mini",
        target=Target("openai", "gpt-4o-mini"),
        status=status,
        completion=completion,
    )


@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.parametrize(
    ("status", "completion", "why"),
    [
        (200, answer(), None),
        (500, answer(), "status 500"),
        (429, answer(), "status 429"),
        (0, answer(), "status 0"),
        (200, None, "incomplete answer"),
        (200, answer(choices=2), "not exactly one choice"),
        (200, answer(choices=0), "not exactly one choice"),
        (200, answer(finish="length"), "finish_reason 'length'"),
        (200, answer(finish="content_filter"), "finish_reason 'content_filter'"),
        (200, answer(finish=None), "finish_reason None"),
        (200, answer(content=""), "empty answer"),
        (200, answer(content=None), "empty answer"),
        (200, answer(content=None, tool_calls=[]), "empty answer"),
    ],
)
def test_uncacheable_answer(
    status: int, completion: dict[str, Any] | None, why: str | None, allow: bool
) -> None:
    assert uncacheable_answer(answer_ctx(status, completion), allow) == why


def test_tool_call_answers_need_the_allow_flag() -> None:
    ctx = answer_ctx(200, answer(content=None, finish="tool_calls", tool_calls=CALLS))
    assert uncacheable_answer(ctx, False) == "tool calls (cache_tool_calls is off)"
    assert uncacheable_answer(ctx, True) is None
    empty = answer_ctx(200, answer(content=None, finish="tool_calls"))
    assert uncacheable_answer(empty, True) == "empty answer"


def test_tool_calls_with_finish_reason_stop_need_the_allow_flag() -> None:
    ctx = answer_ctx(200, answer(content=None, finish="stop", tool_calls=CALLS))
    assert uncacheable_answer(ctx, False) is not None
