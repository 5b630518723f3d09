"""exact-cache end to end: the real gateway, the fake upstream (which counts calls), and both
stores (memory, and a real redis-server)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import redis.asyncio as redis
from multidict import CIMultiDict

from aigw import hookimpl
from aigw.app import PLUGINS, RUNTIME
from aigw.cache.key import scope_hash
from aigw.cache.record import make_record
from aigw.context import CacheOutcome, RequestContext
from tests.cache.test_breaker import FakeClock
from tests.conftest import UPSTREAM_KEY, Gateway, GatewayFactory, Upstream, provider_file
from tests.fakes import FakeLLM
from tests.redis_server import RedisServer

MSG = [{"role": "user", "content": "What is the capital of France?"}]
CHAT = "/v1/chat/completions"
ANSWER = "echo[gpt-4o]: What is the capital of France?"


def cache_conf(upstream: Upstream, store: dict[str, Any], **cache: Any) -> dict[str, Any]:
    return {
        "20-skip-header.yaml": {"plugin": "skip-header"},
        "30-exact-cache.yaml": {"plugin": "exact-cache", "config": {"store": store, **cache}},
        "90-provider-proxy.yaml": provider_file(upstream, max_retries=0),
    }


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {"type": "memory"}
    url = request.getfixturevalue("redis_url")
    return {"type": "redis", "url": url, "key_prefix": request.getfixturevalue("key_prefix")}


@pytest.fixture
async def gw(make_gateway: GatewayFactory, upstream: Upstream, store: dict[str, Any]) -> Gateway:
    return await make_gateway(cache_conf(upstream, store))


async def ask(gw: Gateway, **kw: Any) -> tuple[str | None, Any]:
    """A non-stream chat through the openai client: (x-aigw-cache, parsed completion)."""
    args = {"model": "gpt-4o", "messages": MSG, **kw}
    raw = await gw.openai.chat.completions.with_raw_response.create(**args)
    return raw.headers.get("x-aigw-cache"), raw.parse()


async def ask_stream(gw: Gateway, **kw: Any) -> tuple[str | None, str, list[Any]]:
    """A streamed chat: (x-aigw-cache, joined text, all chunks)."""
    args = {"model": "gpt-4o", "messages": MSG, "stream": True, **kw}
    raw = await gw.openai.chat.completions.with_raw_response.create(**args)
    chunks = [c async for c in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return raw.headers.get("x-aigw-cache"), text, chunks


async def settle(gw: Gateway) -> None:
    """Wait for background write-backs, so the next request sees what was stored."""
    await gw.server.app[RUNTIME].drain(5)


def counts(gw: Gateway) -> dict[str, int]:
    """What the exact cache counted in the gateway's counters."""
    return gw.server.app[RUNTIME].gateway.counters.snapshot().get("exact-cache", {})


async def test_repeated_question_goes_upstream_once(gw: Gateway, upstream: Upstream) -> None:
    status1, first = await ask(gw)
    await settle(gw)
    raw = await gw.openai.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG)
    second = raw.parse()
    assert (status1, raw.headers["x-aigw-cache"]) == ("miss", "hit")
    assert raw.headers["x-aigw-cache-type"] == "exact"
    assert len(raw.headers["x-aigw-cache-key"]) == 16 and int(raw.headers["age"]) >= 0
    assert upstream.llm.chat_calls == 1
    assert second.choices[0].message.content == first.choices[0].message.content == ANSWER
    assert second.model == first.model == "gpt-4o" and second.created == first.created
    assert second.usage == first.usage and second.id != first.id
    assert second.object == "chat.completion"


class Outcomes:
    """Hands each request's cache outcomes, as ``on_log`` sees them (as the access log and
    metrics will), to the test."""

    def __init__(self) -> None:
        self.logged: asyncio.Queue[tuple[CacheOutcome, ...]] = asyncio.Queue()

    @hookimpl
    async def on_log(self, ctx: RequestContext) -> None:
        self.logged.put_nowait(ctx.cache_outcomes)

    async def next(self) -> tuple[CacheOutcome, ...]:
        """The next request's outcomes (on_log runs once its reply is sent)."""
        return await asyncio.wait_for(self.logged.get(), 5)


@pytest.fixture
def outcomes_plugin() -> Iterator[str]:
    """The conf.d ``plugin:`` value of :class:`Outcomes`."""
    module = types.ModuleType("aigw_test_outcomes")
    module.Outcomes = Outcomes  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield f"{module.__name__}:Outcomes"
    del sys.modules[module.__name__]


async def watched(
    make_gateway: GatewayFactory, upstream: Upstream, plugin: str, store: dict[str, Any]
) -> tuple[Gateway, Outcomes]:
    """A gateway with an :class:`Outcomes` after the exact cache, and that plugin."""
    conf = cache_conf(upstream, store)
    conf["40-outcomes.yaml"] = {"plugin": plugin}
    gw = await make_gateway(conf)
    return gw, dict(gw.server.app[PLUGINS].order)[plugin]


async def test_outcomes_become_headers_and_counts(
    make_gateway: GatewayFactory, upstream: Upstream, outcomes_plugin: str, store: dict[str, Any]
) -> None:
    gw, outcomes = await watched(make_gateway, upstream, outcomes_plugin, store)
    chat = gw.openai.chat.completions.with_raw_response
    miss = await chat.create(model="gpt-4o", messages=MSG)
    [logged] = await outcomes.next()
    assert (logged.cache, logged.type, logged.status) == ("exact-cache", "exact", "miss")
    assert logged.key is not None and re.fullmatch(r"[0-9a-f]{16}", logged.key)
    assert miss.headers["x-aigw-cache"] == "miss"
    assert "x-aigw-cache-type" not in miss.headers and "x-aigw-cache-key" not in miss.headers
    await settle(gw)

    hit = await chat.create(model="gpt-4o", messages=MSG)
    assert await outcomes.next() == (CacheOutcome("exact-cache", "exact", "hit", logged.key),)
    assert (hit.headers["x-aigw-cache"], hit.headers["x-aigw-cache-type"]) == ("hit", "exact")
    assert hit.headers["x-aigw-cache-key"] == logged.key
    assert "x-aigw-cache-similarity" not in hit.headers

    skip = await chat.create(
        model="gpt-4o", messages=MSG, extra_headers={"x-higress-skip-ai-cache": "on"}
    )
    [skipped] = await outcomes.next()
    assert (skipped.status, skipped.reason) == ("skip", "skipped by the request")
    assert skip.headers["x-aigw-cache"] == "skip" and "x-aigw-cache-type" not in skip.headers
    refresh = await chat.create(
        model="gpt-4o", messages=MSG, extra_headers={"Cache-Control": "no-cache"}
    )
    [refreshed] = await outcomes.next()
    assert (refreshed.status, refreshed.key) == ("skip", logged.key)  # looked nothing up
    assert refresh.headers["x-aigw-cache"] == "skip"
    await chat.create(model="gpt-4o", messages=MSG, n=2)
    assert [o.reason for o in await outcomes.next()] == ["n > 1"]
    await settle(gw)
    assert counts(gw) == {"miss": 1, "hit": 1, "skip": 3, "stored": 2}  # refreshed: stored


async def test_a_follower_served_after_waiting_has_one_outcome_a_hit(
    make_gateway: GatewayFactory, upstream: Upstream, outcomes_plugin: str
) -> None:
    gw, outcomes = await watched(make_gateway, upstream, outcomes_plugin, {"type": "memory"})
    cache = dict(gw.server.app[PLUGINS].order)["exact-cache"]
    joined = joins(cache)
    upstream.llm.hold()
    leader = asyncio.create_task(ask(gw))
    await upstream.llm.wait_for_calls(1)
    follower = asyncio.create_task(ask(gw))
    await joined.wait()  # it missed, and waits for the leader's answer
    upstream.llm.release()
    assert [status for status, _ in await asyncio.gather(leader, follower)] == ["miss", "hit"]
    logged = sorted([await outcomes.next(), await outcomes.next()], key=lambda o: o[0].status)
    key = logged[0][0].key
    assert logged == [
        (CacheOutcome("exact-cache", "exact", "hit", key),),  # its miss replaced
        (CacheOutcome("exact-cache", "exact", "miss", key),),
    ]
    assert counts(gw) == {"miss": 1, "hit": 1, "coalesced": 1, "stored": 1}


async def test_redis_keys_carry_the_scope(
    make_gateway: GatewayFactory, upstream: Upstream, redis_url: str, key_prefix: str
) -> None:
    gw, _ = await answered_on_redis(make_gateway, upstream, redis_url, key_prefix)
    key, stored = await stored_key(redis_url, key_prefix)
    raw = await gw.openai.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG)
    assert raw.headers["x-aigw-cache"] == "hit"
    # No auth plugin: the anonymous consumer's scope, as a hash tag, then the exact key.
    tag = re.escape(f"{key_prefix}{{{scope_hash('consumer:')}}}:")
    assert re.fullmatch(tag + r"[0-9a-f]{64}", key.decode())
    assert stored["key"] == key.decode()[-64:] and stored["scope"] == "consumer:"
    assert stored["key"].startswith(raw.headers["x-aigw-cache-key"])


async def test_stream_served_from_a_non_stream_answer(gw: Gateway, upstream: Upstream) -> None:
    await ask(gw)
    await settle(gw)
    status, text, chunks = await ask_stream(gw, stream_options={"include_usage": True})
    assert status == "hit" and text == ANSWER and upstream.llm.chat_calls == 1
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) > 1  # split like a real stream, not one giant frame
    assert (chunks[0].choices[0].delta.role, chunks[0].choices[0].delta.content) == (
        "assistant",
        "",
    )
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {"gpt-4o"} and len({c.id for c in chunks}) == 1


async def test_non_stream_served_from_a_stream_answer(gw: Gateway, upstream: Upstream) -> None:
    status, text, _ = await ask_stream(gw)
    await settle(gw)
    hit, completion = await ask(gw)
    assert (status, hit) == ("miss", "hit") and upstream.llm.chat_calls == 1
    assert completion.choices[0].message.content == text == ANSWER
    # The proxy asked the upstream for usage, so the cached answer has it.
    assert completion.usage is not None
    assert completion.usage.completion_tokens == FakeLLM.count_tokens(ANSWER)
    status, text, chunks = await ask_stream(gw)
    assert status == "hit" and text == ANSWER
    assert all(c.usage is None for c in chunks)  # usage chunk only when asked for


TOOL_CALLS = [
    {
        "id": "call_abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    }
]


async def test_tool_call_answer_replayed_with_its_tool_calls(
    make_gateway: GatewayFactory, upstream: Upstream, store: dict[str, Any]
) -> None:
    gw = await make_gateway(cache_conf(upstream, store, cache_tool_calls=True))
    upstream.llm.answer(tool_calls=TOOL_CALLS)
    await ask(gw)
    await settle(gw)
    status, completion = await ask(gw)
    assert status == "hit" and upstream.llm.chat_calls == 1
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert [tc.model_dump() for tc in message.tool_calls] == TOOL_CALLS
    status, _, chunks = await ask_stream(gw)
    assert status == "hit"
    opening = chunks[0].choices[0].delta  # as OpenAI opens a tool call: content null
    assert (opening.role, opening.content) == ("assistant", None)
    args = "".join(
        tc.function.arguments or ""
        for c in chunks
        if c.choices
        for tc in c.choices[0].delta.tool_calls or []
    )
    first = next(
        c.choices[0].delta.tool_calls[0]
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert args == TOOL_CALLS[0]["function"]["arguments"]
    assert (first.id, first.function.name) == ("call_abc", "get_weather")


async def test_tool_calls_not_stored_unless_enabled(gw: Gateway, upstream: Upstream) -> None:
    upstream.llm.answer(tool_calls=TOOL_CALLS)
    await ask(gw)
    await settle(gw)
    status, _ = await ask(gw)
    assert status == "miss" and upstream.llm.chat_calls == 2


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o-mini"},
        {"temperature": 0.2},
        {"messages": [{"role": "system", "content": "Answer in French."}, *MSG]},
        {"max_tokens": 10},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"response_format": {"type": "json_object"}},
    ],
)
async def test_a_change_that_matters_is_a_miss(
    gw: Gateway, upstream: Upstream, change: dict[str, Any]
) -> None:
    await ask(gw)
    await settle(gw)
    status, _ = await ask(gw, **change)
    assert status == "miss" and upstream.llm.chat_calls == 2


async def test_a_request_too_deep_to_key_is_served_uncached(
    gw: Gateway, upstream: Upstream
) -> None:
    # The deepest body the intake accepts (what orjson can still write): its key material
    # nests it one level deeper. The cache steps aside rather than failing the request.
    def body(depth: int) -> dict[str, Any]:
        nested: Any = []
        for _ in range(depth):
            nested = [nested]
        return {"model": "gpt-4o", "messages": MSG, "response_format": {"x": nested}}

    depth = next(d for d in range(300, 0, -1) if _writable(body(d)))
    for _ in range(2):
        async with gw.http.post(gw.url("/v1/chat/completions"), json=body(depth)) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["x-aigw-cache"] == "skip"
    assert upstream.llm.chat_calls == 2


def _writable(obj: Any) -> bool:
    try:
        orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return False
    return True


async def test_key_reordered_body_hits(gw: Gateway, upstream: Upstream) -> None:
    first = b'{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"hi"}]}'
    second = b'{"messages":[{"content":"hi","role":"user"}],"temperature":0,"model":"gpt-4o"}'
    headers = {"Content-Type": "application/json"}
    async with gw.http.post(gw.url(CHAT), data=first, headers=headers) as resp:
        assert resp.headers["x-aigw-cache"] == "miss"
    await settle(gw)
    async with gw.http.post(gw.url(CHAT), data=second, headers=headers) as resp:
        assert resp.headers["x-aigw-cache"] == "hit"
    assert upstream.llm.chat_calls == 1


@pytest.mark.parametrize("finish", ["length", "content_filter"])
async def test_truncated_or_filtered_answers_not_stored(
    gw: Gateway, upstream: Upstream, finish: str
) -> None:
    upstream.llm.answer("cut off", finish_reason=finish)
    await ask(gw)
    await settle(gw)
    status, completion = await ask(gw)
    assert status == "miss" and completion.choices[0].finish_reason == "stop"
    assert upstream.llm.chat_calls == 2


async def test_answer_a_replay_could_not_render_is_not_stored(
    gw: Gateway, upstream: Upstream
) -> None:
    # Content as a list of parts (some OpenAI-compatible servers): a streamed replay of it
    # would be an empty answer, and Redis would refuse the record on every read.
    parts = [{"type": "text", "text": "Paris."}]
    upstream.llm.answer(parts)
    async with gw.http.post(gw.url(CHAT), json={"model": "gpt-4o", "messages": MSG}) as resp:
        assert (
            resp.status == 200 and (await resp.json())["choices"][0]["message"]["content"] == parts
        )
    await settle(gw)
    status, _, _ = await ask_stream(gw)
    assert status == "miss" and upstream.llm.chat_calls == 2


async def test_refusal_is_stored_and_replayed(gw: Gateway, upstream: Upstream) -> None:
    upstream.llm.answer(refusal="I can't help with that.")
    status, first, fresh = await ask_stream(gw)
    await settle(gw)
    status_json, hit = await ask(gw)
    status_stream, _, chunks = await ask_stream(gw)
    assert (status, status_json, status_stream) == ("miss", "hit", "hit")
    # The replay opens as the upstream did: no text, so content null rather than "".
    assert chunks[0].choices[0].delta == fresh[0].choices[0].delta
    assert hit.choices[0].message.refusal == "I can't help with that."
    assert hit.choices[0].message.content is None and first == ""
    refused = "".join(c.choices[0].delta.refusal or "" for c in chunks if c.choices)
    assert refused == "I can't help with that." and upstream.llm.chat_calls == 1


async def test_errors_not_stored(gw: Gateway, upstream: Upstream) -> None:
    upstream.llm.fail(500, "boom")
    with pytest.raises(openai.InternalServerError):
        await ask(gw)
    await settle(gw)
    status, completion = await ask(gw)
    assert status == "miss" and completion.choices[0].message.content == ANSWER
    assert upstream.llm.chat_calls == 2


async def test_aborted_stream_not_stored(gw: Gateway, upstream: Upstream) -> None:
    upstream.llm.drop_stream(after_chunks=3)
    with pytest.raises((openai.APIError, openai.APIConnectionError)):
        await ask_stream(gw)
    await settle(gw)
    status, _, _ = await ask_stream(gw)
    assert status == "miss" and upstream.llm.chat_calls == 2


async def test_client_disconnect_not_stored(gw: Gateway, upstream: Upstream) -> None:
    upstream.llm.answer(ANSWER, chunk_delay_s=0.1)
    body = {"model": "gpt-4o", "messages": MSG, "stream": True}
    async with gw.http.post(gw.url(CHAT), json=body) as resp:
        await resp.content.readline()
    await asyncio.wait_for(upstream.llm.last_call.done.wait(), 5)
    await settle(gw)
    status, _ = await ask(gw)
    assert status == "miss" and upstream.llm.chat_calls == 2


async def test_skip_header_skips_lookup_and_store(gw: Gateway, upstream: Upstream) -> None:
    await ask(gw)
    await settle(gw)
    skip = {"extra_headers": {"x-higress-skip-ai-cache": "ON"}}
    status, _ = await ask(gw, **skip)
    assert status == "skip" and upstream.llm.chat_calls == 2
    assert "x-higress-skip-ai-cache" not in upstream.llm.last_call.headers
    upstream.llm.answer("fresh answer")
    await ask(gw, messages=[{"role": "user", "content": "new question"}], **skip)
    await settle(gw)
    status, _ = await ask(gw, messages=[{"role": "user", "content": "new question"}])
    assert status == "miss"  # the skipped answer was not stored


async def test_cache_control_no_cache_refreshes(gw: Gateway, upstream: Upstream) -> None:
    await ask(gw)
    await settle(gw)
    upstream.llm.answer("a newer answer")
    status, completion = await ask(gw, extra_headers={"Cache-Control": "no-cache"})
    assert status == "skip" and completion.choices[0].message.content == "a newer answer"
    assert "cache-control" not in upstream.llm.last_call.headers
    await settle(gw)
    status, completion = await ask(gw)
    assert status == "hit" and completion.choices[0].message.content == "a newer answer"
    assert upstream.llm.chat_calls == 2


async def test_cache_control_no_store(gw: Gateway, upstream: Upstream) -> None:
    no_store = {"extra_headers": {"Cache-Control": "no-store"}}
    status, _ = await ask(gw, **no_store)
    await settle(gw)
    assert status == "miss"
    status, _ = await ask(gw)
    assert status == "miss"  # nothing was stored
    await settle(gw)
    status, _ = await ask(gw, **no_store)
    assert status == "hit"  # no-store may still be answered from the cache
    assert upstream.llm.chat_calls == 2


async def test_scope_separates_consumers_unless_shared(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    class HeaderConsumer:  # stands in for an auth plugin
        @hookimpl
        async def on_request(self, ctx: RequestContext) -> None:
            ctx.consumer = ctx.request.headers.get("x-test-consumer")

    module = types.ModuleType("aigw_test_consumer")
    module.HeaderConsumer = HeaderConsumer  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        for scope, second_status in (("consumer", "miss"), ("shared", "hit")):
            conf = cache_conf(upstream, {"type": "memory"}, scope=scope)
            conf["10-auth.yaml"] = {"plugin": "aigw_test_consumer:HeaderConsumer"}
            gw = await make_gateway(conf, name=scope)
            await ask(gw, extra_headers={"x-test-consumer": "alice"})
            await settle(gw)
            status, _ = await ask(gw, extra_headers={"x-test-consumer": "bob"})
            assert status == second_status, scope
    finally:
        del sys.modules[module.__name__]


async def test_fifty_concurrent_identical_requests_go_upstream_once(
    make_gateway: GatewayFactory, upstream: Upstream, store: dict[str, Any]
) -> None:
    gw = await make_gateway(cache_conf(upstream, store))
    upstream.llm.hold()

    async def one(i: int) -> tuple[str | None, str]:
        if i % 2:
            status, text, _ = await ask_stream(gw)
            return status, text
        status, completion = await ask(gw)
        return status, completion.choices[0].message.content

    tasks = [asyncio.create_task(one(i)) for i in range(50)]
    await upstream.llm.wait_for_calls(1)
    upstream.llm.release()
    results = await asyncio.gather(*tasks)
    assert upstream.llm.chat_calls == 1
    assert {text for _, text in results} == {ANSWER}
    assert sorted(s for s, _ in results).count("miss") == 1
    assert [s for s, _ in results].count("hit") == 49


def joins(cache: Any, joined: asyncio.Event | None = None) -> asyncio.Event:
    """An event (``joined``, or a new one) set when a request starts waiting for a flight of
    ``cache`` (a follower)."""
    joined = joined or asyncio.Event()
    real_wait = cache.flights.wait

    async def wait(key: str, seconds: float) -> Any:
        joined.set()
        return await real_wait(key, seconds)

    cache.flights.wait = wait
    return joined


async def test_a_lookup_outlasting_the_leaders_flight_does_not_go_upstream_again(
    make_gateway: GatewayFactory, upstream: Upstream, redis_url: str, key_prefix: str
) -> None:
    # Redis lookups wait: a second request's lookup can read before the leader's record is
    # written and return after its flight landed. It must still be served from that record.
    store = {"type": "redis", "url": redis_url, "key_prefix": key_prefix}
    gw = await make_gateway(cache_conf(upstream, store))
    cache = dict(gw.server.app[PLUGINS].order)["exact-cache"]
    arrived, landed = asyncio.Event(), asyncio.Event()
    joins(cache, arrived)  # joining the flight is arriving too
    lookups = 0
    real_get, real_land = cache.store.get, cache.flights.land

    async def get(scope: str, key: str) -> Any:
        nonlocal lookups
        lookups += 1
        if lookups == 1:
            return await real_get(scope, key)
        arrived.set()
        record = await real_get(scope, key)  # read while the leader is still upstream: nothing yet
        await landed.wait()  # ... and returning only once the leader's flight has landed
        return record

    def land(key: str, record: Any) -> None:
        real_land(key, record)
        landed.set()

    cache.store.get, cache.flights.land = get, land
    upstream.llm.hold()
    leader = asyncio.create_task(ask(gw))
    await upstream.llm.wait_for_calls(1)
    second = asyncio.create_task(ask(gw))
    await arrived.wait()
    upstream.llm.release()
    (status1, first), (status2, again) = await asyncio.gather(leader, second)
    assert upstream.llm.chat_calls == 1
    assert (status1, status2) == ("miss", "hit")
    assert again.choices[0].message.content == first.choices[0].message.content == ANSWER


async def answered_on_redis(
    make_gateway: GatewayFactory, upstream: Upstream, redis_url: str, key_prefix: str
) -> tuple[Gateway, Any]:
    """A gateway on Redis that has stored the answer to ``ask``, and its exact-cache plugin."""
    store = {"type": "redis", "url": redis_url, "key_prefix": key_prefix}
    gw = await make_gateway(cache_conf(upstream, store))
    await ask(gw)
    await settle(gw)
    return gw, dict(gw.server.app[PLUGINS].order)["exact-cache"]


async def stored_key(redis_url: str, key_prefix: str) -> tuple[bytes, dict[str, Any]]:
    """The one key under ``key_prefix`` and its stored record."""
    client = redis.Redis.from_url(redis_url)
    try:
        [key] = [k async for k in client.scan_iter(match=f"{key_prefix}*")]
        return key, orjson.loads(await client.get(key))
    finally:
        await client.aclose()


async def test_a_follower_that_cannot_replay_the_leaders_record_goes_upstream(
    make_gateway: GatewayFactory, upstream: Upstream, redis_url: str, key_prefix: str
) -> None:
    # A damaged record from Redis that a streamed replay can serve (it leaves annotations
    # out) and a JSON replay cannot (too deep to write): the streaming leader hits, and its
    # JSON follower is a miss served from upstream, not a 500.
    gw, cache = await answered_on_redis(make_gateway, upstream, redis_url, key_prefix)
    key, stored = await stored_key(redis_url, key_prefix)
    stored["response"]["choices"][0]["message"]["annotations"] = "@@"
    client = redis.Redis.from_url(redis_url)
    try:
        await client.set(key, orjson.dumps(stored).replace(b'"@@"', b"[" * 300 + b"]" * 300))
    finally:
        await client.aclose()
    looking, joined, go = asyncio.Event(), joins(cache), asyncio.Event()
    real_get = cache.store.get

    async def get(scope: str, key: str) -> Any:
        if not looking.is_set():
            looking.set()
            await go.wait()  # the leader's lookup lasts until the follower has joined
        return await real_get(scope, key)

    cache.store.get = get
    leader = asyncio.create_task(ask_stream(gw))
    await looking.wait()
    follower = asyncio.create_task(ask(gw))
    await joined.wait()
    go.set()
    (status1, text, _), (status2, completion) = await asyncio.gather(leader, follower)
    assert (status1, text) == ("hit", ANSWER)
    assert (status2, completion.choices[0].message.content) == ("miss", ANSWER)
    assert upstream.llm.chat_calls == 2


async def test_a_redis_follower_is_served_by_its_own_lookup(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    redis_url: str,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The answer is stored; a leader's lookup is still under way (and its client then
    # leaves). An identical request joining its flight looks the answer up itself: a hit at
    # once, logged as one, without waiting for the leader or going upstream.
    gw, cache = await answered_on_redis(make_gateway, upstream, redis_url, key_prefix)
    looking = asyncio.Event()
    leader_task: asyncio.Task[Any] | None = None
    real_get = cache.store.get

    async def get(scope: str, key: str) -> Any:
        nonlocal leader_task
        if leader_task is None:
            leader_task = asyncio.current_task()
            looking.set()
            await asyncio.Event().wait()  # until cancelled
        return await real_get(scope, key)

    cache.store.get = get
    leader = asyncio.create_task(ask(gw))
    await looking.wait()
    caplog.clear()
    caplog.set_level(logging.INFO, logger="aigw.exact_cache")
    async with asyncio.timeout(10):  # not waiting for the leader, whose lookup never ends
        status, completion = await ask(gw)
    assert (status, completion.choices[0].message.content) == ("hit", ANSWER)
    assert upstream.llm.chat_calls == 1
    assert "cache miss for key" not in caplog.text and "cache hit for key" in caplog.text
    assert leader_task is not None
    leader_task.cancel()  # as aiohttp cancels the handler of a client that disconnected
    with pytest.raises(openai.APIError):
        await leader


async def test_a_follower_done_waiting_looks_up_before_going_upstream(
    make_gateway: GatewayFactory, upstream: Upstream, redis_url: str, key_prefix: str
) -> None:
    # The leader is stuck upstream; meanwhile the answer lands in Redis (another instance, a
    # refresh). A follower whose wait runs out is served from it, not sent upstream.
    store = {"type": "redis", "url": redis_url, "key_prefix": key_prefix}
    gw = await make_gateway(cache_conf(upstream, store, single_flight_timeout_s=0.5))
    cache = dict(gw.server.app[PLUGINS].order)["exact-cache"]
    joined = joins(cache)
    upstream.llm.hold()
    leader = asyncio.create_task(ask(gw))
    await upstream.llm.wait_for_calls(1)
    follower = asyncio.create_task(ask(gw))
    await joined.wait()
    [key] = list(cache.flights._flights)
    message = {"role": "assistant", "content": "stored by another instance"}
    answer = {
        "model": "gpt-4o",
        "created": 1_700_000_000,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }
    await cache.store.set(make_record(answer, key, "consumer:", 60))
    async with asyncio.timeout(10):  # the upstream is held: going there would never end
        status, completion = await follower
    assert (status, completion.choices[0].message.content) == ("hit", "stored by another instance")
    assert upstream.llm.chat_calls == 1
    upstream.llm.release()
    assert (await leader)[0] == "miss"


async def test_leader_failure_lets_a_waiter_retry(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway(cache_conf(upstream, {"type": "memory"}))
    upstream.llm.fail(500, "leader fails")
    upstream.llm.hold()
    tasks = [asyncio.create_task(ask(gw)) for _ in range(3)]
    await upstream.llm.wait_for_calls(1)
    upstream.llm.release()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, openai.InternalServerError)]
    answers = sorted(r[0] for r in results if isinstance(r, tuple))
    assert len(errors) == 1 and answers == ["hit", "miss"]
    assert upstream.llm.chat_calls == 2


class LogCount(logging.Handler):
    """Sets ``reached`` once ``n`` records containing ``phrase`` were logged (so a test can
    wait for requests to reach a point the cache logs, without sleeping)."""

    def __init__(self, phrase: str, n: int) -> None:
        super().__init__(logging.INFO)
        self.phrase, self.left, self.reached = phrase, n, asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.phrase in record.getMessage():
            self.left -= 1
            if self.left <= 0:
                self.reached.set()


@pytest.fixture
def misses(caplog: pytest.LogCaptureFixture) -> Any:
    """``misses(n)``: a LogCount of the cache's "cache miss for key" lines."""
    caplog.set_level(logging.INFO, logger="aigw.exact_cache")
    handlers: list[LogCount] = []

    def count(n: int) -> LogCount:
        handler = LogCount("cache miss for key", n)
        logging.getLogger("aigw.exact_cache").addHandler(handler)
        handlers.append(handler)
        return handler

    yield count
    for handler in handlers:
        logging.getLogger("aigw.exact_cache").removeHandler(handler)


async def test_leader_stream_breaking_lets_one_waiter_retry(
    make_gateway: GatewayFactory, upstream: Upstream, misses: Any
) -> None:
    # The broken stream had status 200 when it broke: it is still a failed flight, so one
    # waiter retries and the others are served its answer, not all going upstream at once.
    gw = await make_gateway(cache_conf(upstream, {"type": "memory"}))
    upstream.llm.drop_stream(after_chunks=2)
    upstream.llm.hold()
    arrived = misses(6)
    tasks = [asyncio.create_task(ask_stream(gw)) for _ in range(6)]
    await asyncio.wait_for(arrived.reached.wait(), 5)  # the leader and five waiters
    upstream.llm.release()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    answered = sorted(r[0] for r in results if isinstance(r, tuple))
    assert len([r for r in results if isinstance(r, Exception)]) == 1  # the broken stream
    assert answered == ["hit", "hit", "hit", "hit", "miss"]
    assert upstream.llm.chat_calls == 2


async def test_leader_client_leaving_mid_stream_lets_one_waiter_retry(
    make_gateway: GatewayFactory, upstream: Upstream, misses: Any
) -> None:
    gw = await make_gateway(cache_conf(upstream, {"type": "memory"}))
    upstream.llm.answer("one two three four five six", chunk_delay_s=0.5)
    body = {"model": "gpt-4o", "messages": MSG, "stream": True}
    leader = await gw.http.post(gw.url(CHAT), json=body)
    await leader.content.readline()  # the leader's answer is streaming
    arrived = misses(5)
    followers = [asyncio.create_task(ask_stream(gw)) for _ in range(5)]
    await asyncio.wait_for(arrived.reached.wait(), 5)
    leader.close()  # its client hangs up mid-stream
    results = await asyncio.gather(*followers)
    assert sorted(status for status, _, _ in results) == ["hit", "hit", "hit", "hit", "miss"]
    assert upstream.llm.chat_calls == 2


async def test_azure_stream_is_replayed_with_its_model_and_time(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    # Azure's streams open with a prompt-filter chunk whose id and model are empty and whose
    # created is 0; the record takes them from the first chunk that has them.
    azure = {"name": "az", "type": "azure", "base_url": upstream.root_url, "max_retries": 0}
    azure |= {"api_keys": [UPSTREAM_KEY], "models": {"gpt-4o": "my-deployment"}}
    gw = await make_gateway(
        {
            "30-exact-cache.yaml": {"plugin": "exact-cache"},
            "90-provider-proxy.yaml": {
                "plugin": "provider-proxy",
                "config": {"providers": [azure]},
            },
        }
    )
    status, text, live = await ask_stream(gw)
    assert status == "miss" and text == "echo[my-deployment]: What is the capital of France?"
    assert live[0].model == "" and live[0].choices == []  # Azure's first chunk, relayed
    await settle(gw)
    status, hit = await ask(gw)
    assert status == "hit" and hit.model == "my-deployment"
    assert (
        hit.created == live[-1].created > 0
        and hit.system_fingerprint == live[-1].system_fingerprint
    )
    assert upstream.llm.chat_calls == 1


async def test_two_gateway_instances_share_redis(
    make_gateway: GatewayFactory, upstream: Upstream, redis_url: str, key_prefix: str
) -> None:
    store = {"type": "redis", "url": redis_url, "key_prefix": key_prefix}
    one = await make_gateway(cache_conf(upstream, store), name="one")
    two = await make_gateway(cache_conf(upstream, store), name="two")
    await ask(one)
    await settle(one)
    status, completion = await ask(two)
    assert status == "hit" and completion.choices[0].message.content == ANSWER
    assert upstream.llm.chat_calls == 1


async def test_redis_restart_and_down(
    make_gateway: GatewayFactory, upstream: Upstream, redis_server: RedisServer, key_prefix: str
) -> None:
    store = {"type": "redis", "url": redis_server.url, "key_prefix": key_prefix}
    gw = await make_gateway(cache_conf(upstream, store))
    await ask(gw)
    await settle(gw)
    assert (await ask(gw))[0] == "hit"

    redis_server.stop()
    status, completion = await ask(gw)  # Redis down: a miss, never an error
    assert status == "miss" and completion.choices[0].message.content == ANSWER
    await settle(gw)
    assert counts(gw)["lookup_failure"] >= 1 and counts(gw)["store_failure"] >= 1
    async with gw.http.get(gw.url("/readyz")) as resp:  # degraded, still in rotation
        body = await resp.json()
        assert resp.status == 200 and body["status"] == "degraded"
        assert "exact-cache" in body["problems"][0]

    redis_server.start()  # back, empty (no persistence): the pool reconnects by itself
    assert (await ask(gw))[0] == "miss"
    await settle(gw)
    assert (await ask(gw))[0] == "hit"
    assert upstream.llm.chat_calls == 3  # the first miss, while down, after the restart
    async with gw.http.get(gw.url("/readyz")) as resp:
        assert resp.status == 200 and await resp.json() == {"status": "ready"}


def _garbage(_: dict[str, Any]) -> bytes:
    return b"\x00 not a record"


def _nan_time(stored: dict[str, Any]) -> bytes:
    return orjson.dumps({**stored, "stored_at": "nan"})  # float() takes it; no age comes of it


def _text_usage(stored: dict[str, Any]) -> bytes:
    return orjson.dumps({**stored, "response": {**stored["response"], "usage": "garbage"}})


def _unwritable_usage(stored: dict[str, Any]) -> bytes:
    # JSON that decode() accepts (orjson reads 1,024 levels) and a replay cannot write (254).
    response = stored["response"]
    marked = {**response, "usage": {**response["usage"], "extra": "@@"}}
    deep = b'{"x":' * 300 + b"0" + b"}" * 300
    return orjson.dumps({**stored, "response": marked}).replace(b'"@@"', deep)


@pytest.mark.parametrize("damage", [_garbage, _nan_time, _text_usage, _unwritable_usage])
async def test_garbage_in_redis_is_a_miss(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    redis_url: str,
    key_prefix: str,
    damage: Any,
) -> None:
    store = {"type": "redis", "url": redis_url, "key_prefix": key_prefix}
    gw = await make_gateway(cache_conf(upstream, store))
    await ask(gw)
    await settle(gw)
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{key_prefix}*")]
        assert len(keys) == 1
        ttl = await client.ttl(keys[0])
        assert 1700 < ttl <= 1800  # the default TTL applies
        stored = orjson.loads(await client.get(keys[0]))
        assert stored["response"]["choices"][0]["message"]["content"] == ANSWER
        # A JSON and a streamed replay each meet the damage (each miss stores afresh).
        await client.set(keys[0], damage(stored))
        status, completion = await ask(gw)
        assert status == "miss" and completion.choices[0].message.content == ANSWER
        await settle(gw)
        await client.set(keys[0], damage(stored))
        status, text, _ = await ask_stream(gw, stream_options={"include_usage": True})
        assert status == "miss" and text == ANSWER
    finally:
        await client.aclose()


async def test_a_damaged_memory_entry_is_a_miss_counted_as_a_failure(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    # The memory store is looked up without a coroutine (MemoryStore.peek): a held value that
    # is no record must still be a miss and a counted failure there, then be stored afresh.
    gw = await make_gateway(cache_conf(upstream, {"type": "memory"}))
    cache = dict(gw.server.app[PLUGINS].order)["exact-cache"]
    await ask(gw)
    await settle(gw)
    [(key, (expires, size, _, scope))] = cache.store._data.items()
    cache.store._data[key] = (expires, size, b'{"v": 1, "response": null}', scope)
    status, completion = await ask(gw)
    assert status == "miss" and completion.choices[0].message.content == ANSWER
    assert counts(gw)["lookup_failure"] == 1 and upstream.llm.chat_calls == 2
    await settle(gw)
    status, completion = await ask(gw)
    assert status == "hit" and completion.choices[0].message.content == ANSWER


async def test_slow_redis_is_bounded_by_the_timeout(
    make_gateway: GatewayFactory, upstream: Upstream, redis_server: RedisServer, key_prefix: str
) -> None:
    store = {"type": "redis", "url": redis_server.url, "key_prefix": key_prefix, "timeout_ms": 50}
    gw = await make_gateway(cache_conf(upstream, store))
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)  # alive but answering nothing
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, completion = await ask(gw)
        elapsed = loop.time() - started
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    assert status == "miss" and completion.choices[0].message.content == ANSWER
    assert elapsed < 1.0  # the lookup gave up after its 50 ms deadline


async def test_a_paused_redis_costs_requests_its_deadline_only_until_the_breaker_opens(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    redis_server: RedisServer,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aigw")
    store = {
        "type": "redis",
        "url": redis_server.url,
        "key_prefix": key_prefix,
        "timeout_ms": 50,
        "breaker_failures": 2,
        "breaker_cooldown_s": 5,
    }
    gw = await make_gateway(cache_conf(upstream, store))
    clock = dict(gw.server.app[PLUGINS].order)["exact-cache"].store.breaker.clock = FakeClock()
    await ask(gw)
    await settle(gw)
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)  # alive but answering nothing
    try:
        await ask(gw)  # its lookup and its write-back time out: the breaker opens
        await settle(gw)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(20):  # without the breaker, at least 20 deadlines: 1 s
            status, completion = await ask(gw)
            assert status == "miss" and completion.choices[0].message.content == ANSWER
        elapsed = loop.time() - started
        await settle(gw)
        async with gw.http.get(gw.url("/readyz")) as resp:  # at once, not after a deadline
            body = await resp.json()
            assert body["status"] == "degraded" and "skipped" in body["problems"][0]
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    clock.now += 5
    async with gw.http.get(gw.url("/readyz")) as resp:  # the probe: Redis is back
        assert await resp.json() == {"status": "ready"}
    assert (await ask(gw))[0] == "hit"
    assert elapsed < 0.5
    got = counts(gw)
    assert (got["breaker_open"], got["breaker_close"]) == (1, 1)
    assert got["breaker_skip"] == 41  # 20 lookups, 20 write-backs, 1 readiness ping
    assert got["lookup_failure"] == 21 and got["store_failure"] == 21
    said = [r.getMessage() for r in caplog.records if r.name == "aigw.cache.breaker"]
    assert len(said) == 2, said
    assert "redis unreachable" in said[0] and "skipping it for 5 s" in said[0]
    assert said[1] == "exact-cache: redis is back"


@pytest.mark.parametrize(
    ("maxmemory", "policy", "warning"),
    [
        ("0", "allkeys-lru", "redis has no maxmemory"),
        ("100mb", "noeviction", "maxmemory-policy is noeviction"),
        ("100mb", "allkeys-lru", None),
    ],
)
async def test_start_up_warns_of_a_redis_without_memory_bounds(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    redis_server: RedisServer,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
    maxmemory: str,
    policy: str,
    warning: str | None,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        await client.config_set("maxmemory", maxmemory)
        await client.config_set("maxmemory-policy", policy)
    finally:
        await client.aclose()
    store = {"type": "redis", "url": redis_server.url, "key_prefix": key_prefix}
    await make_gateway(cache_conf(upstream, store))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    found = [w for w in warnings if "maxmemory" in w]
    assert len(found) == (warning is not None), warnings
    assert all(warning in w and "allkeys-lru" in w for w in found), found


async def test_start_up_says_nothing_of_memory_bounds_redis_will_not_tell(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    tmp_path: Path,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if os.environ.get("AIGW_TEST_REDIS_URL"):
        pytest.skip("needs its own redis-server (AIGW_TEST_REDIS_URL is set)")
    caplog.set_level(logging.DEBUG, logger="aigw.exact_cache")
    server = RedisServer(tmp_path / "redis", "--rename-command", "CONFIG", "")  # managed Redis
    (tmp_path / "redis").mkdir()
    server.start()
    try:
        store = {"type": "redis", "url": server.url, "key_prefix": key_prefix}
        gw = await make_gateway(cache_conf(upstream, store))
        await ask(gw)
        await settle(gw)
        assert (await ask(gw))[0] == "hit"  # CONFIG refused: Redis is still used, not skipped
    finally:
        server.stop()
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if "maxmemory" in r.getMessage()]
    assert lines == [(logging.DEBUG, lines[0][1])] and "unknown command" in lines[0][1]


async def test_higress_last_question_strategy(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway(
        cache_conf(upstream, {"type": "memory"}, cacheKeyStrategy="lastQuestion")
    )
    history = [{"role": "system", "content": "Be brief."}]
    await ask(gw, messages=[*history, *MSG])
    await settle(gw)
    named = [*history, {**MSG[0], "name": "alice"}]  # only the last message's content is keyed
    status, completion = await ask(gw, messages=named)
    assert status == "hit" and completion.choices[0].message.content == ANSWER
    status, _ = await ask(gw, messages=named, model="gpt-4o-mini")  # model still keyed
    assert status == "miss"
    # Unlike Higress, the earlier turns are keyed too: the same question after another
    # conversation is not answered from this one.
    other = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}, *MSG]
    status, _ = await ask(gw, messages=other)
    assert status == "miss" and upstream.llm.chat_calls == 3


async def test_log_lines_keep_higress_phrases_without_the_prompt(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="aigw.exact_cache")
    await ask(gw)
    await settle(gw)
    raw = await gw.openai.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG)
    short = raw.headers["x-aigw-cache-key"]
    text = caplog.text
    assert f"cache miss for key: {short}" in text and f"cache hit for key: {short}" in text
    assert "capital of France" not in text


async def test_shutdown_drains_the_write_back(
    make_gateway: GatewayFactory, upstream: Upstream, redis_url: str, key_prefix: str
) -> None:
    store = {"type": "redis", "url": redis_url, "key_prefix": key_prefix}
    gw = await make_gateway(cache_conf(upstream, store))
    await ask(gw)
    await gw.server.close()  # no settle(): shutdown itself must wait for the write
    client = redis.Redis.from_url(redis_url)
    try:
        assert len([k async for k in client.scan_iter(match=f"{key_prefix}*")]) == 1
    finally:
        await client.aclose()


async def test_redis_with_a_password(
    make_gateway: GatewayFactory, upstream: Upstream, tmp_path: Any, key_prefix: str
) -> None:
    server = RedisServer(tmp_path, "--requirepass", "s3cret")
    server.start()
    try:
        good = {"type": "redis", "url": server.url, "password": "s3cret", "key_prefix": key_prefix}
        gw = await make_gateway(cache_conf(upstream, good), name="good")
        await ask(gw)
        await settle(gw)
        assert (await ask(gw))[0] == "hit"
        bad = {**good, "password": "wrong"}
        gw_bad = await make_gateway(cache_conf(upstream, bad), name="bad")
        status, completion = await ask(gw_bad)  # refused by Redis: a miss, not an error
        assert status == "miss" and completion.choices[0].message.content == ANSWER
        assert counts(gw_bad)["lookup_failure"] == 1
    finally:
        server.stop()


async def test_leader_whose_client_gives_up_releases_its_flight(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway(cache_conf(upstream, {"type": "memory"}, single_flight_timeout_s=30))
    upstream.llm.slow(1.0)
    body = {"model": "gpt-4o", "messages": MSG}
    with pytest.raises(asyncio.TimeoutError):
        async with gw.http.post(gw.url(CHAT), json=body, timeout=aiohttp.ClientTimeout(total=0.2)):
            pass
    await asyncio.wait_for(upstream.llm.calls[0].done.wait(), 5)
    # Had the cancelled leader kept its flight, this would wait 30 s for it.
    async with gw.http.post(gw.url(CHAT), json=body, timeout=aiohttp.ClientTimeout(total=5)) as r:
        assert r.status == 200 and r.headers["x-aigw-cache"] == "miss"
    cache = dict(gw.server.app[PLUGINS].order)["exact-cache"]
    assert len(cache.flights) == 0


async def test_fallback_answer_is_not_cached_for_the_primary(
    make_gateway: GatewayFactory, upstream: Upstream, aiohttp_server: Any
) -> None:
    backup = FakeLLM()
    backup_server = await aiohttp_server(backup.app)
    proxy = provider_file(upstream, max_retries=0, fallbacks=["backup"])
    proxy["config"]["providers"].append(
        {
            "name": "backup",
            "type": "openai",
            "base_url": str(backup_server.make_url("/v1")),
            "api_keys": ["sk-b"],
            "models": {"*": "cheap-model"},
        }
    )
    conf = cache_conf(upstream, {"type": "memory"})
    conf["90-provider-proxy.yaml"] = proxy
    gw = await make_gateway(conf)
    upstream.llm.fail(503)
    _, degraded = await ask(gw)
    assert degraded.model == "cheap-model"
    await settle(gw)
    status, completion = await ask(gw)  # the primary is back: its own answer, not the backup's
    assert status == "miss" and completion.choices[0].message.content == ANSWER


async def test_followers_of_an_uncacheable_answer_go_upstream_together(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway(cache_conf(upstream, {"type": "memory"}))
    upstream.llm.answer("truncated", finish_reason="length", times=5)
    upstream.llm.hold()
    tasks = [asyncio.create_task(ask(gw)) for _ in range(5)]
    await upstream.llm.wait_for_calls(1)
    upstream.llm.release()  # the leader's answer: complete, but not storable
    upstream.llm.hold()
    # All four followers reach the upstream while it is held: they were not queued one by one.
    await upstream.llm.wait_for_calls(5)
    upstream.llm.release()
    results = await asyncio.gather(*tasks)
    assert [c.choices[0].finish_reason for _, c in results] == ["length"] * 5


async def test_every_cache_control_line_counts(gw: Gateway, upstream: Upstream) -> None:
    headers = CIMultiDict([("Cache-Control", "max-age=0"), ("Cache-Control", "no-store")])
    body = {"model": "gpt-4o", "messages": MSG}
    async with gw.http.post(gw.url(CHAT), json=body, headers=headers) as resp:
        assert resp.status == 200
    await settle(gw)
    assert (await ask(gw))[0] == "miss"  # the no-store on the second line was honoured


async def test_control_headers_never_go_upstream_even_without_skip_header(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    conf = cache_conf(upstream, {"type": "memory"})
    del conf["20-skip-header.yaml"]
    gw = await make_gateway(conf)
    extra = {"Cache-Control": "no-cache", "x-higress-skip-ai-cache": "on"}
    await ask(gw, extra_headers=extra)
    got = upstream.llm.last_call.headers
    assert "cache-control" not in got and "x-higress-skip-ai-cache" not in got


async def test_unparseable_redis_url_is_a_config_error(tmp_path: Any) -> None:
    from aigw.config import load_config
    from aigw.errors import ConfigError
    from aigw.plugins import load
    from tests.conftest import write_conf

    conf = {
        "30-exact-cache.yaml": {
            "plugin": "exact-cache",
            "config": {"store": {"type": "redis", "url": "notredis://x"}},
        },
        "90-p.yaml": {
            "plugin": "provider-proxy",
            "config": {"providers": [{"name": "m", "type": "mock"}]},
        },
    }
    with pytest.raises(ConfigError, match=r"30-exact-cache\.yaml"):
        load(load_config(write_conf(tmp_path / "c", conf)))
