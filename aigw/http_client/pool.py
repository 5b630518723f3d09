"""Connections to upstreams: :class:`HTTPClient` holds one :class:`Origin` (a pool, its
addresses, its timeouts) per upstream."""

from __future__ import annotations

import asyncio
import base64
import collections
import socket
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import aiohappyeyeballs

from aigw import __version__

from .connection import Connection
from .errors import ConnectError, ConnectTimeout
from .response import Response

# Sent unless the caller sets them (some providers' firewalls refuse requests without an agent).
_DEFAULT_HEADERS: Final = (
    ("User-Agent", f"aigw/{__version__}"),
    ("Accept-Encoding", "gzip, deflate"),
)
_FRAMING: Final = frozenset({"content-length", "transfer-encoding"})  # the client's own
_DNS_TTL_S: Final = 300.0  # how long resolved addresses are reused (aiohttp's was set so too)
_HAPPY_EYEBALLS_DELAY_S: Final = 0.25  # RFC 8305's: the next address is tried after this
# The default limits of an answer's body: generous for an LLM's.
DEFAULT_MAX_BODY_BYTES: Final = 64 * 1024 * 1024

_ssl_context: ssl.SSLContext | None = None
# What getaddrinfo returns: family, type, protocol, canonical name, address.
_AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]


def redact_url(url: str) -> str:
    """``url`` with the credentials in it (``user:password@``), if any, as ``***@``: for
    logs and error messages."""
    scheme, sep, rest = url.partition("://")
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    _, at, host = rest[:end].rpartition("@")
    return f"{scheme}{sep}***@{host}{rest[end:]}" if sep and at else url


def _default_ssl() -> ssl.SSLContext:
    """The system's CA store with hostname checks, made once (loading it takes milliseconds)."""
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


class HTTPClient:
    """The process's upstream connections: one :class:`Origin` per upstream, closed together.

    ``keepalive_s``: how long an idle connection is kept for reuse (aiohttp's default, 15 s).
    """

    def __init__(self, keepalive_s: float = 15.0) -> None:
        self.keepalive_s = keepalive_s
        self._origins: list[Origin] = []

    def origin(
        self,
        url: str,
        connect_timeout_s: float,
        read_timeout_s: float,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_decoded_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> Origin:
        """A pool for the scheme, host and port of ``url`` (its path is the caller's), with the
        limits of :class:`Origin`."""
        origin = Origin(
            url,
            connect_timeout_s,
            read_timeout_s,
            self.keepalive_s,
            max_body_bytes=max_body_bytes,
            max_decoded_bytes=max_decoded_bytes,
        )
        self._origins.append(origin)
        return origin

    def close(self) -> None:
        """Close every connection of every origin."""
        for origin in self._origins:
            origin.close()


class Origin:
    """The pool of connections to one ``scheme://host:port``, with its timeouts.

    :meth:`post` sends a request and returns the :class:`Response` once its head arrived.
    ``max_body_bytes``: the most body bytes an answer may have waiting unread, which for
    ``read()`` is the whole body (as decoded); ``max_decoded_bytes``: the most a gzip or
    deflate body may decode to, read whole or streamed. Past either the answer fails with
    :class:`ResponseError` and its connection is closed.
    """

    def __init__(
        self,
        url: str,
        connect_timeout_s: float,
        read_timeout_s: float,
        keepalive_s: float,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_decoded_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {redact_url(url)!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname  # looked up as written: a trailing dot skips search domains
        # The name the certificate and the Host header carry has no trailing dot (as aiohttp).
        self._name = self.host.rstrip(".")
        default = 443 if self.tls else 80
        self.port = parts.port or default
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
        self.max_body_bytes = max_body_bytes
        self.max_decoded_bytes = max_decoded_bytes
        self._idle: collections.deque[Connection] = collections.deque()
        self._all: set[Connection] = set()
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

    def _pooled(self) -> Connection | None:
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

    async def _connect(self) -> Connection:
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
                        lambda: Connection(self),
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

    def park(self, conn: Connection) -> None:
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

    def forget(self, conn: Connection) -> None:
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
