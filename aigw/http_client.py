"""A lean pooled HTTP/1.1 client for the gateway's calls to upstreams (LLM providers).

Why not aiohttp's ``ClientSession``: it builds a request object, URL, header multidicts,
payload, timer and trace context per call, and that was the largest part of the CPU a proxied
request took (``benchmarks/paired.py``, proxy-only at c=32: a request through this client took
0.56 of the CPU it took through ``ClientSession``, in two runs; see benchmarks/README.md). A
gateway pays it on every cache miss, so upstream calls go through this instead.
``Gateway.session`` (aiohttp) stays for plugins' other calls, and for providers reached
through an egress proxy, which this client does not do.

What it does: keep-alive connections pooled per origin (the most recently used first; idle
ones closed after ``keepalive_s`` by a timer); ``http`` and ``https`` (the system's CA store,
or ``SSL_CERT_FILE``; certificate and host name verified, SNI); addresses looked up once per
5 minutes and shared by concurrent connects, each new connection starting from the next
one (DNS round robin spreads the load), tried by happy eyeballs (RFC 8305: the next address
250 ms after the last, so a dead one is passed over); a request is one write (head
and body together); ``Host``, ``User-Agent``, ``Accept-Encoding: gzip, deflate`` and basic
auth from credentials in the URL unless the caller sets them, ``Content-Length`` always its
own; responses framed by ``Content-Length``, ``chunked`` or the connection's end (a reset
there ends only an error answer; it cuts any other short), ``gzip``/``deflate`` (zlib or raw)
decoded, a trailing dot of the host name left out of SNI and ``Host``, informational (1xx)
answers skipped. Streamed bodies have back-pressure: reading from the socket pauses while more
than 64 KiB wait unread. What it does not do: redirects (a 3xx reaches the caller as it is),
cookies, proxies, HTTP/2, ``Expect: 100-continue``.

Failures raise :class:`HTTPClientError`: :class:`ConnectError` (no connection, TLS refused),
:class:`ConnectTimeout` (TCP and TLS took longer than the connect timeout),
:class:`ReadTimeout` (no byte for the read timeout while an answer was due) and
:class:`ResponseError` (the connection closed or the answer was malformed). The timeouts are
``TimeoutError`` s too. A connection is reused only after an answer was read to its end
without ``Connection: close``; any failure closes it.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final, cast
from urllib.parse import unquote, urlsplit

import aiohappyeyeballs
from multidict import CIMultiDict, CIMultiDictProxy

from aigw import __version__

_MAX_HEAD: Final = 64 * 1024  # bytes of status line and headers
_HIGH_WATER: Final = 64 * 1024  # unread body bytes above which reading pauses
_NO_BODY: Final = frozenset({204, 304})
# Sent unless the caller sets them (some providers' firewalls refuse requests without an agent).
_DEFAULT_HEADERS: Final = (
    ("User-Agent", f"aigw/{__version__}"),
    ("Accept-Encoding", "gzip, deflate"),
)
_FRAMING: Final = frozenset({"content-length", "transfer-encoding"})  # the client's own
_DNS_TTL_S: Final = 300.0  # how long resolved addresses are reused (aiohttp's was set so too)
_HAPPY_EYEBALLS_DELAY_S: Final = 0.25  # RFC 8305's: the next address is tried after this


class HTTPClientError(Exception):
    """An upstream call failed in the transport (not an HTTP error status)."""


class ConnectError(HTTPClientError):
    """No connection could be made (refused, unresolvable, TLS handshake failed)."""


class ConnectTimeout(HTTPClientError, TimeoutError):
    """Connecting (TCP and TLS) took longer than the connect timeout."""


class ReadTimeout(HTTPClientError, TimeoutError):
    """No byte arrived for the read timeout while an answer was due."""


class ResponseError(HTTPClientError):
    """The connection closed before the answer was whole, or the answer was not HTTP/1.x."""


_ssl_context: ssl.SSLContext | None = None
# What getaddrinfo returns: family, type, protocol, canonical name, address.
_AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]


def _default_ssl() -> ssl.SSLContext:
    """The system's CA store with hostname checks, made once (loading it takes milliseconds)."""
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


class Body:
    """A response body as it arrives: :meth:`read` it whole or iterate with :meth:`iter_any`.

    Its method names are those of aiohttp's ``StreamReader`` that the gateway uses, so an
    answer from either client is read the same way.
    """

    __slots__ = ("_chunks", "_conn", "_eof", "_exc", "_size", "_waiter", "_whole")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._whole = False  # read() is collecting all of it: no back-pressure

    def at_eof(self) -> bool:
        """Whether the body was received and consumed to its end."""
        return self._eof and not self._chunks

    async def read(self) -> bytes:
        """The rest of the body, once it has all arrived."""
        self._whole = True
        self._conn.resume()
        while not self._eof:
            await self._wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        return data

    async def iter_any(self) -> AsyncIterator[bytes]:
        """Whatever has arrived, as soon as it has, until the end of the body."""
        while True:
            if not self._chunks:
                if self._eof:
                    return
                await self._wait()
                continue
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._size = 0
            self._conn.resume()
            yield data

    async def _wait(self) -> None:
        if self._exc is not None:
            raise self._exc
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self._exc is not None and not self._chunks:
            raise self._exc

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _HIGH_WATER and not self._whole:
            self._conn.pause()
        self._wake()

    def _end(self, exc: BaseException | None = None) -> None:
        if exc is None:
            self._eof = True
        elif self._exc is None:
            self._exc = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Response:
    """An upstream's answer: status and headers, and its :attr:`content` as it arrives.

    :meth:`release` hands the connection back to the pool once the body was read to its end
    (and closes it otherwise); :meth:`close` closes it, which stops the upstream's work.
    """

    __slots__ = ("_conn", "content", "headers", "reason", "status")

    def __init__(
        self, conn: _Connection, status: int, reason: str, headers: CIMultiDictProxy[str]
    ) -> None:
        self._conn: _Connection | None = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content = Body(conn)

    @property
    def content_type(self) -> str:
        """The media type, lowercased, without parameters (aiohttp's default if absent)."""
        value = self.headers.get("Content-Type")
        if not value:
            return "application/octet-stream"
        return value.partition(";")[0].strip().lower()

    async def read(self) -> bytes:
        """The whole body (raises :class:`HTTPClientError` if it cannot be read whole)."""
        return await self.content.read()

    def release(self) -> None:
        """Give the connection back: to the pool if the body was read to its end."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.done(reuse=self.content.at_eof())

    def close(self) -> None:
        """Close the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.done(reuse=False)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: writes requests, parses the answers."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._loop = asyncio.get_running_loop()
        self._head: asyncio.Future[Response] | None = None  # while the head is due
        self._body: Body | None = None  # while the body is due
        # The body's framing: bytes left of a Content-Length body or chunk; -1: read until
        # the connection closes; for chunked bodies, _chunked and the state below.
        self._left = 0
        self._chunked = False
        self._trailers = False  # a chunked body's last chunk was read: trailers follow
        self._decoder: zlib._Decompress | None = None
        self._deflate = False  # a deflate body whose first bytes say which deflate it is
        self._reusable = True
        self._status = 0
        self._paused = False
        self._read_timeout = 0.0
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._last_read = self._loop.time()
        self._buf += data
        try:
            self._parse()
        except ResponseError as err:
            self._fail(err)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost ends what was due

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.origin.forget(self)
        self._cancel_timer()
        # A reset is the end only of an error answer (the upstream answered early and reset the
        # request it did not read); otherwise it cut the answer short.
        ended = exc is None or self._status >= 400
        if ended and self._body is not None and self._left == -1 and not self._chunked:
            body, self._body = self._body, None
            self._flush_decoder(body)
            body._end()  # a body framed by the connection's end: complete
            return
        why = f"{exc!r}" if exc is not None else "closed by the upstream"
        self._fail(ResponseError(f"connection lost before the answer was whole ({why})"))

    # -- used by Origin, Response and Body
    def send(self, data: bytes, read_timeout: float) -> asyncio.Future[Response]:
        """Write a request; the future gets its answer's head."""
        assert self.transport is not None
        self._head = self._loop.create_future()
        self._read_timeout = read_timeout
        self._last_read = self._loop.time()
        self._timer = self._loop.call_later(read_timeout, self._check_timeout)
        self.transport.write(data)
        return self._head

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self._last_read = self._loop.time()  # the wait was the reader's, not the upstream's
            self.transport.resume_reading()

    def done(self, reuse: bool) -> None:
        """The caller is finished with the answer: pool the connection or close it."""
        if reuse and self._reusable and not self.closed and self._body is None:
            self._cancel_timer()
            self.idle_since = self._loop.time()
            self.origin.park(self)
        else:
            self.close()

    def close(self) -> None:
        self._cancel_timer()
        self._reusable = False
        if not self.closed:
            self.closed = True
            self.origin.forget(self)
            if self.transport is not None:
                self.transport.close()
        err = ResponseError("the answer was closed before its end")
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(err)
        body, self._body = self._body, None
        if body is not None:
            body._end(err)

    # -- parsing
    def _parse(self) -> None:
        while True:
            if self._head is not None:
                if not self._parse_head():
                    return
            elif self._body is not None:
                if not self._parse_body():
                    return
            else:
                if self._buf:  # bytes nobody asked for: the connection is out of step
                    raise ResponseError("unexpected bytes from the upstream")
                return

    def _parse_head(self) -> bool:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                raise ResponseError("response head too large")
            return False
        lines = bytes(buf[:end]).decode("utf-8", "surrogateescape").split("\r\n")
        del buf[: end + 4]
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if version not in ("HTTP/1.1", "HTTP/1.0") or not (code.isdigit() and len(code) == 3):
            raise ResponseError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(code)
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise ResponseError(f"malformed header line: {line[:80]!r}")
            headers.add(name, value.strip(" \t"))
        if 100 <= status < 200:
            return True  # an informational answer: the real one follows
        self._frame(version, status, headers)
        response = Response(self, status, reason, CIMultiDictProxy(headers))
        head, self._head = self._head, None
        assert head is not None
        if self._left == 0 and not self._chunked:
            self._finish_body(response.content)
        else:
            self._body = response.content
        if not head.done():
            head.set_result(response)
        return True

    def _frame(self, version: str, status: int, headers: CIMultiDict[str]) -> None:
        """How the body is delimited, whether the connection can be reused, how it is coded."""
        connection = headers.get("Connection", "").lower()
        self._reusable = "close" not in connection and (
            version == "HTTP/1.1" or "keep-alive" in connection
        )
        self._chunked, self._status = False, status
        if status in _NO_BODY:
            self._left = 0
            return
        encoding = headers.get("Transfer-Encoding", "").lower()
        length = headers.get("Content-Length")
        if encoding:
            if encoding.rsplit(",", 1)[-1].strip() != "chunked":
                raise ResponseError(f"unsupported Transfer-Encoding {encoding!r}")
            self._chunked, self._trailers, self._left = True, False, 0
        elif length is not None:
            if not (length.isascii() and length.isdigit()):
                raise ResponseError(f"malformed Content-Length {length!r}")
            self._left = int(length)
        else:
            self._left, self._reusable = -1, False
        coding = headers.get("Content-Encoding", "identity").lower().strip()
        self._decoder, self._deflate = None, False
        if coding == "gzip":
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self._deflate = True
        elif coding not in ("identity", ""):
            raise ResponseError(f"unsupported Content-Encoding {coding!r}")

    def _parse_body(self) -> bool:
        body, buf = self._body, self._buf
        assert body is not None
        if not buf:
            return False
        if not self._chunked:
            if self._left == -1:
                self._deliver(body, bytes(buf))
                buf.clear()
                return False
            take = min(self._left, len(buf))
            self._deliver(body, bytes(buf[:take]))
            del buf[:take]
            self._left -= take
            if self._left == 0:
                self._finish_body(body)
                return True
            return False
        return self._parse_chunk(body)

    def _parse_chunk(self, body: Body) -> bool:
        buf = self._buf
        if self._left > 0:  # inside a chunk's data
            take = min(self._left, len(buf))
            self._deliver(body, bytes(buf[:take]))
            del buf[:take]
            self._left -= take
            if self._left == 0:
                self._left = -2  # its closing CRLF is due
            return bool(buf)
        if self._left == -2:
            if len(buf) < 2:
                return False
            if buf[:2] != b"\r\n":
                raise ResponseError("malformed chunked body")
            del buf[:2]
            self._left = 0
            return True
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                raise ResponseError("malformed chunked body")
            return False
        line = bytes(buf[:end])
        del buf[: end + 2]
        if self._trailers:
            if not line:  # the blank line after the trailers: the body is whole
                self._finish_body(body)
            return True
        size = line.split(b";", 1)[0].strip()
        try:
            self._left = int(size, 16)
        except ValueError:
            raise ResponseError(f"malformed chunk size {size[:20]!r}") from None
        if self._left < 0:
            raise ResponseError("malformed chunk size")
        if self._left == 0:
            self._trailers = True
        return True

    def _deliver(self, body: Body, data: bytes) -> None:
        if self._deflate:
            # "deflate" is meant as zlib's format, but some servers send raw deflate: a zlib
            # stream's first byte names the method (8) in its low bits.
            self._deflate = False
            raw = data[0] & 0x0F != 8
            self._decoder = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as err:
                raise ResponseError(f"cannot decode the body: {err}") from None
            if not data:
                return
        body._feed(data)

    def _flush_decoder(self, body: Body) -> None:
        if self._decoder is not None:
            rest = self._decoder.flush()
            self._decoder = None
            if rest:
                body._feed(rest)

    def _finish_body(self, body: Body) -> None:
        self._cancel_timer()
        self._flush_decoder(body)
        self._body = None
        body._end()

    # -- failure
    def _check_timeout(self) -> None:
        self._timer = None
        if self._head is None and self._body is None:
            return
        idle = self._loop.time() - self._last_read
        if self._paused or idle < self._read_timeout:
            wait = self._read_timeout - idle if not self._paused else self._read_timeout
            self._timer = self._loop.call_later(wait, self._check_timeout)
            return
        self._fail(ReadTimeout(f"no data from the upstream for {self._read_timeout:g} s"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, err: HTTPClientError) -> None:
        head, self._head = self._head, None
        body, self._body = self._body, None
        if head is not None and not head.done():
            head.set_exception(err)
        if body is not None:
            body._end(err)
        self.close()


class HTTPClient:
    """The process's upstream connections: one :class:`Origin` per upstream, closed together.

    ``keepalive_s``: how long an idle connection is kept for reuse (aiohttp's default, 15 s).
    """

    def __init__(self, keepalive_s: float = 15.0) -> None:
        self.keepalive_s = keepalive_s
        self._origins: list[Origin] = []

    def origin(self, url: str, connect_timeout_s: float, read_timeout_s: float) -> Origin:
        """A pool for the scheme, host and port of ``url`` (its path is the caller's)."""
        origin = Origin(url, connect_timeout_s, read_timeout_s, self.keepalive_s)
        self._origins.append(origin)
        return origin

    def close(self) -> None:
        """Close every connection of every origin."""
        for origin in self._origins:
            origin.close()


class Origin:
    """The pool of connections to one ``scheme://host:port``, with its timeouts.

    :meth:`post` sends a request and returns the :class:`Response` once its head arrived.
    """

    def __init__(
        self, url: str, connect_timeout_s: float, read_timeout_s: float, keepalive_s: float
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname  # looked up as written: a trailing dot skips search domains
        # The name the certificate and the Host header carry has no trailing dot (as aiohttp).
        self._name = self.host.rstrip(".")
        self.port = parts.port or (443 if self.tls else 80)
        default = 443 if self.tls else 80
        host = f"[{self._name}]" if ":" in self._name else self._name
        host = host if self.port == default else f"{host}:{self.port}"
        self._host_line = f"Host: {host}\r\n"
        # (lower-case name, line): sent unless the caller sends that header itself.
        self._defaults = [(n.lower(), f"{n}: {v}\r\n") for n, v in _DEFAULT_HEADERS]
        if parts.username is not None:  # credentials in the URL: basic auth, as aiohttp did
            user = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            basic = base64.b64encode(user).decode()
            self._defaults.append(("authorization", f"Authorization: Basic {basic}\r\n"))
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.keepalive_s = keepalive_s
        self._idle: collections.deque[_Connection] = collections.deque()
        self._all: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._addresses: Sequence[_AddrInfo] = ()
        self._addresses_until = 0.0
        self._resolving: asyncio.Task[Sequence[_AddrInfo]] | None = None
        self._turn = 0  # which address new connections try first: they take turns

    async def post(self, target: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """POST ``body`` to ``target`` (path and query) with ``headers``.

        Content-Length is the client's own (a caller's, or a Transfer-Encoding, is dropped);
        Host, User-Agent, Accept-Encoding and the URL's credentials are added unless given.
        """
        given = {name.lower() for name in headers}
        if not given.isdisjoint(_FRAMING):
            headers = {k: v for k, v in headers.items() if k.lower() not in _FRAMING}
        head = [f"POST {target} HTTP/1.1\r\n"]
        if "host" not in given:
            head.append(self._host_line)
        for name, value in headers.items():
            head.append(f"{name}: {value}\r\n")
        for name, line in self._defaults:
            if name not in given:
                head.append(line)
        head.append(f"Content-Length: {len(body)}\r\n\r\n")
        text = "".join(head)
        lines = len(head) + 1  # the last item ends the head with a second line break
        # A line break inside a name or value would smuggle a header or a request.
        if text.count("\n") != lines or text.count("\r") != lines:
            raise ValueError("a request header holds a line break")
        data = text.encode("utf-8", "surrogateescape") + body
        conn = self._pooled() or await self._connect()
        try:
            return await conn.send(data, self.read_timeout_s)
        except BaseException:
            conn.close()  # cancelled or failed: the answer, if it comes, has no reader
            raise

    def _pooled(self) -> _Connection | None:
        idle, now = self._idle, asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if now - conn.idle_since > self.keepalive_s:
                conn.close()
                continue
            return conn
        return None

    async def _connect(self) -> _Connection:
        """A new connection: the addresses (cached), the first to accept of them (happy
        eyeballs: the next one is tried 250 ms later if the previous has not answered), TLS;
        all of it within the connect timeout."""
        loop = asyncio.get_running_loop()
        ssl_context = _default_ssl() if self.tls else None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                found = await self._resolve()
                # Each new connection starts from the next address, so that several replicas
                # behind one name (DNS round robin) share the load, as with aiohttp.
                first = self._turn % len(found)
                self._turn += 1
                sock = await aiohappyeyeballs.start_connection(
                    [*found[first:], *found[:first]],
                    happy_eyeballs_delay=_HAPPY_EYEBALLS_DELAY_S,
                    interleave=1,
                )
                try:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(self),
                        sock=sock,
                        ssl=ssl_context,
                        server_hostname=self._name if self.tls else None,
                    )
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError:
            raise ConnectTimeout(
                f"connecting to {self.host}:{self.port} took over {self.connect_timeout_s:g} s"
            ) from None
        except (OSError, ssl.SSLError) as err:
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {err}") from err
        self._all.add(conn)
        return conn

    async def _resolve(self) -> Sequence[_AddrInfo]:
        """The host's addresses, looked up at most once per TTL; concurrent connects share
        one lookup (a burst on a cold pool would otherwise queue lookups in the resolver's
        few threads, past the connect timeout)."""
        loop = asyncio.get_running_loop()
        if self._addresses and loop.time() < self._addresses_until:
            return self._addresses
        if self._resolving is None:
            self._resolving = task = loop.create_task(self._lookup())
            # Retrieved here too, so that a lookup whose waiters all gave up logs nothing.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(self._resolving)

    async def _lookup(self) -> Sequence[_AddrInfo]:
        loop = asyncio.get_running_loop()
        try:
            found = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        finally:
            self._resolving = None
        if not found:
            raise OSError(f"no address for {self.host}")
        self._addresses, self._addresses_until = found, loop.time() + _DNS_TTL_S
        return found

    def park(self, conn: _Connection) -> None:
        """Keep a connection whose answer was read whole, for the next request."""
        self._idle.append(conn)
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self.keepalive_s, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for ``keepalive_s`` (the oldest are at the left: the
        most recently parked are used first), and come back when the next one will be."""
        self._sweeper = None
        idle, now = self._idle, asyncio.get_running_loop().time()
        while idle and (idle[0].closed or now - idle[0].idle_since >= self.keepalive_s):
            idle.popleft().close()
        if idle:
            wait = max(0.0, idle[0].idle_since + self.keepalive_s - now)
            self._sweeper = asyncio.get_running_loop().call_later(wait, self._sweep)

    def forget(self, conn: _Connection) -> None:
        """A connection closed."""
        self._all.discard(conn)

    def close(self) -> None:
        """Close every connection, idle or in use."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
