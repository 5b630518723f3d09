"""One interface for every upstream call: a :class:`Transport` sends an :class:`UpstreamRequest`
and returns an :class:`UpstreamResponse` whose body streams (httpx's transport idea).

Implementations: :class:`PooledTransport` (the lean pooled client, :mod:`aigw.http_client`;
the normal path), :class:`ProxyTransport` (aiohttp's ``ClientSession`` through an HTTP egress
proxy, which the lean client does not do) and, for tests,
:class:`~aigw.mock_transport.MockTransport` (a function answers). It is also the seam for
wrapping the upstream call (tracing): a wrapper is a ``Transport`` holding another.

Every implementation fails with the errors of :mod:`aigw.http_client`, so a caller catches one
family: :class:`~aigw.http_client.ConnectError` (no connection), ``ConnectTimeout``,
``ReadTimeout`` (both ``TimeoutError`` s too) and ``ResponseError`` (the answer broke), all
:class:`~aigw.http_client.HTTPClientError`, raised by :meth:`Transport.send` and while the body
is read. An HTTP error status is an answer, not an error.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterator,
    Coroutine,
    Mapping,
)
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy

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
