"""The lean upstream client (aigw.http_client) against raw HTTP/1.1 servers on 127.0.0.1 that
answer with exact bytes: framing, reuse, encodings, failures, timeouts, TLS."""

from __future__ import annotations

import asyncio
import base64
import gzip
import logging
import socket
import ssl
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme

from aigw import http_client
from aigw.http_client import (
    ConnectError,
    HTTPClient,
    ReadTimeout,
    ResponseError,
    StaleConnection,
)

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """A raw server: each connection runs ``script``; counts connections and requests."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = asyncio.Event()
        self.client_closes: asyncio.Queue[None] = asyncio.Queue()  # one item per close

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One whole request (head and Content-Length body), or None when the client closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.closed_by_client.set()
            self.client_closes.put_nowait(None)
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return head + body


@asynccontextmanager
async def serving(
    script: Script, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[Server, str]]:
    server = Server(script)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield server, f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        srv.close()


def answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


def replies(*answers: bytes) -> Script:
    """Answer each request on a connection with the next of ``answers`` (shared)."""
    queue = list(answers)

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        while queue and await s.request(r) is not None:
            w.write(queue.pop(0))
            await w.drain()
        await s.request(r)  # wait for the client to close

    return script


@asynccontextmanager
async def client_for(url: str, read_timeout: float = 5.0) -> AsyncIterator[http_client.Origin]:
    client = HTTPClient()
    try:
        yield client.origin(url, connect_timeout_s=5.0, read_timeout_s=read_timeout)
    finally:
        client.close()


@asynccontextmanager
async def talking(
    script: Script, read_timeout: float = 5.0
) -> AsyncIterator[tuple[Server, http_client.Origin]]:
    """A raw server running ``script`` and a client's pool for it."""
    async with serving(script) as (server, url), client_for(url, read_timeout) as origin:
        yield server, origin


async def post(origin: http_client.Origin, body: bytes = b"{}") -> tuple[int, bytes]:
    resp = await origin.post("/v1/chat/completions", body, {"Content-Type": "application/json"})
    data = await resp.read()
    resp.release()
    return resp.status, data


async def test_a_connection_is_reused_for_the_next_request() -> None:
    async with talking(replies(answer(b"one"), answer(b"two"))) as (srv, origin):
        assert await post(origin, b'{"q": 1}') == (200, b"one")
        assert await post(origin) == (200, b"two")
    assert srv.connections == 1
    first = srv.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{origin.port}\r\n".encode() in first
    assert b"User-Agent: aigw/" in first and b"Accept-Encoding: gzip, deflate" in first
    assert b"Content-Length: 8\r\n" in first and first.endswith(b'\r\n\r\n{"q": 1}')


async def test_connection_close_and_http_1_0_answers_are_not_reused() -> None:
    close = answer(b"a", "Connection: close")
    old = answer(b"b").replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    async with talking(replies(close, old, answer(b"c"))) as (srv, origin):
        assert [await post(origin) for _ in range(3)] == [(200, b"a"), (200, b"b"), (200, b"c")]
    assert srv.connections == 3


async def test_a_connection_the_upstream_closed_while_idle_is_not_used() -> None:
    async def once(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.request(r)
        w.write(answer(b"x"))
        await w.drain()  # then closes, without saying so in a header

    async with talking(once) as (srv, origin):
        assert await post(origin) == (200, b"x")
        # The upstream's close reaches the client before its next request does.
        pooled = origin._idle[-1]
        lost = asyncio.get_running_loop().create_future()
        seen = pooled.connection_lost

        def spy(exc: Exception | None) -> None:
            seen(exc)
            lost.set_result(None)

        pooled.connection_lost = spy  # type: ignore[method-assign]
        await asyncio.wait_for(lost, 5)
        assert await post(origin) == (200, b"x")
    assert srv.connections == 2


async def test_chunked_answer_with_extensions_and_trailers_after_a_100_continue() -> None:
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with talking(replies(raw, answer(b"next"))) as (srv, origin):
        resp = await origin.post("/", b"", {})
        assert resp.content_type == "text/event-stream"
        assert await resp.read() == b"hello world"
        assert resp.content.at_eof()
        resp.release()
        assert await post(origin) == (200, b"next")
    assert srv.connections == 1


async def test_a_chunked_stream_arrives_piece_by_piece() -> None:
    sent = [b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]
    got_one = asyncio.Event()

    async def stream(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.request(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in sent:
            w.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await w.drain()
            await got_one.wait()  # the next piece only once the client has read this one
            got_one.clear()
        w.write(b"0\r\n\r\n")
        await w.drain()
        await s.request(r)

    async with talking(stream) as (_, origin):
        resp = await origin.post("/", b"", {})
        received = []
        async for data in resp.content.iter_any():
            received.append(data)
            got_one.set()
        resp.release()
    assert received == sent


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(
    ("coding", "encode"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", raw_deflate)],
)
async def test_compressed_answers_are_decoded(
    coding: str, encode: Callable[[bytes], bytes]
) -> None:
    text = b'{"answer": "' + b"la " * 500 + b'"}'
    async with talking(replies(answer(encode(text), f"Content-Encoding: {coding}"))) as (_, origin):
        assert await post(origin) == (200, text)


async def test_an_answer_framed_by_the_connection_end_is_read_whole() -> None:
    async def until_close(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.request(r)
        w.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"a":')
        await w.drain()
        w.write(b" 1}")

    async with talking(until_close) as (srv, origin):
        assert await post(origin) == (200, b'{"a": 1}')
        assert await post(origin) == (200, b'{"a": 1}')
    assert srv.connections == 2


async def test_a_large_body_is_read_whole_and_streamed_whole() -> None:
    big = bytes(range(256)) * 4096  # 1 MiB: well above the back-pressure mark
    async with talking(replies(answer(big), answer(big))) as (_, origin), asyncio.timeout(10):
        assert await post(origin) == (200, big)
        resp = await origin.post("/", b"", {})
        parts = [part async for part in resp.content.iter_any()]
        resp.release()
    assert b"".join(parts) == big
    assert len(parts) > 1  # it came in pieces, reading paused and resumed between them


async def test_an_answer_cut_short_is_an_error() -> None:
    async def cut(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await w.drain()

    async with talking(cut) as (_, origin):
        resp = await origin.post("/", b"", {})
        with pytest.raises(ResponseError, match="before the answer was whole"):
            await resp.read()
        assert not resp.content.at_eof()


@pytest.mark.parametrize(
    "raw",
    [
        b"SPDY/3 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n bad: fold\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx",
    ],
)
async def test_malformed_answers_are_errors(raw: bytes) -> None:
    async def bad(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.request(r)
        w.write(raw)
        await w.drain()
        await s.request(r)

    async with talking(bad) as (_, origin):
        with pytest.raises(ResponseError):
            await post(origin)


async def test_an_upstream_that_never_answers_is_a_read_timeout_and_the_connection_closes() -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.request(r)
        await s.request(r)  # returns when the client closes the connection

    async with talking(silent, read_timeout=0.2) as (srv, origin):
        with pytest.raises(ReadTimeout) as caught:
            await asyncio.wait_for(post(origin), 10)
        assert isinstance(caught.value, TimeoutError)
        await asyncio.wait_for(srv.closed_by_client.wait(), 5)


async def test_idle_connections_are_closed_after_the_keep_alive_without_new_requests() -> None:
    async with serving(replies(answer(b"a"), answer(b"b"))) as (srv, url):
        client = HTTPClient(keepalive_s=0.1)
        try:
            origin = client.origin(url, connect_timeout_s=5.0, read_timeout_s=5.0)
            await asyncio.gather(post(origin), post(origin))  # two connections, both pooled
            assert len(origin._idle) == 2
            async with asyncio.timeout(5):  # the client's own timer closes both
                await srv.client_closes.get()
                await srv.client_closes.get()
            assert not origin._idle
        finally:
            client.close()


async def test_a_pooled_connection_past_its_keep_alive_is_not_reused() -> None:
    async with talking(replies(answer(b"a"), answer(b"b"))) as (srv, origin):
        await post(origin)
        origin._idle[-1].idle_since -= origin.keepalive_s + 1
        assert await post(origin) == (200, b"b")
    assert srv.connections == 2


async def test_an_address_that_never_answers_is_passed_over_and_lookups_are_shared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A listener that never accepts, its one-slot backlog taken: it drops further SYNs, as a
    # dead node still in DNS or a broken IPv6 route does.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    filler = socket.create_connection(hole.getsockname())
    lookups: list[str] = []
    async with serving(replies(*[answer(b"ok")] * 6)) as (_, url):
        port = int(url.rsplit(":", 1)[1])

        async def getaddrinfo(host: str, *_: object, **__: object) -> list[object]:
            lookups.append(host)
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", hole.getsockname()),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            ]

        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
        async with client_for("http://upstream.test") as origin, asyncio.timeout(4):
            results = await asyncio.gather(*(post(origin) for _ in range(5)))
            origin.close()  # the next request needs a new connection
            results.append(await post(origin))
    filler.close()
    hole.close()
    assert results == [(200, b"ok")] * 6
    assert lookups == ["upstream.test"]  # six new connections, one lookup


async def test_new_connections_take_turns_over_the_hosts_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with (
        serving(replies(*[answer(b"a")] * 4)) as (one, url_one),
        serving(replies(*[answer(b"b")] * 4)) as (two, url_two),
    ):
        ports = [int(url.rsplit(":", 1)[1]) for url in (url_one, url_two)]

        async def getaddrinfo(*_: object, **__: object) -> list[object]:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p)) for p in ports]

        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
        async with client_for("http://replicas.test") as origin:
            answers = await asyncio.gather(*(post(origin) for _ in range(4)))
    assert (one.connections, two.connections) == (2, 2)  # DNS round robin spreads the load
    assert sorted(answers) == [(200, b"a")] * 2 + [(200, b"b")] * 2


async def test_host_framing_and_credentials_headers() -> None:
    async with serving(replies(answer(b"1"), answer(b"2"))) as (srv, url):
        port = url.rsplit(":", 1)[1]
        # As in a URL: percent-encoded (the password is "p@ss/w").
        async with client_for(f"http://user:p%40ss%2Fw@127.0.0.1:{port}") as origin:
            given = {"host": "llm.internal.example", "Content-Length": "999"}
            assert (await origin.post("/", b"abc", given)).status == 200
            assert await post(origin) == (200, b"2")  # the previous answer was never read
    first, second = (r.split(b"\r\n\r\n")[0].split(b"\r\n") for r in srv.requests)
    assert [h for h in first if h.lower().startswith(b"host:")] == [b"host: llm.internal.example"]
    assert [h for h in first if h.lower().startswith(b"content-length:")] == [b"Content-Length: 3"]
    basic = base64.b64encode(b"user:p@ss/w").decode()
    assert f"Authorization: Basic {basic}".encode() in first
    assert f"Host: 127.0.0.1:{port}".encode() in second


async def test_the_callers_authorization_wins_over_the_urls_credentials() -> None:
    async with serving(replies(answer(b"1"))) as (srv, url):
        port = url.rsplit(":", 1)[1]
        async with client_for(f"http://user:secret@127.0.0.1:{port}") as origin:
            resp = await origin.post("/", b"", {"Authorization": "Bearer sk-key"})
            resp.release()
    auth = [h for h in srv.requests[0].split(b"\r\n") if h.lower().startswith(b"authorization")]
    assert auth == [b"Authorization: Bearer sk-key"]


async def test_an_early_error_answer_then_a_reset_is_the_answer() -> None:
    async def refuse(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await r.readuntil(b"\r\n\r\n")  # not the body: the request is refused at its head
        w.write(b"HTTP/1.0 401 Unauthorized\r\n\r\n" + b'{"error": "bad key"}')
        await w.drain()
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()

    async with talking(refuse) as (_, origin):
        resp = await origin.post("/", b"x" * 1_000_000, {})
        assert (resp.status, await resp.read()) == (401, b'{"error": "bad key"}')


async def test_a_reset_cuts_an_answer_framed_by_the_connection_end() -> None:
    async def reset(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.request(r)
        w.write(b"HTTP/1.1 200 OK\r\n\r\npartial")
        await w.drain()
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()  # an RST, not a FIN: the answer did not end, it broke

    async with talking(reset) as (_, origin):
        resp = await origin.post("/", b"", {})
        with pytest.raises(ResponseError, match="before the answer was whole"):
            await resp.read()


async def test_a_cancelled_request_closes_its_connection() -> None:
    arrived = asyncio.Event()

    async def slow(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.request(r)
        arrived.set()
        await s.request(r)

    async with talking(slow) as (srv, origin):
        task = asyncio.ensure_future(post(origin))
        await arrived.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(srv.closed_by_client.wait(), 5)
        assert not origin._idle


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with serving(replies()) as (_, url):
        pass  # the port is free again
    async with client_for(url) as origin:
        with pytest.raises(ConnectError):
            await post(origin)


async def test_a_line_break_in_a_header_is_refused_before_anything_is_sent() -> None:
    async with talking(replies(answer(b"x"))) as (srv, origin):
        with pytest.raises(ValueError, match="line break"):
            await origin.post("/", b"", {"X-A": "1\r\nX-Injected: 2"})
    assert srv.requests == []


async def test_https_verifies_the_upstream_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_tls)
    answers = [answer(b"secure"), answer(b"again"), answer(b"dotted")]
    async with serving(replies(*answers), tls=server_tls) as (srv, url):
        # Not trusted by the system's CA store: refused.
        monkeypatch.setattr(http_client.pool, "_ssl_context", None)
        async with client_for(url) as origin:
            with pytest.raises(ConnectError, match="certificate"):
                await post(origin)
        # Trusted through SSL_CERT_FILE, as an operator would add a private CA.
        with ca.cert_pem.tempfile() as ca_file:
            monkeypatch.setenv("SSL_CERT_FILE", ca_file)
            monkeypatch.setattr(http_client.pool, "_ssl_context", None)
            async with client_for(url) as origin:
                assert await post(origin) == (200, b"secure")
                assert await post(origin) == (200, b"again")
            # A fully qualified name (a trailing dot, as Kubernetes users write to skip search
            # domains): the certificate is for "localhost", and so is the Host header.
            port = url.rsplit(":", 1)[1]

            async def getaddrinfo(*_: object, **__: object) -> list[object]:
                # This machine's resolver may not know "localhost." (with the dot).
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", int(port)))]

            monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
            async with client_for(f"https://localhost.:{port}") as origin:
                assert await post(origin) == (200, b"dotted")
    assert srv.connections == 2  # one reused, then the dotted one (refused handshakes: none)
    assert f"Host: localhost:{port}\r\n".encode() in srv.requests[2]


# -- strict parsing (issue #15): what llhttp, aiohttp's and uvicorn's parser, refuses


async def test_two_content_lengths_never_hand_the_hidden_rest_to_the_next_request() -> None:
    # The second Content-Length covers a whole answer hidden after the first's body; it comes
    # once the next request is on the pooled connection, and would be read as its answer.
    hidden = answer(b"another tenant's answer")
    first = f"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: {5 + len(hidden)}\r\n\r\n"
    sent_hidden = False

    async def hostile(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        nonlocal sent_hidden
        if s.connections == 1:
            await s.request(r)
            w.write(first.encode() + b"hello")
            await w.drain()
            if await s.request(r) is not None:  # the next request came on this connection
                w.write(hidden)
                sent_hidden = True
                await w.drain()
        while await s.request(r) is not None:
            w.write(answer(b"own"))
            await w.drain()

    async with talking(hostile, read_timeout=60) as (srv, origin), asyncio.timeout(5):
        with pytest.raises(ResponseError, match="Content-Length"):
            await post(origin)
        assert await post(origin) == (200, b"own")
    assert not sent_hidden and srv.connections == 2


OK_HEAD = b"HTTP/1.1 200 OK\r\n"
CHUNKED = OK_HEAD + b"Transfer-Encoding: chunked\r\n"
# Each answer, and what the error says (llhttp's reason, or the client's own).
AMBIGUOUS = {
    "te-and-cl": (CHUNKED + b"Content-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "Content-L"),
    "cl-and-te": (
        OK_HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "Transfer-Encoding",
    ),
    "two-te-lines": (
        CHUNKED + b"Transfer-Encoding: identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "unsupported Transfer-Encoding",
    ),
    "te-twice-chunked": (
        CHUNKED + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "unsupported Transfer-Encoding",
    ),
    "te-gzip-chunked": (
        OK_HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "unsupported Transfer-Encoding",
    ),
    "equal-cls": (OK_HEAD + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", "Duplicate"),
    **{
        f"chunk-size-{size.decode()[:6]}": (
            CHUNKED + b"\r\n" + size + b"\r\nhello\r\n0\r\n\r\n",
            "(?i)chunk size",
        )
        for size in (b"0x5", b"+5", b"0_5", b"5 ", b"%x" % 2**80)
    },
    "nul-in-value": (OK_HEAD + b"X-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello", "header value"),
    "space-in-name": (OK_HEAD + b"X A: b\r\nContent-Length: 5\r\n\r\nhello", "header token"),
    "lf-only": (b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello", "CR"),
    "lf-only-headers": (OK_HEAD + b"Content-Length: 5\n\nhello", "CR"),
    "switching-protocols": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        "switched protocols",
    ),
    "1xx-with-a-body": (
        b"HTTP/1.1 150 Odd\r\nContent-Length: 5\r\n\r\nhello" + answer(b"ok"),
        "informational answer",
    ),
    "http-2.0": (b"HTTP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", "HTTP/2.0"),
}


@pytest.mark.parametrize(("raw", "why"), AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
async def test_ambiguous_or_malformed_answers_fail_at_once_and_are_not_reused(
    raw: bytes, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The read timeout is a minute: an answer that is not refused hangs past the 5 s deadline.
    async with talking(replies(raw, answer(b"next")), read_timeout=60) as (srv, origin):
        async with asyncio.timeout(5):
            with pytest.raises(ResponseError, match=why):
                await post(origin)
            assert await post(origin) == (200, b"next")
    assert srv.connections == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # failed cleanly


@pytest.mark.parametrize("extra", [b"junk", answer(b"hidden")], ids=["junk", "an-answer"])
async def test_bytes_after_an_answer_close_the_connection_and_reach_no_one(extra: bytes) -> None:
    async with talking(replies(answer(b"a") + extra, answer(b"b"))) as (srv, origin):
        assert await post(origin) == (200, b"a")  # its answer was whole before the extra
        assert await post(origin) == (200, b"b")
    assert srv.connections == 2


async def test_a_head_over_64_kib_is_an_error() -> None:
    raw = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: a\r\n" * 100_000  # 1 MiB, and no end
    async with talking(replies(raw), read_timeout=60) as (_, origin), asyncio.timeout(5):
        with pytest.raises(ResponseError, match="64 KiB"):
            await post(origin)


async def test_a_compressed_answer_read_whole_stops_at_the_decoded_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bomb = gzip.compress(bytes(64 * 1024 * 1024), compresslevel=1)  # 64 MiB of zeros: 64 KiB
    fed: list[int] = []
    feed = http_client.Body._feed
    monkeypatch.setattr(http_client.Body, "_feed", lambda b, d: (fed.append(len(d)), feed(b, d)))
    async with serving(replies(answer(bomb, "Content-Encoding: gzip"))) as (_, url):
        client = HTTPClient()
        origin = client.origin(url, 5.0, 5.0, max_decoded_bytes=1024 * 1024)
        try:
            with pytest.raises(ResponseError, match="decoded body exceeds 1048576 bytes"):
                await post(origin)
        finally:
            client.close()
    assert 0 < sum(fed) <= 1024 * 1024 and max(fed) <= 64 * 1024


async def test_a_body_read_whole_stops_at_the_body_limit_a_stream_does_not() -> None:
    big = bytes(3 * 1024 * 1024)
    async with serving(replies(answer(big), answer(big))) as (_, url):
        client = HTTPClient()
        origin = client.origin(url, 5.0, 5.0, max_body_bytes=1024 * 1024)
        try:
            with pytest.raises(ResponseError, match="body exceeds 1048576 bytes"):
                await post(origin)
            resp = await origin.post("/", b"", {})
            assert sum([len(part) async for part in resp.content.iter_any()]) == len(big)
            resp.release()
        finally:
            client.close()


async def test_a_compressed_stream_is_decoded_as_it_is_read_not_when_it_arrives() -> None:
    text = bytes(range(256)) * 32 * 1024  # 8 MiB
    wire = answer(gzip.compress(text, compresslevel=1), "Content-Encoding: gzip")
    async with talking(replies(wire)) as (_, origin), asyncio.timeout(10):
        resp = await origin.post("/", b"", {})
        conn = resp._conn
        assert conn is not None
        received = 0
        arrived = asyncio.Event()
        seen = conn.data_received

        def spy(data: bytes) -> None:
            nonlocal received
            received += len(data)
            seen(data)
            if received >= len(wire) - 4096:  # the head is not counted: a little less
                arrived.set()

        conn.data_received = spy  # type: ignore[method-assign]
        if conn._paused:  # the body came with the head (and reading paused since)
            arrived.set()
        await arrived.wait()
        # Nothing was read: about the back-pressure mark was decoded, the rest waits coded.
        assert resp.content._size <= 2 * 64 * 1024 and conn._tail
        parts = [part async for part in resp.content.iter_any()]
        resp.release()
    assert b"".join(parts) == text


async def test_gzip_members_are_all_decoded() -> None:
    one, two = b'{"a": ' + b"1" * 1000, b"2" * 1000 + b"}"
    wire = gzip.compress(one) + gzip.compress(two)
    async with talking(replies(answer(wire, "Content-Encoding: gzip"))) as (_, origin):
        assert await post(origin) == (200, one + two)


@pytest.mark.parametrize(
    "wire",
    [gzip.compress(b"x" * 1000)[:-10], gzip.compress(b"x") + b"junk", zlib.compress(b"x") + b"!"],
    ids=["cut-short", "junk-after-gzip", "bytes-after-deflate"],
)
async def test_a_compressed_body_cut_short_or_followed_by_junk_is_an_error(wire: bytes) -> None:
    coding = "deflate" if wire.startswith(b"x") else "gzip"
    async with talking(replies(answer(wire, f"Content-Encoding: {coding}"))) as (_, origin):
        with pytest.raises(ResponseError):
            await post(origin)


async def test_a_compressed_answer_framed_by_the_connection_end_is_streamed_whole() -> None:
    text = bytes(range(256)) * 8 * 1024  # 2 MiB: decoding stops and goes on as it is read

    async def until_close(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n" + gzip.compress(text))
        await w.drain()

    async with talking(until_close) as (_, origin), asyncio.timeout(10):
        resp = await origin.post("/", b"", {})
        parts = [part async for part in resp.content.iter_any()]
        resp.release()
    assert b"".join(parts) == text and len(parts) > 1


async def test_a_compressed_answer_whole_before_a_tls_close_is_still_read_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # asyncio's TLS layer reads on while the reader is paused, so the close can come before
    # the body is decoded: the answer arrived whole, and is read whole.
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    text = bytes(range(256)) * 8 * 1024  # 2 MiB: far more than is decoded ahead of the reader
    wire = answer(gzip.compress(text), "Content-Encoding: gzip", "Connection: close")

    async def once(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.request(r)
        w.write(wire)
        await w.drain()

    with ca.cert_pem.tempfile() as ca_file:
        monkeypatch.setenv("SSL_CERT_FILE", ca_file)
        monkeypatch.setattr(http_client.pool, "_ssl_context", None)
        async with serving(once, tls=server_tls) as (_, url), client_for(url) as origin:
            async with asyncio.timeout(10):
                resp = await origin.post("/", b"", {})
                conn = resp._conn
                assert conn is not None
                lost = asyncio.get_running_loop().create_future()
                seen = conn.connection_lost

                def spy(exc: Exception | None) -> None:
                    seen(exc)
                    lost.set_result(None)

                conn.connection_lost = spy  # type: ignore[method-assign]
                if conn.closed:  # it came with the answer
                    lost.set_result(None)
                await lost
                parts = [part async for part in resp.content.iter_any()]
                resp.release()
    assert b"".join(parts) == text


async def test_a_connection_whose_answer_ended_while_paused_is_not_reused() -> None:
    # The answer's body (100 KB: more than a reader may leave unread) arrives in one read, so
    # reading pauses, and the answer ends. The upstream then sends a stray answer, which waits
    # in the socket unseen. Reused, the connection would hand it to the next request.
    send_body, send_stray, sent_stray = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        while (request := await s.request(r)) is not None:
            if len(s.requests) == 1:
                wire = answer(bytes(100_000))
                w.write(wire[:-100_000])  # the head
                await send_body.wait()
                w.write(wire[-100_000:])
                await send_stray.wait()
                w.write(answer(b"SECRET ANSWER OF ANOTHER CLIENT"))
                await w.drain()
                sent_stray.set()
            else:
                w.write(answer(b"own answer: " + request.rsplit(b"\r\n\r\n", 1)[1]))
                await w.drain()

    async with talking(script) as (srv, origin), asyncio.timeout(10):
        resp = await origin.post("/", b"first", {})
        conn = resp._conn
        assert conn is not None
        send_body.set()
        await resp.content._wait()  # the body's bytes came
        assert conn._paused and resp.content._eof  # reading paused, then the answer ended
        send_stray.set()
        await sent_stray.wait()
        assert len(await resp.read()) == 100_000
        resp.release()
        assert await post(origin, b"second") == (200, b"own answer: second")
    assert srv.connections == 2


async def test_a_kept_alive_connection_closed_before_any_byte_is_stale_a_new_one_is_not() -> None:
    # The upstream reads the second request and closes without a byte: on a reused connection
    # that is the idle-close race (StaleConnection: safe to send again); on a new one the
    # request reached it and may have been processed (a plain ResponseError).
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        if await s.request(r) is not None and s.connections == 1:
            w.write(answer(b"one"))
            await w.drain()
            await s.request(r)  # the second request: closed on, unanswered

    async with talking(script) as (_, origin):
        assert await post(origin) == (200, b"one")
        with pytest.raises(StaleConnection):
            await post(origin)
        with pytest.raises(ResponseError) as err:  # a new connection, closed the same way
            await post(origin)
        assert not isinstance(err.value, StaleConnection)


async def test_a_small_body_decoding_to_megabytes_gives_the_loop_back_as_it_goes() -> None:
    # 16 MiB of zeros arrive as a few KiB of gzip in one read: decoded all at once, every other
    # request on the loop would wait for it. Decoded a megabyte a turn, a ticker runs between.
    wire = answer(gzip.compress(bytes(16 * 1024 * 1024), compresslevel=1), "Content-Encoding: gzip")
    turns = 0
    done = False

    async def ticker() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)  # counts the loop's turns (what is measured, not a wait)

    async with talking(replies(wire)) as (_, origin), asyncio.timeout(10):
        resp = await origin.post("/", b"", {})
        tick = asyncio.create_task(ticker())
        body = await resp.read()
        done = True
        await tick
        resp.release()
    assert body == bytes(16 * 1024 * 1024)
    assert turns >= 12, turns
