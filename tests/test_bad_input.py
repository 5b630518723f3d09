"""Malformed requests get the right status and an OpenAI-style error, never a traceback."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from typing import Any
from unittest import mock

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from aigw import http_errors
from aigw.ratelimit_log import RateLimitFilter
from tests.conftest import Gateway, GatewayFactory, Upstream, provider_file

CHAT = "/v1/chat/completions"
DEEP = b"[" * 300 + b"]" * 300


async def expect_error(resp: Any, status: int, param: str | None = None) -> dict[str, Any]:
    assert resp.status == status
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["x-request-id"]
    text = await resp.text()
    assert "Traceback" not in text
    err = orjson.loads(text)["error"]
    assert set(err) == {"message", "type", "code", "param"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param
    return dict(err)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'"a string"', None),
        (b"", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": 42, "messages": []}', "model"),
        (b'{"model": "gpt-4o"}', "messages"),
        (b'{"model": "gpt-4o", "messages": []}', "messages"),
        (b'{"model": "gpt-4o", "messages": "hi"}', "messages"),
        (b'{"model": "gpt-4o", "messages": [{"content": "no role"}]}', "messages[0].role"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user"}], "stream": "yes"}', "stream"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user"}], "n": 0}', "n"),
        (
            b'{"model": "gpt-4o", "messages": [{"role": "user"}], "stream_options": 5}',
            "stream_options",
        ),
        # Valid JSON, but deeper than the gateway can write back (cache key, upstream body).
        (b'{"model": "gpt-4o", "messages": [{"role": "user"}], "x": ' + DEEP + b"}", None),
    ],
)
async def test_bad_chat_body_is_400(
    gateway: Gateway, upstream: Upstream, body: bytes, param: str | None
) -> None:
    headers = {"Content-Type": "application/json"}
    async with gateway.http.post(gateway.url(CHAT), data=body, headers=headers) as resp:
        err = await expect_error(resp, 400, param)
    assert err["type"] == "invalid_request_error"
    assert upstream.llm.calls == []


async def test_bad_embeddings_and_completions_bodies(gateway: Gateway) -> None:
    async with gateway.http.post(gateway.url("/v1/embeddings"), json={"model": "e"}) as resp:
        await expect_error(resp, 400, "input")
    async with gateway.http.post(gateway.url("/v1/completions"), json={"model": "m"}) as resp:
        await expect_error(resp, 400, "prompt")


async def test_wrong_content_type_is_415(gateway: Gateway) -> None:
    async with gateway.http.post(gateway.url(CHAT), data={"model": "x"}) as resp:  # form-encoded
        err = await expect_error(resp, 415)
    assert err["code"] == "unsupported_media_type"


async def test_unknown_path_is_404_and_wrong_method_405(gateway: Gateway) -> None:
    async with gateway.http.get(gateway.url("/v1/nothing-here")) as resp:
        await expect_error(resp, 404)
    async with gateway.http.get(gateway.url(CHAT)) as resp:
        await expect_error(resp, 405)
        assert resp.headers["Allow"] == "POST"
    async with gateway.http.post(gateway.url("/v1/models")) as resp:
        await expect_error(resp, 405)
    async with gateway.http.post(gateway.url("/healthz")) as resp:
        await expect_error(resp, 405)
        assert resp.headers["Allow"] == "GET"


async def test_an_expectation_other_than_100_continue_is_417(gateway: Gateway) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "expect"}]}
    for path in (CHAT, "/healthz", "/v1/nothing-here"):
        headers = {"Expect": "100-nope"}
        async with gateway.http.post(gateway.url(path), json=body, headers=headers) as resp:
            err = await expect_error(resp, 417)
        assert err["code"] == "expectation_failed"
        assert "100-nope" in err["message"]
    # 100-continue is still honoured: the client waits for it before sending the body (a
    # bound, so that a missing one fails instead of waiting for aiohttp's 5-minute default).
    timeout = aiohttp.ClientTimeout(total=10)
    async with gateway.http.post(
        gateway.url(CHAT), json=body, expect100=True, timeout=timeout
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["object"] == "chat.completion"


@pytest.mark.parametrize(
    ("version", "interim"),
    [("1.1", b"HTTP/1.1 100 Continue\r\n\r\n"), ("1.0", b"")],
)
async def test_100_continue_comes_before_the_body_on_http_1_1_only(
    gateway: Gateway, version: str, interim: bytes
) -> None:
    # HTTP/1.0 has no interim responses: there the client sends its body without waiting.
    url = gateway.server.make_url("/")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/%s\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (version.encode(), len(CHAT_BODY))
        )
        if interim:
            assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == interim
        writer.write(CHAT_BODY)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/%s 200 OK\r\n" % version.encode())


async def test_body_over_limit_is_413(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(
        {"00-gw.yaml": {"gateway": {"max_body_bytes": 1024}}, "90-p.yaml": provider_file(upstream)}
    )
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]}
    async with gw.http.post(gw.url(CHAT), json=big) as resp:
        await expect_error(resp, 413)

    async def chunked() -> Any:  # no Content-Length: the limit still holds while reading
        yield orjson.dumps(big)

    async with gw.http.post(
        gw.url(CHAT), data=chunked(), headers={"Content-Type": "application/json"}
    ) as resp:
        await expect_error(resp, 413)
    assert upstream.llm.calls == []


async def test_request_id_is_echoed_or_generated(gateway: Gateway) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    async with gateway.http.post(
        gateway.url(CHAT), json=body, headers={"x-request-id": "trace-123"}
    ) as resp:
        assert resp.status == 200 and resp.headers["x-request-id"] == "trace-123"
    async with gateway.http.post(gateway.url(CHAT), json=body) as resp:
        assert len(resp.headers["x-request-id"]) >= 16


async def test_health_endpoints(gateway: Gateway) -> None:
    async with gateway.http.get(gateway.url("/healthz")) as resp:
        assert resp.status == 200
    async with gateway.http.get(gateway.url("/readyz")) as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "ready"


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_body_that_does_not_match_its_encoding_is_400(
    gateway: Gateway, upstream: Upstream, caplog: pytest.LogCaptureFixture, encoding: str
) -> None:
    body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}  # not encoded
    with caplog.at_level(logging.ERROR):
        async with gateway.http.post(gateway.url(CHAT), data=body, headers=headers) as resp:
            err = await expect_error(resp, 400)
            assert resp.headers["Connection"] == "close"  # the rest of the body is unreadable
    assert err["code"] == "invalid_body" and encoding in err["message"]
    assert [r for r in caplog.records if r.exc_info] == []  # no traceback in the logs either
    assert upstream.llm.calls == []


async def raw_exchange(gateway: Gateway, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client would send these) and read the one reply."""
    url = gateway.server.make_url("/")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(request)
        await writer.drain()
        # The gateway closes the connection after such an error; a bound in case it does not.
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


CHAT_BODY = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}'


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GXT\x01 / HTTP/1.1\r\nHost: x\r\n\r\n",  # not a method
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-long: " + b"a" * 20000 + b"\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
    ],
    ids=["bad-method", "bad-header-name", "header-too-long", "bad-content-length"],
)
async def test_requests_aiohttp_cannot_parse_get_openai_errors(
    gateway: Gateway, upstream: Upstream, request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="aigw"):
        status, headers, body = await raw_exchange(gateway, request_bytes)
    # Its headers unread, the request gets a new id, logged so the reply can be traced.
    assert any(headers["x-request-id"] in r.getMessage() for r in caplog.records)
    assert 400 <= status < 500
    assert headers["content-type"].startswith("application/json")
    assert headers["x-request-id"]
    err = orjson.loads(body)["error"]
    assert set(err) == {"message", "type", "code", "param"}
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_http_request"
    assert upstream.llm.calls == []


async def test_a_body_encoding_aiohttp_cannot_decode_gets_an_openai_error(
    gateway: Gateway, upstream: Upstream
) -> None:
    # Brotli bodies are refused while the request is parsed, before any handler, unless the
    # Brotli package is installed (it is not a dependency).
    if importlib.util.find_spec("brotli") is not None:
        pytest.skip("Brotli is installed: aiohttp decodes br bodies")
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Encoding: br\r\nContent-Length: %d\r\n\r\n%s" % (len(CHAT_BODY), CHAT_BODY)
    )
    status, headers, body = await raw_exchange(gateway, request)
    assert status == 400 and headers["x-request-id"]
    assert "br" in orjson.loads(body)["error"]["message"]
    assert upstream.llm.calls == []


async def test_parse_error_messages_are_bounded_and_always_encodable() -> None:
    # The parser quotes the client's bytes in its message; aiohttp's pure-Python parser keeps
    # undecodable ones as surrogates, which no UTF-8 reply can carry as they are.
    server = web.Server(lambda request: None)  # type: ignore[arg-type,return-value]
    handler = http_errors.ErrorReplies(server, loop=asyncio.get_running_loop())
    request = make_mocked_request("POST", "/v1/chat/completions", writer=mock.Mock(output_size=0))
    resp = handler.handle_error(request, 400, None, "Invalid chunk size: \udcff" + "x" * 5000)
    assert isinstance(resp, web.Response) and resp.status == 400
    assert isinstance(resp.body, bytes)
    message = orjson.loads(resp.body)["error"]["message"]
    assert "\\udcff" in message and len(message) < 400


async def test_a_body_that_cannot_be_decoded_closes_the_connection(gateway: Gateway) -> None:
    # More is promised than sent, and what is sent is not gzip: the 400 says Connection: close
    # and the gateway closes, rather than leaving a connection whose parser is dead open until
    # its keep-alive runs out.
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: 300000\r\n\r\n"
    )
    status, headers, _ = await raw_exchange(gateway, head + b"x" * 1000)  # reads to EOF
    assert status == 400 and headers["connection"] == "close"


def test_an_error_quoting_undecodable_bytes_still_serialises() -> None:
    # aiohttp's pure-Python parser keeps a path's undecodable bytes as surrogates, which the
    # 404's message quotes: orjson refuses them, and the 404 became a 500 with a traceback.
    from aigw.errors import error_body

    body = orjson.loads(error_body("Unknown path GET /x\udcff", "invalid_request_error"))
    assert body["error"]["message"] == "Unknown path GET /x\\udcff"


MALFORMED = [
    b"GXT\x01 / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
]


async def test_a_burst_of_malformed_requests_logs_a_bounded_number_of_one_liners(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A limiter of its own, so that the burst does not silence the other tests' lines.
    limit = RateLimitFilter()
    monkeypatch.setattr(http_errors.log, "filters", [limit])
    with caplog.at_level(logging.DEBUG):
        replies = [await raw_exchange(gateway, MALFORMED[i % 4]) for i in range(120)]
    assert {status for status, _, _ in replies} == {400}
    # The test server's access log has its line per request, as it does for any request; the
    # CLI's server has none.
    records = [r for r in caplog.records if r.name != "aiohttp.access"]
    assert [r for r in records if r.exc_info or r.levelno >= logging.WARNING] == []
    assert all("\n" not in r.getMessage() for r in records)
    # At most a burst per kind (status and exception type; these are 4 kinds at most).
    assert 0 < len(records) <= 4 * limit.burst
    assert any("further similar messages suppressed" in r.getMessage() for r in records)


async def test_a_client_error_is_one_info_line_and_a_bug_keeps_its_traceback(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_errors.log, "filters", [RateLimitFilter()])
    server = web.Server(lambda request: None)  # type: ignore[arg-type,return-value]
    handler = http_errors.ErrorReplies(server, loop=asyncio.get_running_loop())
    request = make_mocked_request("POST", CHAT, writer=mock.Mock(output_size=0))
    with caplog.at_level(logging.DEBUG):
        handler.handle_error(request, 400, ValueError("bad line"), "Invalid method:\n\n x")
        try:
            raise RuntimeError("a bug")
        except RuntimeError as err:
            resp = handler.handle_error(request, 500, err)
    client, bug = caplog.records
    assert client.levelno == logging.INFO and client.exc_info is None
    assert "Invalid method: x" in client.getMessage()
    assert bug.levelno == logging.ERROR and bug.exc_info is not None
    assert str(bug.exc_info[1]) == "a bug"
    assert isinstance(resp, web.Response) and isinstance(resp.body, bytes)
    assert resp.status == 500 and b"a bug" not in resp.body


async def test_connect_gets_an_openai_error(gateway: Gateway) -> None:
    # Its target is an authority (host:port), which aiohttp's router cannot match at all.
    request = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
    status, headers, body = await raw_exchange(gateway, request + b"Connection: close\r\n\r\n")
    assert status == 501
    assert headers["content-type"].startswith("application/json")
    assert headers["x-request-id"]
    err = orjson.loads(body)["error"]
    assert set(err) == {"message", "type", "code", "param"}
    assert err["type"] == "invalid_request_error" and err["code"] == "method_not_supported"


async def test_options_asterisk_says_what_the_server_allows(gateway: Gateway) -> None:
    status, headers, body = await raw_exchange(
        gateway, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert (status, body) == (200, b"")
    assert headers["allow"] == "GET, HEAD, POST"
    assert headers["x-request-id"]


async def test_the_routers_own_405_gets_an_openai_error_and_a_handlers_own_is_kept(
    aiohttp_client: Any,
) -> None:
    # A plugin's route that takes GET only: the router answers the other methods itself.
    async def conflict(request: web.Request) -> web.Response:
        raise web.HTTPConflict(text="mine")

    app = web.Application()
    app.router.add_get("/get-only", conflict)
    http_errors.install(app)
    client = await aiohttp_client(app)
    async with client.post("/get-only") as resp:
        assert resp.status == 405 and resp.content_type == "application/json"
        assert set(resp.headers["Allow"].split(",")) == {"GET", "HEAD"}
        err = (await resp.json())["error"]
    assert err["code"] == "method_not_allowed" and "/get-only" in err["message"]
    async with client.get("/get-only") as resp:  # raised by the handler: its choice
        assert resp.status == 409 and await resp.text() == "mine"
