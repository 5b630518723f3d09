"""WholeResponse.send: the same bytes on the wire as aiohttp's prepare + write_eof, in one write.

Raw HTTP over a socket against a real aiohttp server, so framing, keep-alive and the head are
seen exactly as a client sees them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request

from aigw.whole_response import WholeResponse

ServerFactory = Callable[..., Awaitable[TestServer]]
BUFFERED = web.AppKey("buffered", list)
BIG = 32 * 1024 * 1024  # far more than the loopback socket buffers hold: writing must pause


def _response(cls: type[web.Response], **extra: object) -> web.Response:
    kwargs: dict[str, object] = {
        "status": 201,
        "body": b'{"ok":true}',
        "headers": {"x-one": "1", "x-two": "2"},
        "content_type": "application/json",
    }
    kwargs.update(extra)
    return cls(**kwargs)  # type: ignore[arg-type]


async def _whole(request: web.Request) -> web.StreamResponse:
    resp = _response(WholeResponse)
    assert isinstance(resp, WholeResponse)
    await resp.send(request)
    return resp


async def _aiohttp(request: web.Request) -> web.StreamResponse:
    return _response(web.Response)


async def _whole_untyped(request: web.Request) -> web.StreamResponse:
    resp = WholeResponse(body=b"bytes")
    await resp.send(request)
    return resp


async def _aiohttp_untyped(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b"bytes")


async def _empty(request: web.Request) -> web.StreamResponse:
    resp = WholeResponse(status=204)
    await resp.send(request)
    return resp


async def _refused(request: web.Request) -> web.StreamResponse:
    bad = WholeResponse(body=b"never sent", headers={"x-bad": "a\r\nInjected: yes"})
    with pytest.raises(ValueError):
        await bad.send(request)
    resp = WholeResponse(body=b"instead")
    await resp.send(request)
    return resp


async def _big(request: web.Request) -> web.StreamResponse:
    resp = WholeResponse(body=b"x" * BIG)
    await resp.send(request)
    transport = request.transport
    assert transport is not None
    request.app[BUFFERED].append(transport.get_write_buffer_size())
    return resp


async def _raises_after(request: web.Request) -> web.StreamResponse:
    await WholeResponse(body=b"sent").send(request)
    raise RuntimeError("a bug after the reply went out")


@pytest.fixture
async def server(aiohttp_server: ServerFactory) -> TestServer:
    app = web.Application()
    app[BUFFERED] = []
    app.router.add_get("/whole", _whole)
    app.router.add_get("/aiohttp", _aiohttp)
    app.router.add_get("/whole-untyped", _whole_untyped)
    app.router.add_get("/aiohttp-untyped", _aiohttp_untyped)
    app.router.add_get("/empty", _empty)
    app.router.add_get("/refused", _refused)
    app.router.add_get("/big", _big)
    app.router.add_get("/raises-after", _raises_after)
    return await aiohttp_server(app)


async def _read_response(reader: asyncio.StreamReader, head_only: bool = False) -> bytes:
    """One response: the head, then as many body bytes as its Content-Length says."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = b"" if head_only else await reader.readexactly(length)
    return head + body


async def _exchange(server: TestServer, requests: list[bytes]) -> tuple[list[bytes], bool]:
    """Send the requests one at a time on one connection; the responses, and whether the
    server then closed the connection (else it answered the next request on it)."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    responses = []
    try:
        for request in requests:
            writer.write(request)
            head_only = request.startswith(b"HEAD ")
            responses.append(await asyncio.wait_for(_read_response(reader, head_only), 5))
        closed = await asyncio.wait_for(reader.read(1), 5) == b"" if _closes(requests) else False
    finally:
        writer.close()
    return responses, closed


def _closes(requests: list[bytes]) -> bool:
    last = requests[-1].lower()
    return b"connection: close" in last or (
        b"http/1.0" in last and b"connection: keep-alive" not in last
    )


def _without_date(response: bytes) -> bytes:
    return b"\r\n".join(
        line for line in response.split(b"\r\n") if not line.lower().startswith(b"date:")
    )


@pytest.mark.parametrize(
    ("request_line", "headers"),
    [
        ("GET {path} HTTP/1.1", "Host: x\r\n"),
        ("GET {path} HTTP/1.1", "Host: x\r\nConnection: close\r\n"),
        ("GET {path} HTTP/1.0", ""),
        ("GET {path} HTTP/1.0", "Connection: keep-alive\r\n"),
        ("HEAD {path} HTTP/1.1", "Host: x\r\n"),
    ],
    ids=["1.1", "1.1-close", "1.0", "1.0-keep-alive", "head"],
)
async def test_the_same_response_as_aiohttps(
    server: TestServer, request_line: str, headers: str
) -> None:
    seen = {}
    closes = _closes([f"{request_line}\r\n{headers}".encode()])
    for path in ("/whole", "/aiohttp"):
        request = f"{request_line.format(path=path)}\r\n{headers}\r\n".encode()
        # A kept-alive connection must answer a second request after the first.
        responses, closed = await _exchange(server, [request] * (1 if closes else 2))
        assert all(b"\r\nDate: " in r for r in responses)
        assert len(set(map(_without_date, responses))) == 1
        seen[path] = (_without_date(responses[0]), closed)
    assert seen["/whole"] == seen["/aiohttp"]
    response, closed = seen["/whole"]
    assert closed == closes
    assert b"\r\nx-one: 1\r\nx-two: 2\r\n" in response
    assert b"\r\nContent-Length: 11\r\n" in response
    if not request_line.startswith("HEAD"):
        assert response.endswith(b'\r\n\r\n{"ok":true}')


async def test_a_body_without_a_type_is_octets_as_with_aiohttp(server: TestServer) -> None:
    seen = []
    for path in ("/whole-untyped", "/aiohttp-untyped"):
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        responses, _ = await _exchange(server, [request])
        seen.append(_without_date(responses[0]))
    assert seen[0] == seen[1]
    assert b"\r\nContent-Type: application/octet-stream\r\n" in seen[0]


async def test_a_response_without_a_body_goes_aiohttps_way(server: TestServer) -> None:
    responses, _ = await _exchange(server, [b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n"] * 2)
    assert [r.split(b"\r\n")[0] for r in responses] == [b"HTTP/1.1 204 No Content"] * 2
    assert all(b"content-length" not in r.lower() for r in responses)


async def test_a_refused_header_writes_nothing(server: TestServer) -> None:
    # The refused response leaves no byte on the wire: the client sees just the next one.
    responses, _ = await _exchange(server, [b"GET /refused HTTP/1.1\r\nHost: x\r\n\r\n"] * 2)
    for response in responses:
        assert response.startswith(b"HTTP/1.1 200 OK\r\n")
        assert response.endswith(b"\r\n\r\ninstead")
        assert b"Injected" not in response


async def test_a_large_body_waits_for_the_client(server: TestServer) -> None:
    # send() returns only once the transport's buffer is down to its low-water mark (tens of
    # KiB): without waiting, most of the 32 MiB would still be buffered when it returned.
    responses, _ = await _exchange(server, [b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"])
    assert responses[0].endswith(b"\r\n\r\n" + b"x" * BIG)
    [buffered] = server.app[BUFFERED]
    assert buffered < 1024 * 1024


async def test_a_handler_failing_after_send_sends_no_second_response(server: TestServer) -> None:
    # aiohttp answers a handler's exception with a 500 unless a response went out already;
    # then it closes the connection. It must see that one did.
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(b"GET /raises-after HTTP/1.1\r\nHost: x\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 5)  # everything until the server closes
    finally:
        writer.close()
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest.endswith(b"\r\n\r\nsent")
    assert rest.count(b"HTTP/1.1 ") == 1


async def test_a_client_gone_is_a_connection_reset() -> None:
    transport = mock.Mock(**{"is_closing.return_value": True})
    request = make_mocked_request("GET", "/", transport=transport)
    with pytest.raises(ConnectionResetError):
        await WholeResponse(body=b"lost").send(request)
    transport.write.assert_not_called()
