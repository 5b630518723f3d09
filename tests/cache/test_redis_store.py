"""``RedisStore`` against a real redis-server: lookups batched into one ``MGET`` per loop turn."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from pathlib import Path

import pytest
import redis.asyncio as redis
from redis.crc import key_slot

from aigw.cache import redis_store
from aigw.cache.breaker import CircuitOpen
from aigw.cache.key import scope_hash
from aigw.cache.record import InvalidRecord
from aigw.cache.redis_store import RedisStore, RedisStoreConfig
from aigw.cache.stores import StoreError
from aigw.counters import Counters
from tests import redis_server as harness
from tests.cache.test_breaker import FakeClock
from tests.cache.test_stores import SCOPE, rec
from tests.redis_server import RedisServer


def store_at(url: str, prefix: str) -> RedisStore:
    # These tests are about what is stored, read and batched, not about deadlines: on a busy
    # machine a first command (which connects) took over the 100 ms default, and failed open.
    return RedisStore(RedisStoreConfig(url=url, key_prefix=prefix, timeout_ms=5000))


class Handoffs:
    """Watches ``store`` hand its batches of lookups to their MGET tasks (on the loop turn
    after a batch's first lookup, or when the store sends one itself): ``callers`` has the
    number of lookups in the batch at each hand-off, and ``came`` is set at the first, by
    which time every lookup task started before has joined that batch. With ``hold``, the
    first hand-off is held back: that batch stays unsent until the store sends it itself
    (``aclose``) or the test does (``_send_batch``)."""

    def __init__(
        self, store: RedisStore, monkeypatch: pytest.MonkeyPatch, hold: bool = False
    ) -> None:
        self.came = asyncio.Event()
        self.callers: list[int] = []
        send = store._send_batch

        def handoff() -> None:
            self.callers.append(sum(map(len, (store._batch or {}).values())))
            if not (hold and len(self.callers) == 1):
                send()
            self.came.set()

        monkeypatch.setattr(store, "_send_batch", handoff)


async def command_calls(url: str) -> dict[str, int]:
    """How many times the server ran each command so far (``INFO commandstats``)."""
    client = redis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_lookups_in_one_loop_turn_go_as_one_mget(redis_server: RedisServer) -> None:
    store = store_at(redis_server.url, "t:")
    try:
        for key in ("a", "b", "c"):
            await store.set(rec(key, f"answer {key}"))
        before = await command_calls(redis_server.url)
        keys = ["a", "b", "c", "missing", "a", "b"] * 5  # duplicates share the batch's slot
        found = await asyncio.gather(*(store.get(SCOPE, k) for k in keys))
        after = await command_calls(redis_server.url)
    finally:
        await store.aclose()
    texts = [r.response["choices"][0]["message"]["content"] if r else None for r in found]
    assert texts == [f"answer {k}" if k != "missing" else None for k in keys]
    assert after.get("mget", 0) - before.get("mget", 0) == 1
    assert after.get("get", 0) == before.get("get", 0)


async def test_lookups_in_later_loop_turns_get_their_own_batch(redis_server: RedisServer) -> None:
    store = store_at(redis_server.url, "t:")
    try:
        await store.set(rec("a"))
        before = await command_calls(redis_server.url)
        for _ in range(3):
            assert (await store.get(SCOPE, "a")) is not None
        after = await command_calls(redis_server.url)
    finally:
        await store.aclose()
    assert after["mget"] - before.get("mget", 0) == 3


async def test_a_cancelled_lookup_leaves_the_rest_of_its_batch_alone(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_at(redis_server.url, "t:")
    handoffs = Handoffs(store, monkeypatch)
    try:
        await store.set(rec("a"))
        lookups = [asyncio.ensure_future(store.get(SCOPE, "a")) for _ in range(3)]
        await handoffs.came.wait()  # the lookups joined one batch, now under way
        lookups[1].cancel()  # a client hanging up
        results = await asyncio.gather(*lookups, return_exceptions=True)
    finally:
        await store.aclose()
    assert handoffs.callers[0] == 3
    assert isinstance(results[1], asyncio.CancelledError)
    assert [r.key for r in (results[0], results[2])] == ["a", "a"]  # type: ignore[union-attr]


async def test_garbage_under_one_key_fails_only_its_own_lookup(redis_server: RedisServer) -> None:
    store = store_at(redis_server.url, "t:")
    client = redis.Redis.from_url(redis_server.url)
    try:
        await store.set(rec("good"))
        await client.set(f"t:{{{scope_hash(SCOPE)}}}:bad", b"\x00 not a record")
        good, bad = await asyncio.gather(
            store.get(SCOPE, "good"), store.get(SCOPE, "bad"), return_exceptions=True
        )
    finally:
        await client.aclose()
        await store.aclose()
    assert isinstance(bad, InvalidRecord)
    assert not isinstance(good, BaseException) and good is not None and good.key == "good"


async def test_redis_down_fails_every_lookup_of_the_batch(redis_server: RedisServer) -> None:
    store = store_at(redis_server.url, "t:")
    try:
        await store.set(rec("a"))
        redis_server.stop()
        results = await asyncio.gather(
            *(store.get(SCOPE, "a") for _ in range(4)), return_exceptions=True
        )
    finally:
        await store.aclose()
    assert len(results) == 4
    assert all(isinstance(r, StoreError) and "MGET" in str(r) for r in results), results


@pytest.mark.parametrize("n", [1, 50])
async def test_shutdown_waits_for_a_batch_under_way(
    redis_server: RedisServer, n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_at(redis_server.url, "t:")
    handoffs = Handoffs(store, monkeypatch)
    await store.set(rec("a"))
    lookups = [asyncio.ensure_future(store.get(SCOPE, "a")) for _ in range(n)]
    await handoffs.came.wait()  # the batch is handed to its task
    assert handoffs.callers == [n] and store._inflight
    await store.aclose()
    results = await asyncio.gather(*lookups, return_exceptions=True)
    assert all(not isinstance(r, BaseException) and r is not None for r in results), results


async def test_a_value_read_again_is_parsed_once_but_always_read(
    redis_server: RedisServer,
) -> None:
    store = store_at(redis_server.url, "t:")
    try:
        await store.set(rec("a", "first"))
        first = await store.get(SCOPE, "a")
        assert first is not None and await store.get(SCOPE, "a") is first  # the same parsed record
        await store.set(rec("a", "second"))  # rewritten in Redis (by any instance)
        second = await store.get(SCOPE, "a")
        assert second is not None and second is not first
        assert second.response["choices"][0]["message"]["content"] == "second"
        await store.delete(SCOPE, "a")
        assert await store.get(SCOPE, "a") is None  # gone from Redis: gone, whatever was parsed
    finally:
        await store.aclose()


ALICE, BOB = "consumer:alice", "consumer:bob"


async def all_keys(url: str) -> set[str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return set(await client.keys("*"))
    finally:
        await client.aclose()


async def test_keys_carry_the_scope_as_a_cluster_hash_tag(redis_server: RedisServer) -> None:
    store = store_at(redis_server.url, "t:")
    try:
        for key in ("k1", "k2"):
            await store.set(rec(key, f"alice {key}", scope=ALICE))
        await store.set(rec("k1", "bob k1", scope=BOB))
        assert await all_keys(redis_server.url) == {
            f"t:{{{scope_hash(ALICE)}}}:k1",
            f"t:{{{scope_hash(ALICE)}}}:k2",
            f"t:{{{scope_hash(BOB)}}}:k1",
        }
        alice, bob = await store.get(ALICE, "k1"), await store.get(BOB, "k1")
        assert alice is not None and bob is not None
        assert alice.response["choices"][0]["message"]["content"] == "alice k1"
        assert bob.response["choices"][0]["message"]["content"] == "bob k1"
        assert await store.get("consumer:carol", "k1") is None
        await store.delete(BOB, "k1")
        assert await store.get(BOB, "k1") is None and await store.get(ALICE, "k1") is not None
    finally:
        await store.aclose()
    # Redis Cluster would keep one consumer's entries in one slot.
    slots = {key_slot(k.encode()) for k in await all_keys(redis_server.url)}
    assert len(slots) == 1


async def test_purge_removes_one_scope_only(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "PURGE_BATCH", 2)  # several SCAN steps and UNLINKs
    prefix = "t*[?]:"  # glob characters in the prefix are matched literally
    store = store_at(redis_server.url, prefix)
    neighbour = store_at(redis_server.url, "other:")
    client = redis.Redis.from_url(redis_server.url)
    try:
        for i in range(5):
            await store.set(rec(f"a{i}", scope=ALICE))
        await store.set(rec("b0", scope=BOB))
        await neighbour.set(rec("a0", scope=ALICE))  # alice, under another prefix
        # what the prefix would match as a pattern, and is not under it
        lookalike = f"tx?:{{{scope_hash(ALICE)}}}:a0"
        await client.set(lookalike, b"not ours")
        before = await all_keys(redis_server.url)
        assert await store.purge(ALICE) == 5
        after = await all_keys(redis_server.url)
        assert before - after == {f"{prefix}{{{scope_hash(ALICE)}}}:a{i}" for i in range(5)}
        assert await store.get(BOB, "b0") is not None
        assert await neighbour.get(ALICE, "a0") is not None
        assert await client.get(lookalike) == b"not ours"
        assert await store.purge(ALICE) == 0
    finally:
        await client.aclose()
        await neighbour.aclose()
        await store.aclose()


async def test_the_parsed_records_stay_within_their_bounds(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "PARSED_MAX", 5)
    store = store_at(redis_server.url, "t:")
    try:
        for i in range(12):
            await store.set(rec(f"k{i}"))
            assert await store.get(SCOPE, f"k{i}") is not None
            assert len(store._parsed) <= 5
        assert store._parsed_bytes == sum(len(v) for v in store._parsed)
        monkeypatch.setattr(redis_store, "PARSED_MAX_BYTES", 1)  # smaller than any value
        await store.get(SCOPE, "k0")
        assert len(store._parsed) == 0 and store._parsed_bytes == 0
    finally:
        await store.aclose()


async def connected_clients(url: str) -> int:
    """Clients connected to the server, not counting the one asking."""
    client = redis.Redis.from_url(url)
    try:
        return int((await client.info("clients"))["connected_clients"]) - 1
    finally:
        await client.aclose()


async def test_shutdown_sends_a_batch_not_yet_sent_on_the_open_client(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_at(redis_server.url, "t:")
    handoffs = Handoffs(store, monkeypatch, hold=True)
    await store.set(rec("a"))
    lookup = asyncio.ensure_future(store.get(SCOPE, "a"))
    await handoffs.came.wait()  # the lookup joined a batch, not sent yet
    await store.aclose()
    assert handoffs.callers == [1, 1]  # the batch held back, then sent by aclose
    assert (await asyncio.wait_for(lookup, 5)) is not None
    # Sent after the close, the MGET would have opened a connection nobody closes.
    assert await connected_clients(redis_server.url) == 0


async def test_a_batch_task_cancelled_before_it_ran_still_answers_its_callers(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_at(redis_server.url, "t:")
    handoffs = Handoffs(store, monkeypatch, hold=True)
    try:
        lookup = asyncio.ensure_future(store.get(SCOPE, "a"))
        await handoffs.came.wait()  # the lookup joined a batch, not sent yet
        store._send_batch()  # what the next loop turn would do ...
        (task,) = store._inflight
        task.cancel()  # ... and the task dies before its first step
        with pytest.raises(StoreError, match="abandoned"):
            await asyncio.wait_for(lookup, 5)
    finally:
        await store.aclose()


async def test_an_unexpected_error_in_the_batch_is_a_store_error_for_every_caller(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_at(redis_server.url, "t:")

    async def broken_mget(keys: list[str]) -> list[bytes | None]:
        raise RuntimeError("surprise")

    monkeypatch.setattr(store.client, "mget", broken_mget)
    try:
        results = await asyncio.gather(*(store.get(SCOPE, k) for k in "ab"), return_exceptions=True)
    finally:
        await store.aclose()
    assert all(isinstance(r, StoreError) and "surprise" in str(r) for r in results), results
    assert not [r for r in caplog.records if r.name == "asyncio"]  # no unretrieved task error


async def test_a_burst_of_lookups_is_split_into_bounded_batches(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "MAX_BATCH", 4)
    store = store_at(redis_server.url, "t:")
    try:
        await store.set(rec("k3"))
        before = await command_calls(redis_server.url)
        found = await asyncio.gather(*(store.get(SCOPE, f"k{i}") for i in range(10)))
        after = await command_calls(redis_server.url)
    finally:
        await store.aclose()
    assert [r is not None for r in found] == [i == 3 for i in range(10)]
    assert after["mget"] - before.get("mget", 0) == 3  # 4 + 4 + 2 keys


async def test_a_burst_beyond_the_pool_waits_for_connections(
    redis_url: str, key_prefix: str
) -> None:
    # More concurrent commands than connections: each waits for a free one (within its
    # deadline) rather than failing with "Too many connections". The deadline is generous, as
    # it is not what is tested: with the default 100 ms (20 round trips queued on each
    # connection) this failed once in a full run, and not again in 3 runs nor under CPU load.
    config = RedisStoreConfig(
        url=redis_url, key_prefix=key_prefix, max_connections=2, timeout_ms=5000
    )
    store = RedisStore(config)
    try:
        keys = [f"k{i}" for i in range(40)]
        await asyncio.gather(*(store.set(rec(k, f"answer {k}")) for k in keys))
        found = await asyncio.gather(*(store.get(SCOPE, k) for k in keys))
    finally:
        await store.aclose()
    assert [r.response["choices"][0]["message"]["content"] if r else None for r in found] == [
        f"answer {k}" for k in keys
    ]


async def test_the_test_redis_server_starts_on_another_port_when_its_first_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # redis-server cannot bind port 0 and say which port it got: the harness picks a free
    # port, which something else may bind before redis-server does (under parallel runs).
    if os.environ.get("AIGW_TEST_REDIS_URL"):
        pytest.skip("needs its own redis-server (AIGW_TEST_REDIS_URL is set)")
    picks: list[int] = []
    unused_ports = harness.unused_ports

    def first_pick_taken(n: int) -> list[int]:
        ports = [taken_port] if not picks else unused_ports(n)
        picks.extend(ports)
        return ports

    with socket.create_server(("127.0.0.1", 0)) as taken:
        taken_port = taken.getsockname()[1]
        server = RedisServer(tmp_path)
        monkeypatch.setattr(harness, "unused_ports", first_pick_taken)
        try:
            server.start()
            assert picks == [taken_port, server.port]
            assert await connected_clients(server.url) == 0  # it answers there
            server.stop()
            server.start()  # a restart keeps its port: clients have its URL
            assert server.port == picks[1]
        finally:
            server.stop()


async def test_a_paused_redis_is_skipped_once_the_breaker_opens_until_it_is_back(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aigw.cache.breaker")
    config = RedisStoreConfig(
        url=redis_server.url,
        key_prefix="t:",
        timeout_ms=50,
        breaker_failures=3,
        breaker_cooldown_s=5,
    )
    store = RedisStore(config)
    clock = store.breaker.clock = FakeClock()
    counters = Counters()
    store.breaker.report_to(counters, "exact-cache")
    assert redis_server.proc is not None
    loop = asyncio.get_running_loop()
    await store.set(rec("a"))
    redis_server.proc.send_signal(signal.SIGSTOP)  # alive, answering nothing
    try:
        for _ in range(3):
            with pytest.raises(StoreError, match="timed out"):
                await store.get(SCOPE, "a")
        started = loop.time()
        for _ in range(50):  # without the breaker: 50 deadlines, 2.5 s
            with pytest.raises(CircuitOpen, match="redis MGET: skipped"):
                await store.get(SCOPE, "a")
        with pytest.raises(CircuitOpen, match="redis SET: skipped"):
            await store.set(rec("b"))
        skipping = loop.time() - started
        clock.now += 5
        # The probe's first step (its check) runs before the lookup's batch is sent, on the
        # next loop turn: the probe goes to Redis, the lookup does not.
        probe = asyncio.ensure_future(store.ping())
        with pytest.raises(CircuitOpen):
            await store.get(SCOPE, "a")
        with pytest.raises(StoreError, match="PING: timed out"):
            await probe
        with pytest.raises(CircuitOpen):  # the failed probe left it open
            await store.get(SCOPE, "a")
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    try:
        with pytest.raises(CircuitOpen):  # back, but not retried before the cool-down ends
            await store.get(SCOPE, "a")
        clock.now += 5
        assert await store.get(SCOPE, "a") is not None
        assert await store.get(SCOPE, "a") is not None
    finally:
        await store.aclose()
    assert skipping < 0.25  # far less than the 2.55 s of 51 deadlines
    assert counters.snapshot()["exact-cache"] == {
        "breaker_open": 1,
        "breaker_skip": 54,
        "breaker_close": 1,
    }
    assert [r.getMessage() for r in caplog.records] == [
        "exact-cache: redis unreachable (redis MGET: timed out after 50 ms, 3 failures in a "
        "row); skipping it for 5 s",
        "exact-cache: redis is back",
    ]


async def test_a_redis_refusing_writes_is_not_skipped(redis_server: RedisServer) -> None:
    # Full with maxmemory-policy noeviction, Redis refuses every SET but still answers: the
    # lookups must go on (the breaker counts only a Redis that does not answer).
    store = RedisStore(RedisStoreConfig(url=redis_server.url, key_prefix="t:", breaker_failures=2))
    client = redis.Redis.from_url(redis_server.url)
    try:
        await store.set(rec("a"))
        await client.config_set("maxmemory", 1)
        for key in "bcde":
            with pytest.raises(StoreError, match=r"used memory > .maxmemory"):
                await store.set(rec(key))
        assert await store.get(SCOPE, "a") is not None
    finally:
        await client.config_set("maxmemory", 0)
        await client.aclose()
        await store.aclose()


async def test_the_memory_limit_is_read_from_redis(redis_server: RedisServer) -> None:
    store = store_at(redis_server.url, "t:")
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert await store.memory_limit() == (0, "noeviction")  # redis-server's defaults
        await client.config_set("maxmemory", "100mb")
        await client.config_set("maxmemory-policy", "allkeys-lru")
        assert await store.memory_limit() == (100 * 1024 * 1024, "allkeys-lru")
    finally:
        await client.aclose()
        await store.aclose()


async def test_a_redis_without_config_says_so_and_is_not_skipped(tmp_path: Path) -> None:
    if os.environ.get("AIGW_TEST_REDIS_URL"):
        pytest.skip("needs its own redis-server (AIGW_TEST_REDIS_URL is set)")
    server = RedisServer(tmp_path, "--rename-command", "CONFIG", "")  # as managed Redis do
    server.start()
    config = RedisStoreConfig(url=server.url, key_prefix="t:", breaker_failures=1)
    store = RedisStore(config)
    try:
        with pytest.raises(StoreError, match="CONFIG GET: unknown command"):
            await store.memory_limit()
        await store.ping()  # not skipped
    finally:
        await store.aclose()
        server.stop()
