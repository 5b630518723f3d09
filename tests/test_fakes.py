"""Self-test: the fake upstream must look like OpenAI to the official ``openai`` client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import CLIENT_TIMEOUT_S
from tests.fakes import EMBEDDINGS, FakeLLM  # tests/ is on sys.path (rootdir-relative, no __init__)

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


@pytest.fixture
def llm() -> FakeLLM:
    return FakeLLM()


@pytest.fixture
async def server(llm: FakeLLM, aiohttp_server: ServerFactory) -> TestServer:
    return await aiohttp_server(llm.app)


@pytest.fixture
async def client(server: TestServer) -> AsyncIterator[openai.AsyncOpenAI]:
    base_url = str(server.make_url("/v1"))
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key="sk-test", max_retries=0, timeout=CLIENT_TIMEOUT_S
    ) as c:
        yield c


USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there world"}]


async def raw_sse(server: TestServer, body: dict[str, Any]) -> list[str]:
    """POST and return the raw SSE ``data:`` payloads, checking OpenAI's framing."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            server.make_url("/v1/chat/completions"),
            json=body,
            headers={"Authorization": "Bearer sk-test"},
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["content-type"] == "text/event-stream"
        text = (await resp.read()).decode()
    assert text.endswith("data: [DONE]\n\n")
    events = text.split("\n\n")
    assert events[-1] == ""
    assert all(e.startswith("data: ") for e in events[:-1])
    return [e.removeprefix("data: ") for e in events[:-1]]


async def test_chat_non_stream(llm: FakeLLM, client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert r.model == "gpt-4o-mini"
    assert r.system_fingerprint == "fp_fake"
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo[gpt-4o-mini]: hello there world"
    assert choice.message.refusal is None
    assert choice.finish_reason == "stop"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (3, 4, 7)
    r2 = await client.chat.completions.create(model="gpt-4o", messages=USER)
    assert r2.id != r.id
    assert r2.choices[0].message.content == "echo[gpt-4o]: hello there world"
    assert llm.chat_calls == 2
    call = llm.calls[0]
    assert (call.method, call.path, call.kind) == ("POST", "/v1/chat/completions", "chat")
    assert call.headers["authorization"] == "Bearer sk-test"
    assert call.body["messages"] == USER
    assert not call.stream


async def test_chat_stream_without_usage(
    llm: FakeLLM, client: openai.AsyncOpenAI, server: TestServer
) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=USER,
        stream=True,
    )
    chunks = [c async for c in stream]
    assert len({(c.id, c.created, c.model) for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.system_fingerprint == "fp_fake" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    content_chunks = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert len(content_chunks) > 2
    assert "".join(x or "" for x in content_chunks) == "echo[gpt-4o-mini]: hello there world"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert llm.calls[0].stream

    payloads = await raw_sse(server, {"model": "m", "messages": USER, "stream": True})
    assert payloads[-1] == "[DONE]"
    parsed = [json.loads(p) for p in payloads[:-1]]
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert parsed[-1]["choices"][0]["delta"] == {}
    assert all("usage" not in p for p in parsed)


async def test_chat_stream_with_usage(
    llm: FakeLLM, client: openai.AsyncOpenAI, server: TestServer
) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-2].choices[0].finish_reason == "stop"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 4)
    assert llm.calls[0].body["stream_options"] == {"include_usage": True}

    body = {
        "model": "m",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    parsed = [json.loads(p) for p in (await raw_sse(server, body))[:-1]]
    assert all(p["usage"] is None for p in parsed[:-1])
    assert parsed[-1]["choices"] == []
    assert parsed[-1]["usage"]["total_tokens"] == 3 + 4


async def test_tool_calls_and_finish_reasons(client: openai.AsyncOpenAI, llm: FakeLLM) -> None:
    args = '{"city": "Paris", "unit": "c"}'
    function: dict[str, Any] = {"name": "get_weather", "arguments": args}
    call: dict[str, Any] = {"id": "call_abc", "type": "function", "function": function}
    llm.answer(tool_calls=[call], times=2)
    r = await client.chat.completions.create(model="m", messages=USER)
    msg = r.choices[0].message
    assert msg.content is None
    assert r.choices[0].finish_reason == "tool_calls"
    assert msg.tool_calls is not None
    assert msg.tool_calls[0].model_dump() == call

    stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.content is None
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert len(deltas) > 2
    assert (deltas[0].id, deltas[0].type) == ("call_abc", "function")
    assert deltas[0].function is not None and deltas[0].function.name == "get_weather"
    assert all(d.index == 0 and d.id is None for d in deltas[1:])
    streamed = "".join((d.function.arguments or "") if d.function else "" for d in deltas)
    assert streamed == args
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    llm.answer("cut", finish_reason="length")
    llm.answer(reasoning_content="think hard", content="42")
    r = await client.chat.completions.create(model="m", messages=USER)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("cut", "length")
    r = await client.chat.completions.create(model="m", messages=USER)
    assert r.choices[0].message.content == "42"
    assert r.choices[0].message.model_extra == {"reasoning_content": "think hard"}
    assert llm.pending == 0


async def test_legacy_completions(client: openai.AsyncOpenAI) -> None:
    r = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi")
    assert r.object == "text_completion"
    assert r.choices[0].text == "echo[gpt-3.5-turbo-instruct]: say hi"
    assert r.usage is not None and r.usage.prompt_tokens == 2
    stream = await client.completions.create(
        model="i", prompt="say hi", stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "echo[i]: say hi"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].choices == []


async def test_embeddings(client: openai.AsyncOpenAI, llm: FakeLLM) -> None:
    r = await client.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
    assert r.object == "list"
    assert [d.index for d in r.data] == [0, 1]
    assert r.data[0].embedding == FakeLLM.embedding_for("a b")
    assert len(r.data[1].embedding) == 8
    assert r.usage.prompt_tokens == r.usage.total_tokens == 3
    assert llm.calls[0].body["encoding_format"] == "base64"
    single = await client.embeddings.create(model="e", input="a b", encoding_format="float")
    assert single.data[0].embedding == r.data[0].embedding
    small = await client.embeddings.create(model="e", input="x", dimensions=4)
    assert len(small.data[0].embedding) == 4


async def test_models(client: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in client.models.list()]
    assert models == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    assert (await client.models.retrieve("gpt-4o")).id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")


async def test_scripted_errors(client: openai.AsyncOpenAI, llm: FakeLLM) -> None:
    llm.fail(429, "Rate limit reached", headers={"retry-after": "7"})
    llm.fail(400, "bad thing", param="messages", code="bad_code")
    llm.fail(503, times=2)
    with pytest.raises(openai.RateLimitError) as rate:
        await client.chat.completions.create(model="m", messages=USER)
    assert rate.value.message == "Error code: 429 - Rate limit reached"
    assert rate.value.response.headers["retry-after"] == "7"
    assert rate.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model="m", messages=USER, stream=True)
    assert "bad thing" in bad.value.message
    assert (bad.value.type, bad.value.param, bad.value.code) == (
        "invalid_request_error",
        "messages",
        "bad_code",
    )
    # Scripted chat failures do not leak onto embeddings by default.
    await client.embeddings.create(model="e", input="x")
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as err:
            await client.chat.completions.create(model="m", messages=USER)
        assert err.value.status_code == 503
        assert err.value.type == "server_error"
    llm.fail(500, "emb down", endpoints=frozenset({EMBEDDINGS}))
    with pytest.raises(openai.InternalServerError, match="emb down"):
        await client.embeddings.create(model="e", input="x")
    ok = await client.chat.completions.create(model="m", messages=USER)
    assert ok.choices[0].message.content == "echo[m]: hello there world"
    with pytest.raises(openai.NotFoundError, match="Invalid URL"):
        await client.post("/nothing/here", cast_to=object)


async def test_auth(aiohttp_server: ServerFactory) -> None:
    llm = FakeLLM(api_key="sk-upstream")
    server = await aiohttp_server(llm.app)
    base_url = str(server.make_url("/v1"))
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key="sk-wrong", max_retries=0, timeout=CLIENT_TIMEOUT_S
    ) as bad:
        with pytest.raises(openai.AuthenticationError, match="Incorrect API key") as err:
            await bad.chat.completions.create(model="m", messages=USER)
    assert (err.value.type, err.value.code) == ("invalid_request_error", "invalid_api_key")
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key="sk-upstream", max_retries=0, timeout=CLIENT_TIMEOUT_S
    ) as good:
        await good.chat.completions.create(model="m", messages=USER)
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.make_url("/v1/chat/completions"), json={}) as resp,
    ):
        assert resp.status == 401
        body = await resp.json()
    assert body["error"]["code"] == "invalid_api_key"
    assert body["error"]["message"].startswith("You didn't provide an API key")


async def test_drop_stream(client: openai.AsyncOpenAI, llm: FakeLLM) -> None:
    llm.drop_stream(after_chunks=2)
    stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
    got = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            got.append(chunk)
    assert len(got) == 2
    llm.drop_stream(after_chunks=0)
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="m", messages=USER)
    ok = await client.chat.completions.create(model="m", messages=USER)
    assert ok.choices[0].finish_reason == "stop"


async def test_slow_times_out(client: openai.AsyncOpenAI, llm: FakeLLM) -> None:
    llm.slow(0.5)
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="m", messages=USER, timeout=0.05)


async def test_hold_release_wait_for_calls(client: openai.AsyncOpenAI, llm: FakeLLM) -> None:
    llm.hold()
    tasks = [
        asyncio.create_task(client.chat.completions.create(model="m", messages=USER))
        for _ in range(3)
    ]
    await llm.wait_for_calls(3, kind="chat")
    assert not any(t.done() for t in tasks)
    llm.release()
    results = await asyncio.gather(*tasks)
    assert all(r.choices[0].message.content == "echo[m]: hello there world" for r in results)
    with pytest.raises(TimeoutError):
        await llm.wait_for_calls(4, timeout_s=0.01)


async def test_azure_and_dashscope_paths(llm: FakeLLM, server: TestServer) -> None:
    azure = openai.AsyncAzureOpenAI(
        azure_endpoint=str(server.make_url("/")),
        api_key="az-key",
        api_version="2024-10-21",
        max_retries=0,
        timeout=CLIENT_TIMEOUT_S,
    )
    async with azure:
        r = await azure.chat.completions.create(model="my-deploy", messages=USER)
    assert r.model == "my-deploy"
    assert r.choices[0].message.content == "echo[my-deploy]: hello there world"
    call = llm.last_call
    assert call.path == "/openai/deployments/my-deploy/chat/completions"
    assert call.query["api-version"] == "2024-10-21"
    assert call.headers["api-key"] == "az-key"
    base_url = str(server.make_url("/compatible-mode/v1"))
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key="sk-ds", max_retries=0, timeout=CLIENT_TIMEOUT_S
    ) as ds:
        r = await ds.chat.completions.create(model="qwen-plus", messages=USER)
    assert r.model == "qwen-plus"
    assert llm.last_call.path == "/compatible-mode/v1/chat/completions"


async def test_no_auth_required_and_bad_requests(aiohttp_server: ServerFactory) -> None:
    server = await aiohttp_server(FakeLLM(require_auth=False).app)
    async with aiohttp.ClientSession() as session:
        url = server.make_url("/v1/chat/completions")
        async with session.post(url, json={"model": "m", "messages": USER}) as resp:
            assert resp.status == 200
        async with session.post(url, data=b"{not json") as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["type"] == "invalid_request_error"
        async with session.post(url, json={"messages": USER}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == "model"


async def test_client_disconnect_mid_stream_is_recorded(llm: FakeLLM, server: TestServer) -> None:
    llm.answer("one two three four five six", chunk_delay_s=0.02)
    body = {"model": "m", "messages": USER, "stream": True}
    headers = {"Authorization": "Bearer sk-test"}
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            server.make_url("/v1/chat/completions"), json=body, headers=headers
        )
        first = await resp.content.readuntil(b"\n\n")
        assert first.startswith(b"data: {")
        resp.close()  # drop the connection mid-stream
    await asyncio.wait_for(llm.last_call.done.wait(), 5)
    assert llm.last_call.aborted


async def test_stream_latency_options(client: openai.AsyncOpenAI, llm: FakeLLM) -> None:
    llm.answer("a b", first_token_delay_s=0.2, chunk_delay_s=0.05)
    loop = asyncio.get_running_loop()
    stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
    stamps = [(loop.time(), chunk) async for chunk in stream]
    assert stamps[1][0] - stamps[0][0] >= 0.15  # first content chunk waited
    assert stamps[-1][0] - stamps[1][0] >= 0.05 * (len(stamps) - 2) * 0.8
    assert llm.last_call.done.is_set() and not llm.last_call.aborted


async def test_held_request_abandoned_by_client(client: openai.AsyncOpenAI, llm: FakeLLM) -> None:
    llm.hold()
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="m", messages=USER, timeout=0.1)
    await asyncio.wait_for(llm.last_call.done.wait(), 5)
    assert llm.last_call.aborted
    llm.release()
