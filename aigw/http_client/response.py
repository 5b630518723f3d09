"""An upstream's answer as it arrives: :class:`Response` (status, headers) and its :class:`Body`."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Final

from multidict import CIMultiDictProxy

if TYPE_CHECKING:
    from .connection import Connection

_HIGH_WATER: Final = 64 * 1024  # unread body bytes above which reading pauses


class Body:
    """A response body as it arrives: :meth:`read` it whole or iterate with :meth:`iter_any`.

    Its method names are those of aiohttp's ``StreamReader`` that the gateway uses, so an
    answer from either client is read the same way.
    """

    __slots__ = ("_chunks", "_conn", "_eof", "_exc", "_size", "_waiter", "_whole")

    def __init__(self, conn: Connection) -> None:
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


def media_type(headers: Mapping[str, str]) -> str:
    """The media type ``headers``' ``Content-Type`` names, lowercased, without parameters
    (aiohttp's default, ``application/octet-stream``, if absent)."""
    value = headers.get("Content-Type")
    if not value:
        return "application/octet-stream"
    return value.partition(";")[0].strip().lower()


class Response:
    """An upstream's answer: status and headers, and its :attr:`content` as it arrives.

    :meth:`release` hands the connection back to the pool once the body was read to its end
    (and closes it otherwise); :meth:`close` closes it, which stops the upstream's work.
    """

    __slots__ = ("_conn", "content", "headers", "reason", "status")

    def __init__(
        self, conn: Connection, status: int, reason: str, headers: CIMultiDictProxy[str]
    ) -> None:
        self._conn: Connection | None = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content = Body(conn)

    @property
    def content_type(self) -> str:
        """The media type, lowercased, without parameters (aiohttp's default if absent)."""
        return media_type(self.headers)

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
