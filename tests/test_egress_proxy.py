"""Providers reached through an HTTP egress proxy: their own ``proxy``, or the environment's.

The proxy here is a real forward proxy on 127.0.0.1: it takes absolute-form requests
(``POST http://host:port/path``), records them and relays them, streaming, to their target.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
import trustme
from aigw_plugins.provider_proxy.config import ProviderConfig
from aigw_plugins.provider_proxy.upstream import Upstream as ProviderUpstream
from aiohttp import web
from aiohttp.test_utils import TestServer

from aigw.gateway import Gateway as GatewayRuntime
from tests.conftest import Gateway, GatewayFactory, Upstream, provider_file

_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "via the proxy"}]}


@dataclass
class ForwardProxy:
    """What the proxy relayed: (absolute URL, Proxy-Authorization header or None)."""

    server: TestServer
    seen: list[tuple[str, str | None]] = field(default_factory=list)

    def url(self, credentials: str = "") -> str:
        return f"http://{credentials}{self.server.host}:{self.server.port}"


@pytest.fixture
async def forward_proxy(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> ForwardProxy:
    session = aiohttp.ClientSession(auto_decompress=False)
    proxy: ForwardProxy

    async def relay(request: web.Request) -> web.StreamResponse:
        proxy.seen.append((str(request.url), request.headers.get("Proxy-Authorization")))
        headers = {k: v for k, v in request.headers.items() if not k.lower().startswith("proxy-")}
        async with session.request(
            request.method, request.url, headers=headers, data=await request.read()
        ) as upstream:
            kept = {k: v for k, v in upstream.headers.items() if k.lower() not in _FRAMING}
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=kept)
            await resp.prepare(request)
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay)
    app.on_cleanup.append(lambda _: session.close())
    proxy = ForwardProxy(await aiohttp_server(app))
    return proxy


async def chat(gw: Gateway, **extra: Any) -> dict[str, Any]:
    """A chat completion through raw aiohttp (the openai client would obey HTTP_PROXY too)."""
    async with gw.http.post(gw.url("/v1/chat/completions"), json={**CHAT, **extra}) as resp:
        assert resp.status == 200, await resp.text()
        if extra.get("stream"):
            return {"sse": (await resp.read()).decode()}
        result: dict[str, Any] = await resp.json()
        return result


async def test_provider_proxy_with_credentials(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    forward_proxy: ForwardProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aigw")
    provider = provider_file(upstream, proxy=forward_proxy.url("egress:s3cret@"))
    gw = await make_gateway({"90-provider-proxy.yaml": provider})
    answer = await chat(gw)
    assert "via the proxy" in answer["choices"][0]["message"]["content"]
    streamed = await chat(gw, stream=True)
    assert streamed["sse"].rstrip().endswith("data: [DONE]")

    expected_auth = "Basic " + base64.b64encode(b"egress:s3cret").decode()
    target = f"{upstream.base_url}/chat/completions"
    assert forward_proxy.seen == [(target, expected_auth), (target, expected_auth)]
    assert upstream.llm.chat_calls == 2
    started = caplog.text
    assert f"via proxy {forward_proxy.url()}" in started and "s3cret" not in started


async def test_environment_proxy_and_no_proxy(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    forward_proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", forward_proxy.url())
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    via_env = await make_gateway({"90-provider-proxy.yaml": provider_file(upstream)}, "env")
    await chat(via_env)
    assert len(forward_proxy.seen) == 1

    # An empty `proxy` means none, whatever the environment says.
    direct = await make_gateway({"90-provider-proxy.yaml": provider_file(upstream, proxy="")}, "d")
    await chat(direct)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    exempt = await make_gateway({"90-provider-proxy.yaml": provider_file(upstream)}, "no-proxy")
    await chat(exempt)
    assert len(forward_proxy.seen) == 1 and upstream.llm.chat_calls == 3


@pytest.mark.parametrize("proxy", ["https://proxy.example:3128", "socks5://proxy.example:1080"])
async def test_only_http_proxies(
    make_gateway: GatewayFactory, upstream: Upstream, proxy: str
) -> None:
    with pytest.raises(Exception, match="is not an http:// proxy URL"):
        await make_gateway({"90-provider-proxy.yaml": provider_file(upstream, proxy=proxy)})


async def test_proxy_credentials_never_enter_an_https_tunnel(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    # A real CONNECT proxy in front of a real https upstream (a throwaway CA's certificate).
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    seen: list[dict[str, str]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    upstream = await aiohttp_server(app, ssl=server_tls)
    connects: list[bytes] = []

    async def tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        connects.append(head)
        host, _, port = head.split(b" ")[1].decode().rpartition(":")
        to_reader, to_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(_pipe(reader, to_writer), _pipe(to_reader, writer))

    proxy = await asyncio.start_server(tunnel, "127.0.0.1", 0)
    proxy_port = proxy.sockets[0].getsockname()[1]
    proxy_url = f"http://egress:s3cret@127.0.0.1:{proxy_port}"
    url = str(upstream.make_url("/v1"))
    cfg = ProviderConfig(name="t", base_url=url, proxy=proxy_url, api_key="sk-k")
    provider = ProviderUpstream(cfg)
    assert provider.proxy == f"http://127.0.0.1:{proxy_port}"
    connector = aiohttp.TCPConnector(ssl=client_tls)
    async with proxy, aiohttp.ClientSession(connector=connector) as session:
        provider.start(cast(GatewayRuntime, SimpleNamespace(session=session)))
        headers: dict[str, str] = {}
        resp = await provider.post("chat.completions", "m", b'{"x": 1}', headers)
        assert (resp.status, await resp.read()) == (200, b'{"x": 1}')
        resp.release()

    auth = "Basic " + base64.b64encode(b"egress:s3cret").decode()
    # Only on the CONNECT to the proxy; the request inside the tunnel goes to the provider.
    assert len(connects) == 1
    assert connects[0].startswith(f"CONNECT 127.0.0.1:{upstream.port} ".encode())
    assert f"Proxy-Authorization: {auth}\r\n".encode() in connects[0]
    assert len(seen) == 1 and seen[0]["Authorization"] == "Bearer sk-k"
    assert not [name for name in seen[0] if name.lower().startswith("proxy-")]
    assert "Proxy-Authorization" not in headers


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except ConnectionError:
        pass
    finally:
        sink.close()


@pytest.mark.parametrize(
    ("userinfo", "secret"),
    # A password alone (https://:token@host) is credentials too: left in the URL it was never
    # sent by the lean client, and through a proxy aiohttp refused it (a 500).
    [("basic-user:b4sic-pw", "b4sic-pw"), (":t0ken-pw", "t0ken-pw")],
    ids=["user-and-password", "password-alone"],
)
async def test_base_url_credentials_through_the_proxy(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    forward_proxy: ForwardProxy,
    caplog: pytest.LogCaptureFixture,
    userinfo: str,
    secret: str,
) -> None:
    # aiohttp refuses credentials in the URL next to an Authorization header: the provider
    # sends them as a header itself, and only the API key's Authorization when it has one.
    caplog.set_level(logging.INFO, logger="aigw")
    base_url = upstream.base_url.replace("://", f"://{userinfo}@")
    for kind, base, expected in (
        ("openai", base_url, "Bearer sk-upstream-secret"),
        (
            "azure",
            base_url.removesuffix("/v1"),
            "Basic " + base64.b64encode(userinfo.encode()).decode(),
        ),
    ):
        conf = provider_file(upstream, type=kind, base_url=base, proxy=forward_proxy.url())
        gw = await make_gateway({"90-provider-proxy.yaml": conf}, kind)
        await chat(gw)
        assert upstream.llm.last_call.headers["authorization"] == expected
    assert [url for url, _ in forward_proxy.seen] == [
        f"{upstream.base_url}/chat/completions",
        f"{upstream.root_url}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
    ]
    assert secret not in caplog.text
