"""``MemoryStore``, ``SingleFlight``, ``FailureLog`` and the exact cache's cacheability rules."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import tracemalloc
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from aigw.cache import failopen, stores
from aigw.cache.cacheable import uncacheable_answer, uncacheable_request
from aigw.cache.failopen import FailureLog
from aigw.cache.record import CacheRecord, InvalidRecord, decode, encode, make_record, normalise
from aigw.cache.replay import completion_body
from aigw.cache.singleflight import SingleFlight
from aigw.cache.stores import MemoryStore, MemoryStoreConfig
from aigw.context import RequestContext, Target
from aigw.counters import Counters


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

SCOPE = "scope"


def completion(text: str) -> dict[str, Any]:
    """An upstream ``chat.completion`` answering ``text``."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }


def rec(key: str, text: str = "answer", ttl: int = 60, scope: str = SCOPE) -> CacheRecord:
    """A record of an answer of ``text`` under ``key`` in ``scope``."""
    return make_record(completion(text), key, scope, ttl)


def weight(record: CacheRecord) -> int:
    """What the store charges for ``record`` until its first hit: its serialised size and
    what the entry costs beyond it."""
    return len(encode(record)) + stores.ENTRY_OVERHEAD


def hit_weight(record: CacheRecord) -> int:
    """What the store charges for ``record`` once hit (held decoded, with its rendered body)."""
    return stores.DECODED_FACTOR * len(encode(record)) + stores.DECODED_OVERHEAD


def charge(value: CacheRecord | bytes) -> int:
    """What the store charges for an entry holding ``value``."""
    return weight(held(value)) if isinstance(value, bytes) else hit_weight(value)


def held(value: CacheRecord | bytes) -> CacheRecord:
    """The record a memory store entry holds, serialised (never read yet) or not."""
    return decode(value) if isinstance(value, bytes) else value


def weighing(size: int, key: str, ttl: int = 60) -> CacheRecord:
    """A record under ``key`` that weighs exactly ``size`` bytes (the answer text pads it)."""
    empty = rec(key, "", ttl)
    padding = size - weight(empty)
    assert padding >= 0, f"a record under {key!r} weighs at least {weight(empty)} bytes"
    padded = CacheRecord(normalise(completion("x" * padding)), empty.stored_at, ttl, key, SCOPE)
    assert weight(padded) == size
    return padded


async def test_memory_get_set_delete(clock: Clock) -> None:
    store = memory()
    assert store.local is True
    assert await store.get(SCOPE, "a") is None
    a, b = rec("a", "one"), rec("b", "two")
    await store.set(a)
    await store.set(b)
    first = await store.get(SCOPE, "a")
    assert first == a and first is not a  # held serialised: read back as an equal record
    assert await store.get(SCOPE, "a") is first  # then kept decoded: a hot entry is decoded once
    assert await store.get(SCOPE, "b") == b
    assert len(store) == 2
    assert store.bytes == hit_weight(a) + hit_weight(b)
    uno = rec("a", "uno")
    await store.set(uno)  # stored under its own key: replaces a
    assert await store.get(SCOPE, "a") == uno
    assert len(store) == 2
    await store.delete(SCOPE, "a")
    assert await store.get(SCOPE, "a") is None
    assert await store.get(SCOPE, "b") == b
    await store.delete(SCOPE, "a")  # deleting a missing key is fine
    await store.delete(SCOPE, "never")
    assert len(store) == 1
    assert store.bytes == hit_weight(b)
    assert await store.ping() is None
    await store.aclose()
    assert len(store) == 0
    assert store.bytes == 0
    assert await store.get(SCOPE, "b") is None


async def test_memory_purge_forgets_one_scope_only(clock: Clock) -> None:
    store = memory()
    mine = [rec(f"alice-{i}", scope="consumer:alice") for i in range(3)]
    theirs = [rec(f"bob-{i}", scope="consumer:bob") for i in range(2)]
    for record in (*mine, *theirs):
        await store.set(record)
    assert await store.get("consumer:alice", theirs[0].key) is None  # bob's, asked as alice
    assert await store.purge("consumer:alice") == 3
    assert [await store.get("consumer:alice", r.key) for r in mine] == [None] * 3
    assert [await store.get("consumer:bob", r.key) for r in theirs] == theirs
    assert len(store) == 2 and store.bytes == sum(hit_weight(r) for r in theirs)
    assert await store.purge("consumer:alice") == 0  # nothing left to purge
    assert await store.purge("nobody") == 0
    await store.delete("consumer:alice", theirs[0].key)  # not alice's: left alone
    assert await store.get("consumer:bob", theirs[0].key) == theirs[0]
    assert set(store._scopes) == {"consumer:bob"}


async def test_memory_ttl_expiry(clock: Clock) -> None:
    store = memory()
    short, long = rec("short", "s", ttl=10), rec("long", "lllll", ttl=100)
    await store.set(short)
    await store.set(long)
    assert store.bytes == weight(short) + weight(long)
    clock.now += 9.999
    assert await store.get(SCOPE, "short") == short
    clock.now += 0.001  # exactly the TTL: gone
    assert await store.get(SCOPE, "short") is None
    assert len(store) == 1
    assert store.bytes == weight(long)  # never read yet
    assert await store.get(SCOPE, "long") == long
    clock.now += 90
    assert await store.get(SCOPE, "long") is None
    assert len(store) == 0
    assert store.bytes == 0


async def test_memory_overwrite_renews_the_ttl(clock: Clock) -> None:
    store = memory()
    await store.set(rec("a", "1", ttl=10))
    clock.now += 8
    second = rec("a", "2", ttl=10)
    await store.set(second)
    clock.now += 8
    assert await store.get(SCOPE, "a") == second
    clock.now += 2
    assert await store.get(SCOPE, "a") is None
    assert store.bytes == 0


async def test_memory_evicts_the_least_recently_used_entry(clock: Clock) -> None:
    store = memory(max_entries=3)
    records = {key: rec(key, key) for key in "abc"}
    for record in records.values():
        await store.set(record)
    assert await store.get(SCOPE, "a") == records["a"]  # a is now the most recently used
    d = rec("d", "d")
    await store.set(d)
    assert len(store) == 3
    assert await store.get(SCOPE, "b") is None
    assert await store.get(SCOPE, "a") == records["a"]
    assert await store.get(SCOPE, "c") == records["c"]
    assert await store.get(SCOPE, "d") == d
    # overwriting counts as use too
    a_again = rec("a", "A")
    await store.set(a_again)  # order now: c, d, a
    e = rec("e", "e")
    await store.set(e)
    assert await store.get(SCOPE, "c") is None
    for key, record in zip("ade", (a_again, d, e), strict=True):
        assert await store.get(SCOPE, key) == record
    assert store.bytes == hit_weight(a_again) + hit_weight(d) + hit_weight(e)


async def test_memory_evicts_by_bytes(clock: Clock) -> None:
    store = memory(max_bytes=6000)
    a, b, c = weighing(1500, "a"), weighing(1500, "b"), weighing(1500, "c")
    await store.set(a)
    await store.set(b)
    assert store.bytes == 3000
    assert await store.get(SCOPE, "a") == a  # a is used, so b goes first
    assert store.bytes == hit_weight(a) + 1500
    await store.set(c)
    assert await store.get(SCOPE, "b") is None
    assert list(store._data) == ["a", "c"]
    assert store.bytes == hit_weight(a) + 1500
    assert await store.get(SCOPE, "c") == c  # c decoded no longer fits beside a: a goes
    assert list(store._data) == ["c"]
    assert store.bytes == hit_weight(c)
    # a record that fits cold but not once hit is not kept: its first hit would have pushed
    # everything else out, then itself
    big = weighing(6000, "big")
    await store.set(big)
    assert await store.get(SCOPE, "big") is None
    assert list(store._data) == ["c"] and store.bytes == hit_weight(c)


async def test_memory_bytes_accounting(clock: Clock) -> None:
    store = memory()
    a100, b50 = rec("a", "x" * 100), rec("b", "y" * 50)
    await store.set(a100)
    await store.set(b50)
    assert store.bytes == weight(a100) + weight(b50)
    a30 = rec("a", "z" * 30)
    await store.set(a30)  # a smaller record replaces a larger one
    assert store.bytes == weight(a30) + weight(b50)
    a300 = rec("a", "z" * 300)
    await store.set(a300)  # and a larger a smaller one
    assert store.bytes == weight(a300) + weight(b50)
    await store.delete(SCOPE, "a")
    assert store.bytes == weight(b50)
    await store.delete(SCOPE, "a")
    assert store.bytes == weight(b50)
    await store.delete(SCOPE, "b")
    assert store.bytes == 0


async def test_memory_weighs_records_as_serialised_then_as_hit(clock: Clock) -> None:
    """Until its first hit an entry weighs its record's serialised size (plus the entry), from
    then on what it holds decoded, whatever the record held when it was stored."""
    store = memory()
    record = rec("k", "some answer")
    record.rendered[:] = [b"h" * 1000, b"t" * 1000]  # the replay's render cache is not counted
    await store.set(record)
    assert store.bytes == len(encode(record)) + stores.ENTRY_OVERHEAD
    hit = await store.get(SCOPE, "k")
    assert hit == record and hit.rendered == []  # the render cache is not stored either
    assert store.bytes == hit_weight(record)
    assert await store.get(SCOPE, "k") is hit
    assert store.bytes == hit_weight(record)  # weighed once


async def test_memory_drops_an_entry_that_does_not_decode(clock: Clock) -> None:
    """A held value that is no record (memory damaged, a bug) is a failure once, then gone."""
    store = memory()
    good, bad = rec("good", "fine"), rec("bad", "broken")
    await store.set(good)
    await store.set(bad)
    expires, size, _, scope = store._data["bad"]
    store._data["bad"] = (expires, size, b'{"v": 1, "response": null}', scope)
    with pytest.raises(InvalidRecord):
        await store.get(SCOPE, "bad")
    assert await store.get(SCOPE, "bad") is None
    assert len(store) == 1
    assert store.bytes == weight(good)
    assert await store.get(SCOPE, "good") == good


async def test_memory_does_not_store_a_record_heavier_than_max_bytes(clock: Clock) -> None:
    store = memory(max_bytes=4096)
    small = rec("small", "s" * 10)
    await store.set(small)
    await store.set(weighing(4097, "huge"))
    assert await store.get(SCOPE, "huge") is None
    assert await store.get(SCOPE, "small") == small  # nothing was evicted for it
    assert len(store) == 1
    assert store.bytes == hit_weight(small)


async def test_memory_a_record_too_heavy_to_store_drops_the_previous_one(clock: Clock) -> None:
    store = memory(max_bytes=4096)
    old, other = rec("k", "old"), rec("other", "o")
    await store.set(old)
    await store.set(other)
    await store.set(weighing(4097, "k"))  # not stored, and the old entry for k is stale
    assert await store.get(SCOPE, "k") is None
    assert await store.get(SCOPE, "other") == other
    assert len(store) == 1
    assert store.bytes == hit_weight(other)


@pytest.mark.parametrize("answer_chars", [0, 8000])
async def test_memory_max_bytes_bounds_the_memory_the_store_holds(
    clock: Clock, answer_chars: int
) -> None:
    """What a full store holds, as tracemalloc sees it, is within max_bytes, first with
    entries never read, then with every entry hit and its reply rendered. (orjson's bytes
    keep a buffer up to 8 times their length: held as such, 1 MiB of them held 8 MiB.)"""
    max_bytes = 1024 * 1024
    store = memory(max_bytes=max_bytes)
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(3 * max_bytes // (answer_chars + 500)):  # fills it three times over
            key = hashlib.sha256(str(i).encode()).hexdigest()  # what exact keys are
            scope = f"consumer:{'alice'}"  # a new string per entry, as for each request
            await store.set(rec(key, format(i, "08") + "x" * answer_chars, scope=scope))
        gc.collect()
        held_cold = tracemalloc.get_traced_memory()[0] - before
        for key in list(store._data):
            record = store.peek(key)  # None when an earlier first hit has evicted it
            if record is not None:
                completion_body(record)  # the replay keeps the rendered body in the record
        assert all(isinstance(item[2], CacheRecord) for item in store._data.values())
        gc.collect()
        held_hit = tracemalloc.get_traced_memory()[0] - before
    finally:
        if not tracing:
            tracemalloc.stop()
    assert 0.75 * max_bytes <= held_cold <= max_bytes
    assert 0.75 * max_bytes <= held_hit <= max_bytes


# Keys differ between scopes, as exact keys do (the scope is hashed into them).
keys = st.tuples(st.sampled_from(["s1", "s2", "s3"]), st.sampled_from("abcdef")).map(
    lambda sk: (sk[0], f"{sk[0]}-{sk[1]}")
)
ops = st.lists(
    st.one_of(
        # answers from 0 to 2,500 characters: entries of ~840 to ~3,350 bytes, ~2,700 to
        # ~7,700 once hit, around max_bytes
        st.tuples(st.just("set"), keys, st.integers(0, 2500), st.integers(1, 20)),
        st.tuples(st.just("get"), keys),
        st.tuples(st.just("delete"), keys),
        st.tuples(st.just("purge"), keys),
        st.tuples(st.just("tick"), st.integers(0, 10)),
    ),
    max_size=40,
)


@settings(max_examples=50, deadline=None)
@given(ops=ops, max_entries=st.integers(1, 5))
async def test_memory_bounds_hold_under_any_operations(
    ops: list[tuple[Any, ...]], max_entries: int
) -> None:
    fake = Clock()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stores, "time", SimpleNamespace(monotonic=fake))
        store = memory(max_entries=max_entries, max_bytes=6144)
        for op in ops:
            if op[0] == "set":
                _, (scope, key), size, ttl = op
                record = rec(key, key[-1] * size, ttl, scope)
                await store.set(record)
                if hit_weight(record) <= 6144:
                    # the record just written is always readable (it fits in max_bytes, hit)
                    assert await store.get(scope, key) == record
                else:
                    assert await store.get(scope, key) is None
            elif op[0] == "get":
                await store.get(*op[1])
            elif op[0] == "delete":
                await store.delete(*op[1])
                assert await store.get(*op[1]) is None
            elif op[0] == "purge":
                scope = op[1][0]
                others = {k for k, item in store._data.items() if item[3] != scope}
                await store.purge(scope)
                assert set(store._data) == others  # that scope's entries, and only them
            else:
                fake.now += op[1]
            assert len(store) <= max_entries
            assert 0 <= store.bytes <= 6144
            assert store.bytes == sum(charge(item[2]) for item in store._data.values())
            live = [held(item[2]) for item in store._data.values()]
            assert all(r.key == k for k, r in zip(store._data, live, strict=True))
            # the scope index holds exactly the live keys, and no empty scope
            by_scope: dict[str, set[str]] = {}
            for k, r in zip(store._data, live, strict=True):
                by_scope.setdefault(r.scope, set()).add(k)
            assert store._scopes == by_scope


# --------------------------------------------------------------------------- SingleFlight


async def test_first_lead_wins_and_the_second_waits() -> None:
    flights = SingleFlight()
    assert flights.lead("k") is True
    assert flights.lead("k") is False
    assert flights.lead("k") is False
    assert len(flights) == 1
    assert flights.lead("other") is True  # flights are per key
    assert len(flights) == 2
    flights.land("k", None)  # a flight nobody waited for lands too
    assert len(flights) == 1
    assert flights.lead("k") is True


async def test_waiters_get_the_landed_record() -> None:
    flights = SingleFlight()
    assert flights.lead("k")
    assert flights.lead("other")
    answer = rec("k")
    waiters = [asyncio.create_task(flights.wait("k", 5)) for _ in range(3)]
    bystander = asyncio.create_task(flights.wait("other", 5))
    # call_soon runs callbacks in order: the waiters start waiting before the leader lands
    asyncio.get_running_loop().call_soon(flights.land, "k", answer)
    results = await asyncio.gather(*waiters)
    assert all(result is answer for result in results)
    assert len(flights) == 1
    assert not bystander.done()  # landing k does not end the flight of another key
    assert await flights.wait("k", 5) is None  # the flight is over
    assert flights.lead("k") is True
    flights.land("other", None)
    assert await bystander is None
    flights.land("k", None)
    assert len(flights) == 0


async def test_land_none_wakes_waiters_and_frees_the_key() -> None:
    flights = SingleFlight()
    assert flights.lead("k")
    waiters = [asyncio.create_task(flights.wait("k", 5)) for _ in range(2)]
    asyncio.get_running_loop().call_soon(flights.land, "k", None)
    assert await asyncio.gather(*waiters) == [None, None]
    assert len(flights) == 0
    assert flights.lead("k") is True


async def test_followers_woken_with_none_elect_exactly_one_new_leader() -> None:
    flights = SingleFlight()
    assert flights.lead("k")

    async def follow() -> bool:
        assert await flights.wait("k", 5) is None
        return flights.lead("k")

    followers = [asyncio.create_task(follow()) for _ in range(3)]
    asyncio.get_running_loop().call_soon(flights.land, "k", None)
    assert sorted(await asyncio.gather(*followers)) == [False, False, True]
    assert len(flights) == 1


async def test_wait_without_a_flight_is_none() -> None:
    flights = SingleFlight()
    assert await flights.wait("nobody", 5) is None
    assert len(flights) == 0  # waiting does not start a flight
    assert flights.lead("nobody") is True


async def test_wait_times_out_with_none_and_leaves_the_flight() -> None:
    flights = SingleFlight()
    assert flights.lead("k")
    patient = asyncio.create_task(flights.wait("k", 5))
    assert await flights.wait("k", 0.01) is None
    # the timeout neither ended the flight nor cancelled it for the other followers
    assert not patient.done()
    assert flights.lead("k") is False
    assert len(flights) == 1
    late = asyncio.create_task(flights.wait("k", 5))
    answer = rec("k")
    asyncio.get_running_loop().call_soon(flights.land, "k", answer)
    assert await patient is answer
    assert await late is answer
    assert len(flights) == 0
    assert flights.lead("k") is True


async def test_each_flight_hands_its_own_record_to_all_its_followers() -> None:
    flights = SingleFlight()
    loop = asyncio.get_running_loop()
    assert flights.lead("k")
    first = [asyncio.create_task(flights.wait("k", 5)) for _ in range(2)]
    loop.call_soon(flights.land, "k", None)  # the first leader failed
    assert await asyncio.gather(*first) == [None, None]
    assert len(flights) == 0
    assert flights.lead("k")  # the next leader
    second = [asyncio.create_task(flights.wait("k", 5)) for _ in range(3)]
    answer = rec("k", "second")
    loop.call_soon(flights.land, "k", answer)
    results = await asyncio.gather(*second)
    assert all(result is answer for result in results)  # one and the same record for all
    assert len(flights) == 0
    flights.land("k", rec("k", "late"))  # landing with no flight under way does nothing
    assert len(flights) == 0
    assert await flights.wait("k", 5) is None


# --------------------------------------------------------------------------- FailureLog

LOGGER = "tests.cache.failures"


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelname == "WARNING"]


def test_failure_log_rate_limits_per_kind(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    counters = Counters()
    failures = FailureLog(logging.getLogger(LOGGER), counters, "a-cache", interval_s=10.0)

    failures.failed("lookup", ConnectionError("redis down"))
    assert counters.get("a-cache", "lookup_failure") == 1
    assert warnings_of(caplog) == ["cache lookup failed, serving without the cache: redis down"]

    for _ in range(3):
        clock.now += 3
        failures.failed("lookup", ConnectionError("redis down"))
    assert counters.get("a-cache", "lookup_failure") == 4
    assert len(warnings_of(caplog)) == 1  # repeats within 10 s are only counted

    failures.failed("store", "timeout")  # another kind has its own limit
    assert warnings_of(caplog)[-1] == "cache store failed, serving without the cache: timeout"
    assert counters.get("a-cache", "store_failure") == 1

    clock.now += 1  # 10 s since the first lookup warning
    failures.failed("lookup", "still down")
    assert counters.get("a-cache", "lookup_failure") == 5
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
    assert counters.snapshot() == {"a-cache": {"lookup_failure": 8, "store_failure": 1}}


def test_failure_log_logs_at_a_clock_of_zero(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    clock.now = 0.0
    failures = FailureLog(logging.getLogger(LOGGER), Counters(), "a-cache", interval_s=10.0)
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
