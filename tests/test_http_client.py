"""The lean upstream client (aigw.http_client) against raw HTTP/1.1 servers on 127.0.0.1 that
answer with exact bytes: framing, reuse, encodings, failures, timeouts, TLS."""

from __future__ import annotations

import asyncio
import base64
import gzip
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
