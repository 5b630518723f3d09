"""A request body that arrives too slowly, or cannot be read, gets a prompt OpenAI-style
error and its connection closed: it never holds the connection (or the gateway's memory) until
the client gives up.

Each test speaks raw HTTP over a socket to a real gateway, so that it can send a head and stall,
trickle a body, or send bytes no client library would; replies are read with a bound, so that a
gateway that never answers fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import pytest

from tests.conftest import Gateway, GatewayFactory, Upstream, provider_file

CHAT_BODY = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}'
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
BODY_TIMEOUT_S = 0.5
# How long a test waits for a reply: well past the body timeout, well short of forever.
REPLY_BOUND_S = 10.0


@pytest.fixture
async def slow_gateway(make_gateway: GatewayFactory, upstream: Upstream) -> Gateway:
    """The shipped plugins in front of the fake upstream, with a short body timeout."""
    return await make_gateway(
        {
            "00-gateway.yaml": {"gateway": {"body_timeout_s": BODY_TIMEOUT_S}},
            "20-skip-header.yaml": {"plugin": "skip-header"},
            "30-exact-cache.yaml": {
                "plugin": "exact-cache",
                "config": {"store": {"type": "memory"}},
            },
            "90-provider-proxy.yaml": provider_file(upstream),
        }
    )


class Raw:
    """A raw connection to a gateway."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, gateway: Gateway) -> Raw:
        url = gateway.server.make_url("/")
        return cls(*await asyncio.open_connection(url.host, url.port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def head(self) -> bytes:
        """The next response head (an interim 100 Continue included)."""
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), REPLY_BOUND_S)

    async def reply_to_eof(self) -> tuple[int, dict[str, str], bytes]:
        """Everything up to the gateway closing the connection, as one reply."""
        raw = await asyncio.wait_for(self.reader.read(), REPLY_BOUND_S)
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        return int(status_line.split()[1]), headers, body

    def close(self) -> None:
        self.writer.close()


def openai_error(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert headers["content-type"].startswith("application/json")
    assert headers["x-request-id"]
    err = orjson.loads(body)["error"]
    assert set(err) == {"message", "type", "code", "param"}
    return dict(err)


async def test_a_body_that_stalls_gets_a_408_and_the_connection_closes(
    slow_gateway: Gateway, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await Raw.open(slow_gateway)
    try:
        with caplog.at_level(logging.INFO, logger="aigw"):
            start = time.monotonic()
            # A third of the promised body, then nothing.
            await conn.send(HEAD + b"Content-Length: 3000\r\n\r\n" + b"x" * 1000)
            status, headers, body = await conn.reply_to_eof()  # EOF: the gateway closed
            elapsed = time.monotonic() - start
    finally:
        conn.close()
    assert status == 408
    assert headers["connection"] == "close"
    err = openai_error(headers, body)
    assert err["type"] == "invalid_request_error" and err["code"] == "request_timeout"
    assert BODY_TIMEOUT_S * 0.9 <= elapsed < BODY_TIMEOUT_S + 3
    assert upstream.llm.calls == []
    # One line, at INFO, no traceback: the client's doing, nothing for an operator to fix.
    lines = [r for r in caplog.records if r.name.startswith("aigw") and "408" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and lines[0].exc_info is None
    assert headers["x-request-id"] in lines[0].getMessage()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_trickling_chunked_body_is_cut_off_at_the_deadline(
    slow_gateway: Gateway, upstream: Upstream
) -> None:
    # Every chunk comes well within the timeout of the one before: the deadline is the head's
    # plus body_timeout_s, not a silence between reads.
    conn = await Raw.open(slow_gateway)

    async def trickle() -> None:
        while True:
            await conn.send(b"1\r\n \r\n")
            await asyncio.sleep(BODY_TIMEOUT_S / 10)  # pacing the client, not synchronising

    start = time.monotonic()
    await conn.send(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    sender = asyncio.create_task(trickle())
    try:
        status, headers, body = await conn.reply_to_eof()
        elapsed = time.monotonic() - start
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        conn.close()
    assert status == 408 and headers["connection"] == "close"
    assert openai_error(headers, body)["code"] == "request_timeout"
    assert BODY_TIMEOUT_S * 0.9 <= elapsed < BODY_TIMEOUT_S + 3
    assert upstream.llm.calls == []


async def test_a_body_that_arrives_after_the_head_in_time_is_served(
    slow_gateway: Gateway, upstream: Upstream
) -> None:
    # The 100 Continue says the handler is waiting for the body: it is read, not taken whole.
    conn = await Raw.open(slow_gateway)
    try:
        await conn.send(
            HEAD + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(CHAT_BODY)
        )
        assert (await conn.head()).startswith(b"HTTP/1.1 100 Continue")
        await conn.send(CHAT_BODY)
        head = await conn.head()
    finally:
        conn.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(upstream.llm.calls) == 1


async def test_a_malformed_chunk_size_gets_a_prompt_400_and_the_connection_closes(
    gateway: Gateway, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    # The default body timeout (60 s): the answer must not wait for it. Once the head has been
    # handed to the handler (its 100 Continue says so), a bad chunk size used to leave the
    # handler waiting for a body that aiohttp's C parser had given up on, until the client left.
    conn = await Raw.open(gateway)
    try:
        await conn.send(HEAD + b"Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert (await conn.head()).startswith(b"HTTP/1.1 100 Continue")
        with caplog.at_level(logging.INFO):
            start = time.monotonic()
            await conn.send(b"5\r\nhello\r\nzz\r\n")
            status, headers, body = await conn.reply_to_eof()
            elapsed = time.monotonic() - start
    finally:
        conn.close()
    assert status == 400 and headers["connection"] == "close"
    err = openai_error(headers, body)
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_body"
    assert "chunk size" in err["message"] and "\n" not in err["message"]
    assert elapsed < 5
    assert upstream.llm.calls == []
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING] == []
