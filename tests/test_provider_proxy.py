"""provider-proxy end to end: the official openai client → the real gateway → a fake OpenAI."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import openai
import orjson
import pytest
from aigw_plugins.provider_proxy import ProviderProxyPlugin
from aigw_plugins.provider_proxy.config import ProviderConfig
from aigw_plugins.provider_proxy.upstream import Upstream as ProviderUpstream
from aiohttp import web

from aigw.app import PLUGINS, create_app
from aigw.cli import main
from aigw.config import load_config
from aigw.errors import ConfigError, GatewayError, UpstreamError, UpstreamTimeout
from aigw.gateway import Gateway as GatewayRuntime
from aigw.http_client import (
    ConnectError,
    ConnectTimeout,
    HTTPClient,
    HTTPClientError,
    ReadTimeout,
    ResponseError,
    StaleConnection,
)
from aigw.mock_transport import MockHandler, MockResponse, MockTransport
from aigw.plugins import load
from aigw.transport import UpstreamRequest
from tests.conftest import (
    UPSTREAM_KEY,
    Gateway,
    GatewayFactory,
    Upstream,
    provider_file,
    write_conf,
)
from tests.fakes import Behaviour, FakeLLM

MSG = [{"role": "user", "content": "hello there world"}]
CHAT = {"model": "gpt-4o", "messages": MSG}


async def test_chat_non_stream(gateway: Gateway, upstream: Upstream) -> None:
    r = await gateway.openai.chat.completions.create(model="gpt-4o", messages=MSG)
    assert r.choices[0].message.content == "echo[gpt-4o]: hello there world"
    assert r.usage is not None and r.usage.completion_tokens == 4
    call = upstream.llm.last_call
    assert call.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"  # the client's key is replaced
    assert call.body["messages"] == MSG


@pytest.mark.parametrize("include_usage", [True, False])
async def test_chat_stream(gateway: Gateway, upstream: Upstream, include_usage: bool) -> None:
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = await gateway.openai.chat.completions.create(
        model="gpt-4o", messages=MSG, stream=True, **extra
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo[gpt-4o]: hello there world"
    usage = [c.usage for c in chunks if c.usage]
    # The proxy always asks the upstream for usage, but only forwards it when asked.
    assert upstream.llm.last_call.body["stream_options"] == {"include_usage": True}
    assert len(usage) == (1 if include_usage else 0)
    assert chunks[-1].choices == [] if include_usage else chunks[-1].choices[0].finish_reason


async def test_stream_events_pass_through_one_by_one(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway({"90-p.yaml": provider_file(upstream)})
    upstream.llm.answer("one two three four", chunk_delay_s=0.05)
    body = {"model": "m", "messages": MSG, "stream": True}
    arrivals: list[float] = []
    loop = asyncio.get_running_loop()
    async with gw.http.post(gw.url("/v1/chat/completions"), json=body) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for _ in resp.content:  # line by line, as the client receives them
            arrivals.append(loop.time())
    # Content events arrive spread over time (not buffered into one write at the end).
    assert arrivals[-1] - arrivals[0] >= 0.1


async def test_keep_alive_comments_reach_the_client(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    # A server keeping a queued request alive with SSE comments: the client (and any idle
    # timeout in front of the gateway) sees them as it would directly.
    gw = await make_gateway({"90-p.yaml": provider_file(upstream)})
    upstream.llm.script(Behaviour(keepalives=2))
    body = {"model": "m", "messages": MSG, "stream": True}
    async with gw.http.post(gw.url("/v1/chat/completions"), json=body) as resp:
        raw = await resp.read()
    assert raw.startswith(b": keep-alive\n\n: keep-alive\n\ndata: {")
    assert raw.endswith(b"data: [DONE]\n\n")
    upstream.llm.script(Behaviour(keepalives=2))
    stream = await gw.openai.chat.completions.create(model="m", messages=MSG, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "echo[m]: hello there world"


async def test_models_and_embeddings(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(
        {"90-p.yaml": provider_file(upstream, models=["gpt-4o", "text-embedding-3-small"])}
    )
    models = await gw.openai.models.list()
    assert sorted(m.id for m in models.data) == ["gpt-4o", "text-embedding-3-small"]
    emb = await gw.openai.embeddings.create(
        model="text-embedding-3-small", input=["a b", "c"], encoding_format="float"
    )
    assert [d.embedding for d in emb.data] == [FakeLLM.embedding_for(t) for t in ("a b", "c")]
    assert upstream.llm.last_call.path == "/v1/embeddings"


async def test_legacy_completions(gateway: Gateway, upstream: Upstream) -> None:
    r = await gateway.openai.completions.create(model="gpt-4o", prompt="say hi")
    assert r.choices[0].text == "echo[gpt-4o]: say hi"
    assert upstream.llm.last_call.path == "/v1/completions"


async def test_unknown_model_is_404(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway({"90-p.yaml": provider_file(upstream, models=["gpt-4o"])})
    with pytest.raises(openai.NotFoundError) as exc:
        await gw.openai.chat.completions.create(model="nope", messages=MSG)
    assert exc.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert upstream.llm.chat_calls == 0


async def test_model_mapping_renames(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(
        {"90-p.yaml": provider_file(upstream, models={"fast": "gpt-4o-mini", "gpt-4*": None})}
    )
    r = await gw.openai.chat.completions.create(model="fast", messages=MSG)
    assert upstream.llm.last_call.body["model"] == "gpt-4o-mini"
    assert r.model == "gpt-4o-mini"
    await gw.openai.chat.completions.create(model="gpt-4.1", messages=MSG)
    assert upstream.llm.last_call.body["model"] == "gpt-4.1"


async def test_headers_not_forwarded(gateway: Gateway, upstream: Upstream) -> None:
    headers = {
        "Authorization": "Bearer sk-gateway-credential",
        "Connection": "keep-alive, x-hop",
        "x-hop": "secret",
        "Keep-Alive": "timeout=5",
        "x-higress-skip-ai-cache": "on",
        "Cache-Control": "no-cache",
        "x-custom": "kept",
    }
    body = {"model": "gpt-4o", "messages": MSG}
    async with gateway.http.post(
        gateway.url("/v1/chat/completions"), json=body, headers=headers
    ) as resp:
        assert resp.status == 200
    got = upstream.llm.last_call.headers
    assert got["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert got["x-custom"] == "kept"
    for name in ("x-hop", "keep-alive", "x-higress-skip-ai-cache", "cache-control"):
        assert name not in got, name
    assert "sk-gateway-credential" not in str(got)


async def test_upstream_cookies_are_not_kept(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    # A provider's Set-Cookie (OpenAI's Cloudflare sets __cf_bm) must not be stored in the
    # shared session and sent with the next request, which may come from another client.
    # By name, not by IP: aiohttp's cookie jar ignores cookies from IP addresses anyway.
    base_url = upstream.base_url.replace("127.0.0.1", "localhost")
    gw = await make_gateway({"90-provider-proxy.yaml": provider_file(upstream, base_url=base_url)})
    upstream.llm.script(Behaviour(headers={"Set-Cookie": "__cf_bm=client-a; Path=/"}))
    async with gw.http.post(gw.url("/v1/chat/completions"), json=CHAT) as resp:
        assert resp.status == 200
        assert "Set-Cookie" not in resp.headers  # nor is it the client's business
    await gw.openai.chat.completions.create(model="gpt-4o", messages=MSG)
    assert upstream.llm.chat_calls == 2
    assert "cookie" not in upstream.llm.last_call.headers


async def test_upstream_client_error_passes_through(gateway: Gateway, upstream: Upstream) -> None:
    upstream.llm.fail(400, "context too long", code="context_length_exceeded", param="messages")
    with pytest.raises(openai.BadRequestError) as exc:
        await gateway.openai.chat.completions.create(model="gpt-4o", messages=MSG)
    assert exc.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
    assert upstream.llm.chat_calls == 1  # a 400 is not retried


async def test_retries_5xx_and_429_then_succeeds(gateway: Gateway, upstream: Upstream) -> None:
    upstream.llm.fail(503)
    upstream.llm.fail(429, headers={"retry-after": "0"})
    r = await gateway.openai.chat.completions.create(model="gpt-4o", messages=MSG)
    assert r.choices[0].message.content == "echo[gpt-4o]: hello there world"
    assert upstream.llm.chat_calls == 3


async def test_persistent_5xx_reaches_client_in_openai_shape(
    gateway: Gateway, upstream: Upstream
) -> None:
    upstream.llm.fail(500, "upstream exploded", times=3)
    with pytest.raises(openai.InternalServerError) as exc:
        await gateway.openai.chat.completions.create(model="gpt-4o", messages=MSG)
    assert exc.value.status_code == 500
    assert exc.value.body["message"] == "upstream exploded"  # type: ignore[index]
    assert upstream.llm.chat_calls == 3  # 1 + max_retries (2)


async def test_long_retry_after_is_not_waited_for(gateway: Gateway, upstream: Upstream) -> None:
    upstream.llm.fail(429, headers={"retry-after": "30"})
    with pytest.raises(openai.RateLimitError) as exc:
        await gateway.openai.chat.completions.create(model="gpt-4o", messages=MSG)
    assert exc.value.response.headers["retry-after"] == "30"
    assert upstream.llm.chat_calls == 1


async def test_failover_to_fallback_provider(
    make_gateway: GatewayFactory, upstream: Upstream, aiohttp_server: Any
) -> None:
    backup = FakeLLM()
    backup_server = await aiohttp_server(backup.app)
    primary = {
        "name": "primary",
        "type": "openai",
        "base_url": upstream.base_url,
        "api_keys": [UPSTREAM_KEY],
        "max_retries": 1,
        "retry_backoff_s": 0,
        "fallbacks": ["backup"],
        "models": {"gpt-4o": "primary-model"},
    }
    second = {
        "name": "backup",
        "type": "openai",
        "base_url": str(backup_server.make_url("/v1")),
        "api_keys": ["sk-backup"],
        "models": {"gpt-4o": "backup-model"},
    }
    gw = await make_gateway(
        {"90-p.yaml": {"plugin": "provider-proxy", "config": {"providers": [primary, second]}}}
    )
    upstream.llm.fail(502, times=2)
    r = await gw.openai.chat.completions.create(model="gpt-4o", messages=MSG)
    assert r.choices[0].message.content == "echo[backup-model]: hello there world"
    assert upstream.llm.chat_calls == 2 and backup.chat_calls == 1


async def test_api_keys_rotate_on_retry(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(
        {"90-p.yaml": provider_file(upstream, api_keys=[UPSTREAM_KEY, "sk-revoked"])}
    )
    upstream.llm.fail(429, headers={"retry-after": "0"})
    await gw.openai.chat.completions.create(model="gpt-4o", messages=MSG)
    # The 429 moves on to the next key; that key is refused (401), so the one after is tried.
    keys = [c.headers["authorization"] for c in upstream.llm.calls_of("chat")]
    assert keys == [f"Bearer {k}" for k in (UPSTREAM_KEY, "sk-revoked", UPSTREAM_KEY)]


async def test_single_key_401_is_not_retried(gateway: Gateway, upstream: Upstream) -> None:
    upstream.llm.api_key = "sk-rotated-away"
    with pytest.raises(openai.AuthenticationError):
        await gateway.openai.chat.completions.create(model="gpt-4o", messages=MSG)
    assert upstream.llm.chat_calls == 1


async def test_unreachable_upstream_is_502(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    conf = provider_file(upstream, max_retries=1)
    await upstream.server.close()
    gw = await make_gateway({"90-p.yaml": conf})
    with pytest.raises(openai.APIStatusError) as exc:
        await gw.openai.chat.completions.create(model="gpt-4o", messages=MSG)
    assert exc.value.status_code == 502
    assert exc.value.body["type"] == "upstream_error"  # type: ignore[index]


async def test_upstream_timeout_is_504(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway({"90-p.yaml": provider_file(upstream, read_timeout_s=0.2)})
    upstream.llm.slow(2.0)
    with pytest.raises(openai.APIStatusError) as exc:
        await gw.openai.chat.completions.create(model="gpt-4o", messages=MSG)
    assert exc.value.status_code == 504
    assert upstream.llm.chat_calls == 1  # a read timeout is not retried


async def test_stream_dropped_midway_is_an_error_for_the_client(
    gateway: Gateway, upstream: Upstream
) -> None:
    upstream.llm.drop_stream(after_chunks=2)
    stream = await gateway.openai.chat.completions.create(model="gpt-4o", messages=MSG, stream=True)
    with pytest.raises((openai.APIError, openai.APIConnectionError)):
        async for _ in stream:
            pass


async def test_client_disconnect_cancels_upstream(gateway: Gateway, upstream: Upstream) -> None:
    upstream.llm.answer("a b c d e f g h", chunk_delay_s=0.2)
    body = {"model": "gpt-4o", "messages": MSG, "stream": True}
    async with gateway.http.post(gateway.url("/v1/chat/completions"), json=body) as resp:
        await resp.content.readline()  # the first event arrived; now hang up
    call = upstream.llm.last_call
    await asyncio.wait_for(call.done.wait(), 5)
    assert call.aborted


async def test_azure_provider(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    azure = {
        "name": "az",
        "type": "azure",
        "base_url": upstream.root_url,
        "api_keys": [UPSTREAM_KEY],
        "api_version": "2024-10-21",
        "models": {"gpt-4o": "my-deployment"},
    }
    gw = await make_gateway(
        {"90-p.yaml": {"plugin": "provider-proxy", "config": {"providers": [azure]}}}
    )
    r = await gw.openai.chat.completions.create(model="gpt-4o", messages=MSG)
    call = upstream.llm.last_call
    assert call.path == "/openai/deployments/my-deployment/chat/completions"
    assert call.query["api-version"] == "2024-10-21"
    assert call.headers["api-key"] == UPSTREAM_KEY and "authorization" not in call.headers
    assert r.choices[0].message.content == "echo[my-deployment]: hello there world"


async def test_dashscope_provider(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    ds = {
        "name": "qwen",
        "type": "dashscope",
        "base_url": upstream.root_url + "/compatible-mode/v1",
        "api_keys": [UPSTREAM_KEY],
        "models": ["qwen-*"],
    }
    gw = await make_gateway(
        {"90-p.yaml": {"plugin": "provider-proxy", "config": {"providers": [ds]}}}
    )
    r = await gw.openai.chat.completions.create(model="qwen-turbo", messages=MSG)
    assert upstream.llm.last_call.path == "/compatible-mode/v1/chat/completions"
    assert r.choices[0].message.content == "echo[qwen-turbo]: hello there world"


async def test_tool_call_stream_is_relayed(gateway: Gateway, upstream: Upstream) -> None:
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    upstream.llm.answer(tool_calls=calls)
    stream = await gateway.openai.chat.completions.create(model="gpt-4o", messages=MSG, stream=True)
    args, finish = "", None
    async for chunk in stream:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                args += tc.function.arguments or "" if tc.function else ""
            finish = choice.finish_reason or finish
    assert orjson.loads(args) == {"city": "Paris"} and finish == "tool_calls"


async def test_azure_deployment_name_cannot_escape_its_path(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    azure = {
        "name": "az",
        "type": "azure",
        "base_url": upstream.root_url,
        "api_keys": [UPSTREAM_KEY],
        "models": {"gpt-4o*": None},
    }
    gw = await make_gateway(
        {"90-p.yaml": {"plugin": "provider-proxy", "config": {"providers": [azure]}}}
    )
    r = await gw.openai.chat.completions.create(
        model="gpt-4o/../secret?api-version=1", messages=MSG
    )
    # The fake names its answer after the deployment segment it routed on: the whole name
    # stayed one quoted segment, and the configured api-version was not overridden.
    assert r.model == "gpt-4o/../secret?api-version=1"
    assert upstream.llm.last_call.query["api-version"] == "2024-10-21"


async def test_each_request_walks_the_keys_itself(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway(
        {"90-p.yaml": provider_file(upstream, api_keys=["sk-revoked", UPSTREAM_KEY], max_retries=1)}
    )
    results = await asyncio.gather(
        *(gw.openai.chat.completions.create(model="gpt-4o", messages=MSG) for _ in range(10)),
        return_exceptions=True,
    )
    assert not [r for r in results if isinstance(r, Exception)]


async def test_named_error_event_mid_stream_is_an_error(
    make_gateway: GatewayFactory, aiohttp_server: Any
) -> None:
    from aiohttp import web

    async def erroring(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
        }
        await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await resp.write(b"event: error\ndata: overloaded\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", erroring)
    server = await aiohttp_server(app)
    provider = {
        "name": "e",
        "type": "openai",
        "base_url": str(server.make_url("/v1")),
        "api_keys": ["k"],
        "max_retries": 0,
    }
    gw = await make_gateway(
        {"90-p.yaml": {"plugin": "provider-proxy", "config": {"providers": [provider]}}}
    )
    stream = await gw.openai.chat.completions.create(model="m", messages=MSG, stream=True)
    with pytest.raises((openai.APIError, openai.APIConnectionError)):
        async for _ in stream:
            pass


async def test_upstream_stalling_mid_body_is_504(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway({"90-p.yaml": provider_file(upstream, read_timeout_s=0.2)})
    upstream.llm.stall_body(2.0)
    with pytest.raises(openai.APIStatusError) as exc:
        await gw.openai.chat.completions.create(model="gpt-4o", messages=MSG)
    assert exc.value.status_code == 504


async def test_multi_line_sse_events_are_relayed_well_formed(
    make_gateway: GatewayFactory, aiohttp_server: Any
) -> None:
    # One JSON value over several `data:` lines is valid SSE; relayed under a single `data:`
    # prefix, its later lines would reach the client as garbage.
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                "model": "m", "choices": [choice]}  # fmt: skip

    async def pretty_sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for obj in (chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"})):
            lines = json.dumps(obj, indent=1).splitlines()
            await resp.write("".join(f"data: {line}\n" for line in lines).encode() + b"\n")
        await resp.write(
            b"data: " + json.dumps(chunk({}, "stop")).encode() + b"\n\ndata: [DONE]\n\n"
        )
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", pretty_sse)
    server = await aiohttp_server(app)
    provider = {"name": "p", "base_url": str(server.make_url("/v1")), "api_keys": ["k"]}
    gw = await make_gateway(
        {"90-p.yaml": {"plugin": "provider-proxy", "config": {"providers": [provider]}}}
    )
    stream = await gw.openai.chat.completions.create(model="m", messages=MSG, stream=True)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi"
    assert chunks[-1].choices[0].finish_reason == "stop"


# ----------------------------------------------------------- retries and failover, transport mocked


def mocked(handler: MockHandler, **cfg: Any) -> ProviderUpstream:
    """An upstream whose calls ``handler`` answers."""
    settings = {"name": "m", "base_url": "http://up.invalid/v1", "retry_backoff_s": 0, **cfg}
    upstream = ProviderUpstream(ProviderConfig.model_validate(settings))
    upstream.transport = MockTransport(handler)
    return upstream


def scripted(*steps: MockResponse | HTTPClientError) -> tuple[MockHandler, list[dict[str, str]]]:
    """A handler giving ``steps`` in turn (raising the errors), and the headers it was sent."""
    todo, sent = list(steps), []

    def handler(request: UpstreamRequest) -> MockResponse:
        sent.append(dict(request.headers))
        step = todo.pop(0)
        if isinstance(step, HTTPClientError):
            raise step
        return step

    return handler, sent


async def test_connect_failures_are_retried_with_the_next_key() -> None:
    handler, sent = scripted(
        ConnectError("refused"), ConnectTimeout("slow"), MockResponse(200, body=b"{}")
    )
    upstream = mocked(handler, api_keys=["sk-1", "sk-2"], max_retries=2)
    resp = await upstream.post("chat.completions", "m", b"{}", {})
    assert resp.status == 200
    assert [h["Authorization"] for h in sent] == ["Bearer sk-1", "Bearer sk-2", "Bearer sk-1"]


@pytest.mark.parametrize(
    ("failure", "raised"),
    [
        (ConnectError("refused"), UpstreamError),
        (StaleConnection("closed while idle"), UpstreamError),
        (ConnectTimeout("slow"), UpstreamTimeout),
    ],
)
async def test_failing_every_attempt(failure: HTTPClientError, raised: type[GatewayError]) -> None:
    handler, sent = scripted(failure, failure, failure)
    with pytest.raises(raised) as err:
        await mocked(handler, max_retries=2).post("chat.completions", "m", b"{}", {})
    assert err.value.__cause__ is failure and len(sent) == 3


@pytest.mark.parametrize(
    "failure",
    [ResponseError("connection lost before the answer was whole"), ResponseError("malformed")],
)
async def test_a_broken_answer_is_not_retried(failure: HTTPClientError) -> None:
    # The request reached the upstream, which may have processed (and billed) it.
    handler, sent = scripted(failure, MockResponse(200, body=b"{}"))
    with pytest.raises(UpstreamError) as err:
        await mocked(handler, max_retries=2).post("chat.completions", "m", b"{}", {})
    assert err.value.__cause__ is failure and len(sent) == 1


async def test_a_read_timeout_is_not_retried() -> None:
    # The upstream may be working on it (and billing): not sent twice.
    handler, sent = scripted(ReadTimeout("no answer"), MockResponse(200))
    with pytest.raises(UpstreamTimeout):
        await mocked(handler, max_retries=2).post("chat.completions", "m", b"{}", {})
    assert len(sent) == 1


async def test_a_retried_answer_frees_its_connection() -> None:
    refused = [MockResponse(503, body=b"busy"), MockResponse(429, {"Retry-After": "0"})]
    handler, _ = scripted(*refused, MockResponse(200, body=b"{}"))
    resp = await mocked(handler, max_retries=2).post("chat.completions", "m", b"{}", {})
    assert resp.status == 200
    # Freed, not left open: the unread one closed, the empty one back to the pool.
    assert [r.connection for r in refused] == ["closed", "pooled"]


async def test_failover_frees_the_refused_answer_and_pools_the_streamed_one(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    providers = [
        {"name": "primary", "base_url": "http://primary.invalid/v1", "max_retries": 0,
         "fallbacks": ["backup"]},
        {"name": "backup", "base_url": "http://backup.invalid/v1"},
    ]  # fmt: skip
    busy = MockResponse(503, body=b"busy")
    events = b"".join(
        b"data: " + orjson.dumps(c) + b"\n\n"
        for c in (_chunk({"role": "assistant", "content": "hi"}), _chunk({}, "stop"))
    )
    streamed = MockResponse(
        200, {"Content-Type": "text/event-stream"}, events + b"data: [DONE]\n\n"
    )
    primary, _ = scripted(busy)
    backup, sent = scripted(streamed)
    client = await mocked_gateway(tmp_path, aiohttp_client, providers, primary, backup)
    async with client.post("/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
        assert resp.status == 200
        body = await resp.read()
    assert body.endswith(b"data: [DONE]\n\n") and b'"hi"' in body
    assert len(sent) == 1
    assert busy.connection == "closed"  # released unread: that connection is not reused
    assert streamed.connection == "pooled"  # read to its end: the connection is kept


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [choice]}  # fmt: skip


async def mocked_gateway(
    tmp_path: Path, aiohttp_client: Any, providers: list[dict[str, Any]], *handlers: MockHandler
) -> Any:
    """A gateway whose providers' calls the ``handlers`` answer, in the providers' order."""
    conf = {"90-p.yaml": {"plugin": "provider-proxy", "config": {"providers": providers}}}
    config = load_config(write_conf(tmp_path / "conf.d", conf))
    loaded = load(config)
    assert isinstance(loaded.terminal, ProviderProxyPlugin)
    for spec, handler in zip(providers, handlers, strict=True):
        backend = loaded.terminal.backends[spec["name"]]
        assert isinstance(backend, ProviderUpstream)
        backend.transport = MockTransport(handler)
    return await aiohttp_client(create_app(config, loaded))


# ------------------------------------------------------------------------- credentials (issue 16)


def with_creds(url: str, creds: str = "basic-user:b4sic-pw@") -> str:
    return url.replace("://", f"://{creds}", 1)


async def test_credentials_meant_for_other_services_never_go_upstream(
    gateway: Gateway, upstream: Upstream
) -> None:
    headers = {
        "X-Goog-Api-Key": "AIza-client",
        "Anthropic-Api-Key": "sk-ant-client",
        "X-Auth-Token": "tok-client",
        "X-Amz-Security-Token": "amz-client",
        "Ocp-Apim-Subscription-Key": "apim-client",
        "x-custom": "kept",
    }
    async with gateway.http.post(
        gateway.url("/v1/chat/completions"), json=CHAT, headers=headers
    ) as resp:
        assert resp.status == 200
    got = upstream.llm.last_call.headers
    assert got["x-custom"] == "kept"
    assert not [name for name in headers if name.lower() in got and name != "x-custom"]
    assert "client" not in str(got)


async def test_operator_drops_headers_or_forwards_only_some(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    sent = {"x-custom": "a", "x-tenant": "b", "X-Trace": "c"}
    for config, expected in (
        ({"drop_headers": ["X-Tenant"]}, {"x-custom", "x-trace"}),
        ({"forward_headers": ["x-trace"]}, {"x-trace"}),
    ):
        conf = provider_file(upstream)
        conf["config"].update(config)
        gw = await make_gateway({"90-p.yaml": conf}, str(config))
        async with gw.http.post(gw.url("/v1/chat/completions"), json=CHAT, headers=sent) as resp:
            assert resp.status == 200
        got = upstream.llm.last_call.headers
        assert {name for name in sent if name.lower() in got} == {
            n for n in sent if n.lower() in expected
        }
        # The gateway's own headers go anyway.
        assert got["authorization"] == f"Bearer {UPSTREAM_KEY}" and "x-request-id" in got


async def test_forwarding_a_credential_header_is_a_config_error(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    conf = provider_file(upstream)
    conf["config"]["forward_headers"] = ["x-trace", "X-Goog-Api-Key"]
    with pytest.raises(ConfigError, match=r"90-p\.yaml.*forward_headers.*x-goog-api-key"):
        await make_gateway({"90-p.yaml": conf})


async def test_base_url_credentials_are_never_printed(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO, logger="aigw")
    conf = provider_file(upstream, base_url=with_creds(upstream.base_url))
    gw = await make_gateway({"90-p.yaml": conf})
    await gw.openai.chat.completions.create(model="gpt-4o", messages=MSG)
    assert f"fake [openai {with_creds(upstream.base_url, '***@')}]" in caplog.text
    assert main(["check", "-c", str(gw.conf_dir)]) == 0
    out = capsys.readouterr().out
    assert with_creds(upstream.base_url, "***@") in out
    assert "b4sic-pw" not in caplog.text + out


async def test_base_url_credentials_are_sent_unless_the_key_sets_authorization(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    basic = "Basic " + base64.b64encode(b"basic-user:b4sic-pw").decode()
    openai_type = provider_file(upstream, base_url=with_creds(upstream.base_url))
    gw = await make_gateway({"90-p.yaml": openai_type}, "openai")
    await gw.openai.chat.completions.create(model="gpt-4o", messages=MSG)
    assert upstream.llm.last_call.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    azure = provider_file(upstream, type="azure", base_url=with_creds(upstream.root_url))
    gw = await make_gateway({"90-p.yaml": azure}, "azure")
    await gw.openai.chat.completions.create(model="gpt-4o", messages=MSG)
    got = upstream.llm.last_call.headers
    assert (got["authorization"], got["api-key"]) == (basic, UPSTREAM_KEY)


async def test_the_502_does_not_name_the_upstreams_address(
    make_gateway: GatewayFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    where = f"{upstream.server.host}:{upstream.server.port}"
    conf = provider_file(upstream, max_retries=0)
    await upstream.server.close()
    gw = await make_gateway({"90-p.yaml": conf})
    async with gw.http.post(gw.url("/v1/chat/completions"), json=CHAT) as resp:
        assert resp.status == 502
        message = (await resp.json())["error"]["message"]
    assert message == "upstream fake is unreachable"
    assert where in caplog.text  # the operator's log keeps it


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (ConnectError("cannot connect to 10.1.2.3:8443: refused"), "upstream m is unreachable"),
        (ConnectTimeout("connecting to 10.1.2.3:8443 took over 5 s"), "upstream m did not answer"),
        (ReadTimeout("ServerTimeoutError: 10.1.2.3:8443"), "upstream m did not answer in time"),
        (ResponseError("ClientOSError: 10.1.2.3:8443 reset"), "upstream m broke the answer"),
    ],
)
async def test_transport_errors_keep_the_address_out_of_the_clients_message(
    failure: HTTPClientError, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    handler, _ = scripted(failure)
    with pytest.raises(GatewayError) as err:
        await mocked(handler, max_retries=0).post("chat.completions", "m", b"{}", {})
    assert err.value.message.startswith(message) and "10.1.2.3" not in err.value.message
    assert "10.1.2.3:8443" in caplog.text


@pytest.mark.parametrize("stream", [False, True])
async def test_a_broken_body_keeps_the_address_out_of_the_clients_message(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
    stream: bool,
) -> None:
    gw = await make_gateway({"90-p.yaml": provider_file(upstream)})
    plugin = gw.server.app[PLUGINS].terminal
    assert isinstance(plugin, ProviderProxyPlugin)
    backend = plugin.backends["fake"]
    assert isinstance(backend, ProviderUpstream)
    broken = ResponseError("ClientPayloadError: 10.1.2.3:8443 reset")

    async def body() -> AsyncIterator[bytes]:
        yield b'data: {"choices": []}\n\n' if stream else b'{"choices": ['
        raise broken

    content_type = "text/event-stream" if stream else "application/json"
    answer = MockResponse(200, {"Content-Type": content_type}, body())
    backend.transport = MockTransport(lambda _: answer)
    request = {**CHAT, "stream": stream}
    async with gw.http.post(gw.url("/v1/chat/completions"), json=request) as resp:
        if stream:
            events = b""
            with pytest.raises(aiohttp.ClientPayloadError):  # the stream is cut after it
                async for chunk in resp.content.iter_any():
                    events += chunk
            assert b'"message":"upstream fake broke the stream"' in events
        else:
            assert resp.status == 502
            assert (await resp.json())["error"]["message"] == "upstream fake broke the answer"
    assert "10.1.2.3:8443" in caplog.text


def test_a_refused_base_url_is_named_without_its_credentials() -> None:
    cfg = ProviderConfig(name="f", base_url="ftp://basic-user:b4sic-pw@files.invalid/v1")
    gateway = cast(GatewayRuntime, SimpleNamespace(client=HTTPClient()))
    with pytest.raises(ValueError, match="not an http") as err:
        ProviderUpstream(cfg).start(gateway)
    assert "ftp://files.invalid/v1" in str(err.value) and "b4sic-pw" not in str(err.value)
    # The client's own message, for any caller that gives it credentials.
    with pytest.raises(ValueError, match=r"'ftp://\*\*\*@files.invalid/v1'"):
        HTTPClient().origin("ftp://basic-user:b4sic-pw@files.invalid/v1", 1, 1)
