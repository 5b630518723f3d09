"""A provider's ``max_response_bytes`` and ``max_event_bytes`` bound what an upstream may send."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import GatewayFactory

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
BIG = "x" * 4096  # past the 2 KiB limits below


def chunk(content: str) -> bytes:
    delta = {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
    return b"data: " + orjson.dumps({"object": "chat.completion.chunk", **delta}) + b"\n\n"


async def chat(request: web.Request) -> web.StreamResponse:
    """Answers with ``BIG`` content when the prompt asks for it, else a small answer."""
    payload = await request.json()
    content = BIG if payload["messages"][-1]["content"] == "big" else "small"
    if payload.get("stream"):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(chunk("a"))
        await resp.write(chunk(content))
        await resp.write(b"data: [DONE]\n\n")
        return resp
    message = {"role": "assistant", "content": content}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return web.json_response({"object": "chat.completion", "model": "m", "choices": [choice]})


async def start(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    make_gateway: GatewayFactory,
    max_response_bytes: int = 2048,
) -> object:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    upstream = await aiohttp_server(app)
    provider = {
        "name": "small",
        "type": "openai",
        "base_url": str(upstream.make_url("/v1")),
        "models": ["*"],
        "max_retries": 0,
        "max_response_bytes": max_response_bytes,
        "max_event_bytes": 2048,
    }
    return await make_gateway(
        {
            "90-provider-proxy.yaml": {
                "plugin": "provider-proxy",
                "config": {"providers": [provider]},
            }
        }
    )


async def test_an_answer_past_max_response_bytes_is_a_502(
    aiohttp_server: Callable[..., Awaitable[TestServer]], make_gateway: GatewayFactory
) -> None:
    gw = await start(aiohttp_server, make_gateway)
    url = gw.url("/v1/chat/completions")  # type: ignore[attr-defined]
    http = gw.http  # type: ignore[attr-defined]
    async with http.post(url, json=CHAT) as resp:
        assert resp.status == 200  # under the limit
    async with http.post(
        url, json={**CHAT, "messages": [{"role": "user", "content": "big"}]}
    ) as resp:
        assert resp.status == 502
        error = (await resp.json())["error"]
        assert "small" in error["message"] and BIG not in error["message"]


async def test_an_event_past_max_event_bytes_ends_the_stream_with_an_error(
    aiohttp_server: Callable[..., Awaitable[TestServer]], make_gateway: GatewayFactory
) -> None:
    # The whole answer may be larger: events are bounded one by one.
    gw = await start(aiohttp_server, make_gateway, max_response_bytes=1 << 20)
    url = gw.url("/v1/chat/completions")  # type: ignore[attr-defined]
    http = gw.http  # type: ignore[attr-defined]
    small = {**CHAT, "stream": True}
    async with http.post(url, json=small) as resp:
        assert (await resp.read()).endswith(b"data: [DONE]\n\n")
    big = {**small, "messages": [{"role": "user", "content": "big"}]}
    async with http.post(url, json=big) as resp:
        assert resp.status == 200  # the headers went out with the first event
        body = b""
        with contextlib.suppress(aiohttp.ClientPayloadError):  # cut: no last chunk
            async for data in resp.content.iter_any():
                body += data
    assert b"larger than 2048 bytes" in body
    assert BIG.encode() not in body and b"[DONE]" not in body
