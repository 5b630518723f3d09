"""The contract between aigw.aiohttp_private and the installed aiohttp.

The installed version must pass the start-up check; the check must notice each kind of change
it guards against; and with the fast paths off (as on an aiohttp that fails the check) the
gateway must still work, the same bytes on the wire, through aiohttp's public API only.
tox.ini runs this (and the rest) on the oldest and newest aiohttp setup.cfg allows.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from aigw import aiohttp_private
from aigw.whole_response import WholeResponse
from tests.conftest import GatewayFactory, Upstream, provider_file
from tests.test_bad_input import CHAT_BODY, raw_exchange
from tests.test_whole_response import _exchange, _without_date

ServerFactory = Callable[..., Awaitable[TestServer]]
ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def public_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """aigw as on an aiohttp that fails the start-up check."""
    monkeypatch.setattr(aiohttp_private, "FAST_PATHS_OK", False)
    monkeypatch.setattr(aiohttp_private, "PROBLEMS", ("a simulated change",))


def test_the_installed_aiohttp_passes_the_check() -> None:
    assert aiohttp_private.PROBLEMS == ()
    assert aiohttp_private.FAST_PATHS_OK


def _other_head(status_line: str, headers: Any) -> bytes:
    return b"HTTP/1.1 200 OK\r\n\r\n"


@pytest.mark.parametrize(
    ("where", "name", "value"),
    [
        (aiohttp_private, "_IMPORT_ERROR", "cannot import name '_serialize_headers'"),
        (aiohttp_private, "_serialize_headers", _other_head),
        (aiohttp_private, "must_be_empty_body", lambda method, status: False),
        (web.StreamResponse, "keep_alive", property(lambda self: None)),
        (web.StreamResponse, "prepared", property(lambda self: False)),
        (web.StreamResponse, "enable_compression", lambda self: None),
        (web.RequestHandler, "handle_error", lambda self, request, status=500: None),
        (web.RequestHandler, "finish_response", lambda self, request, resp, start_time: None),
        (web.RequestHandler, "finish_response", lambda self, request, response, start: None),
        (web.Application, "_make_handler", None),
        (web.BaseRequest, "ATTRS", frozenset()),
        (web.Application, "_handle", lambda self, request, extra: None),
        (web.Request, "ATTRS", frozenset()),
        (aiohttp_private.UrlMappingMatchInfo, "freeze", None),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_the_check_notices_a_change(
    monkeypatch: pytest.MonkeyPatch, where: Any, name: str, value: Any
) -> None:
    assert aiohttp_private._check() == []
    monkeypatch.setattr(where, name, value)
    assert aiohttp_private._check() != []


RESPONSES: dict[str, Callable[[], web.Response]] = {
    "/json": lambda: WholeResponse(
        status=201, body=b'{"ok":true}', headers={"x-one": "1"}, content_type="application/json"
    ),
    "/untyped": lambda: WholeResponse(body=b"bytes"),
    "/empty-body": lambda: WholeResponse(body=b""),
    "/closing": lambda: WholeResponse(body=b"bye", headers={"Connection": "close"}),
    "/no-content": lambda: WholeResponse(status=204),
    "/error": lambda: WholeResponse(status=429, body=b'{"error":{}}', reason="Slow Down"),
}
REQUESTS = [
    "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "GET {path} HTTP/1.0\r\n\r\n",
    "GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n",
]


async def test_the_same_bytes_with_the_fast_paths_off(
    aiohttp_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[bool] = []
    write_whole = aiohttp_private.write_whole

    def counted(response: web.Response, request: web.BaseRequest) -> bool:
        taken.append(write_whole(response, request))
        return taken[-1]

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = RESPONSES[request.path]()
        assert isinstance(resp, WholeResponse)
        await resp.send(request)
        return resp

    monkeypatch.setattr(aiohttp_private, "write_whole", counted)
    app = web.Application()
    for path in RESPONSES:
        app.router.add_get(path, handle)
    server = await aiohttp_server(app)
    cases = [r.format(path=p).encode() for p in RESPONSES for r in REQUESTS]

    async def wire() -> list[tuple[bytes, bool]]:
        seen = []
        for request in cases:
            responses, closed = await _exchange(server, [request])
            seen.append((_without_date(responses[0]), closed))
        return seen

    fast = await wire()
    assert taken.count(True) == 4 * len(RESPONSES) - 4  # all but HEAD and the 204
    monkeypatch.setattr(aiohttp_private, "FAST_PATHS_OK", False)
    taken.clear()
    public = await wire()
    assert taken == [False] * len(cases)
    assert public == fast


async def _body_taken_then_read(request: web.Request) -> web.Response:
    taken = aiohttp_private.take_body(request)
    read = await request.read()  # a plugin reading the body again gets it all the same
    return web.Response(text=f"{taken!r} {read!r}")


async def test_a_body_taken_is_still_read(aiohttp_client: ClientFactory) -> None:
    app = web.Application()
    app.router.add_post("/", _body_taken_then_read)
    client = await aiohttp_client(app)
    resp = await client.post("/", data=b"whole")
    assert await resp.text() == "b'whole' b'whole'"


async def test_no_body_is_taken_with_the_fast_paths_off(
    aiohttp_client: ClientFactory, public_only: None
) -> None:
    app = web.Application()
    app.router.add_post("/", _body_taken_then_read)
    client = await aiohttp_client(app)
    resp = await client.post("/", data=b"whole")
    assert await resp.text() == "None b'whole'"


async def test_the_gateway_works_on_aiohttps_public_paths(
    public_only: None,
    make_gateway: GatewayFactory,
    upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="aigw"):
        gw = await make_gateway({"90-provider-proxy.yaml": provider_file(upstream)})
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "a simulated change" in warning and "public API only" in warning
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(CHAT_BODY), CHAT_BODY)
    )
    status, headers, body = await raw_exchange(gw, request)
    assert (status, headers["content-type"]) == (200, "application/json")
    assert b'"chat.completion"' in body
    # What aiohttp answers itself stays aiohttp's: plain text, no request id.
    status, headers, body = await raw_exchange(gw, b"GXT\x01 / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, headers["content-type"]) == (400, "text/plain; charset=utf-8")
    assert "x-request-id" not in headers


async def test_a_server_of_another_kind_keeps_aiohttps_error_replies(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Other(web.Server):
        """A server aiohttp might make instead of its own."""

    make = web.Application._make_handler

    def other(self: web.Application, **kwargs: Any) -> web.Server:
        server = make(self, **kwargs)
        server.__class__ = Other
        return server

    monkeypatch.setattr(web.Application, "_make_handler", other)
    with caplog.at_level(logging.WARNING, logger="aigw"):
        gw = await make_gateway({"90-provider-proxy.yaml": provider_file(upstream)})
    assert "another kind of server (Other)" in caplog.text
    status, headers, _ = await raw_exchange(gw, b"GXT\x01 / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, headers["content-type"]) == (400, "text/plain; charset=utf-8")
