"""The upstream transports' one contract: the pooled client, aiohttp through a real forward
proxy on 127.0.0.1, and the mock answer alike (a plain answer, a streamed one, a refused
connection, a read timeout before and during the body, a broken body); then what is each one's
own (the mock's connection states, the proxy's error mapping, the pool's one origin)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.test_utils import TestServer

from aigw.http_client import (
    ConnectError,
    ConnectTimeout,
    HTTPClient,
    HTTPClientError,
    ReadTimeout,
    ResponseError,
)
from aigw.mock_transport import MockResponse, MockTransport
from aigw.transport import (
    PooledTransport,
    ProxyTransport,
    Transport,
    UpstreamRequest,
    UpstreamResponse,
    client_error,
)
from tests.test_egress_proxy import ForwardProxy, forward_proxy  # noqa: F401 (a fixture)

READ_TIMEOUT_S = 0.3
JSON = {"Content-Type": "application/json; charset=utf-8", "X-Answer": "plain"}


class Scripted:
    """What the upstream answers per path, served for real or by the mock alike."""

    def __init__(self) -> None:
        self.more = asyncio.Event()  # the stream's second chunk waits for it
        self.never = asyncio.Event()  # what stalls waits for

    async def plain(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=b'{"ok": true}', headers=JSON)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: one\n\n")
        await self.more.wait()
        await resp.write(b"data: two\n\n")
        await resp.write_eof()
        return resp

    async def stall_head(self, request: web.Request) -> web.StreamResponse:
        await self.never.wait()
        raise AssertionError("unreachable")

    async def stall_body(self, request: web.Request) -> web.StreamResponse:
        return await self._partial(request, self.never.wait)

    async def broken(self, request: web.Request) -> web.StreamResponse:
        async def hang_up() -> None:
            assert request.transport is not None
            request.transport.close()

        return await self._partial(request, hang_up)

    async def _partial(
        self, request: web.Request, then: Callable[[], Awaitable[object]]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 100
        await resp.prepare(request)
        await resp.write(b"0123456789")
        await then()
        return resp

    def app(self) -> web.Application:
        app = web.Application()
        for name in ("plain", "stream", "stall_head", "stall_body", "broken"):
            app.router.add_post(f"/v1/{name}", getattr(self, name))
        return app

    async def mock(self, request: UpstreamRequest) -> MockResponse:
        """The same answers without a server."""
        path = request.url.rsplit("/", 1)[1]
        if request.url.startswith(REFUSED):
            raise ConnectError("connection refused")
        if path == "plain":
            return MockResponse(200, JSON, b'{"ok": true}', "OK")
        if path == "stream":
            return MockResponse(200, {"Content-Type": "text/event-stream"}, self._chunks())
        if path == "stall_head":
            raise ReadTimeout("no data")
        return MockResponse(200, {"Content-Type": "application/json"}, self._partial_chunks(path))

    async def _chunks(self) -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        await self.more.wait()
        yield b"data: two\n\n"

    async def _partial_chunks(self, path: str) -> AsyncIterator[bytes]:
        yield b"0123456789"
        raise ReadTimeout("no data") if path == "stall_body" else ResponseError("closed")


REFUSED = "http://refused.invalid"  # the mock's unreachable upstream


@dataclass
class Case:
    """A transport to the scripted upstream (``base``), and one whose connection fails."""

    transport: Transport
    base: str
    refused: Transport
    refused_base: str

    async def post(self, name: str) -> UpstreamResponse:
        return await self.transport.send(request(f"{self.base}/v1/{name}"))


def request(url: str) -> UpstreamRequest:
    return UpstreamRequest(url, b'{"q": 1}', {"Content-Type": "application/json"})


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port bound but not listening: connections to it are refused, and nobody else can
    take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(params=["pooled", "proxy", "mock"])
async def case(
    request: pytest.FixtureRequest,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    refusing_port: int,
    forward_proxy: ForwardProxy,  # noqa: F811 (the fixture)
) -> AsyncIterator[tuple[Case, Scripted]]:
    scripted = Scripted()
    kind = request.param
    if kind == "mock":
        mock = MockTransport(scripted.mock)
        yield Case(mock, "http://upstream.invalid", mock, REFUSED), scripted
        return
    server = await aiohttp_server(scripted.app())
    base = str(server.make_url("")).rstrip("/")
    dead = f"http://127.0.0.1:{refusing_port}"
    if kind == "pooled":
        client = HTTPClient()
        yield (
            Case(
                PooledTransport(client, base, 5, READ_TIMEOUT_S),
                base,
                PooledTransport(client, dead, 5, READ_TIMEOUT_S),
                dead,
            ),
            scripted,
        )
        client.close()
        return
    async with aiohttp.ClientSession() as session:
        yield (
            Case(
                ProxyTransport(session, forward_proxy.url(), None, 5, READ_TIMEOUT_S),
                base,
                ProxyTransport(session, dead, None, 5, READ_TIMEOUT_S),
                base,
            ),
            scripted,
        )


async def test_a_plain_answer(case: tuple[Case, Scripted]) -> None:
    c, _ = case
    resp = await c.post("plain")
    assert (resp.status, resp.reason) == (200, "OK")
    assert resp.headers["x-answer"] == resp.headers["X-ANSWER"] == "plain"
    assert resp.content_type == "application/json"
    assert not resp.content.at_eof()
    assert await resp.read() == b'{"ok": true}'
    assert resp.content.at_eof()
    resp.release()


async def test_a_streamed_answer_arrives_as_it_is_sent(case: tuple[Case, Scripted]) -> None:
    c, scripted = case
    resp = await c.post("stream")
    chunks = resp.content.iter_any()
    # The first chunk arrives while the second is not even written.
    assert await anext(chunks) == b"data: one\n\n"
    scripted.more.set()
    assert b"".join([chunk async for chunk in chunks]) == b"data: two\n\n"
    assert resp.content.at_eof()
    resp.release()


async def test_a_refused_connection(case: tuple[Case, Scripted]) -> None:
    c, _ = case
    with pytest.raises(ConnectError):
        await c.refused.send(request(f"{c.refused_base}/v1/plain"))


async def test_no_head_in_the_read_timeout(case: tuple[Case, Scripted]) -> None:
    c, _ = case
    with pytest.raises(ReadTimeout) as err:
        await c.post("stall_head")
    assert isinstance(err.value, TimeoutError)


@pytest.mark.parametrize("reading", ["read", "iter_any"])
@pytest.mark.parametrize(
    ("path", "error"), [("stall_body", ReadTimeout), ("broken", ResponseError)]
)
async def test_a_body_that_stalls_or_breaks(
    case: tuple[Case, Scripted], reading: str, path: str, error: type[HTTPClientError]
) -> None:
    c, _ = case
    resp = await c.post(path)
    assert resp.status == 200
    with pytest.raises(error):
        if reading == "read":
            await resp.read()
        else:
            async for _ in resp.content.iter_any():
                pass
    assert not resp.content.at_eof()
    resp.close()


# --------------------------------------------------------------------------- MockTransport


async def test_mock_connection_states() -> None:
    answers: list[MockResponse] = []

    def handler(req: UpstreamRequest) -> MockResponse:  # a plain function will do
        answers.append(MockResponse(body=req.body))
        return answers[-1]

    transport = MockTransport(handler)
    whole = await transport.send(request("http://u/v1"))
    assert whole.content_type == "application/octet-stream"
    assert await whole.read() == b'{"q": 1}'
    whole.release()
    whole.close()  # after release: changes nothing, as with a real answer
    assert whole.connection == "pooled"

    early = await transport.send(request("http://u/v1"))
    early.release()  # unread: the connection cannot be reused
    assert early.connection == "closed"
    with pytest.raises(ResponseError):
        await early.read()

    closed = await transport.send(request("http://u/v1"))
    assert await closed.read() == b'{"q": 1}'
    closed.close()  # read to its end, but closed: not reused
    assert closed.connection == "closed"


async def test_mock_chunks_end_only_when_their_source_does() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"a"
        yield b""  # never handed out, as a socket would not
        yield b"b"

    resp = MockResponse(body=chunks())
    got = []
    async for chunk in resp.content.iter_any():
        got.append(chunk)
        assert not resp.content.at_eof()  # the end has not arrived with it
    assert got == [b"a", b"b"] and resp.content.at_eof()


# --------------------------------------------------------------------------- ProxyTransport


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (aiohttp.ConnectionTimeoutError("connect"), ConnectTimeout),
        (aiohttp.SocketTimeoutError("read"), ReadTimeout),
        (aiohttp.ServerTimeoutError("read"), ReadTimeout),
        (
            aiohttp.ClientProxyConnectionError(
                ConnectionKey("h", 80, False, True, None, None, None), OSError(111, "refused")
            ),
            ConnectError,
        ),
        (aiohttp.ClientPayloadError("cut short"), ResponseError),
        (aiohttp.ServerDisconnectedError(), ResponseError),
    ],
)
def test_aiohttp_errors_become_the_client_errors(
    raised: aiohttp.ClientError, expected: type[HTTPClientError]
) -> None:
    mapped = client_error(raised)
    assert type(mapped) is expected
    assert type(raised).__name__ in str(mapped)


async def test_the_proxy_transport_bounds_what_read_collects(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    forward_proxy: ForwardProxy,  # noqa: F811 (the fixture)
) -> None:
    server = await aiohttp_server(Scripted().app())
    async with aiohttp.ClientSession() as session:
        for limit, expected in ((12, b'{"ok": true}'), (11, None)):
            transport = ProxyTransport(
                session, forward_proxy.url(), None, 5, 5, max_body_bytes=limit
            )
            resp = await transport.send(request(str(server.make_url("/v1/plain"))))
            if expected is None:
                with pytest.raises(ResponseError, match="over 11 bytes"):
                    await resp.read()
                resp.close()
            else:
                assert await resp.read() == expected
                resp.release()


# --------------------------------------------------------------------------- PooledTransport


async def test_the_pool_serves_its_origin_only() -> None:
    client = HTTPClient()
    transport = PooledTransport(client, "http://127.0.0.1:1/v1", 5, 5)
    for req in (
        request("http://127.0.0.1:12/v1/chat/completions"),  # another port, same prefix
        request("https://127.0.0.1:1/v1/chat/completions"),
        UpstreamRequest("http://127.0.0.1:1/v1/models", b"", {}, "GET"),
    ):
        with pytest.raises(ValueError, match=r"not a POST to http://127\.0\.0\.1:1/"):
            await transport.send(req)
    client.close()
