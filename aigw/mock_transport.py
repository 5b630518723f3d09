"""A :class:`~aigw.transport.Transport` for tests: a function answers each upstream request.

:class:`MockTransport` behaves like the real transports where a caller can tell (httpx's
``MockTransport`` idea): answers arrive whole or in chunks, a body is read once, a connection
is pooled only when its body was read to the end and closed otherwise, and failures are the
:mod:`aigw.http_client` errors the real ones raise.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from typing import Literal

from multidict import CIMultiDict, CIMultiDictProxy

from aigw.http_client import HTTPClientError, ResponseError
from aigw.http_client.response import media_type
from aigw.transport import UpstreamRequest

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
