"""One interface for every upstream call: a :class:`Transport` sends an :class:`UpstreamRequest`
and returns an :class:`UpstreamResponse` whose body streams (httpx's transport idea).

Implementations: :class:`PooledTransport` (the lean pooled client, :mod:`aigw.http_client`;
the normal path), :class:`ProxyTransport` (aiohttp's ``ClientSession`` through an HTTP egress
proxy, which the lean client does not do) and :class:`MockTransport` (a function answers; for
tests). It is also the seam for wrapping the upstream call (tracing): a wrapper is a
``Transport`` holding another.

Every implementation fails with the errors of :mod:`aigw.http_client`, so a caller catches one
family: :class:`~aigw.http_client.ConnectError` (no connection), ``ConnectTimeout``,
``ReadTimeout`` (both ``TimeoutError`` s too) and ``ResponseError`` (the answer broke), all
:class:`~aigw.http_client.HTTPClientError`, raised by :meth:`Transport.send` and while the body
is read. An HTTP error status is an answer, not an error.
"""

from __future__ import annotations

import inspect
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Mapping,
)
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from aigw.http_client import (
    DEFAULT_MAX_BODY_BYTES,
    ConnectError,
    ConnectTimeout,
    HTTPClient,
    HTTPClientError,
    ReadTimeout,
    Response,
    ResponseError,
)
from aigw.http_client.response import media_type


@dataclass(slots=True)
class UpstreamRequest:
    """One request to an upstream: ``url`` is absolute; ``headers`` are sent as given (the
    transport adds Host, Content-Length and its own defaults). It is the caller's: a retry may
    change its headers and send it again, so a transport keeps nothing of it past the call."""

    url: str
    body: bytes
    headers: Mapping[str, str]
    method: str = "POST"


class ResponseBody(Protocol):
    """A response body as it arrives (the methods of aiohttp's ``StreamReader`` we use)."""

    def at_eof(self) -> bool:
        """Whether the body was received and consumed to its end."""
        ...

    async def read(self) -> bytes:
        """The rest of the body, once it has all arrived."""
        ...

    def iter_any(self) -> AsyncIterator[bytes]:
        """Whatever has arrived, as soon as it has, until the end of the body."""
        ...


class UpstreamResponse(Protocol):
    """An upstream's answer once its head arrived; :attr:`content` streams the body.

    :meth:`release` frees the connection (kept for reuse only if the body was read to its
    end); :meth:`close` closes it, which tells the upstream to stop working on the request.
    """

    @property
    def status(self) -> int: ...

    @property
    def reason(self) -> str: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def content(self) -> ResponseBody: ...

    @property
    def content_type(self) -> str:
        """The media type, lowercased, without parameters."""
        ...

    async def read(self) -> bytes:
        """The whole body."""
        ...

    def release(self) -> None:
        """Free the connection: reused if the body was read to its end, else closed."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...


class Transport(Protocol):
    """Sends one request; the answer is returned once its head arrived, the body unread.

    Raises :class:`~aigw.http_client.HTTPClientError` (see the module's docstring).
    """

    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...


class PooledTransport:
    """The lean client's pool for one origin (``scheme://host:port`` of ``base_url``), with
    its connect and read timeouts: the path every upstream call takes unless a proxy is set.

    Only ``POST`` requests to that origin: anything else is a ``ValueError``.
    """

    __slots__ = ("_cut", "_origin", "_prefix")

    def __init__(
        self,
        client: HTTPClient,
        base_url: str,
        connect_timeout_s: float,
        read_timeout_s: float,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        parts = urlsplit(base_url)
        # One bound for what an answer's body may hold and what it may decode to.
        self._origin = client.origin(
            base_url,
            connect_timeout_s,
            read_timeout_s,
            max_body_bytes=max_body_bytes,
            max_decoded_bytes=max_body_bytes,
        )
        # A request URL is this prefix and the target (path and query) from its "/" on.
        self._prefix = f"{parts.scheme}://{parts.netloc}/"
        self._cut = len(self._prefix) - 1

    def send(self, request: UpstreamRequest) -> Coroutine[Any, Any, Response]:
        """POST through the pool; raises ``HTTPClientError`` as :meth:`Origin.post` does."""
        url = request.url
        if request.method != "POST" or not url.startswith(self._prefix):
            raise ValueError(f"{request.method} {url}: not a POST to {self._prefix}")
        # The pool's coroutine itself, not one awaiting it: a frame less per upstream call.
        return self._origin.post(url[self._cut :], request.body, request.headers)


class ProxyTransport:
    """aiohttp's session through an HTTP egress proxy (``proxy``: ``http://host:port``).

    ``proxy_auth``, a ``Proxy-Authorization`` value, goes on the ``CONNECT`` of an ``https``
    request, never inside its tunnel, and on a plain ``http`` request itself, which the proxy
    consumes. aiohttp's errors, also those raised while the body is read, become the
    :mod:`aigw.http_client` ones (:func:`client_error`). ``read()`` collects at most
    ``max_body_bytes`` (as decoded; the lean client's default), else ``ResponseError``.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        proxy: str,
        proxy_auth: str | None,
        connect_timeout_s: float,
        read_timeout_s: float,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self._session = session
        self._max_body = max_body_bytes
        self.proxy = proxy
        self._auth = proxy_auth
        # aiohttp sends proxy_headers only on the CONNECT of an https request.
        self._tunnel_headers = None if proxy_auth is None else {"Proxy-Authorization": proxy_auth}
        # No total: a stream may last minutes.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send through the proxy; returns once the head arrived."""
        headers = request.headers
        if self._auth is not None and not request.url.startswith("https:"):
            headers = {**headers, "Proxy-Authorization": self._auth}
        try:
            resp = await self._session.request(
                request.method,
                request.url,
                data=request.body,
                headers=headers,
                timeout=self._timeout,
                proxy=self.proxy,
                proxy_headers=self._tunnel_headers,
            )
        except aiohttp.ClientError as err:
            raise client_error(err) from err
        return _ProxiedResponse(resp, self._max_body)


def client_error(err: aiohttp.ClientError) -> HTTPClientError:
    """The :mod:`aigw.http_client` error for one of aiohttp's: ``ConnectTimeout`` for a
    connect timeout, ``ReadTimeout`` for a read timeout, ``ConnectError`` when no connection
    (to the proxy, or through it) was made, ``ResponseError`` for the rest (the answer broke)."""
    what = f"{type(err).__name__}: {err}"
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        return ConnectTimeout(what)
    if isinstance(err, aiohttp.ServerTimeoutError):
        return ReadTimeout(what)
    if isinstance(err, aiohttp.ClientConnectorError | aiohttp.ClientHttpProxyError):
        return ConnectError(what)
    return ResponseError(what)


class _ProxiedBody:
    __slots__ = ("_max", "_reader")

    def __init__(self, reader: aiohttp.StreamReader, max_bytes: int) -> None:
        self._reader = reader
        self._max = max_bytes

    def at_eof(self) -> bool:
        return self._reader.at_eof()

    async def read(self) -> bytes:
        parts, size = [], 0
        try:
            while chunk := await self._reader.readany():
                size += len(chunk)
                if size > self._max:
                    raise ResponseError(f"the body is over {self._max} bytes")
                parts.append(chunk)
        except aiohttp.ClientError as err:
            raise client_error(err) from err
        return b"".join(parts)

    async def iter_any(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._reader.iter_any():
                yield chunk
        except aiohttp.ClientError as err:
            raise client_error(err) from err


class _ProxiedResponse:
    """An ``aiohttp.ClientResponse`` in the :class:`UpstreamResponse` shape."""

    __slots__ = ("_resp", "content")

    def __init__(self, resp: aiohttp.ClientResponse, max_body: int) -> None:
        self._resp = resp
        self.content = _ProxiedBody(resp.content, max_body)

    @property
    def status(self) -> int:
        return self._resp.status

    @property
    def reason(self) -> str:
        return self._resp.reason or ""

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._resp.headers

    @property
    def content_type(self) -> str:
        return self._resp.content_type

    async def read(self) -> bytes:
        return await self.content.read()

    def release(self) -> None:
        self._resp.release()

    def close(self) -> None:
        self._resp.close()


MockHandler = Callable[[UpstreamRequest], "MockResponse | Awaitable[MockResponse]"]


class MockTransport:
    """A transport that asks ``handler`` (sync or async) for each answer: for tests.

    The handler gets the :class:`UpstreamRequest` and returns a :class:`MockResponse`, or
    raises an :class:`~aigw.http_client.HTTPClientError` to fail the way a real transport does
    (``ConnectError``, ``ConnectTimeout``, ``ReadTimeout`` before the head).
    """

    def __init__(self, handler: MockHandler) -> None:
        self.handler = handler

    async def send(self, request: UpstreamRequest) -> MockResponse:
        """The handler's answer."""
        answer = self.handler(request)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer


class MockResponse:
    """A canned answer for :class:`MockTransport`, read like a real one.

    ``body`` is the whole body (received at once) or an async iterable of chunks (each one
    arriving as it is produced, the end when it stops; a chunk source raising an
    ``HTTPClientError`` breaks the body as a real connection would). :attr:`connection` tells
    what the caller did with it: ``"open"``, then ``"pooled"`` (released after the body was
    read to its end) or ``"closed"`` (released early, or closed); reading a closed answer's
    body raises ``ResponseError``.
    """

    def __init__(
        self,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        body: bytes | AsyncIterable[bytes] = b"",
        reason: str = "",
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = CIMultiDictProxy(CIMultiDict(headers or {}))
        self.content = _MockBody(body)
        self.connection: Literal["open", "pooled", "closed"] = "open"

    @property
    def content_type(self) -> str:
        """The media type, lowercased, without parameters (aiohttp's default if absent)."""
        return media_type(self.headers)

    async def read(self) -> bytes:
        """The whole body."""
        return await self.content.read()

    def release(self) -> None:
        """Pooled if the body was read to its end, else closed."""
        if self.connection == "open":
            if self.content.at_eof():
                self.connection = "pooled"
            else:
                self.close()

    def close(self) -> None:
        """Closed: the rest of the body is lost."""
        if self.connection != "pooled":
            self.connection = "closed"
            self.content.cut()


class _MockBody:
    __slots__ = ("_chunks", "_error", "_source")

    def __init__(self, body: bytes | AsyncIterable[bytes]) -> None:
        self._error: HTTPClientError | None = None
        self._source: AsyncIterator[bytes] | None = None  # None: the end has arrived
        if isinstance(body, bytes):
            self._chunks = [body] if body else []
        else:
            self._chunks = []
            self._source = aiter(body)

    def at_eof(self) -> bool:
        return self._source is None and self._error is None and not self._chunks

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_any()])

    async def iter_any(self) -> AsyncIterator[bytes]:
        while (chunk := await self._next()) is not None:
            yield chunk

    async def _next(self) -> bytes | None:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._source is None:
                return None
            try:
                chunk = await anext(self._source)
            except StopAsyncIteration:
                self._source = None
                return None
            except HTTPClientError as err:
                self._error, self._source = err, None
                raise
            if chunk:  # as from a socket: no empty chunks
                self._chunks.append(chunk)
        return self._chunks.pop(0)

    def cut(self) -> None:
        if not self.at_eof():
            self._chunks.clear()
            self._source = None
            self._error = ResponseError("the answer was closed before its end")
